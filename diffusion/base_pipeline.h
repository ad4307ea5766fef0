// What every pipeline shares (reference: diffsynth/diffusion/base_pipeline.py): shape rounding,
// image <-> tensor conversion, seeded noise, the scheduler step with inpainting, classifier-free
// guidance, and the progress bar. `device`/`dtype` are those of intermediate tensors (noise,
// embeddings); models keep their own.
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/module.h"
#include "diffusion/flow_match.h"

namespace diffsynth {

class BasePipeline {
 public:
  BasePipeline(torch::Device device, c10::ScalarType dtype, std::int64_t height_division_factor = 64,
               std::int64_t width_division_factor = 64, std::int64_t time_division_factor = 0,
               std::int64_t time_division_remainder = 0);

  // Rounds height/width up to the division factors, printing the reference's notice.
  std::pair<std::int64_t, std::int64_t> check_resize_height_width(std::int64_t height, std::int64_t width) const;
  // Video pipelines: also rounds num_frames up to the next time_division_factor * k +
  // time_division_remainder (Wan: 4k + 1), with the reference's notice.
  std::tuple<std::int64_t, std::int64_t, std::int64_t> check_resize_height_width(std::int64_t height, std::int64_t width,
                                                                                std::int64_t num_frames) const;
  // np.array(PIL image) [H, W, C] uint8 -> [1, C, H, W] in the pipeline dtype, scaled to
  // [min_value, max_value] with the reference's arithmetic (in the pipeline dtype).
  torch::Tensor preprocess_image(const torch::Tensor& image, double min_value = -1, double max_value = 1) const;
  // [B, C, H, W] -> [H, W, C] uint8: mean over the batch, scale, clip, truncate (in the tensor's dtype).
  static torch::Tensor vae_output_to_image(const torch::Tensor& vae_output, double min_value = -1, double max_value = 1);
  // [B, C, T, H, W] -> [T, H, W, C] uint8: the same per frame (the reference's vae_output_to_video).
  static torch::Tensor vae_output_to_video(const torch::Tensor& vae_output, double min_value = -1, double max_value = 1);
  // torch.randn on a CPU generator seeded with `seed`, drawn directly in `rand_dtype` (bf16 noise
  // is not float32 noise rounded), then moved to the pipeline device/dtype. No seed: a fresh
  // random seed (returned through `seed_used`).
  torch::Tensor generate_noise(const std::vector<std::int64_t>& shape, std::optional<std::uint64_t> seed,
                               c10::ScalarType rand_dtype, std::uint64_t* seed_used = nullptr) const;
  // One denoising step; with an inpaint mask the prediction outside the mask is replaced by the
  // velocity that leads back to input_latents.
  torch::Tensor step(const FlowMatchScheduler& scheduler, const torch::Tensor& latents, std::int64_t progress_id,
                     const torch::Tensor& noise_pred, const torch::Tensor& input_latents = {},
                     const torch::Tensor& inpaint_mask = {}) const;
  // True CFG: neg + cfg_scale * (pos - neg); the negative side is not run at cfg_scale 1.
  // BasePipeline.load_lora: the file read in the pipeline dtype on its device, then hot-loaded
  // onto the module's wrapped Linear layers (the default when VRAM management is on) or fused
  // into its weights (utils/lora/general.h). Returns the number of layers patched.
  std::int64_t load_lora(Module& module, const std::string& file, double alpha = 1,
                         std::optional<bool> hotload = std::nullopt, bool verbose = true) const;
  // Throws an Error when `t` holds NaN or Inf: "<what> are not finite (...)". Run after each
  // step and stage, so a numerical blow-up stops the run instead of writing a black image.
  static void check_finite(const torch::Tensor& t, const std::string& what);
  static torch::Tensor cfg_guided(double cfg_scale, const std::function<torch::Tensor()>& positive,
                                  const std::function<torch::Tensor()>& negative);
  // Input checks: "<name> must be a finite number in [lo, hi], got v" ("(lo, hi]" with lo_open).
  static void check_in_range(double v, double lo, double hi, const std::string& name, bool lo_open = false);
  // The reference's load_models_to_device over a pipeline's (role, model) pairs: with VRAM
  // management, the models not named are offloaded first (what leaves makes room), then the
  // named ones onloaded.
  static void load_models_to_device(const std::vector<std::pair<std::string, Module*>>& models,
                                    const std::vector<std::string>& names);

  torch::Device device;
  c10::ScalarType dtype;
  std::int64_t height_division_factor, width_division_factor;
  std::int64_t time_division_factor, time_division_remainder;  // 0: an image pipeline
  std::ostream* log;  // notices the reference prints (default std::cout)
};

// "  12/30 [=====>      ] 1.52 it/s, ETA 00:11" on a terminal line, redrawn in place.
class ProgressBar {
 public:
  ProgressBar(std::int64_t total, std::ostream& out, std::string label = "");
  void update(std::int64_t done);
  void finish();

 private:
  std::int64_t total_;
  std::ostream* out_;
  std::string label_;
  std::chrono::steady_clock::time_point start_;
  std::size_t last_width_ = 0;
};

}  // namespace diffsynth
