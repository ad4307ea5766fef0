#include "core/loader/safetensors_header.h"

#include <unistd.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>

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
                     const nlohmann::json& v) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer()) {
    fail(path, describe(key) + ": negative value " + v.dump() + " in " + field);
  }
  fail(path, describe(key) + ": " + field + " must hold integers, got " + v.dump());
}

// One tensor entry as the header gives it, before validation.
struct RawEntry {
  std::string name;
  std::optional<std::string> dtype;
  std::optional<std::vector<nlohmann::json>> shape, offsets;  // scalars (containers as placeholders)
};

// Reads the header straight into entries and metadata with a SAX handler of our own, in header
// order. nlohmann's DOM parsers are quadratic on a 200,000-key object (ordered_json finds keys by
// linear scan; the callback parser rescans the parent object at every end_object), and even a
// linear DOM spends most of its time allocating: this keeps a 13 MB header well under a second.
// Duplicate fields of an entry are errors here, duplicate tensor names in
// parse_safetensors_header (a DOM parser would silently keep one of them).
class HeaderSax : public nlohmann::json_sax<nlohmann::json> {
 public:
  HeaderSax(std::function<void(RawEntry&&)> on_entry, std::map<std::string, std::string>& metadata)
      : on_entry_(std::move(on_entry)), metadata_(metadata) {}
  std::string error;
  bool error_is_json = true;

