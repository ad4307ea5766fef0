// Flow-matching scheduler (reference: diffsynth/diffusion/flow_match.py, FlowMatchScheduler).
//
// Every schedule is computed with the same tensor ops, dtypes and operand order as the
// reference, so sigmas / timesteps are equal bit for bit: torch.linspace in float32,
// Python-float arithmetic (math.exp(mu), shift constants) in double, and Python's reflected
// operators as torch spells them (`c / t` is `t.reciprocal() * c`, `c - t` is `rsub(t, c)`).
// step / add_noise use 0-dim float32 sigma tensors, so bf16 latents round exactly as there.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace diffsynth {

// The keyword arguments of the reference's set_timesteps_<template> functions. An unset field
// takes the template's default. A field the template does not take is an error (the reference
// raises TypeError), except for templates that accept **kwargs (FLUX.3, HiDream-O1-Image).
struct FlowMatchOptions {
  std::optional<double> exponential_shift_mu;     // Qwen-Image, Qwen-Image-Lightning
  std::optional<std::int64_t> dynamic_shift_len;  // Qwen-Image(-Lightning), FLUX.2, Fibo, Krea-2, LTX-2
  std::optional<double> shift;                    // FLUX.1, Wan, Z-Image, ERNIE, MOSS, ACE-Step, ...
  std::optional<std::vector<double>> sigmas;      // Qwen-Image: an explicit schedule
  std::optional<torch::Tensor> target_timesteps;  // Z-Image: timesteps forced into the schedule
  std::optional<std::string> special_case;        // LTX-2 ("stage2", "distilled_stage1"), HiDream ("dev")
  std::optional<double> terminal;                 // LTX-2 (default 0.1)
  std::optional<double> alpha;                    // FLUX.3 (default 6.93)
  std::optional<double> training_shift;           // MOSS-Image (default 1.0)
  std::optional<double> t_thresh;                 // LingBot-Video
  std::optional<std::int64_t> sigma_tail_steps;   // LingBot-Video (default 0)
  std::optional<double> y1, y2, mu;               // Krea-2 (defaults 0.5, 1.15, none)

  // Names of the fields that are set, in declaration order ("shift", "sigmas", ...).
  std::vector<std::string> set_fields() const;
};

class FlowMatchScheduler {
 public:
  // Templates as the reference names them; an unknown name falls back to "FLUX.1" as the
  // reference's dict.get(template, set_timesteps_flux) does. Known templates whose schedule
  // needs NumPy / SciPy-style arithmetic not ported here ("Boogu", "Ideogram4") are refused.
  explicit FlowMatchScheduler(std::string template_name = "FLUX.1");

  void set_timesteps(std::int64_t num_inference_steps = 100, double denoising_strength = 1.0,
                     const FlowMatchOptions& options = {}, bool training = false);

  // Euler step of the velocity field from `timestep` to the next sigma (0 after the last one or
  // with to_final): sample + model_output * (sigma_next - sigma), in the latents' dtype.
  torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep, const torch::Tensor& sample,
                     bool to_final = false) const;
  // The velocity that leads from `sample` to `sample_stablized` at `timestep`.
  torch::Tensor return_to_timestep(const torch::Tensor& timestep, const torch::Tensor& sample,
                                   const torch::Tensor& sample_stablized) const;
  // (1 - sigma) * original_samples + sigma * noise.
  torch::Tensor add_noise(const torch::Tensor& original_samples, const torch::Tensor& noise,
                          const torch::Tensor& timestep) const;
  torch::Tensor training_target(const torch::Tensor& sample, const torch::Tensor& noise,
                                const torch::Tensor& timestep) const;
  // linear_timesteps_weights at the nearest timestep (needs set_timesteps(..., training = true)).
  torch::Tensor training_weight(const torch::Tensor& timestep) const;

  // The canonical template whose schedule runs ("FLUX.1" for unknown names).
  const std::string& template_name() const { return template_; }
  // Index of the timestep nearest to `timestep` (the reference's argmin |timesteps - t|).
  std::int64_t timestep_index(const torch::Tensor& timestep) const;

  static constexpr std::int64_t num_train_timesteps = 1000;
  torch::Tensor sigmas, timesteps;       // float32, CPU
  torch::Tensor linear_timesteps_weights;  // set when training
  bool training = false;

 private:
  void set_training_weight();
  std::string template_;
};

// The schedule of one template without a scheduler object: (sigmas, timesteps).
std::pair<torch::Tensor, torch::Tensor> flow_match_schedule(const std::string& template_name,
                                                            std::int64_t num_inference_steps,
                                                            double denoising_strength,
                                                            const FlowMatchOptions& options = {});

// The reference's FlowMatchScheduler._calculate_shift_qwen_image (double arithmetic).
double calculate_shift_qwen_image(double image_seq_len, double base_seq_len = 256, double max_seq_len = 8192,
                                  double base_shift = 0.5, double max_shift = 0.9);

}  // namespace diffsynth
