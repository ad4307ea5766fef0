#include "apps/diffsynth/forward.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <sstream>

#include "apps/diffsynth/app_paths.h"
#include "apps/diffsynth/option_checks.h"
#include "configs/model_configs.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/loader/file.h"
#include "core/loader/safetensors.h"
#include "core/vram/layers.h"
#include "models/model_loader.h"
#include "models/qwen_image_dit.h"
#include "models/wan_video_dit.h"

namespace diffsynth::cli {
namespace {

constexpr const char* kQwenDefaultLatents = "1x16x16x16";

// NxCxHxW or NxCxFxHxW, positive integers; which rank the model takes is checked once it is known.
std::vector<std::int64_t> parse_shape(const std::string& s, const char* what) {
  std::vector<std::int64_t> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, 'x')) {
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != part.size() || part.empty() || v <= 0)
      throw Error(std::string(what) + ": expected NxCxHxW (Qwen-Image) or NxCxFxHxW (Wan) with positive integers, got '" +
                  s + "'");
    out.push_back(v);
  }
  if (out.size() != 4 && out.size() != 5)
    throw Error(std::string(what) + ": expected NxCxHxW (Qwen-Image) or NxCxFxHxW (Wan), got '" + s + "'");
  return out;
}

std::string join_shape(c10::IntArrayRef shape) {
  std::string s;
  for (auto d : shape) s += (s.empty() ? "" : "x") + std::to_string(d);
  return s;
}

// The Wan DiT config the files will load with, before anything loads: a registered entry with
// their hash, else the config stored in the file (as ModelPool::auto_load_model picks them).
// Nothing when they hold no Wan DiT (or a Qwen-Image DiT too: that one is forward's model).
std::optional<WanModelConfig> identified_wan_dit(const ModelPaths& paths) {
  std::vector<ModelConfigEntry> entries;
  for (const auto* c : find_model_configs(hash_model_file(paths))) entries.push_back(*c);
  if (entries.empty())
    if (auto own = config_from_metadata(paths)) entries.push_back(*own);
  std::optional<WanModelConfig> wan;
  for (const auto& e : entries) {
    if (e.model_name == "qwen_image_dit") return std::nullopt;
    if (e.model_name == "wan_video_dit" && !wan) wan = WanModelConfig::from_kwargs(e.extra_kwargs);
  }
  return wan;
}

struct Timings {
  double load_s = 0;
  std::vector<double> forward_s;
};

// The lines every model prints: output statistics, times and peak RSS, the VRAM summary.
void report(const torch::Tensor& o, const Timings& t, const std::shared_ptr<Module>& dit) {
  std::printf("output shape %s  mean %.6g  std %.6g  min %.6g  max %.6g\n", join_shape(o.sizes()).c_str(),
              o.mean().item<double>(), o.std().item<double>(), o.min().item<double>(), o.max().item<double>());
  std::printf("load %.3f s  forward %.3f s  peak RSS %s (%.0f bytes)\n", t.load_s, t.forward_s.front(),
              human_bytes(peak_rss_bytes()).c_str(), peak_rss_bytes());
  if (t.forward_s.size() > 1) {
    // Later calls: warm kernels, learned prefetch order, promoted layers.
    std::vector<double> later(t.forward_s.begin() + 1, t.forward_s.end());
    std::sort(later.begin(), later.end());
    std::printf("later forwards: median %.3f s  min %.3f s  (%zu runs)\n", later[later.size() / 2], later.front(),
                later.size());
  }
  std::printf("%s\n", resident_summary({dit}).c_str());
}

// `repeat` calls of `fn`, each timed with the copy of its output to the CPU (that copy waits for
// the device: it belongs to the timed work). Returns the last output, float32 on the CPU.
template <class Fn>
torch::Tensor timed_forwards(int repeat, Timings& t, Fn&& fn) {
  torch::Tensor o;
  for (int i = 0; i < repeat; ++i) {
    const auto t1 = std::chrono::steady_clock::now();
    o = fn().to(torch::kCPU, torch::kFloat32);
    t.forward_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
  }
  return o;
}

