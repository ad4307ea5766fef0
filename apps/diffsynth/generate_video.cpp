// `diffsynth generate` on a Wan DiT: text- or image-to-video to an H.264 file (and PNG frames).
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "apps/diffsynth/app_paths.h"
#include "apps/diffsynth/generate.h"
#include "apps/diffsynth/option_checks.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/loader/safetensors.h"
#include "models/model_loader.h"
#include "pipelines/wan_video.h"
#include "utils/video.h"

namespace fs = std::filesystem;

namespace diffsynth::cli {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool exists_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// The first of `names` present in `dir`.
std::optional<fs::path> first_present(const fs::path& dir, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (exists_file(dir / n)) return dir / n;
  return std::nullopt;
}

}  // namespace

std::optional<GenerateModels> wan_model_folder(const std::string& dir_arg) {
  const fs::path dir(dir_arg);
  // The DiT: diffusion_pytorch_model.safetensors or its shards; Wan2.2 A14B: the same in
  // high_noise_model/ and low_noise_model/ (loaded in that order: dit, then dit2).
  const auto dit_shards = [](const fs::path& d) {
    std::vector<std::string> found;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(d, ec)) {
      const auto name = e.path().filename().string();
      if (name.rfind("diffusion_pytorch_model", 0) == 0 && name.size() > 12 &&
          name.compare(name.size() - 12, 12, ".safetensors") == 0 && e.is_regular_file(ec))
        found.push_back(e.path().string());
    }
    std::sort(found.begin(), found.end());
    return found;
  };
  std::error_code ec;
  std::vector<std::vector<std::string>> dits;
  if (auto top = dit_shards(dir); !top.empty()) dits.push_back(top);
  const bool experts = fs::is_directory(dir / "high_noise_model", ec) || fs::is_directory(dir / "low_noise_model", ec);
  if (experts) {
    for (const char* sub : {"high_noise_model", "low_noise_model"}) {
      auto shards = dit_shards(dir / sub);
      if (shards.empty())
        throw Error("--model-dir " + dir_arg + " (a Wan2.2 A14B folder): no DiT (diffusion_pytorch_model*.safetensors) in " +
                    sub + "/");
      dits.push_back(shards);
    }
  }
  const bool dit_empty = dits.empty();
  const auto text_encoder =
      first_present(dir, {"models_t5_umt5-xxl-enc-bf16.pth", "models_t5_umt5-xxl-enc-bf16.safetensors"});
  const auto vae = first_present(dir, {"Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors"});
  // Wan2.1 I2V / FLF2V: the CLIP image encoder (optional: text-to-video folders have none).
  const auto image_encoder = first_present(dir, {"models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                                                 "models_clip_open-clip-xlm-roberta-large-vit-huge-14.safetensors"});
  if (dit_empty && !text_encoder && !vae) return std::nullopt;
  const std::string where = "--model-dir " + dir_arg + " (a Wan folder): ";
  if (dit_empty) throw Error(where + "no DiT (diffusion_pytorch_model*.safetensors)");
  if (!text_encoder) throw Error(where + "no text encoder (models_t5_umt5-xxl-enc-bf16.pth or .safetensors)");
  if (!vae) throw Error(where + "no VAE (Wan2.1_VAE.pth or .safetensors)");
  GenerateModels m;
  m.model_dir = dir_arg;
  for (auto& d : dits) m.files.push_back(d);
  m.files.push_back({text_encoder->string()});
  m.files.push_back({vae->string()});
  if (image_encoder) m.files.push_back({image_encoder->string()});
  if (fs::is_directory(dir / "google" / "umt5-xxl", ec)) m.tokenizer = (dir / "google" / "umt5-xxl").string();
  return m;
}

int generate_video(const GenerateArgs& a, const GenerateModels& models, std::chrono::steady_clock::time_point t0) {
  // Everything that needs no model is checked first.
  const auto dtype = parse_computation_dtype(a.dtype);
  const auto device = parse_device(a.device);
  const std::optional<std::uint64_t> seed = a.seed.empty() ? std::nullopt : parse_seed(a.seed);
  for (const auto& [given, name] : std::initializer_list<std::pair<bool, const char*>>{
           {!a.mask.empty(), "--mask"},
           {a.strength.has_value(), "--strength"}, {a.blur_size.has_value(), "--blur-size"},
           {a.blur_sigma.has_value(), "--blur-sigma"}, {!a.controlnets.empty(), "--controlnet"},
           {!a.control_images.empty(), "--control-image"}, {!a.control_scales.empty(), "--control-scale"},
           {a.exponential_shift_mu.has_value(), "--exponential-shift-mu"}, {a.tiled, "--tiled"}})
    if (given)
      throw Error(std::string(name) + " is not an option of the Wan video pipeline (the identified DiT is wan_video_dit)" +
                  (std::string(name) == "--tiled" ? ": it tiles by default, --no-tiled turns that off" : ""));
  WanVideoInputs in;
  in.prompt = a.prompt;
  in.negative_prompt = a.negative_prompt;
  in.seed = seed;
  in.num_inference_steps = a.steps.value_or(in.num_inference_steps);
  in.cfg_scale = a.cfg_scale.value_or(in.cfg_scale);
  in.width = a.width.value_or(in.width);
  in.height = a.height.value_or(in.height);
  in.num_frames = a.num_frames.value_or(in.num_frames);
  in.sigma_shift = a.sigma_shift.value_or(in.sigma_shift);
  in.tiled = !a.no_tiled;
  if (a.switch_boundary) in.switch_DiT_boundary = *a.switch_boundary;
  if (!a.end_image.empty() && a.input_image.empty())
    throw Error("--end-image needs --input-image (first-last-frame-to-video: the first frame too)");
  if (!a.input_image.empty()) in.input_image = load_image_rgb(a.input_image, "--input-image");
  if (!a.end_image.empty()) in.end_image = load_image_rgb(a.end_image, "--end-image");
  const double fps = a.fps.value_or(15.0);
  const int quality = a.quality.value_or(kDefaultVideoQuality);
  const std::string output = a.output.empty() ? "output.mp4" : a.output;
  const std::string ext = lower(fs::path(output).extension().string());
  if (ext != ".mp4" && ext != ".mov" && ext != ".mkv")
    throw Error("-o " + output + ": Wan makes videos; give a .mp4, .mov or .mkv name");
  check_output_path(output, "-o");
  if (!a.frames_dir.empty()) {
    std::error_code ec;
    const fs::path fd(a.frames_dir);
    if (fs::exists(fd, ec) && !fs::is_directory(fd, ec))
      throw Error("--frames-dir " + a.frames_dir + ": exists and is not a folder");
    const fs::path parent = fd.has_parent_path() ? fd.parent_path() : fs::path(".");
    if (!fs::is_directory(parent, ec)) throw Error("--frames-dir " + a.frames_dir + ": its parent folder does not exist");
  }
  if (!a.save_latents.empty()) check_output_path(a.save_latents, "--save-latents");
  if (!a.negative_prompt.empty() && in.cfg_scale == 1.0)
    warn_unused(a.quiet, "--negative-prompt is not used at --cfg-scale 1 (no negative pass runs)");
  if (a.lora.loras.empty() && a.lora.mode != "auto") warn_unused(a.quiet, "--lora-mode has no effect without --lora");
  WanVideoPipeline::check_inputs(in);
  const std::string size_text = std::to_string(in.width) + "x" + std::to_string(in.height) + ", " +
                                std::to_string(in.num_frames) + " frames";
  check_memory(WanVideoPipeline::working_memory_bytes(in, dtype),
               "a " + size_text + " video (its pixel and latent buffers alone, " + dtype_name(dtype).substr(6) + ")", device);
  const VRAMConfig config = a.vram.config(a.dtype, a.device);
  if (a.threads) torch::set_num_threads(*a.threads);
  const std::string tokenizer = models.tokenizer.empty() ? default_tokenizer_dir("umt5-tokenizer") : models.tokenizer;

  std::ostringstream quiet_sink;
  ModelPool pool(a.quiet ? static_cast<std::ostream&>(quiet_sink) : std::cerr);
  for (const auto& f : models.files) pool.auto_load_model(f, config, a.vram.vram_limit);
  auto pipe = WanVideoPipeline::from_model_pool(pool, tokenizer, device, dtype);
  pipe->log = a.quiet ? static_cast<std::ostream*>(&quiet_sink) : &std::cerr;
  const std::string hint = models.model_dir.empty() ? " among the --model files" : " in --model-dir " + models.model_dir;
  if (!pipe->text_encoder) throw Error(std::string("no Wan text encoder (wan_video_text_encoder)") + hint);
  if (!pipe->vae) throw Error(std::string("no Wan VAE (wan_video_vae)") + hint);
  if (a.switch_boundary && !pipe->dit2)
    warn_unused(a.quiet, "--switch-boundary has no effect with one DiT (it switches Wan2.2 A14B's two experts)");
  // What the DiT(s) take (an image-to-video model needs --input-image, a text-to-video one takes
  // none, a CLIP-conditioned one the image encoder), before any LoRA or denoising work.
  pipe->check_model_inputs(in);
  if (pipe->dit->config.text_dim != pipe->text_encoder->config.dim)
    throw Error("the Wan DiT takes " + std::to_string(pipe->dit->config.text_dim) + "-wide text embeddings, the text encoder" +
                hint + " makes " + std::to_string(pipe->text_encoder->config.dim));
  const nlohmann::ordered_json lora_info = a.lora.apply(*pipe->dit, pipe->dtype, pipe->device, !a.quiet);
  check_memory(pipe->working_memory_bytes(in),
               "a " + size_text + " video on these models (" + dtype_name(dtype).substr(6) +
                   " activations of the largest stage)",
               device);

  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto result = (*pipe)(in, a.quiet ? nullptr : &std::cerr);

  nlohmann::ordered_json params;
  params["prompt"] = a.prompt;
  params["negative_prompt"] = a.negative_prompt;
  params["seed"] = result.seed;
  params["steps"] = in.num_inference_steps;
  params["cfg_scale"] = in.cfg_scale;
  params["sigma_shift"] = in.sigma_shift;
  params["width"] = result.width;
  params["height"] = result.height;
  params["num_frames"] = result.num_frames;
  params["fps"] = fps;
  params["tiled"] = in.tiled;
  if (!a.input_image.empty()) params["input_image"] = a.input_image;
  if (!a.end_image.empty()) params["end_image"] = a.end_image;
  if (pipe->dit2) params["switch_DiT_boundary"] = in.switch_DiT_boundary;
  params["models"] = pool_models_json(pool);
  if (!lora_info.empty()) params["loras"] = lora_info;
  params["dtype"] = a.dtype;
  params["device"] = a.device;
  params["software"] = "diffsynth.cpp";
  if (!a.save_latents.empty())
    save_safetensors(a.save_latents, {{"latents", result.latents.to(torch::kCPU, torch::kFloat32).contiguous()}});
  write_video(output, result.video, fps, quality, {{"comment", params.dump()}, {"encoder_software", "diffsynth.cpp"}});
  if (!a.frames_dir.empty())
    write_frames_dir(a.frames_dir, result.video, {{"parameters", params.dump()}, {"Software", "diffsynth.cpp"}});
  if (!a.quiet) {
    print_timings(load_seconds, result.encode_seconds, result.denoise_seconds, in.num_inference_steps,
                  result.decode_seconds);
    std::cerr << "diffsynth: wrote " << output << " (" << result.num_frames << " frames of " << result.width << "x"
              << result.height << " at " << fps << " fps, seed " << result.seed << ")";
    if (!a.frames_dir.empty()) std::cerr << " and " << result.num_frames << " PNG frames in " << a.frames_dir;
    std::cerr << " in " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s\n";
  }
  return 0;
}

}  // namespace diffsynth::cli
