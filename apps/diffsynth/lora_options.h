// --lora FILE[:alpha] (repeatable) and --lora-mode: LoRA options shared by `generate` and `forward`.
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "core/module.h"

namespace diffsynth::cli {

struct LoRAArgs {
  std::vector<std::string> loras;  // FILE[:alpha]
  std::string mode = "auto";       // auto | fuse | hotload
  void add(CLI::App& app);
  // Loads every LoRA into `model` as BasePipeline.load_lora does (file read in `dtype` on `device`;
  // hot-loaded when `model` is VRAM-managed unless --lora-mode says otherwise). Returns
  // [{"file", "alpha", "hotload"}, ...] for the record.
  nlohmann::ordered_json apply(Module& model, c10::ScalarType dtype, const torch::Device& device, bool verbose) const;
};

// FILE[:alpha]; a colon belonging to the path (no number after it) stays in the path. An alpha
// that is not finite or past +-kMaxLoRAAlpha is an Error naming the spec.
inline constexpr double kMaxLoRAAlpha = 100;
std::pair<std::string, double> split_lora(const std::string& spec);

}  // namespace diffsynth::cli
