// Checkpoint layouts and the model hash, without libtorch: the part of identification that
// safetensors files need (the torch.save path is in file.h). Reference:
// diffsynth/core/loader/file.py (load_keys_dict, convert_keys_dict_to_single_str, hash_model_file).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace diffsynth {

// One checkpoint = one file or a list of shards (merged in order, later keys win).
using ModelPaths = std::vector<std::string>;

// The reference dispatches on the literal suffix; everything else goes through torch.load.
bool is_safetensors_path(const std::string& path);

// Keys and shapes of a checkpoint, nested where a .pth holds nested dicts.
struct KeysDict;
struct KeysEntry {
  std::string key;
  std::vector<std::int64_t> shape;   // when not a dict
  std::shared_ptr<KeysDict> dict;    // when a nested dict
};
struct KeysDict {
  std::vector<KeysEntry> entries;
  // key -> position in entries; built on the first set(), so a dict filled with unique keys
  // (a safetensors header) and hashed as it is never pays for it.
  std::unordered_map<std::string, std::size_t> index;
  void set(KeysEntry e);
  // Python's dict.update: later keys win, in place.
  void update(KeysDict&& other);
};

// Keys and shapes from a safetensors header (no data read).
KeysDict load_safetensors_keys_dict(const std::string& path);
// Sorted "key:d0_d1" and "key" strings (nested dicts as "key|<inner>"), ","-joined.
std::string convert_keys_dict_to_single_str(const KeysDict& keys, bool with_shape = true);
std::string md5_hex(const std::string& bytes);

// Command-line convenience: a folder stands for its *.safetensors (or, failing that,
// *.bin/*.pth/*.ckpt/*.pt) files, sorted; an HF "*.safetensors.index.json" for the shards
// its weight_map names (in sorted order). Missing shards are reported by name.
ModelPaths expand_model_paths(const std::vector<std::string>& args);

}  // namespace diffsynth
