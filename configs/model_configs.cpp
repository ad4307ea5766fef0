#include "configs/model_configs.h"

#include "core/error.h"

namespace diffsynth {

namespace generated {
extern const unsigned char kModelConfigsJson[];
extern const std::size_t kModelConfigsJsonSize;
}  // namespace generated

namespace {
std::vector<ModelConfigEntry>& table_storage() {
  static std::vector<ModelConfigEntry> table = [] {
    const char* text = reinterpret_cast<const char*>(generated::kModelConfigsJson);
    auto root = nlohmann::ordered_json::parse(text, text + generated::kModelConfigsJsonSize);
    std::vector<ModelConfigEntry> out;
    for (const auto& e : root.at("model_configs")) {
      ModelConfigEntry c;
      c.model_hash = e.at("model_hash").get<std::string>();
      c.model_name = e.at("model_name").get<std::string>();
      c.model_class = e.at("model_class").get<std::string>();
      if (e.contains("state_dict_converter")) c.state_dict_converter = e["state_dict_converter"].get<std::string>();
      if (e.contains("extra_kwargs")) c.extra_kwargs = e["extra_kwargs"];
      if (e.contains("quant_config")) c.quant_config = e["quant_config"];
      out.push_back(std::move(c));
    }
    return out;
  }();
  return table;
}
}  // namespace

const std::vector<ModelConfigEntry>& model_configs() { return table_storage(); }

void add_model_config(ModelConfigEntry entry) { table_storage().push_back(std::move(entry)); }

std::vector<const ModelConfigEntry*> find_model_configs(const std::string& model_hash) {
  std::vector<const ModelConfigEntry*> out;
  for (const auto& c : model_configs())
    if (c.model_hash == model_hash) out.push_back(&c);
  return out;
}

}  // namespace diffsynth
