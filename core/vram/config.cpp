#include "core/vram/config.h"

#include "core/error.h"

namespace diffsynth {

VRAMConfig VRAMConfig::default_config() {
  VRAMConfig c;
  c.onload_dtype = c.preparing_dtype = c.computation_dtype = "bfloat16";
  c.onload_device = c.preparing_device = c.computation_device = "cpu";
  return c;
}

namespace {
struct Field {
  const char* name;
  std::optional<std::string> VRAMConfig::*member;
};
constexpr Field kFields[] = {
    {"offload_dtype", &VRAMConfig::offload_dtype},         {"offload_device", &VRAMConfig::offload_device},
    {"onload_dtype", &VRAMConfig::onload_dtype},           {"onload_device", &VRAMConfig::onload_device},
    {"preparing_dtype", &VRAMConfig::preparing_dtype},     {"preparing_device", &VRAMConfig::preparing_device},
    {"computation_dtype", &VRAMConfig::computation_dtype}, {"computation_device", &VRAMConfig::computation_device},
};
}  // namespace

VRAMConfig VRAMConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw Error("vram_config must be a JSON object, got " + j.dump());
  VRAMConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const Field* f = nullptr;
    for (const auto& k : kFields)
      if (it.key() == k.name) f = &k;
    if (!f) throw Error("vram_config: unknown field '" + it.key() + "'");
    if (it->is_null()) continue;
    if (!it->is_string()) throw Error("vram_config: '" + it.key() + "' must be a string or null");
    c.*(f->member) = it->get<std::string>();
  }
  return c;
}

nlohmann::ordered_json VRAMConfig::to_json() const {
  nlohmann::ordered_json j;
  for (const auto& k : kFields) {
    const auto& v = this->*(k.member);
    j[k.name] = v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr);
  }
  return j;
}

}  // namespace diffsynth
