#include "apps/diffsynth/generate.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "apps/diffsynth/app_paths.h"
#include "apps/diffsynth/option_checks.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/loader/file.h"
#include "core/loader/keys.h"
#include "core/loader/safetensors.h"
#include "core/vram/layers.h"
#include "models/model_loader.h"
#include "pipelines/qwen_image.h"
#include "pipelines/wan_video.h"
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


// The output size unless the image already has it: resized as PIL's Image.resize (bicubic).
torch::Tensor fit(const torch::Tensor& image, std::int64_t width, std::int64_t height, const std::string& what,
                  bool quiet) {
  if (image.size(0) == height && image.size(1) == width) return image;
  if (!quiet)
    std::cerr << "diffsynth: resizing " << what << " from " << image.size(1) << "x" << image.size(0) << " to " << width
              << "x" << height << "\n";
  return resize_pil(image, width, height);
}

// Width or height: a multiple of 16. `source` says where the value came from when the user did
// not pass the option (the input image).
void check_multiple(std::int64_t v, const char* name, const std::string& source) {
  const std::string what = source.empty() ? std::string("--") + name + " " + std::to_string(v)
                                          : source + ": its " + name + " " + std::to_string(v) + " (the output " + name +
                                                " when --" + name + " is not given)";
  if (v < 16) throw Error(what + " is too small (at least 16)");
  if (v > QwenImagePipeline::kMaxImageSide)
    throw Error(what + " is too large (at most " + std::to_string(QwenImagePipeline::kMaxImageSide) + ")");
  if (v % 16 != 0)
    throw Error(what + " is not a multiple of 16 (" + (source.empty() ? "try " : "pass --" + std::string(name) + " ") +
                std::to_string(v / 16 * 16 < 16 ? 16 : v / 16 * 16) + " or " + std::to_string((v / 16 + 1) * 16) + ")");
}

}  // namespace

// A one-line notice for an option that does nothing here (not an error: the run is still what
// was asked, minus a no-op).
nlohmann::ordered_json pool_models_json(const ModelPool& pool) {
  auto models = nlohmann::ordered_json::array();
  for (std::size_t i = 0; i < pool.model.size(); ++i)
    models.push_back({{"model_name", pool.model_name[i]}, {"path", path_str(pool.model_path[i])}});
  return models;
}

void print_timings(double load, double encode, double denoise, std::int64_t steps, double decode) {
  std::fprintf(stderr,
               "diffsynth: timings: load %.3f s, encode %.3f s, denoise %.3f s (%lld steps, %.3f s/step), decode %.3f s; "
               "peak RSS %.2f GiB\n",
               load, encode, denoise, static_cast<long long>(steps), denoise / static_cast<double>(steps), decode,
               peak_rss_bytes() / (1 << 30));
}

torch::Tensor load_image_rgb(const std::string& path, const char* what) {
  try {
    return to_rgb(read_png(path));
  } catch (const Error& e) {
    throw Error(std::string(what) + " " + e.what());
  }
}

void warn_unused(bool quiet, const std::string& message) {
  if (!quiet) std::cerr << "diffsynth: warning: " << message << "\n";
}

