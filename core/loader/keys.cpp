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
      nlohmann::json j = nlohmann::json::parse(read_regular_file(arg), nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        fail(arg, "not a sharded-checkpoint index (no \"weight_map\" object)");
      std::set<std::string> shards;
      for (const auto& [k, v] : j["weight_map"].items()) {
        if (!v.is_string()) fail(arg, "weight_map entry '" + k + "' is not a file name");
        shards.insert(v.get<std::string>());
      }
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
