// vram_config: where and in which dtype a model's weights live in each of DiffSynth's four
// states (offload / onload / preparing / computation). "disk" is a valid device and dtype.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace diffsynth {

struct VRAMConfig {
  std::optional<std::string> offload_dtype, offload_device;
  std::optional<std::string> onload_dtype, onload_device;
  std::optional<std::string> preparing_dtype, preparing_device;
  std::optional<std::string> computation_dtype, computation_device;

  // ModelPool.default_vram_config(): no offload, everything bf16 on the CPU.
  static VRAMConfig default_config();
  // The eight fields by their reference names; unknown fields are an error.
  static VRAMConfig from_json(const nlohmann::json& j);
  nlohmann::ordered_json to_json() const;
  // The reference enables VRAM management iff offload dtype and device are both set.
  bool management_enabled() const { return offload_dtype.has_value() && offload_device.has_value(); }
};

}  // namespace diffsynth