void add_generate_options(CLI::App& g, GenerateArgs& a) {
  const std::string side = std::to_string(QwenImagePipeline::kMaxImageSide);
  g.add_option("-p,--prompt", a.prompt, "Prompt");
  g.add_option("-n,--negative-prompt", a.negative_prompt, "Negative prompt (used when --cfg-scale is not 1)");
  g.add_option("--seed", a.seed, "Seed of the initial noise, 0 to 2^64-1; -1 or none: drawn at random (written to the PNG)")
      ->check(seed_value());
  g.add_option("--steps", a.steps,
               "Denoising steps, 1 to 10000 (default: Qwen-Image 30, at least 2 unless img2img with --strength below 1; Wan 50)")
      ->check(CLI::Range(1, 10000));
  g.add_option("--cfg-scale", a.cfg_scale, "True CFG scale (1 = no negative pass; default: Qwen-Image 4, Wan 5)")
      ->check(finite_in(-QwenImagePipeline::kMaxGuidance, QwenImagePipeline::kMaxGuidance));
  g.add_option("--width", a.width,
               "Width: Qwen-Image a multiple of 16 up to " + side + " (default 1328, or the input image's); Wan rounded up "
               "to a multiple of 16 (default 832)")
      ->check(CLI::Range(std::int64_t{16}, QwenImagePipeline::kMaxImageSide));
  g.add_option("--height", a.height,
               "Height: Qwen-Image a multiple of 16 up to " + side + " (default 1328, or the input image's); Wan rounded up "
               "to a multiple of 16 (default 480)")
      ->check(CLI::Range(std::int64_t{16}, QwenImagePipeline::kMaxImageSide));
  g.add_option("--num-frames", a.num_frames, "Video: frames, rounded up to 4k + 1 as the reference does (default 81)")
      ->check(CLI::Range(std::int64_t{1}, WanVideoPipeline::kMaxFrames));
  g.add_option("--fps", a.fps, "Video: frame rate of the file written (default 15)")->check(finite_in(0.01, 1000));
  g.add_option("--sigma-shift", a.sigma_shift, "Video: the Wan scheduler's shift (default 5)")
      ->check(finite_in(0, WanVideoPipeline::kMaxShift, /*lo_open=*/true));
  g.add_option("--switch-boundary", a.switch_boundary,
               "Video, Wan2.2 A14B: switch from the high-noise to the low-noise DiT at this fraction of the "
               "schedule's timesteps, in [0, 1] (default 0.875)")
      ->check(finite_in(0, 1));
  g.add_option("--quality", a.quality,
               "Video: H.264 quality 1 (smallest) to 10 (lossless), imageio's scale: CRF = 51 * (10 - q) / 10 (default 9)")
      ->check(CLI::Range(1, 10));
  g.add_option("--frames-dir", a.frames_dir, "Video: also write each frame as DIR/frame_NNNNN.png");
  g.add_flag("--no-tiled", a.no_tiled, "Video: decode the VAE in one piece (default: tiles of 30x52 latents, stride 15x26)");
  g.add_option("-m,--model", a.models,
               "Model file(s): DiT, text encoder, VAE, ControlNet... each identified by its hash; a folder or "
               "*.index.json = one sharded checkpoint. The identified DiT picks the pipeline");
  g.add_option("--model-dir", a.model_dir,
               "A model folder: Qwen-Image style (transformer/, text_encoder/, vae/, tokenizer/) or Wan2.1 as published "
               "(diffusion_pytorch_model*.safetensors, models_t5_umt5-xxl-enc-bf16.pth, Wan2.1_VAE.pth, google/umt5-xxl/); "
               "default: the tiny random-weight Qwen-Image the build writes");
  g.add_option("--tokenizer", a.tokenizer,
               "Folder with tokenizer.json (default: the model folder's tokenizer/ or google/umt5-xxl/, else the bundled one)");
  g.add_option("-i,--input-image", a.input_image,
               "img2img: start from this PNG; Wan image-to-video: the first frame (resized to the output size)");
  g.add_option("--end-image", a.end_image, "Wan first-last-frame-to-video: the last frame PNG (with --input-image)");
  g.add_option("--strength", a.strength, "img2img denoising strength in (0, 1] (default 1; needs --input-image)")
      ->check(finite_in(0, 1, /*lo_open=*/true));
  g.add_option("--mask", a.mask, "Inpaint mask PNG (white = repaint); needs --input-image");
  g.add_option("--blur-size", a.blur_size,
               "Inpaint mask Gaussian blur radius in latent pixels, 0 to (min(width, height) / 8 - 1); with --blur-sigma")
      ->check(CLI::Range(std::int64_t{0}, QwenImagePipeline::kMaxImageSide / 8));
  g.add_option("--blur-sigma", a.blur_sigma, "Inpaint mask Gaussian blur sigma, > 0; with --blur-size")
      ->check(finite_in(0, 1000, /*lo_open=*/true));
  g.add_option("--controlnet", a.controlnets, "Blockwise ControlNet file(s) (repeat for several)");
  g.add_option("--control-image", a.control_images, "Control image PNG (one per --controlnet, in order)");
  g.add_option("--control-scale", a.control_scales, "ControlNet scale (one for all, or one per control image)")
      ->check(finite_in(-QwenImagePipeline::kMaxGuidance, QwenImagePipeline::kMaxGuidance));
  a.lora.add(g);
  g.add_option("--exponential-shift-mu", a.exponential_shift_mu, "Scheduler shift mu (default: from the image size)")
      ->check(finite_in(-QwenImagePipeline::kMaxShiftMu, QwenImagePipeline::kMaxShiftMu));
  g.add_flag("--tiled", a.tiled, "Image: VAE encode/decode in tiles (bounded memory for large images; video always tiles)");
  g.add_option("--dtype", a.dtype, "Model and computation dtype")->capture_default_str()->check(computation_dtype());
  g.add_option("--device", a.device, "Device (cpu, cuda, cuda:N)")->capture_default_str();
  g.add_option("--threads", a.threads, "CPU threads (default: libtorch's)")->check(thread_count());
  g.add_option("-o,--output", a.output,
               "Output: a PNG for an image (default output.png), .mp4/.mov/.mkv for a video (default output.mp4); written "
               "atomically (a temporary file, then renamed)");
  g.add_option("--save-latents", a.save_latents, "Also write the final latents (before decoding) as float32 safetensors");
  g.add_flag("-q,--quiet", a.quiet, "No loading messages or progress bar");
  a.vram.add(g);
}

