// Parity runner: FlowMatchScheduler (no model). Options:
//   {"cases": [...]} or {"cases_file": path to that list as JSON}, the list being
//   [{"template": name, "steps": n, "denoising_strength": d, "training": bool,
//               "kwargs": {"exponential_shift_mu": x, "dynamic_shift_len": n, "shift": x, ...}}, ...]
// Inputs: model_output_<dt>, sample_<dt>, noise_<dt> for dt in {f32, bf16}, and per case c the
// probe timesteps c<c>_t<j> (as the pipeline passes them). Outputs per case: c<c>_sigmas,
// c<c>_timesteps, [c<c>_weights], and per probe and dtype: step, step_final, add_noise,
// return_to_timestep, [weight].
#include <fstream>

#include "core/registry.h"  // DIFFSYNTH_CONCAT
#include "diffusion/flow_match.h"
#include "parity_runner.h"

namespace diffsynth::parity {
namespace {

FlowMatchOptions options_from_json(const Options& kw) {
  FlowMatchOptions o;
  for (const auto& [key, value] : kw.items()) {
    if (key == "exponential_shift_mu") o.exponential_shift_mu = value.get<double>();
    else if (key == "dynamic_shift_len") o.dynamic_shift_len = value.get<std::int64_t>();
    else if (key == "shift") o.shift = value.get<double>();
    else if (key == "sigmas") o.sigmas = value.get<std::vector<double>>();
    else if (key == "target_timesteps") o.target_timesteps = torch::tensor(value.get<std::vector<double>>());
    else if (key == "special_case") o.special_case = value.get<std::string>();
    else if (key == "terminal") o.terminal = value.get<double>();
    else if (key == "alpha") o.alpha = value.get<double>();
    else if (key == "training_shift") o.training_shift = value.get<double>();
    else if (key == "t_thresh") o.t_thresh = value.get<double>();
    else if (key == "sigma_tail_steps") o.sigma_tail_steps = value.get<std::int64_t>();
    else if (key == "y1") o.y1 = value.get<double>();
    else if (key == "y2") o.y2 = value.get<double>();
    else if (key == "mu") o.mu = value.get<double>();
    else throw Error("flow_match runner: unknown option '" + key + "'");
  }
  return o;
}

}  // namespace

DIFFSYNTH_PARITY_RUNNER(
    "flow_match", "", [](Module&, const StateDict& inputs, c10::ScalarType, const Options& options) {
      Outputs out;
      // The grid can exceed one argument's size limit (128 KiB): it may come in a file.
      Options cases = options.contains("cases_file")
                          ? Options::parse(std::ifstream(options["cases_file"].get<std::string>()))
                          : options.at("cases");
      for (std::size_t c = 0; c < cases.size(); ++c) {
        const auto& spec = cases[c];
        const std::string prefix = "c" + std::to_string(c) + "_";
        FlowMatchScheduler scheduler(spec.value("template", std::string("FLUX.1")));
        scheduler.set_timesteps(spec.value("steps", std::int64_t{100}), spec.value("denoising_strength", 1.0),
                                options_from_json(spec.value("kwargs", Options::object())),
                                spec.value("training", false));
        out.emplace_back(prefix + "sigmas", scheduler.sigmas);
        out.emplace_back(prefix + "timesteps", scheduler.timesteps);
        if (scheduler.training) out.emplace_back(prefix + "weights", scheduler.linear_timesteps_weights);
        for (int j = 0; inputs.contains(prefix + "t" + std::to_string(j)); ++j) {
          const std::string probe = prefix + "t" + std::to_string(j) + "_";
          const torch::Tensor& t = inputs.at(prefix + "t" + std::to_string(j));
          for (const std::string dt : {"f32", "bf16"}) {
            const auto& v = inputs.at("model_output_" + dt);
            const auto& x = inputs.at("sample_" + dt);
            const auto& noise = inputs.at("noise_" + dt);
            out.emplace_back(probe + "step_" + dt, scheduler.step(v, t, x));
            out.emplace_back(probe + "step_final_" + dt, scheduler.step(v, t, x, /*to_final=*/true));
            out.emplace_back(probe + "add_noise_" + dt, scheduler.add_noise(x, noise, t));
            out.emplace_back(probe + "return_" + dt, scheduler.return_to_timestep(t, x, noise));
            out.emplace_back(probe + "target_" + dt, scheduler.training_target(x, noise, t));
          }
          if (scheduler.training) out.emplace_back(probe + "weight", scheduler.training_weight(t));
        }
      }
      return out;
    });

}  // namespace diffsynth::parity
