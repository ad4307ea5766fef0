// --offload / --offload-dtype / --vram-limit / --vram-config: the VRAM management options shared
// by `load`, `forward` and `generate`.
#pragma once
#include <CLI/CLI.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/module.h"
#include "core/vram/config.h"

namespace diffsynth::cli {

struct VRAMArgs {
  std::string offload, offload_dtype, vram_config;
  std::optional<double> vram_limit;
  std::optional<int> prefetch;
  void add(CLI::App& app);
  // The VRAMConfig these options give, over the computation dtype/device; throws Error on bad values.
  VRAMConfig config(const std::string& dtype, const std::string& device) const;
};

// "weights held: X in memory, Y as file views" over the models' stored weights (what `load` and
// `forward` print under VRAM management).
std::string resident_summary(const std::vector<std::shared_ptr<Module>>& models);

}  // namespace diffsynth::cli
