#include "core/loader/keys.h"

#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "core/error.h"
#include "core/file_io.h"
#include "core/loader/safetensors_header.h"

namespace diffsynth {

namespace fs = std::filesystem;

bool is_safetensors_path(const std::string& path) {
  static const std::string suffix = ".safetensors";
  return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void KeysDict::set(KeysEntry e) {
  if (index.size() != entries.size()) {
    index.clear();
    index.reserve(entries.size() * 2);
    for (std::size_t i = 0; i < entries.size(); ++i) index.emplace(entries[i].key, i);
  }
  auto it = index.find(e.key);
  if (it != index.end()) {
    entries[it->second] = std::move(e);
  } else {
    index.emplace(e.key, entries.size());
    entries.push_back(std::move(e));
  }
}

void KeysDict::update(KeysDict&& other) {
  if (entries.empty()) {
    *this = std::move(other);
    return;
  }
  for (auto& e : other.entries) set(std::move(e));
}

namespace {

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += '_';
    s += std::to_string(shape[i]);
  }
  return s;
}

}  // namespace

KeysDict load_safetensors_keys_dict(const std::string& path) {
  KeysDict out;
  auto header = read_safetensors_header(path);
  out.entries.reserve(header.tensors.size());
  // The header parser has refused duplicate keys: no index is needed to keep them unique.
  for (auto& t : header.tensors) out.entries.push_back(KeysEntry{std::move(t.name), std::move(t.shape), nullptr});
  return out;
}

std::string convert_keys_dict_to_single_str(const KeysDict& keys, bool with_shape) {
  // Every part is written once into one buffer and sorted as views of it: 400,000 separately
  // allocated strings made the sort slow on cache misses.
  std::string arena;
  std::vector<std::pair<std::size_t, std::size_t>> spans;  // (offset, length) in arena
  spans.reserve(keys.entries.size() * 2);
  auto add = [&](const std::string& text) {
    spans.emplace_back(arena.size(), text.size());
    arena += text;
  };
  for (const auto& e : keys.entries) {
    if (e.dict) {
      add(e.key + "|" + convert_keys_dict_to_single_str(*e.dict, with_shape));
    } else {
      if (with_shape) add(e.key + ":" + shape_str(e.shape));
      add(e.key);
    }
  }
  std::vector<std::string_view> parts;
  parts.reserve(spans.size());
  for (const auto& [offset, length] : spans) parts.emplace_back(arena.data() + offset, length);
  // string_view compares bytes as unsigned char: UTF-8 byte order == code-point order, which is
  // how Python sorts str.
  std::sort(parts.begin(), parts.end());
  std::string out;
  out.reserve(arena.size() + parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i) out += ',';
    out += parts[i];
  }
  return out;
}

std::string md5_hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &len, EVP_md5(), nullptr) != 1) throw Error("md5 failed");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

namespace {

// The shard names an HF index's "weight_map" object lists, read by SAX: a DOM of 200,000 entries
// costs seconds for the few distinct names it holds.
class IndexSax : public nlohmann::json_sax<nlohmann::json> {
 public:
  std::set<std::string> shards;
  std::string error;
  bool has_weight_map = false;

  bool null() override { return value("null"); }
  bool boolean(bool) override { return value("a boolean"); }
  bool number_integer(number_integer_t) override { return value("a number"); }
  bool number_unsigned(number_unsigned_t) override { return value("a number"); }
  bool number_float(number_float_t, const string_t&) override { return value("a number"); }
  bool string(string_t& v) override {
    if (in_map()) shards.insert(std::move(v));
    return true;
  }
  bool binary(binary_t&) override { return false; }
  bool start_object(std::size_t) override { return open(true); }
  bool start_array(std::size_t) override { return open(false); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool key(string_t& k) override {
    if (depth_ == 1) top_key_ = k;
    key_ = std::move(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    if (error.empty()) error = std::string("not valid JSON (") + e.what() + ")";
    return false;
  }

 private:
  bool in_map() const { return depth_ == 2 && map_depth_ == 2; }
  bool value(const char* what) {
    if (!in_map()) return true;
    error = "weight_map entry '" + key_ + "' is " + what + ", not a file name";
    return false;
  }
  bool open(bool object) {
    if (in_map()) {
      error = "weight_map entry '" + key_ + "' is not a file name";
      return false;
    }
    if (depth_ == 0 && !object) {
      error = "not a sharded-checkpoint index (a JSON array, not an object)";
      return false;
    }
    ++depth_;
    if (depth_ == 2 && top_key_ == "weight_map" && object) {
      map_depth_ = 2;
      has_weight_map = true;
    }
    return true;
  }
  bool close() {
    if (depth_ == map_depth_) map_depth_ = 0;
    --depth_;
    return true;
  }
  int depth_ = 0, map_depth_ = 0;
  std::string top_key_, key_;
};

std::set<std::string> index_shards(const std::string& path, const std::string& text) {
  IndexSax sax;
  bool ok = false;
  try {
    ok = nlohmann::json::sax_parse(text, &sax);
  } catch (const nlohmann::json::exception& e) {
    if (sax.error.empty()) sax.error = std::string("not valid JSON (") + e.what() + ")";
  }
  if (!ok && !sax.error.empty() && sax.error.rfind("weight_map", 0) == 0) fail(path, sax.error);
  if (!ok || !sax.has_weight_map) fail(path, "not a sharded-checkpoint index (no \"weight_map\" object)");
  return sax.shards;
}

}  // namespace

ModelPaths expand_model_paths(const std::vector<std::string>& args) {
  ModelPaths out;
  for (const auto& arg : args) {
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      std::vector<std::string> st, bin;
      for (const auto& entry : fs::directory_iterator(arg, ec)) {
        if (!entry.is_regular_file()) continue;
        const std::string p = entry.path().string();
        const std::string ext = entry.path().extension().string();
        if (is_safetensors_path(p)) st.push_back(p);
        else if (ext == ".bin" || ext == ".pth" || ext == ".pt" || ext == ".ckpt") bin.push_back(p);
      }
      auto& chosen = st.empty() ? bin : st;
      if (chosen.empty()) fail(arg, "folder holds no .safetensors, .bin, .pth, .pt or .ckpt files");
      std::sort(chosen.begin(), chosen.end());
      out.insert(out.end(), chosen.begin(), chosen.end());
      continue;
    }
    const std::string suffix = ".index.json";
    if (arg.size() > suffix.size() && arg.compare(arg.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::set<std::string> shards = index_shards(arg, read_regular_file(arg));
      const fs::path dir = fs::path(arg).parent_path();
      for (const auto& s : shards) {
        const std::string p = (dir / s).string();
        if (!fs::exists(p, ec)) fail(arg, "names shard '" + s + "', which does not exist (" + p + ")");
        out.push_back(p);
      }
      continue;
    }
    out.push_back(arg);
  }
  return out;
}

}  // namespace diffsynth
