#include "diffusion/base_pipeline.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "core/vram/layers.h"
#include "utils/lora/general.h"

namespace diffsynth {

BasePipeline::BasePipeline(torch::Device device, c10::ScalarType dtype, std::int64_t height_division_factor,
                           std::int64_t width_division_factor, std::int64_t time_division_factor,
                           std::int64_t time_division_remainder)
    : device(device), dtype(dtype), height_division_factor(height_division_factor),
      width_division_factor(width_division_factor), time_division_factor(time_division_factor),
      time_division_remainder(time_division_remainder), log(&std::cout) {}

std::pair<std::int64_t, std::int64_t> BasePipeline::check_resize_height_width(std::int64_t height,
                                                                             std::int64_t width) const {
  if (height % height_division_factor != 0) {
    height = (height + height_division_factor - 1) / height_division_factor * height_division_factor;
    *log << "height % " << height_division_factor << " != 0. We round it up to " << height << "." << std::endl;
  }
  if (width % width_division_factor != 0) {
    width = (width + width_division_factor - 1) / width_division_factor * width_division_factor;
    *log << "width % " << width_division_factor << " != 0. We round it up to " << width << "." << std::endl;
  }
  return {height, width};
}

std::tuple<std::int64_t, std::int64_t, std::int64_t> BasePipeline::check_resize_height_width(std::int64_t height,
                                                                                           std::int64_t width,
                                                                                           std::int64_t num_frames) const {
  std::tie(height, width) = check_resize_height_width(height, width);
  const auto f = time_division_factor, r = time_division_remainder;
  if (f > 0 && num_frames % f != r) {
    // Python's floor division: (num_frames - r + f - 1) // f * f + r.
    const auto n = num_frames - r + f - 1;
    num_frames = (n >= 0 ? n / f : -((-n + f - 1) / f)) * f + r;
    *log << "num_frames % " << f << " != " << r << ". We round it up to " << num_frames << "." << std::endl;
  }
  return {height, width, num_frames};
}

torch::Tensor BasePipeline::preprocess_image(const torch::Tensor& image, double min_value, double max_value) const {
  if (!image.defined() || image.dim() != 3 || image.scalar_type() != torch::kUInt8)
    throw Error("preprocess_image: expected a uint8 [H, W, C] image");
  // float32 first (np.array(img, float32)), then the pipeline dtype, then the affine map in it.
  auto x = image.to(torch::kFloat32).to(device, dtype);
  x = x * ((max_value - min_value) / 255) + min_value;
  return x.permute({2, 0, 1}).unsqueeze(0);
}

torch::Tensor BasePipeline::vae_output_to_image(const torch::Tensor& vae_output, double min_value, double max_value) {
  if (vae_output.dim() != 4) throw Error("vae_output_to_image: expected [B, C, H, W]");
  auto x = vae_output.mean(0).permute({1, 2, 0});
  x = ((x - min_value) * (255 / (max_value - min_value))).clip(0, 255);
  return x.to(torch::kCPU).to(torch::kUInt8).contiguous();
}

torch::Tensor BasePipeline::vae_output_to_video(const torch::Tensor& vae_output, double min_value, double max_value) {
  if (vae_output.dim() != 5) throw Error("vae_output_to_video: expected [B, C, T, H, W]");
  auto x = vae_output.mean(0).permute({1, 2, 3, 0});
  x = ((x - min_value) * (255 / (max_value - min_value))).clip(0, 255);
  return x.to(torch::kCPU).to(torch::kUInt8).contiguous();
}

torch::Tensor BasePipeline::generate_noise(const std::vector<std::int64_t>& shape, std::optional<std::uint64_t> seed,
                                           c10::ScalarType rand_dtype, std::uint64_t* seed_used) const {
  const std::uint64_t s = seed ? *seed : std::random_device{}() | (static_cast<std::uint64_t>(std::random_device{}()) << 32);
  if (seed_used) *seed_used = s;
  auto generator = at::detail::createCPUGenerator(s);
  auto noise = torch::randn(shape, generator, torch::TensorOptions().dtype(rand_dtype));
  return noise.to(device, dtype);
}

torch::Tensor BasePipeline::step(const FlowMatchScheduler& scheduler, const torch::Tensor& latents,
                                 std::int64_t progress_id, const torch::Tensor& noise_pred_in,
                                 const torch::Tensor& input_latents, const torch::Tensor& inpaint_mask) const {
  const auto timestep = scheduler.timesteps[progress_id];
  auto noise_pred = noise_pred_in;
  if (inpaint_mask.defined()) {
    const auto expected = scheduler.return_to_timestep(timestep, latents, input_latents);
    noise_pred = expected * (1 - inpaint_mask) + noise_pred * inpaint_mask;
  }
  return scheduler.step(noise_pred, timestep, latents);
}

void BasePipeline::check_finite(const torch::Tensor& t, const std::string& what) {
  if (!t.defined() || !t.is_floating_point() || torch::isfinite(t).all().item<bool>()) return;
  const bool nan = torch::isnan(t).any().item<bool>();
  throw Error(what + " are not finite (" + (nan ? "NaN" : "Inf") + " in " + dtype_name(t.scalar_type()).substr(6) +
              "): stopped instead of writing a black image. A weight or LoRA may hold huge values, or the "
              "numbers overflow this dtype: try float32 computation (--dtype float32) or a smaller CFG scale");
}

torch::Tensor BasePipeline::cfg_guided(double cfg_scale, const std::function<torch::Tensor()>& positive,
                                       const std::function<torch::Tensor()>& negative) {
  auto pos = positive();
  if (cfg_scale == 1.0) return pos;
  auto neg = negative();
  return neg + cfg_scale * (pos - neg);
}

void BasePipeline::check_in_range(double v, double lo, double hi, const std::string& name, bool lo_open) {
  if (!std::isfinite(v) || v < lo || (lo_open && v == lo) || v > hi)
    throw Error(name + " must be a finite number in " + (lo_open ? "(" : "[") + std::to_string(lo) + ", " +
                std::to_string(hi) + "], got " + std::to_string(v));
}

void BasePipeline::load_models_to_device(const std::vector<std::pair<std::string, Module*>>& models,
                                         const std::vector<std::string>& names) {
  const auto wanted = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  for (const auto& [name, m] : models)
    if (!wanted(name) && vram_management_enabled(*m)) vram_offload(*m);
  for (const auto& [name, m] : models)
    if (wanted(name) && vram_management_enabled(*m)) vram_onload(*m);
}

ProgressBar::ProgressBar(std::int64_t total, std::ostream& out, std::string label)
    : total_(total), out_(&out), label_(std::move(label)), start_(std::chrono::steady_clock::now()) {
  update(0);
}

void ProgressBar::update(std::int64_t done) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = done > 0 && elapsed > 0 ? done / elapsed : 0.0;
  const int width = 30;
  const int filled = total_ > 0 ? static_cast<int>(width * done / total_) : width;
  std::string bar(filled, '=');
  if (filled < width) bar += '>' + std::string(width - filled - 1, ' ');
  const auto clock = [](double seconds) {
    const auto s = static_cast<long>(seconds + 0.5);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", s / 60, s % 60);
    return std::string(buf);
  };
  char line[160];
  if (rate > 0)
    std::snprintf(line, sizeof line, "%s%3lld/%lld [%s] %.2f it/s, %s elapsed, ETA %s", label_.c_str(),
                  static_cast<long long>(done), static_cast<long long>(total_), bar.c_str(), rate,
                  clock(elapsed).c_str(), clock((total_ - done) / rate).c_str());
  else
    std::snprintf(line, sizeof line, "%s%3lld/%lld [%s]", label_.c_str(), static_cast<long long>(done),
                  static_cast<long long>(total_), bar.c_str());
  // Redrawn in place; padded so a shorter line fully covers the previous one.
  std::string text = line;
  if (text.size() < last_width_) text.append(last_width_ - text.size(), ' ');
  last_width_ = std::strlen(line);
  *out_ << '\r' << text << std::flush;
}

void ProgressBar::finish() { *out_ << '\n' << std::flush; }

std::int64_t BasePipeline::load_lora(Module& module, const std::string& file, double alpha,
                                     std::optional<bool> hotload, bool verbose) const {
  return diffsynth::load_lora(module, file, alpha, hotload, dtype, device, verbose);
}

}  // namespace diffsynth
