// Model files as DiffSynth-Studio reads them (diffsynth/core/loader/file.py):
// state dicts, keys dicts and the model hash that identifies a checkpoint's layout.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/loader/keys.h"
#include "core/loader/safetensors_header.h"
#include "core/loader/state_dict.h"

namespace diffsynth {

KeysDict load_keys_dict(const ModelPaths& paths);
// The md5 DiffSynth-Studio's hash_model_file gives: it depends on keys and shapes only.
std::string hash_model_file(const ModelPaths& paths, bool with_shape = true);
std::string hash_state_dict_keys(const StateDict& state_dict, bool with_shape = true);

// Loads every tensor. On CPU with the file's own dtype (or dtype unset) tensors view the
// memory-mapped file: no copy. Otherwise each tensor is converted with exactly one copy.
// Like the reference, `dtype` applies to every tensor, integer ones included.
StateDict load_state_dict(const ModelPaths& paths, std::optional<c10::ScalarType> dtype = std::nullopt,
                          const torch::Device& device = torch::kCPU);
// Zero-copy views of every tensor (the lazy source converters run on); no dtype change.
StateDict open_state_dict(const ModelPaths& paths);
// Casts/moves a state dict as the reference's DiskMap does: every tensor to dtype (if set)
// and device, one copy each, source views released as they go.
void convert_state_dict(StateDict& state_dict, std::optional<c10::ScalarType> dtype, const torch::Device& device);

std::map<std::string, std::string> load_metadata_from_safetensors(const ModelPaths& paths);
// The same from headers already read (shards in order).
std::map<std::string, std::string> merge_safetensors_metadata(const std::vector<SafetensorsHeader>& headers);

}  // namespace diffsynth
