// `diffsynth generate`: the pipeline of the identified DiT from the command line: Qwen-Image
// text-to-image (img2img, inpaint, Blockwise ControlNet, LoRA; generate.cpp) or Wan2.1
// text-to-video (generate_video.cpp). Declared here, registered by main.cpp.
#pragma once
#include <CLI/CLI.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/loader/file.h"
#include "models/model_loader.h"

#include "apps/diffsynth/lora_options.h"
#include "apps/diffsynth/vram_options.h"

namespace diffsynth::cli {

struct GenerateArgs {
  std::string prompt, negative_prompt;
  std::string seed;  // 0..2^64-1, or -1 / empty: drawn at random (parse_seed)
  std::optional<std::int64_t> steps;  // default: the pipeline's (Qwen-Image 30, Wan 50)
  std::optional<double> cfg_scale;    // default: the pipeline's (Qwen-Image 4, Wan 5)
  std::optional<std::int64_t> width, height;
  // Video (Wan) only.
  std::optional<std::int64_t> num_frames;
  std::optional<double> fps, sigma_shift, switch_boundary;
  std::optional<int> quality;
  std::string frames_dir;
  bool no_tiled = false;
  std::vector<std::string> models;  // files or folders (a folder = one sharded checkpoint)
  std::string model_dir, tokenizer;
  std::string input_image, mask;
  std::string end_image;  // Wan first-last-frame-to-video
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
  std::string output;  // default output.png (image) / output.mp4 (video)
  std::string save_latents;  // the final latents (float32 safetensors), for parity checks
  bool quiet = false;
  VRAMArgs vram;  // --offload, --offload-dtype, --vram-limit, --vram-config
};

void add_generate_options(CLI::App& sub, GenerateArgs& args);
int cmd_generate(const GenerateArgs& args);

// What generate runs on: the model files (each one checkpoint), the model folder they came from
// (empty for --model files) and the tokenizer folder (empty: the pipeline's default).
struct GenerateModels {
  std::vector<ModelPaths> files;
  std::string model_dir, tokenizer;
  bool default_model = false;  // the build's tiny Qwen-Image, none having been given
};
// The Wan2.1 text-to-video run (generate_video.cpp), once the files are known to hold a Wan DiT.
int generate_video(const GenerateArgs& args, const GenerateModels& models, std::chrono::steady_clock::time_point t0);
// Files of a Wan model folder as published (diffusion_pytorch_model*.safetensors, or Wan2.2
// A14B's high_noise_model/ and low_noise_model/ shards; models_t5_umt5-xxl-enc-bf16.pth or
// .safetensors; Wan2.1_VAE.pth or .safetensors; google/umt5-xxl/); nullopt when `dir` holds none
// of them. A missing role is an Error.
std::optional<GenerateModels> wan_model_folder(const std::string& dir);
// "diffsynth: warning: <message>" unless quiet: an option that does nothing here.
void warn_unused(bool quiet, const std::string& message);
// A PNG as uint8 RGB [H, W, 3]; a bad file is an Error naming `what` (the option) and the path.
torch::Tensor load_image_rgb(const std::string& path, const char* what);
// What both pipelines record and print: the loaded models ([{model_name, path}]) for the output's
// parameters, and the "diffsynth: timings:" line (bench/ parses it).
nlohmann::ordered_json pool_models_json(const ModelPool& pool);
void print_timings(double load, double encode, double denoise, std::int64_t steps, double decode);

}  // namespace diffsynth::cli
