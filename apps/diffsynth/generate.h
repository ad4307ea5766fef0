// `diffsynth generate`: Qwen-Image text-to-image (img2img, inpaint, Blockwise ControlNet, LoRA)
// from the command line. Declared here, registered by main.cpp.
#pragma once
#include <CLI/CLI.hpp>

#include <optional>
#include <string>
#include <vector>

#include "apps/diffsynth/lora_options.h"
#include "apps/diffsynth/vram_options.h"

namespace diffsynth::cli {

struct GenerateArgs {
  std::string prompt, negative_prompt;
  std::string seed;  // 0..2^64-1, or -1 / empty: drawn at random (parse_seed)
  std::int64_t steps = 30;
  double cfg_scale = 4.0;
  std::optional<std::int64_t> width, height;
  std::vector<std::string> models;  // files or folders (a folder = one sharded checkpoint)
  std::string model_dir, tokenizer;
  std::string input_image, mask;
  std::optional<double> strength;  // img2img only
  std::optional<std::int64_t> blur_size;
  std::optional<double> blur_sigma;
  std::vector<std::string> controlnets, control_images;
  std::vector<double> control_scales;
  LoRAArgs lora;  // --lora FILE[:alpha]..., --lora-mode
  std::optional<double> exponential_shift_mu;
  bool tiled = false;
  std::string dtype = "bfloat16", device = "cpu";
  std::optional<int> threads;  // default: libtorch's
  std::string output = "output.png";
  std::string save_latents;  // the final latents (float32 safetensors), for parity checks
  bool quiet = false;
  VRAMArgs vram;  // --offload, --offload-dtype, --vram-limit, --vram-config
};

void add_generate_options(CLI::App& sub, GenerateArgs& args);
int cmd_generate(const GenerateArgs& args);

}  // namespace diffsynth::cli
