#include "apps/diffsynth/generate.h"

#include "apps/diffsynth/app_paths.h"

#include <cstdio>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "core/dtype.h"
#include "core/error.h"
#include "core/loader/file.h"
#include "core/loader/keys.h"
#include "core/loader/safetensors.h"
#include "core/vram/layers.h"
#include "models/model_loader.h"
#include "pipelines/qwen_image.h"
#include "utils/image.h"
#include "utils/lora/general.h"

namespace fs = std::filesystem;

namespace diffsynth::cli {
namespace {

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

// A model file argument: a file, a folder of shards or an *.index.json.
ModelPaths model_paths(const std::string& arg) { return expand_model_paths({arg}); }

// The safetensors files of a model folder's role subfolder (transformer/, text_encoder/, vae/).
std::optional<ModelPaths> role_folder(const fs::path& dir, const char* role) {
  const auto sub = dir / role;
  if (!is_dir(sub)) return std::nullopt;
  return expand_model_paths({sub.string()});
}

torch::Tensor load_image_rgb(const std::string& path, const char* what) {
  try {
    return to_rgb(read_png(path));
  } catch (const Error& e) {
    throw Error(std::string(what) + " " + e.what());
  }
}

// The output size unless the image already has it: resized as PIL's Image.resize (bicubic).
torch::Tensor fit(const torch::Tensor& image, std::int64_t width, std::int64_t height, const std::string& what,
                  bool quiet) {
  if (image.size(0) == height && image.size(1) == width) return image;
  if (!quiet)
    std::cerr << "diffsynth: resizing " << what << " from " << image.size(1) << "x" << image.size(0) << " to " << width
              << "x" << height << "\n";
  return resize_pil(image, width, height);
}

void check_multiple(std::int64_t v, const char* name) {
  if (v < 16) throw Error(std::string("--") + name + " " + std::to_string(v) + " is too small (at least 16)");
  if (v % 16 != 0)
    throw Error(std::string("--") + name + " " + std::to_string(v) + " is not a multiple of 16 (try " +
                std::to_string(v / 16 * 16 < 16 ? 16 : v / 16 * 16) + " or " + std::to_string((v / 16 + 1) * 16) + ")");
}

}  // namespace

void add_generate_options(CLI::App& g, GenerateArgs& a) {
  g.add_option("-p,--prompt", a.prompt, "Prompt");
  g.add_option("-n,--negative-prompt", a.negative_prompt, "Negative prompt (used when --cfg-scale is not 1)");
  g.add_option("--seed", a.seed, "Seed of the initial noise (default: random, written to the PNG)");
  g.add_option("--steps", a.steps, "Denoising steps")->capture_default_str()->check(CLI::Range(1, 10000));
  g.add_option("--cfg-scale", a.cfg_scale, "True CFG scale (1 = no negative pass)")->capture_default_str();
  g.add_option("--width", a.width, "Image width, a multiple of 16 (default 1328, or the input image's)");
  g.add_option("--height", a.height, "Image height, a multiple of 16 (default 1328, or the input image's)");
  g.add_option("-m,--model", a.models,
               "Model file(s): DiT, text encoder, VAE, ControlNet... each identified by its hash; a folder or "
               "*.index.json = one sharded checkpoint");
  g.add_option("--model-dir", a.model_dir,
               "A Qwen-Image style folder (transformer/, text_encoder/, vae/, tokenizer/); default: the tiny "
               "random-weight model the build writes");
  g.add_option("--tokenizer", a.tokenizer, "Folder with tokenizer.json (default: MODEL_DIR/tokenizer, else the bundled Qwen tokenizer)");
  g.add_option("-i,--input-image", a.input_image, "img2img: start from this PNG (resized to the output size)");
  g.add_option("--strength", a.strength, "img2img denoising strength in (0, 1]")->capture_default_str();
  g.add_option("--mask", a.mask, "Inpaint mask PNG (white = repaint); needs --input-image");
  g.add_option("--blur-size", a.blur_size, "Inpaint mask Gaussian blur radius (latent pixels; with --blur-sigma)");
  g.add_option("--blur-sigma", a.blur_sigma, "Inpaint mask Gaussian blur sigma");
  g.add_option("--controlnet", a.controlnets, "Blockwise ControlNet file(s) (repeat for several)");
  g.add_option("--control-image", a.control_images, "Control image PNG (one per --controlnet, in order)");
  g.add_option("--control-scale", a.control_scales, "ControlNet scale (one for all, or one per control image)");
  a.lora.add(g);
  g.add_option("--exponential-shift-mu", a.exponential_shift_mu, "Scheduler shift mu (default: from the image size)");
  g.add_flag("--tiled", a.tiled, "VAE encode/decode in tiles (bounded memory for large images)");
  g.add_option("--dtype", a.dtype, "Model and computation dtype (bfloat16, float32, float16)")->capture_default_str();
  g.add_option("--device", a.device, "Device (cpu, cuda, cuda:N)")->capture_default_str();
  g.add_option("--threads", a.threads, "CPU threads (default: libtorch's)");
  g.add_option("-o,--output", a.output, "Output PNG")->capture_default_str();
  g.add_option("--save-latents", a.save_latents, "Also write the final latents (before decoding) as float32 safetensors");
  g.add_flag("-q,--quiet", a.quiet, "No loading messages or progress bar");
  a.vram.add(g);
}

int cmd_generate(const GenerateArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  if (a.threads > 0) torch::set_num_threads(a.threads);
  const auto dtype = parse_dtype(a.dtype);
  const auto device = parse_device(a.device);
  if (a.strength <= 0 || a.strength > 1) throw Error("--strength must be in (0, 1], got " + std::to_string(a.strength));
  if (!a.mask.empty() && a.input_image.empty()) throw Error("--mask needs --input-image (the picture to inpaint)");
  if (a.blur_size.has_value() != a.blur_sigma.has_value()) throw Error("--blur-size and --blur-sigma go together");
  if (a.control_images.size() != a.controlnets.size() && !(a.controlnets.size() == 1 && !a.control_images.empty()))
    throw Error("give one --control-image per --controlnet (got " + std::to_string(a.control_images.size()) +
                " images for " + std::to_string(a.controlnets.size()) + " ControlNets)");
  if (a.control_scales.size() > 1 && a.control_scales.size() != a.control_images.size())
    throw Error("give one --control-scale for all control images, or one per image");

  // Inputs first: a bad image path fails before minutes of loading.
  torch::Tensor input_image, mask;
  std::vector<torch::Tensor> control_images;
  if (!a.input_image.empty()) input_image = load_image_rgb(a.input_image, "--input-image");
  if (!a.mask.empty()) mask = load_image_rgb(a.mask, "--mask");
  for (const auto& c : a.control_images) control_images.push_back(load_image_rgb(c, "--control-image"));
  const std::int64_t width = a.width.value_or(input_image.defined() ? input_image.size(1) : 1328);
  const std::int64_t height = a.height.value_or(input_image.defined() ? input_image.size(0) : 1328);
  check_multiple(width, "width");
  check_multiple(height, "height");

  // Models: --model files, else the model folder (default: the tiny one the build writes).
  std::string model_dir = a.model_dir;
  std::vector<ModelPaths> files;
  for (const auto& m : a.models) files.push_back(model_paths(m));
  if (files.empty()) {
    if (model_dir.empty()) {
      model_dir = default_model_dir();
      if (model_dir.empty()) throw Error("no --model or --model-dir given, and the default tiny model was not built");
      if (!a.quiet)
        std::cerr << "diffsynth: no --model given: using the tiny random-weight Qwen-Image in " << model_dir
                  << " (it draws noise; pass --model-dir /path/to/Qwen-Image for real images)\n";
    }
    if (!is_dir(model_dir)) throw Error("--model-dir " + model_dir + ": not a folder");
    for (const char* role : {"text_encoder", "transformer", "vae"})
      if (auto p = role_folder(model_dir, role)) files.push_back(*p);
  }
  for (const auto& c : a.controlnets) files.push_back(model_paths(c));
  std::string tokenizer = a.tokenizer;
  if (tokenizer.empty() && !model_dir.empty() && is_dir(fs::path(model_dir) / "tokenizer"))
    tokenizer = (fs::path(model_dir) / "tokenizer").string();
  if (tokenizer.empty()) tokenizer = default_tokenizer_dir();

  const VRAMConfig config = a.vram.config(a.dtype, a.device);
  std::ostringstream quiet_sink;
  ModelPool pool(a.quiet ? static_cast<std::ostream&>(quiet_sink) : std::cerr);
  for (const auto& f : files) pool.auto_load_model(f, config, a.vram.vram_limit);
  auto pipe = QwenImagePipeline::from_model_pool(pool, tokenizer, device, dtype);
  if (a.quiet) pipe->log = &quiet_sink;
  else pipe->log = &std::cerr;
  const std::string hint = model_dir.empty() ? " among the --model files" : " in --model-dir " + model_dir;
  if (!pipe->dit) throw Error(std::string("no Qwen-Image DiT (qwen_image_dit)") + hint);
  if (!pipe->text_encoder) throw Error(std::string("no Qwen-Image text encoder (qwen_image_text_encoder)") + hint);
  if (!pipe->vae) throw Error(std::string("no Qwen-Image VAE (qwen_image_vae)") + hint);
  if (!a.controlnets.empty() && pipe->blockwise_controlnet.size() != a.controlnets.size())
    throw Error("--controlnet: expected " + std::to_string(a.controlnets.size()) + " Blockwise ControlNet model(s), " +
                std::to_string(pipe->blockwise_controlnet.size()) + " loaded");

  // BasePipeline.load_lora: in the pipeline dtype on its device.
  const nlohmann::ordered_json lora_info = a.lora.apply(*pipe->dit, pipe->dtype, pipe->device, !a.quiet);

  QwenImageInputs in;
  in.prompt = a.prompt;
  in.negative_prompt = a.negative_prompt;
  in.cfg_scale = a.cfg_scale;
  in.seed = a.seed;
  in.num_inference_steps = a.steps;
  in.width = width;
  in.height = height;
  in.exponential_shift_mu = a.exponential_shift_mu;
  in.tiled = a.tiled;
  if (input_image.defined()) {
    in.input_image = fit(input_image, width, height, "--input-image", a.quiet);
    in.denoising_strength = a.strength;
  }
  if (mask.defined()) {
    in.inpaint_mask = mask;
    in.inpaint_blur_size = a.blur_size;
    in.inpaint_blur_sigma = a.blur_sigma;
  }
  for (std::size_t i = 0; i < control_images.size(); ++i) {
    ControlNetInput c;
    c.controlnet_id = a.controlnets.size() == 1 ? 0 : static_cast<std::int64_t>(i);
    c.scale = a.control_scales.empty() ? 1.0 : a.control_scales[a.control_scales.size() == 1 ? 0 : i];
    c.image = fit(control_images[i], width, height, "--control-image", a.quiet);
    // The inpaint variant (4 extra mask channels) takes the inpaint mask as well.
    if (pipe->blockwise_controlnet[c.controlnet_id]->config.additional_in_dim > 0) {
      if (!mask.defined()) throw Error("--controlnet " + a.controlnets[c.controlnet_id] + " is the inpaint variant: pass --mask");
      c.inpaint_mask = mask;
    }
    in.blockwise_controlnet_inputs.push_back(c);
  }

  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto result = (*pipe)(in, a.quiet ? nullptr : &std::cerr);

  nlohmann::ordered_json params;
  params["prompt"] = a.prompt;
  params["negative_prompt"] = a.negative_prompt;
  params["seed"] = result.seed;
  params["steps"] = a.steps;
  params["cfg_scale"] = a.cfg_scale;
  params["width"] = result.width;
  params["height"] = result.height;
  params["models"] = nlohmann::ordered_json::array();
  for (std::size_t i = 0; i < pool.model.size(); ++i)
    params["models"].push_back({{"model_name", pool.model_name[i]}, {"path", path_str(pool.model_path[i])}});
  if (input_image.defined()) {
    params["input_image"] = a.input_image;
    params["denoising_strength"] = a.strength;
  }
  if (mask.defined()) params["inpaint_mask"] = a.mask;
  if (!control_images.empty()) params["control_images"] = a.control_images;
  if (!lora_info.empty()) params["loras"] = lora_info;
  params["dtype"] = a.dtype;
  params["device"] = a.device;
  params["software"] = "diffsynth.cpp";
  if (!a.save_latents.empty())
    save_safetensors(a.save_latents, {{"latents", result.latents.to(torch::kCPU, torch::kFloat32).contiguous()}});
  write_png(a.output, result.image, {{"parameters", params.dump()}, {"Software", "diffsynth.cpp"}});
  if (!a.quiet) {
    std::fprintf(stderr,
                 "diffsynth: timings: load %.3f s, encode %.3f s, denoise %.3f s (%lld steps, %.3f s/step), decode %.3f s; "
                 "peak RSS %.2f GiB\n",
                 load_seconds, result.encode_seconds, result.denoise_seconds, static_cast<long long>(a.steps),
                 result.denoise_seconds / static_cast<double>(a.steps), result.decode_seconds, peak_rss_bytes() / (1 << 30));
  }
  if (!a.quiet)
    std::cerr << "diffsynth: wrote " << a.output << " (" << result.width << "x" << result.height << ", seed " << result.seed
              << ") in " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s\n";
  return 0;
}

}  // namespace diffsynth::cli