namespace {

// Qwen-Image text-to-image (img2img, inpaint, Blockwise ControlNet).
int generate_image(const GenerateArgs& a, GenerateModels models, std::chrono::steady_clock::time_point t0) {
  // Everything that needs no model is checked first: a mistake costs a second, not a load.
  const auto dtype = parse_computation_dtype(a.dtype);
  const auto device = parse_device(a.device);
  const std::optional<std::uint64_t> seed = a.seed.empty() ? std::nullopt : parse_seed(a.seed);
  for (const auto& [given, name] : std::initializer_list<std::pair<bool, const char*>>{
           {a.num_frames.has_value(), "--num-frames"}, {a.fps.has_value(), "--fps"},
           {a.sigma_shift.has_value(), "--sigma-shift"}, {a.quality.has_value(), "--quality"},
           {a.switch_boundary.has_value(), "--switch-boundary"}, {!a.end_image.empty(), "--end-image"},
           {!a.frames_dir.empty(), "--frames-dir"}, {a.no_tiled, "--no-tiled"}})
    if (given)
      throw Error(std::string(name) + " is a video option: the identified DiT (qwen_image_dit, Qwen-Image) makes images");
  const std::int64_t steps = a.steps.value_or(30);
  const double cfg_scale = a.cfg_scale.value_or(4.0);
  const std::string output = a.output.empty() ? "output.png" : a.output;
  if (a.strength && a.input_image.empty())
    throw Error("--strength applies to img2img: it needs --input-image (the picture to start from)");
  if (!a.mask.empty() && a.input_image.empty()) throw Error("--mask needs --input-image (the picture to inpaint)");
  if (a.blur_size.has_value() != a.blur_sigma.has_value()) throw Error("--blur-size and --blur-sigma go together");
  if (a.blur_size && a.mask.empty()) throw Error("--blur-size/--blur-sigma blur the inpaint mask: they need --mask");
  if (!a.control_images.empty() && a.controlnets.empty()) throw Error("--control-image needs --controlnet (the model it conditions)");
  if (!a.control_scales.empty() && a.control_images.empty()) throw Error("--control-scale needs --controlnet and --control-image");
  if (a.control_images.size() != a.controlnets.size() && !(a.controlnets.size() == 1 && !a.control_images.empty()))
    throw Error("give one --control-image per --controlnet (got " + std::to_string(a.control_images.size()) +
                " images for " + std::to_string(a.controlnets.size()) + " ControlNets)");
  if (a.control_scales.size() > 1 && a.control_scales.size() != a.control_images.size())
    throw Error("give one --control-scale for all control images, or one per image");
  if (steps == 1 && a.strength.value_or(1.0) == 1.0)
    throw Error("--steps 1: the Qwen-Image schedule is undefined for a single full-strength step (the reference "
                "denoises with NaN): use --steps 2 or more, or img2img with --strength below 1");
  if (!a.negative_prompt.empty() && cfg_scale == 1.0)
    warn_unused(a.quiet, "--negative-prompt is not used at --cfg-scale 1 (no negative pass runs)");
  if (a.lora.loras.empty() && a.lora.mode != "auto") warn_unused(a.quiet, "--lora-mode has no effect without --lora");
  for (const auto& c : a.controlnets) check_model_files(c, "--controlnet");
  check_output_path(output, "-o");
  if (fs::path(output).extension() != ".png" && fs::path(output).extension() != ".PNG")
    throw Error("-o " + output + ": Qwen-Image makes images; give a .png name");
  if (!a.save_latents.empty()) check_output_path(a.save_latents, "--save-latents");
  const VRAMConfig config = a.vram.config(a.dtype, a.device);
  if (a.threads) torch::set_num_threads(*a.threads);

  // Input images next: a bad image path fails before minutes of loading.
  torch::Tensor input_image, mask;
  std::vector<torch::Tensor> control_images;
  if (!a.input_image.empty()) input_image = load_image_rgb(a.input_image, "--input-image");
  if (!a.mask.empty()) mask = load_image_rgb(a.mask, "--mask");
  for (const auto& c : a.control_images) control_images.push_back(load_image_rgb(c, "--control-image"));
  const std::string size_source = input_image.defined() ? "--input-image " + a.input_image : "";
  const std::int64_t width = a.width.value_or(input_image.defined() ? input_image.size(1) : 1328);
  const std::int64_t height = a.height.value_or(input_image.defined() ? input_image.size(0) : 1328);
  check_multiple(width, "width", a.width ? "" : size_source);
  check_multiple(height, "height", a.height ? "" : size_source);

  QwenImageInputs in;
  in.prompt = a.prompt;
  in.negative_prompt = a.negative_prompt;
  in.cfg_scale = cfg_scale;
  in.seed = seed;
  in.num_inference_steps = steps;
  in.width = width;
  in.height = height;
  in.exponential_shift_mu = a.exponential_shift_mu;
  in.tiled = a.tiled;
  if (input_image.defined()) in.denoising_strength = a.strength.value_or(1.0);
  in.inpaint_blur_size = a.blur_size;
  in.inpaint_blur_sigma = a.blur_sigma;
  if (a.blur_size && *a.blur_size >= std::min(width, height) / 8)
    throw Error("--blur-size " + std::to_string(*a.blur_size) + " is too large for a " + std::to_string(width) + "x" +
                std::to_string(height) + " image: the mask is blurred at 1/8 size, so at most " +
                std::to_string(std::min(width, height) / 8 - 1));
  const std::string size_text = std::to_string(width) + "x" + std::to_string(height);
  check_memory(QwenImagePipeline::working_memory_bytes(in, dtype),
               "a " + size_text + " image (its pixel and latent buffers alone, " + dtype_name(dtype).substr(6) + ")", device);
  QwenImagePipeline::check_inputs(in);

  if (models.default_model && !a.quiet)
    std::cerr << "diffsynth: no --model given: using the tiny random-weight Qwen-Image in " << models.model_dir
              << " (it draws noise; pass --model-dir /path/to/Qwen-Image for real images)\n";
  // Models: what cmd_generate found, and the ControlNets.
  const std::string& model_dir = models.model_dir;
  std::vector<ModelPaths>& files = models.files;
  for (const auto& c : a.controlnets) files.push_back(model_paths(c));
  std::string tokenizer = models.tokenizer;
  if (tokenizer.empty() && !model_dir.empty() && is_dir(fs::path(model_dir) / "tokenizer"))
    tokenizer = (fs::path(model_dir) / "tokenizer").string();
  if (tokenizer.empty()) tokenizer = default_tokenizer_dir();

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

  check_memory(pipe->working_memory_bytes(in),
               "a " + size_text + " image on these models (" + dtype_name(dtype).substr(6) +
                   " activations of the largest stage" + (a.tiled ? "" : "; --tiled bounds the VAE's") + ")",
               device);
  if (input_image.defined()) in.input_image = fit(input_image, width, height, "--input-image", a.quiet);
  if (mask.defined()) in.inpaint_mask = mask;
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
  params["steps"] = steps;
  params["cfg_scale"] = cfg_scale;
  params["width"] = result.width;
  params["height"] = result.height;
  params["models"] = pool_models_json(pool);
  if (input_image.defined()) {
    params["input_image"] = a.input_image;
    params["denoising_strength"] = in.denoising_strength;
  }
  if (mask.defined()) params["inpaint_mask"] = a.mask;
  if (!control_images.empty()) params["control_images"] = a.control_images;
  if (!lora_info.empty()) params["loras"] = lora_info;
  params["dtype"] = a.dtype;
  params["device"] = a.device;
  params["software"] = "diffsynth.cpp";
  if (!a.save_latents.empty())
    save_safetensors(a.save_latents, {{"latents", result.latents.to(torch::kCPU, torch::kFloat32).contiguous()}});
  write_png(output, result.image, {{"parameters", params.dump()}, {"Software", "diffsynth.cpp"}});
  if (!a.quiet) {
    print_timings(load_seconds, result.encode_seconds, result.denoise_seconds, steps, result.decode_seconds);
    std::cerr << "diffsynth: wrote " << output << " (" << result.width << "x" << result.height << ", seed " << result.seed
              << ") in " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s\n";
  }
  return 0;
}

}  // namespace

