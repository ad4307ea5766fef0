#include "apps/diffsynth/lora_options.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "apps/diffsynth/option_checks.h"
#include "core/error.h"
#include "core/vram/layers.h"
#include "utils/lora/general.h"

namespace diffsynth::cli {

void LoRAArgs::add(CLI::App& app) {
  app.add_option("--lora", loras, "LoRA file for the DiT, FILE[:alpha], alpha in [-100, 100] (repeat for several; they stack)")
      ->check(throwing_check([](const std::string& spec) { check_model_files(split_lora(spec).first, ""); },
                             "FILE[:ALPHA]"));
  app.add_option("--lora-mode", mode,
                 "auto: hot-load onto the wrapped layers when VRAM management is on (--offload, --vram-limit, "
                 "--vram-config), else fuse into the weights; fuse; hotload")
      ->check(CLI::IsMember({"auto", "fuse", "hotload"}))
      ->capture_default_str();
}

nlohmann::ordered_json LoRAArgs::apply(Module& model, c10::ScalarType dtype, const torch::Device& device,
                                       bool verbose) const {
  nlohmann::ordered_json info = nlohmann::ordered_json::array();
  for (const auto& spec : loras) {
    const auto [file, alpha] = split_lora(spec);
    // The reference's default: hot-loaded when the model is VRAM-managed, else fused.
    std::optional<bool> hotload;
    if (mode == "fuse") hotload = false;
    else if (mode == "hotload") hotload = true;
    const bool hot = hotload.value_or(vram_management_enabled(model));
    load_lora(model, file, alpha, hotload, dtype, device, verbose);
    info.push_back({{"file", std::filesystem::path(file).filename().string()}, {"alpha", alpha}, {"hotload", hot}});
  }
  return info;
}

std::pair<std::string, double> split_lora(const std::string& spec) {
  const auto colon = spec.rfind(':');
  if (colon == std::string::npos || colon + 1 == spec.size()) return {spec, 1.0};
  const std::string tail = spec.substr(colon + 1);
  char* end = nullptr;
  errno = 0;
  const double alpha = std::strtod(tail.c_str(), &end);
  if (*end != '\0') return {spec, 1.0};  // not a number: the colon is part of the path
  if (!std::isfinite(alpha) || errno == ERANGE || std::fabs(alpha) > kMaxLoRAAlpha)
    throw Error(spec + ": the alpha after ':' must be a finite number in [-100, 100], got " + tail);
  return {spec.substr(0, colon), alpha};
}

}  // namespace diffsynth::cli