  bool null() override { return scalar(nullptr); }
  bool boolean(bool v) override { return scalar(v); }
  bool number_integer(number_integer_t v) override { return scalar(v); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(v); }
  bool number_float(number_float_t v, const string_t&) override { return scalar(v); }
  bool string(string_t& v) override {
    if (skipping()) return true;
    if (depth_ == 2 && mode_ == Mode::Metadata) {
      metadata_[field_] = std::move(v);
      return true;
    }
    if (depth_ == 2 && mode_ == Mode::Tensor && field_ == "dtype") {
      cur_.dtype = std::move(v);
      return true;
    }
    return scalar(nlohmann::json(std::move(v)));
  }
  bool binary(binary_t&) override { return bad("binary values are not JSON"); }
  bool start_object(std::size_t) override { return open(/*object=*/true); }
  bool start_array(std::size_t) override { return open(/*object=*/false); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool key(string_t& k) override {
    if (skipping()) return true;
    if (depth_ == 1) {  // duplicate tensor names are found after the parse, by hash
      if (k == "__metadata__" && metadata_seen_) return bad("header lists key '__metadata__' twice");
      if (k == "__metadata__") metadata_seen_ = true;
      name_ = std::move(k);
      return true;
    }
    // depth 2: a field of an entry (or a metadata key)
    const bool dup = mode_ == Mode::Metadata ? metadata_.count(k) != 0
                                             : std::find(fields_.begin(), fields_.end(), k) != fields_.end();
    if (dup) return bad("header lists field '" + k + "' of '" + name_ + "' twice");
    if (mode_ == Mode::Tensor) fields_.push_back(k);
    field_ = std::move(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    if (error.empty()) error = e.what();
    return false;
  }

 private:
  enum class Mode { Tensor, Metadata };
  bool bad(std::string message) {
    if (error.empty()) {
      error = std::move(message);
      error_is_json = false;
    }
    return false;
  }
  bool skipping() const { return skip_below_ != 0 && depth_ >= skip_below_; }
  // A container nobody reads (an unknown field's value): its events are counted, not kept.
  void skip() { skip_below_ = depth_; }
  std::optional<std::vector<nlohmann::json>>* array_field() {
    if (mode_ != Mode::Tensor) return nullptr;
    if (field_ == "shape") return &cur_.shape;
    if (field_ == "data_offsets") return &cur_.offsets;
    return nullptr;
  }
  bool scalar(nlohmann::json&& v) {
    if (skipping()) return true;
    if (depth_ == 0) return bad("header is not a JSON object");
    if (depth_ == 1)
      return bad(name_ == "__metadata__" ? "__metadata__ is not an object" : "tensor '" + name_ + "': entry is not an object");
    if (depth_ == 2) {
      if (mode_ == Mode::Metadata) return bad("__metadata__ value of '" + field_ + "' is not a string");
      return true;  // a non-string dtype stays unset  // shape/data_offsets not arrays stay unset; unknown fields are ignored
    }
    if (depth_ == 3 && in_array_) in_array_->push_back(std::move(v));
    return true;
  }
  bool open(bool object) {
    if (skipping()) {
      ++depth_;
      return true;
    }
    if (depth_ == 0 && !object) return bad("header is not a JSON object");
    if (depth_ == 1) {
      if (!object)
        return bad(name_ == "__metadata__" ? "__metadata__ is not an object" : "tensor '" + name_ + "': entry is not an object");
      mode_ = name_ == "__metadata__" ? Mode::Metadata : Mode::Tensor;
      cur_ = RawEntry{};
      cur_.name = name_;
      fields_.clear();
    } else if (depth_ == 2) {
      if (mode_ == Mode::Metadata) return bad("__metadata__ value of '" + field_ + "' is not a string");
      auto* target = array_field();
      if (!object && target) {
        target->emplace();
        in_array_ = &**target;
      } else {
        ++depth_;
        skip();
        return true;
      }
    } else if (depth_ == 3) {
      // A container inside shape / data_offsets: kept as a placeholder, its contents skipped.
      if (in_array_) in_array_->push_back(object ? nlohmann::json::object() : nlohmann::json::array());
      ++depth_;
      skip();
      return true;
    }
    ++depth_;
    return true;
  }
  bool close() {
    --depth_;
    if (skip_below_ != 0) {
      if (depth_ >= skip_below_) return true;
      skip_below_ = 0;
      return true;
    }
    if (depth_ == 2) in_array_ = nullptr;
    if (depth_ == 1 && mode_ == Mode::Tensor) {
      try {
        on_entry_(std::move(cur_));
      } catch (const Error& e) {
        return bad(e.what());
      }
    }
    return true;
  }

  std::function<void(RawEntry&&)> on_entry_;
  std::map<std::string, std::string>& metadata_;
  bool metadata_seen_ = false;
  std::vector<std::string> fields_;
  std::string name_, field_;
  RawEntry cur_;
  std::vector<nlohmann::json>* in_array_ = nullptr;
  Mode mode_ = Mode::Tensor;
  int depth_ = 0, skip_below_ = 0;
};

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

  // Each entry is validated as soon as it is read (errors are thrown as Error with the path).
  auto validate = [&](RawEntry&& e) {
    const std::string& key = e.name;
    if (!e.dtype) fail(path, describe(key) + ": missing or non-string 'dtype'");
    if (!e.shape) fail(path, describe(key) + ": missing or non-array 'shape'");
    if (!e.offsets || e.offsets->size() != 2) fail(path, describe(key) + ": 'data_offsets' must be [begin, end]");
    const auto shape_text = [&] { return nlohmann::json(*e.shape).dump(); };
    SafetensorsTensorInfo info;
    info.name = std::move(e.name);
    info.dtype_name = std::move(*e.dtype);
    auto st = safetensors_dtype(info.dtype_name);
    if (!st) fail(path, describe(info.name) + ": unknown dtype '" + info.dtype_name + "'");
    info.dtype = *st;
    std::uint64_t numel = 1;
    info.shape.reserve(e.shape->size());
    for (const auto& d : *e.shape) {
      std::uint64_t dim = as_u64(path, info.name, "shape", d);
      if (dim > static_cast<std::uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel))
        fail(path, describe(info.name) + ": shape " + shape_text() + " overflows");
      info.shape.push_back(static_cast<std::int64_t>(dim));
    }
    std::uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(c10::elementSize(info.dtype)), &nbytes))
      fail(path, describe(info.name) + ": shape " + shape_text() + " overflows");
    info.begin = as_u64(path, info.name, "data_offsets", (*e.offsets)[0]);
    info.end = as_u64(path, info.name, "data_offsets", (*e.offsets)[1]);
    if (info.end < info.begin) fail(path, describe(info.name) + ": data_offsets end is before begin");
    if (info.end - info.begin != nbytes)
      fail(path, describe(info.name) + ": shape " + shape_text() + " x " + info.dtype_name + " is " + std::to_string(nbytes) +
                     " bytes but data_offsets span " + std::to_string(info.end - info.begin));
    if (info.end > data_size)
      fail(path, describe(info.name) + ": data_offsets end " + std::to_string(info.end) + " is past the data (" +
                     std::to_string(data_size) + " bytes; file truncated?)");
    h.tensors.push_back(std::move(info));
  };
  HeaderSax sax(validate, h.metadata);
  bool ok = false;
  try {
    ok = nlohmann::json::sax_parse(json, json + json_size, &sax);
  } catch (const nlohmann::json::exception& e) {
    if (sax.error.empty()) sax.error = e.what();
  }
  if (!ok) {
    if (sax.error_is_json) fail(path, "header is not valid UTF-8 JSON (" + sax.error + ")");
    throw Error(sax.error.rfind(path + ": ", 0) == 0 ? sax.error : path + ": " + sax.error);
  }

  // Duplicate tensor names: equal hashes first (a sort of integers), then the names themselves.
  std::vector<std::pair<std::size_t, std::size_t>> hashes;  // (hash, index)
  hashes.reserve(h.tensors.size());
  for (std::size_t i = 0; i < h.tensors.size(); ++i) hashes.emplace_back(std::hash<std::string>{}(h.tensors[i].name), i);
  std::sort(hashes.begin(), hashes.end());
  for (std::size_t i = 1; i < hashes.size(); ++i)
    for (std::size_t j = i; j > 0 && hashes[j - 1].first == hashes[i].first; --j)
      if (h.tensors[hashes[j - 1].second].name == h.tensors[hashes[i].second].name)
        fail(path, "header lists key '" + h.tensors[hashes[i].second].name + "' twice");

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
