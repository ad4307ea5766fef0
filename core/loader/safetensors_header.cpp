#include "core/loader/safetensors_header.h"

#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/error.h"
#include "core/loader/mapped_file.h"

namespace diffsynth {

namespace {

constexpr std::uint64_t kMaxHeaderSize = 100'000'000;  // same bound as the Python package

struct DtypeName {
  const char* name;
  c10::ScalarType type;
};
constexpr DtypeName kDtypes[] = {
    {"F64", c10::kDouble},  {"F32", c10::kFloat},          {"F16", c10::kHalf},
    {"BF16", c10::kBFloat16}, {"F8_E4M3", c10::kFloat8_e4m3fn}, {"F8_E5M2", c10::kFloat8_e5m2},
    {"F8_E8M0", c10::kFloat8_e8m0fnu}, {"I64", c10::kLong}, {"I32", c10::kInt},
    {"I16", c10::kShort},   {"I8", c10::kChar},            {"U8", c10::kByte},
    {"U16", c10::kUInt16},  {"U32", c10::kUInt32},         {"U64", c10::kUInt64},
    {"BOOL", c10::kBool},
};

std::string describe(const std::string& key) { return "tensor '" + key + "'"; }

std::uint64_t as_u64(const std::string& path, const std::string& key, const char* field,
                     const nlohmann::ordered_json& v) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer()) {
    fail(path, describe(key) + ": negative value " + v.dump() + " in " + field);
  }
  fail(path, describe(key) + ": " + field + " must hold integers, got " + v.dump());
}

}  // namespace

std::optional<c10::ScalarType> safetensors_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  return std::nullopt;
}

std::string safetensors_dtype_name(c10::ScalarType t) {
  for (const auto& d : kDtypes)
    if (t == d.type) return d.name;
  throw Error(std::string("safetensors cannot store dtype ") + c10::toString(t));
}

SafetensorsHeader parse_safetensors_header(const std::string& path, const char* json, std::size_t json_size,
                                           std::uint64_t data_size) {
  SafetensorsHeader h;
  h.path = path;
  h.header_size = json_size;
  h.file_size = 8 + json_size + data_size;

  // Duplicate top-level keys are an error (a JSON parser would silently keep the last).
  std::unordered_set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, nlohmann::ordered_json::parse_event_t ev, nlohmann::ordered_json& parsed) {
    if (ev == nlohmann::ordered_json::parse_event_t::key && depth == 1 && duplicate.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second) duplicate = k;
    }
    return true;
  };
  nlohmann::ordered_json root;
  try {
    root = nlohmann::ordered_json::parse(json, json + json_size, on_event);
  } catch (const nlohmann::json::exception& e) {
    std::string what = e.what();
    fail(path, "header is not valid UTF-8 JSON (" + what + ")");
  }
  if (!duplicate.empty()) fail(path, "header lists key '" + duplicate + "' twice");
  if (!root.is_object()) fail(path, "header is not a JSON object");

  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& key = it.key();
    const auto& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) fail(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(path, "__metadata__ value of '" + m.key() + "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) fail(path, describe(key) + ": entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) fail(path, describe(key) + ": missing or non-string 'dtype'");
    if (sh == v.end() || !sh->is_array()) fail(path, describe(key) + ": missing or non-array 'shape'");
    if (off == v.end() || !off->is_array() || off->size() != 2)
      fail(path, describe(key) + ": 'data_offsets' must be [begin, end]");

    SafetensorsTensorInfo info;
    info.name = key;
    info.dtype_name = dt->get<std::string>();
    auto st = safetensors_dtype(info.dtype_name);
    if (!st) fail(path, describe(key) + ": unknown dtype '" + info.dtype_name + "'");
    info.dtype = *st;

    std::uint64_t numel = 1;
    for (const auto& d : *sh) {
      std::uint64_t dim = as_u64(path, key, "shape", d);
      if (dim > static_cast<std::uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel))
        fail(path, describe(key) + ": shape " + sh->dump() + " overflows");
      info.shape.push_back(static_cast<std::int64_t>(dim));
    }
    std::uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(c10::elementSize(info.dtype)), &nbytes))
      fail(path, describe(key) + ": shape " + sh->dump() + " overflows");
    info.begin = as_u64(path, key, "data_offsets", (*off)[0]);
    info.end = as_u64(path, key, "data_offsets", (*off)[1]);
    if (info.end < info.begin) fail(path, describe(key) + ": data_offsets end is before begin");
    if (info.end - info.begin != nbytes)
      fail(path, describe(key) + ": shape " + sh->dump() + " x " + info.dtype_name + " is " + std::to_string(nbytes) +
                     " bytes but data_offsets span " + std::to_string(info.end - info.begin));
    if (info.end > data_size)
      fail(path, describe(key) + ": data_offsets end " + std::to_string(info.end) + " is past the data (" +
                     std::to_string(data_size) + " bytes; file truncated?)");
    h.tensors.push_back(std::move(info));
  }

  // The buffers must tile the data exactly: no overlaps, no holes, nothing after.
  std::vector<const SafetensorsTensorInfo*> by_offset;
  for (const auto& t : h.tensors) by_offset.push_back(&t);
  std::stable_sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t pos = 0;
  for (const auto* t : by_offset) {
    if (t->begin < pos) fail(path, describe(t->name) + ": data overlaps the previous tensor");
    if (t->begin > pos)
      fail(path, describe(t->name) + ": gap of " + std::to_string(t->begin - pos) + " bytes before its data");
    pos = t->end;
  }
  if (pos != data_size)
    fail(path, std::to_string(data_size - pos) + " bytes of data after the last tensor are not described by the header");
  return h;
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  std::uint64_t size = 0;
  int fd = open_regular_file(path, &size);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (size < 8) fail(path, "file is " + std::to_string(size) + " bytes, too short for a safetensors header");
  unsigned char len_bytes[8];
  read_exact(fd, path, 0, len_bytes, 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > kMaxHeaderSize) fail(path, "header length " + std::to_string(n) + " is over the 100 MB limit (not a safetensors file?)");
  if (n > size - 8)
    fail(path, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
                   " bytes)");
  std::string json(n, '\0');
  read_exact(fd, path, 8, json.data(), n);
  return parse_safetensors_header(path, json.data(), json.size(), size - 8 - n);
}

}  // namespace diffsynth