void save_output(const std::string& path, const torch::Tensor& o,
                 std::vector<std::pair<std::string, torch::Tensor>> inputs) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors{{"output", o.contiguous()}};
  for (auto& [k, v] : inputs) tensors.emplace_back(k, v.to(torch::kCPU, torch::kFloat32).contiguous());
  save_safetensors(path, tensors);
}

int forward_qwen_image(const ForwardArgs& fa, const std::vector<std::int64_t>& shape, const ModelPaths& paths,
                       const VRAMConfig& config, c10::ScalarType dtype, const torch::Device& device,
                       std::optional<std::uint64_t> seed, const std::string& latents_arg) {
  if (shape.size() != 4)
    throw Error("--latents " + latents_arg + ": " + path_str(paths) +
                " holds a Qwen-Image DiT (qwen_image_dit), which takes 4-D latents NxCxHxW (e.g. 1x16x16x16)");
  if (shape[1] != 16) throw Error("--latents: the Qwen-Image DiT takes 16 latent channels, got " + std::to_string(shape[1]));
  if (shape[2] % 2 || shape[3] % 2) throw Error("--latents: height and width must be even (2x2 patches)");
  const double latent_elements = static_cast<double>(shape[0]) * shape[1] * shape[2] * shape[3];
  const double elt = static_cast<double>(c10::elementSize(dtype));
  const auto t0 = std::chrono::steady_clock::now();
  ModelPool pool;
  pool.auto_load_model(paths, config, fa.vram.vram_limit);
  auto dit = std::dynamic_pointer_cast<QwenImageDiTImpl>(pool.fetch_model("qwen_image_dit"));
  if (!dit) throw Error(path_str(paths) + ": no qwen_image_dit or wan_video_dit model in these file(s)");
  const double text_elements = static_cast<double>(fa.text_tokens) * static_cast<double>(dit->config.joint_attention_dim);
  check_memory(text_elements * (4 + elt), "--text-tokens " + std::to_string(fa.text_tokens) + " (" +
                                              std::to_string(fa.text_tokens) + " x " +
                                              std::to_string(dit->config.joint_attention_dim) + " text embeddings)", device);
  // One block's activations over every token (see QwenImagePipeline::working_memory_bytes).
  const double tokens = static_cast<double>(shape[0]) * (shape[2] / 2) * (shape[3] / 2) + static_cast<double>(fa.text_tokens);
  check_memory(latent_elements * (4 + elt) + text_elements * (4 + elt) + 10 * tokens * dit->config.dim * elt,
               "a DiT forward over " + std::to_string(static_cast<long long>(tokens)) + " tokens (--latents " + latents_arg +
                   ", --text-tokens " + std::to_string(fa.text_tokens) + ")",
               device);
  // The pipeline's load_models_to_device(["dit"]).
  if (vram_management_enabled(*dit)) vram_onload(*dit);
  fa.lora.apply(*dit, dtype, device, /*verbose=*/true);
  Timings t;
  t.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed.value_or(0));
  const auto latents = torch::randn(shape, gen, torch::kFloat32);
  const auto prompt_emb = torch::randn({1, fa.text_tokens, dit->config.joint_attention_dim}, gen, torch::kFloat32);
  QwenImageDiTInputs in;
  in.latents = latents.to(device, dtype);
  in.prompt_emb = prompt_emb.to(device, dtype);
  in.prompt_emb_mask = torch::ones({1, fa.text_tokens}, torch::TensorOptions().dtype(torch::kLong).device(device));
  in.timestep = torch::full({1}, 500.0, torch::TensorOptions().dtype(dtype).device(device));
  const auto o = timed_forwards(fa.repeat, t, [&] { return dit->model_fn(in); });
  report(o, t, dit);
  if (!fa.save_output.empty())
    save_output(fa.save_output, o, {{"latents", latents}, {"prompt_emb", prompt_emb}, {"timestep", in.timestep}});
  return 0;
}

