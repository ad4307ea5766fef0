// `diffsynth forward`: one DiT forward on seeded random inputs (timestep 500), for VRAM
// management and memory checks. The model is the one the files hold: a Qwen-Image DiT
// (qwen_image_dit, 4-D latents NxCxHxW) or a Wan video DiT (wan_video_dit, 5-D latents
// NxCxFxHxW). Declared here, registered by main.cpp.
#pragma once
#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "apps/diffsynth/lora_options.h"
#include "apps/diffsynth/vram_options.h"

namespace diffsynth::cli {

struct ForwardArgs {
  std::vector<std::string> files;  // model file(s), a folder or an *.index.json
  std::string latents;             // empty: the model's default (see kForwardLatentsHelp)
  std::int64_t text_tokens = 8;
  std::string seed = "0";
  int repeat = 1;
  std::string dtype = "bfloat16", device = "cpu";
  std::string save_output;  // output and inputs as float32 safetensors, for parity checks
  VRAMArgs vram;            // --offload, --offload-dtype, --vram-limit, --vram-config, --prefetch
  LoRAArgs lora;            // --lora FILE[:alpha]..., --lora-mode
};

void add_forward_options(CLI::App& sub, ForwardArgs& args);
int cmd_forward(const ForwardArgs& args);

}  // namespace diffsynth::cli
