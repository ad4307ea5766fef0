#include "diffusion/flow_match.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "core/error.h"

namespace diffsynth {
namespace {

using Schedule = std::pair<torch::Tensor, torch::Tensor>;

torch::Tensor linspace(double start, double end, std::int64_t steps) {
  return torch::linspace(start, end, steps, torch::kFloat32);
}
// t[:-1]
torch::Tensor drop_last(const torch::Tensor& t) { return t.slice(0, 0, t.size(0) - 1); }

// Python's `shift * s / (1 + (shift - 1) * s)`.
torch::Tensor shift_sigmas(const torch::Tensor& s, double shift) { return (s * shift) / ((s * (shift - 1)) + 1); }

// Python's `math.exp(mu) / (math.exp(mu) + (1 / s - 1))`: the reflected division is
// reciprocal() * e in torch, not a true division, and e is a Python float (double).
torch::Tensor exponential_shift(const torch::Tensor& s, double mu) {
  const double e = std::exp(mu);
  const torch::Tensor denom = ((s.reciprocal() * 1) - 1) + e;
  return denom.reciprocal() * e;
}

// Qwen-Image / LTX-2 terminal stretch: the last sigma becomes `terminal`.
torch::Tensor stretch_to_terminal(const torch::Tensor& s, double terminal) {
  const torch::Tensor one_minus_z = torch::rsub(s, 1);
  const torch::Tensor scale_factor = one_minus_z[-1] / (1 - terminal);
  return torch::rsub(one_minus_z / scale_factor, 1);
}

Schedule with_timesteps(torch::Tensor sigmas) {
  torch::Tensor timesteps = sigmas * FlowMatchScheduler::num_train_timesteps;
  return {std::move(sigmas), std::move(timesteps)};
}

double sigma_start_of(double sigma_min, double sigma_max, double denoising_strength) {
  return sigma_min + (sigma_max - sigma_min) * denoising_strength;
}

Schedule flux(std::int64_t n, double ds, const FlowMatchOptions& o) {
  const double sigma_min = 0.003 / 1.002, sigma_max = 1.0;
  const double shift = o.shift.value_or(3);
  auto sigmas = linspace(sigma_start_of(sigma_min, sigma_max, ds), sigma_min, n);
  return with_timesteps(shift_sigmas(sigmas, shift));
}

// Wan, Z-Image (without target timesteps), HiDream-O1-Image: shifted linspace without the 0.
torch::Tensor shifted_linspace(std::int64_t n, double ds, double shift) {
  auto sigmas = drop_last(linspace(sigma_start_of(0.0, 1.0, ds), 0.0, n + 1));
  return shift_sigmas(sigmas, shift);
}

Schedule wan(std::int64_t n, double ds, const FlowMatchOptions& o) {
  return with_timesteps(shifted_linspace(n, ds, o.shift.value_or(5)));
}

Schedule qwen_image(std::int64_t n, double ds, const FlowMatchOptions& o) {
  if (o.sigmas) return with_timesteps(torch::tensor(*o.sigmas, torch::kFloat64).to(torch::kFloat32));
  auto sigmas = drop_last(linspace(sigma_start_of(0.0, 1.0, ds), 0.0, n + 1));
  double mu = 0.8;
  if (o.exponential_shift_mu) mu = *o.exponential_shift_mu;
  else if (o.dynamic_shift_len) mu = calculate_shift_qwen_image(static_cast<double>(*o.dynamic_shift_len));
  return with_timesteps(stretch_to_terminal(exponential_shift(sigmas, mu), 0.02));
}

Schedule qwen_image_lightning(std::int64_t n, double ds, const FlowMatchOptions& o) {
  const double base_shift = std::log(3.0), max_shift = std::log(3.0);
  auto sigmas = drop_last(linspace(sigma_start_of(0.0, 1.0, ds), 0.0, n + 1));
  double mu = 0.8;
  if (o.exponential_shift_mu) mu = *o.exponential_shift_mu;
  else if (o.dynamic_shift_len)
    mu = calculate_shift_qwen_image(static_cast<double>(*o.dynamic_shift_len), 256, 8192, base_shift, max_shift);
  return with_timesteps(exponential_shift(sigmas, mu));
}

double compute_empirical_mu(double image_seq_len, double num_steps) {
  const double a1 = 8.73809524e-05, b1 = 1.89833333;
  const double a2 = 0.00016927, b2 = 0.45666666;
  if (image_seq_len > 4300) return a2 * image_seq_len + b2;
  const double m_200 = a2 * image_seq_len + b2;
  const double m_10 = a1 * image_seq_len + b1;
  const double a = (m_200 - m_10) / 190.0;
  const double b = m_200 - 200.0 * a;
  return a * num_steps + b;
}

Schedule flux2(std::int64_t n, double ds, const FlowMatchOptions& o) {
  const double sigma_min = 1.0 / static_cast<double>(n);
  auto sigmas = linspace(sigma_start_of(sigma_min, 1.0, ds), sigma_min, n);
  // The reference's comment: mu = 0.8 "yields better training results".
  const double mu = o.dynamic_shift_len
                        ? compute_empirical_mu(static_cast<double>(*o.dynamic_shift_len), static_cast<double>(n))
                        : 0.8;
  return with_timesteps(exponential_shift(sigmas, mu));
}

Schedule fibo(std::int64_t n, double ds, const FlowMatchOptions& o) {
  const double sigma_min = 1.0 / static_cast<double>(n);
  auto sigmas = linspace(sigma_start_of(sigma_min, 1.0, ds), sigma_min, n);
  const double mu = o.dynamic_shift_len
                        ? calculate_shift_qwen_image(static_cast<double>(*o.dynamic_shift_len), 256, 4096, 0.5, 1.15)
                        : 0.5;
  return with_timesteps(exponential_shift(sigmas, mu));
}

Schedule flux3(std::int64_t n, double ds, const FlowMatchOptions& o) {
  const double alpha = o.alpha.value_or(6.93);
  auto u = drop_last(linspace(ds, 0.0, n + 1));
  return with_timesteps((u * alpha) / ((u * (alpha - 1.0)) + 1.0));
}

// ERNIE-Image, SenseNova-U1, ACE-Step: shift only when it is not 1.
torch::Tensor optionally_shifted(torch::Tensor sigmas, std::optional<double> shift) {
  if (shift && *shift != 1.0) return shift_sigmas(sigmas, *shift);
  return sigmas;
}

Schedule ernie_image(std::int64_t n, double ds, const FlowMatchOptions& o) {
  auto sigmas = drop_last(linspace(sigma_start_of(0.0, 1.0, ds), 0.0, n + 1));
  return with_timesteps(optionally_shifted(sigmas, o.shift.value_or(3.0)));
}

Schedule sensenova_or_ace_step(std::int64_t n, double ds, const FlowMatchOptions& o) {
  auto sigmas = drop_last(linspace(ds, 0.0, n + 1));
  return with_timesteps(optionally_shifted(sigmas, o.shift.value_or(3.0)));
}

Schedule moss_image(std::int64_t n, double ds, const FlowMatchOptions& o) {
  const auto T = FlowMatchScheduler::num_train_timesteps;
  auto grid = [&](std::int64_t count, double shift, double start) {
    const double lower = shift / (static_cast<double>(T) + shift - 1);
    return shift_sigmas(linspace(start, lower, count), shift);
  };
  auto sigmas = grid(n, o.shift.value_or(1.0), ds);
  auto training = grid(T, o.training_shift.value_or(1.0), 1.0).flip(0);
  auto upper = torch::searchsorted(training, sigmas).clamp_max(T - 1);
  auto lower = (upper - 1).clamp_min(0);
  auto nearest = torch::where((sigmas - training.index({lower})).abs() <= (training.index({upper}) - sigmas).abs(),
                              lower, upper);
  return with_timesteps(std::get<0>(torch::unique_consecutive(training.index({nearest}))));
}

Schedule z_image(std::int64_t n, double ds, const FlowMatchOptions& o) {
  auto [sigmas, timesteps] = with_timesteps(shifted_linspace(n, ds, o.shift.value_or(3)));
  if (o.target_timesteps) {
    auto targets = o.target_timesteps->to(timesteps.dtype()).to(timesteps.device());
    for (std::int64_t i = 0; i < targets.size(0); ++i) {
      const torch::Tensor timestep = targets[i];
      const auto id = (timesteps - timestep).abs().argmin().item<std::int64_t>();
      timesteps[id] = timestep;
      sigmas[id] = timestep / FlowMatchScheduler::num_train_timesteps;
    }
  }
  return {sigmas, timesteps};
}

Schedule hidream_o1_image(std::int64_t n, double ds, const FlowMatchOptions& o) {
  if (o.special_case == "dev") {
    static const std::vector<std::int64_t> list = {999, 987, 974, 960, 945, 929, 913, 895, 877, 857,
                                                   836, 814, 790, 764, 737, 707, 675, 640, 602, 560,
                                                   515, 464, 409, 347, 278, 199, 110, 8};
    std::vector<double> sig;
    for (auto t : list) sig.push_back(static_cast<double>(t) / 1000.0);
    return {torch::tensor(sig, torch::kFloat64).to(torch::kFloat32),
            torch::tensor(list, torch::kInt64).to(torch::kFloat32)};
  }
  return with_timesteps(shifted_linspace(n, ds, o.shift.value_or(3.0)));
}

Schedule lingbot_video(std::int64_t n, double ds, const FlowMatchOptions& o) {
  const double sigma_min = 0.0;
  auto sigmas = shifted_linspace(n, ds, o.shift.value_or(5));
  if (o.t_thresh) {
    // Refinement schedule: the sub-threshold part, its first sigma pinned at t_thresh, then
    // extra low-noise steps towards sigma_min.
    const double t_thresh = *o.t_thresh;
    sigmas = sigmas.index({sigmas <= t_thresh + 1e-6});
    if (sigmas.numel() == 0 || std::abs(static_cast<double>(sigmas[0].item<float>()) - t_thresh) > 1e-6)
      sigmas = torch::cat({torch::tensor({t_thresh}, torch::kFloat64).to(sigmas.dtype()), sigmas});
    const auto tail_steps = o.sigma_tail_steps.value_or(0);
    if (tail_steps > 0) {
      const double tail_start = sigmas[-1].item<float>();
      auto tail = linspace(tail_start, std::min(sigma_min, tail_start), tail_steps + 2);
      tail = tail.slice(0, 1, tail.size(0) - 1);
      sigmas = torch::cat({sigmas, tail.to(sigmas.dtype())});
    }
  }
  return with_timesteps(sigmas);
}

Schedule ltx2(std::int64_t n, double ds, const FlowMatchOptions& o) {
  torch::Tensor sigmas;
  if (o.special_case == "stage2") {
    sigmas = torch::tensor({0.909375, 0.725, 0.421875}, torch::kFloat64).to(torch::kFloat32);
  } else if (o.special_case == "distilled_stage1") {
    sigmas = torch::tensor({1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875}, torch::kFloat64)
                 .to(torch::kFloat32);
  } else {
    // `dynamic_shift_len or 4096`: 0 counts as unset, as in Python.
    const std::int64_t len = o.dynamic_shift_len.value_or(0) != 0 ? *o.dynamic_shift_len : 4096;
    const double sigma_shift = calculate_shift_qwen_image(static_cast<double>(len), 1024, 4096, 0.95, 2.05);
    sigmas = drop_last(linspace(sigma_start_of(0.0, 1.0, ds), 0.0, n + 1));
    sigmas = stretch_to_terminal(exponential_shift(sigmas, sigma_shift), o.terminal.value_or(0.1));
  }
  return with_timesteps(sigmas);
}

Schedule minimax_h3(std::int64_t n, double ds, const FlowMatchOptions& o) {
  auto base = drop_last(linspace(ds, 0.0, n + 1));
  return with_timesteps(shift_sigmas(base, o.shift.value_or(2.22)));
}

Schedule minimax_music3(std::int64_t n, double ds, const FlowMatchOptions&) {
  return with_timesteps(linspace(ds, ds / static_cast<double>(n), n));
}

Schedule yue2(std::int64_t n, double ds, const FlowMatchOptions&) {
  return with_timesteps(drop_last(linspace(ds, 0.0, n + 1)));
}

Schedule krea2(std::int64_t n, double ds, const FlowMatchOptions& o) {
  const double x1 = 256, x2 = 6400;
  const double y1 = o.y1.value_or(0.5), y2 = o.y2.value_or(1.15);
  auto ts = linspace(ds, 0.0, n + 1);
  double mu = 0.8;  // training
  if (o.mu) {
    mu = *o.mu;
  } else if (o.dynamic_shift_len) {
    const double slope = (y2 - y1) / (x2 - x1);
    mu = slope * static_cast<double>(*o.dynamic_shift_len) + (y1 - slope * x1);
  }
  const double e = std::exp(mu);
  // math.exp(mu) / (math.exp(mu) + (1.0 / ts - 1.0) ** sigma) with sigma = 1
  ts = (torch::pow((ts.reciprocal() * 1.0) - 1.0, 1) + e).reciprocal() * e;
  auto sigmas = drop_last(ts);
  return {sigmas, sigmas};
}

struct Template {
  std::function<Schedule(std::int64_t, double, const FlowMatchOptions&)> fn;
  std::set<std::string> options;  // keyword arguments it takes; empty + any_options: **kwargs
  bool any_options = false;
};

const std::map<std::string, Template>& templates() {
  static const std::map<std::string, Template> t = {
      {"FLUX.1", {flux, {"shift"}}},
      {"Wan", {wan, {"shift"}}},
      {"Qwen-Image", {qwen_image, {"exponential_shift_mu", "dynamic_shift_len", "sigmas"}}},
      {"FLUX.2", {flux2, {"dynamic_shift_len"}}},
      {"FLUX.3", {flux3, {"alpha"}, true}},
      {"Z-Image", {z_image, {"shift", "target_timesteps"}}},
      {"LTX-2", {ltx2, {"dynamic_shift_len", "terminal", "special_case"}}},
      {"Qwen-Image-Lightning", {qwen_image_lightning, {"exponential_shift_mu", "dynamic_shift_len"}}},
      {"ERNIE-Image", {ernie_image, {"shift"}}},
      {"MOSS-Image", {moss_image, {"shift", "training_shift"}}},
      {"ACE-Step", {sensenova_or_ace_step, {"shift"}}},
      {"HiDream-O1-Image", {hidream_o1_image, {"shift", "special_case"}, true}},
      {"Krea-2", {krea2, {"dynamic_shift_len", "y1", "y2", "mu"}}},
      {"MiniMax-H3", {minimax_h3, {"shift"}}},
      {"MiniMax-Music3", {minimax_music3, {}}},
      {"LingBot-Video", {lingbot_video, {"shift", "t_thresh", "sigma_tail_steps"}}},
      {"SenseNova-U1", {sensenova_or_ace_step, {"shift"}}},
      {"YuE2", {yue2, {}}},
      {"Fibo", {fibo, {"dynamic_shift_len"}}},
  };
  return t;
}

// Known to the reference, not ported: Boogu's schedule is NumPy float32 arithmetic and
// Ideogram4's runs ndtri/expit element by element in float64.
const std::set<std::string>& unported_templates() {
  static const std::set<std::string> t = {"Boogu", "Ideogram4"};
  return t;
}

std::string resolve_template(const std::string& name) {
  if (unported_templates().count(name))
    throw Error("FlowMatchScheduler: template '" + name + "' is not implemented in diffsynth.cpp");
  return templates().count(name) ? name : "FLUX.1";
}

}  // namespace

std::vector<std::string> FlowMatchOptions::set_fields() const {
  std::vector<std::string> f;
  auto add = [&](bool set, const char* name) {
    if (set) f.emplace_back(name);
  };
  add(exponential_shift_mu.has_value(), "exponential_shift_mu");
  add(dynamic_shift_len.has_value(), "dynamic_shift_len");
  add(shift.has_value(), "shift");
  add(sigmas.has_value(), "sigmas");
  add(target_timesteps.has_value(), "target_timesteps");
  add(special_case.has_value(), "special_case");
  add(terminal.has_value(), "terminal");
  add(alpha.has_value(), "alpha");
  add(training_shift.has_value(), "training_shift");
  add(t_thresh.has_value(), "t_thresh");
  add(sigma_tail_steps.has_value(), "sigma_tail_steps");
  add(y1.has_value(), "y1");
  add(y2.has_value(), "y2");
  add(mu.has_value(), "mu");
  return f;
}

double calculate_shift_qwen_image(double image_seq_len, double base_seq_len, double max_seq_len, double base_shift,
                                  double max_shift) {
  const double m = (max_shift - base_shift) / (max_seq_len - base_seq_len);
  const double b = base_shift - m * base_seq_len;
  return image_seq_len * m + b;
}

std::pair<torch::Tensor, torch::Tensor> flow_match_schedule(const std::string& template_name,
                                                            std::int64_t num_inference_steps,
                                                            double denoising_strength,
                                                            const FlowMatchOptions& options) {
  const std::string name = resolve_template(template_name);
  const Template& t = templates().at(name);
  if (!t.any_options) {
    for (const auto& field : options.set_fields())
      if (!t.options.count(field))
        throw Error("FlowMatchScheduler: template '" + name + "' takes no option '" + field + "'");
  }
  if (num_inference_steps < 1) throw Error("FlowMatchScheduler: num_inference_steps must be >= 1");
  torch::NoGradGuard no_grad;
  return t.fn(num_inference_steps, denoising_strength, options);
}

FlowMatchScheduler::FlowMatchScheduler(std::string template_name) : template_(resolve_template(template_name)) {}

void FlowMatchScheduler::set_timesteps(std::int64_t num_inference_steps, double denoising_strength,
                                       const FlowMatchOptions& options, bool training_mode) {
  std::tie(sigmas, timesteps) = flow_match_schedule(template_, num_inference_steps, denoising_strength, options);
  training = training_mode;
  if (training) set_training_weight();
}

void FlowMatchScheduler::set_training_weight() {
  const double steps = 1000;
  const torch::Tensor x = sigmas * num_train_timesteps;
  // torch.exp(-2 * ((x - steps / 2) / steps) ** 2); Python's int `steps` keeps its integer type.
  const torch::Tensor y = torch::exp(torch::pow((x - steps / 2) / 1000, 2) * -2);
  const torch::Tensor y_shifted = y - y.min();
  // steps / y_shifted.sum() is reciprocal() * steps in torch.
  torch::Tensor w = y_shifted * (y_shifted.sum().reciprocal() * 1000);
  if (timesteps.size(0) != 1000) {
    // The reference's empirical formula.
    w = w * (static_cast<double>(timesteps.size(0)) / steps);
    w = w + w[1];
  }
  linear_timesteps_weights = w;
}

std::int64_t FlowMatchScheduler::timestep_index(const torch::Tensor& timestep) const {
  if (!timesteps.defined()) throw Error("FlowMatchScheduler: set_timesteps was not called");
  return (timesteps - timestep.cpu()).abs().argmin().item<std::int64_t>();
}

torch::Tensor FlowMatchScheduler::step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                                       const torch::Tensor& sample, bool to_final) const {
  const auto id = timestep_index(timestep);
  const torch::Tensor sigma = sigmas[id];
  // sigma_ is the Python int 0 at the end: (0 - sigma) is rsub(sigma, 0), still a 0-dim fp32.
  const torch::Tensor delta =
      (to_final || id + 1 >= timesteps.size(0)) ? torch::rsub(sigma, 0) : sigmas[id + 1] - sigma;
  return sample + model_output * delta;
}

torch::Tensor FlowMatchScheduler::return_to_timestep(const torch::Tensor& timestep, const torch::Tensor& sample,
                                                     const torch::Tensor& sample_stablized) const {
  const torch::Tensor sigma = sigmas[timestep_index(timestep)];
  return (sample - sample_stablized) / sigma;
}

torch::Tensor FlowMatchScheduler::add_noise(const torch::Tensor& original_samples, const torch::Tensor& noise,
                                            const torch::Tensor& timestep) const {
  const torch::Tensor sigma = sigmas[timestep_index(timestep)];
  return torch::rsub(sigma, 1) * original_samples + sigma * noise;
}

torch::Tensor FlowMatchScheduler::training_target(const torch::Tensor& sample, const torch::Tensor& noise,
                                                  const torch::Tensor& /*timestep*/) const {
  return noise - sample;
}

torch::Tensor FlowMatchScheduler::training_weight(const torch::Tensor& timestep) const {
  if (!linear_timesteps_weights.defined())
    throw Error("FlowMatchScheduler: training_weight needs set_timesteps(..., training = true)");
  return linear_timesteps_weights[(timesteps - timestep.to(timesteps.device())).abs().argmin().item<std::int64_t>()];
}

}  // namespace diffsynth