int forward_wan(const ForwardArgs& fa, const std::vector<std::int64_t>& shape, const ModelPaths& paths,
                const WanModelConfig& c, const VRAMConfig& config, c10::ScalarType dtype, const torch::Device& device,
                std::optional<std::uint64_t> seed, const std::string& latents_arg) {
  const std::string example = "1x" + std::to_string(c.in_dim) + "x3x16x16";
  if (shape.size() != 5)
    throw Error("--latents " + latents_arg + ": " + path_str(paths) +
                " holds a Wan video DiT (wan_video_dit), which takes 5-D latents NxCxFxHxW (e.g. " + example + ")");
  if (shape[1] != c.in_dim)
    throw Error("--latents " + latents_arg + ": this Wan video DiT takes " + std::to_string(c.in_dim) +
                " latent channels (in_dim), got " + std::to_string(shape[1]));
  const char* axes[3] = {"frames", "height", "width"};
  for (int i = 0; i < 3; ++i)
    if (shape[2 + i] % c.patch_size[i])
      throw Error("--latents " + latents_arg + ": " + axes[i] + " " + std::to_string(shape[2 + i]) +
                  " is not a multiple of the patch size " + std::to_string(c.patch_size[i]));
  // Every size is known from the config: the inputs and one block's activations are checked
  // against memory before anything loads.
  const double elt = static_cast<double>(c10::elementSize(dtype));
  const double latent_elements = static_cast<double>(shape[0]) * shape[1] * shape[2] * shape[3] * shape[4];
  const double text_elements = static_cast<double>(shape[0]) * static_cast<double>(fa.text_tokens) * c.text_dim;
  check_memory(text_elements * (4 + elt), "--text-tokens " + std::to_string(fa.text_tokens) + " (" +
                                              std::to_string(fa.text_tokens) + " x " + std::to_string(c.text_dim) +
                                              " text embeddings)", device);
  const double tokens = static_cast<double>(shape[0]) * (shape[2] / c.patch_size[0]) * (shape[3] / c.patch_size[1]) *
                        (shape[4] / c.patch_size[2]);
  const double text_tokens = static_cast<double>(shape[0]) * static_cast<double>(fa.text_tokens);
  check_memory(latent_elements * (4 + elt) + text_elements * (4 + elt) +
                   (10 * tokens * c.dim + 2 * tokens * c.ffn_dim + 4 * text_tokens * c.dim) * elt,
               "a DiT forward over " + std::to_string(static_cast<long long>(tokens)) + " video tokens (--latents " +
                   latents_arg + ", --text-tokens " + std::to_string(fa.text_tokens) + ")",
               device);
  const auto t0 = std::chrono::steady_clock::now();
  ModelPool pool;
  pool.auto_load_model(paths, config, fa.vram.vram_limit);
  auto dit = std::dynamic_pointer_cast<WanModelImpl>(pool.fetch_model("wan_video_dit"));
  if (!dit) throw Error(path_str(paths) + ": no qwen_image_dit or wan_video_dit model in these file(s)");
  if (vram_management_enabled(*dit)) vram_onload(*dit);
  fa.lora.apply(*dit, dtype, device, /*verbose=*/true);
  Timings t;
  t.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  torch::NoGradGuard no_grad;
  const auto& dc = dit->config;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed.value_or(0));
  const auto latents = torch::randn(shape, gen, torch::kFloat32);
  // One context per latent (model_fn repeats latents of batch 1 only).
  const auto context = torch::randn({shape[0], fa.text_tokens, dc.text_dim}, gen, torch::kFloat32);
  std::vector<std::pair<std::string, torch::Tensor>> inputs{{"latents", latents}, {"context", context}};
  WanDiTInputs in;
  in.latents = latents.to(device, dtype);
  in.context = context.to(device, dtype);
  in.timestep = torch::full({1}, 500.0, torch::TensorOptions().dtype(dtype).device(device));
  inputs.emplace_back("timestep", in.timestep);
  if (dc.has_image_input) {
    // Image-to-video DiTs read CLIP image tokens (first and last frame's with the position embedding).
    const auto clip = torch::randn({shape[0], dc.has_image_pos_emb ? 514 : 257, 1280}, gen, torch::kFloat32);
    in.clip_feature = clip.to(device, dtype);
    inputs.emplace_back("clip_feature", clip);
  }
  const auto o = timed_forwards(fa.repeat, t, [&] { return dit->model_fn(in); });
  report(o, t, dit);
  if (!fa.save_output.empty()) save_output(fa.save_output, o, std::move(inputs));
  return 0;
}

}  // namespace

