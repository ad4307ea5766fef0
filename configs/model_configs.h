// DiffSynth-Studio's MODEL_CONFIGS, value for value (configs/model_configs.json, exported from
// the pinned reference by tools/export_model_configs.py and compiled in).
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace diffsynth {

struct ModelConfigEntry {
  std::string model_hash;
  std::string model_name;
  std::string model_class;                          // dotted reference name
  std::optional<std::string> state_dict_converter;  // dotted reference name
  nlohmann::ordered_json extra_kwargs;                      // null when the entry has none
  nlohmann::ordered_json quant_config;                      // null when the entry has none
};

// In the reference's order (which decides load order when several entries share a hash),
// followed by entries added at run time.
const std::vector<ModelConfigEntry>& model_configs();
// Appends an entry (a user's own checkpoint layout, or a test's), as appending to MODEL_CONFIGS.
void add_model_config(ModelConfigEntry entry);
std::vector<const ModelConfigEntry*> find_model_configs(const std::string& model_hash);

}  // namespace diffsynth