int cmd_generate(const GenerateArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  parse_computation_dtype(a.dtype);
  parse_device(a.device);
  for (const auto& m : a.models) check_model_files(m, "--model");
  if (!a.model_dir.empty()) check_folder(a.model_dir, "--model-dir");
  if (!a.tokenizer.empty()) check_folder(a.tokenizer, "--tokenizer");
  // Models: --model files, else the model folder (default: the tiny Qwen-Image the build writes).
  GenerateModels models;
  for (const auto& m : a.models) models.files.push_back(model_paths(m));
  if (!models.files.empty()) models.model_dir = a.model_dir;  // its tokenizer/, if any
  if (models.files.empty()) {
    std::string dir = a.model_dir;
    if (dir.empty()) {
      dir = default_model_dir();
      if (dir.empty()) throw Error("no --model or --model-dir given, and the default tiny model was not built");
      models.default_model = true;  // said once the options are checked
    }
    if (auto wan = wan_model_folder(dir)) {
      models = *wan;
    } else {
      models.model_dir = dir;
      for (const char* role : {"text_encoder", "transformer", "vae"})
        if (auto p = role_folder(dir, role)) models.files.push_back(*p);
      if (models.files.empty())
        throw Error("--model-dir " + dir + ": no model files (neither a Qwen-Image folder with transformer/, text_encoder/, "
                    "vae/ nor a Wan2.1 folder with diffusion_pytorch_model*.safetensors)");
    }
  }
  if (!a.tokenizer.empty()) models.tokenizer = a.tokenizer;
  // The identified DiT picks the pipeline (headers only: nothing is loaded yet).
  bool wan = false, qwen = false;
  for (const auto& f : models.files)
    for (const auto& e : identify_model_file(f)) {
      wan = wan || e.model_name == "wan_video_dit";
      qwen = qwen || e.model_name == "qwen_image_dit";
    }
  if (wan && qwen) throw Error("the model files hold a Wan DiT and a Qwen-Image DiT: give the files of one pipeline");
  if (wan) return generate_video(a, models, t0);
  return generate_image(a, std::move(models), t0);
}

}  // namespace diffsynth::cli