void add_forward_options(CLI::App& sub, ForwardArgs& a) {
  sub.add_option("files", a.files, "Model file(s), a folder or an *.index.json")->required();
  sub.add_option("--latents", a.latents,
                 "Latent shape: NxCxHxW for a Qwen-Image DiT (default 1x16x16x16), NxCxFxHxW for a Wan video DiT "
                 "(C = its in_dim; default 1xCx3x16x16)");
  sub.add_option("--text-tokens", a.text_tokens, "Text tokens (random embeddings of the DiT's text width)")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40));
  sub.add_option("--dtype", a.dtype, "Computation dtype")->capture_default_str()->check(computation_dtype());
  sub.add_option("--device", a.device, "Computation device (cpu, cuda, cuda:N)")->capture_default_str();
  sub.add_option("--seed", a.seed, "Seed of the random inputs, 0 to 2^64-1")
      ->capture_default_str()
      ->check(throwing_check(
          [](const std::string& v) {
            if (v == "-1") throw Error("-1 (draw one) is for generate; forward needs a seed to be repeatable");
            parse_seed(v);
          },
          "in [0, 2^64-1]"));
  sub.add_option("--repeat", a.repeat, "Forwards to run (the later ones' median is printed too)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  sub.add_option("--save-output", a.save_output,
                 "Also write the output and the random inputs as float32 safetensors (written atomically)");
  a.vram.add(sub);
  a.lora.add(sub);
}

int cmd_forward(const ForwardArgs& fa) {
  const std::string latents_arg = fa.latents.empty() ? kQwenDefaultLatents : fa.latents;
  auto shape = parse_shape(latents_arg, "--latents");
  const std::optional<std::uint64_t> seed = parse_seed(fa.seed);
  const ModelPaths paths = expand_model_paths(fa.files);
  VRAMConfig config = fa.vram.config(fa.dtype, fa.device);
  const auto dtype = parse_computation_dtype(*config.computation_dtype);
  const auto device = parse_device(*config.computation_device);
  if (!fa.save_output.empty()) check_output_path(fa.save_output, "--save-output");
  // Sizes from the command line are bounded by memory before anything is allocated (double:
  // a product of five dimensions may not fit in 64 bits).
  double latent_elements = 1;
  for (auto d : shape) latent_elements *= static_cast<double>(d);
  const double elt = static_cast<double>(c10::elementSize(dtype));
  check_memory(latent_elements * (4 + elt), "--latents " + latents_arg + " (" + human_bytes(latent_elements * 4) +
                                                " as float32)", device);
  // The model decides the rest: the files are identified (headers only) before they load.
  if (const auto wan = identified_wan_dit(paths)) {
    std::string arg = latents_arg;
    if (fa.latents.empty()) {
      arg = "1x" + std::to_string(wan->in_dim) + "x3x16x16";
      shape = parse_shape(arg, "--latents");
    }
    return forward_wan(fa, shape, paths, *wan, config, dtype, device, seed, arg);
  }
  return forward_qwen_image(fa, shape, paths, config, dtype, device, seed, latents_arg);
}

}  // namespace diffsynth::cli
