// Runners of diffsynth_parity: one file per model (tests/tools/parity_<model>.cpp), each
// registering the entry points the Python parity test compares.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/loader/state_dict.h"
#include "core/module.h"

namespace diffsynth::parity {

using Outputs = std::vector<std::pair<std::string, torch::Tensor>>;
using Options = nlohmann::ordered_json;  // the runner's own options (argv[7], JSON), may be empty

struct Runner {
  std::string model_class;  // reference dotted name, built through the registry; empty: no model
                            // (WEIGHTS is ignored and the runner gets an empty Module)
  std::function<Outputs(Module&, const StateDict& inputs, c10::ScalarType dtype, const Options&)> run;
};

inline std::map<std::string, Runner>& runners() {
  static std::map<std::string, Runner> r;
  return r;
}
inline bool add_runner(const std::string& name, Runner r) { return runners().emplace(name, std::move(r)).second; }

// An input tensor by name, cast to the model dtype.
inline torch::Tensor input(const StateDict& inputs, const std::string& name, c10::ScalarType dtype) {
  if (!inputs.contains(name)) throw Error("inputs: missing tensor '" + name + "'");
  return inputs.at(name).to(dtype);
}

}  // namespace diffsynth::parity

// Variadic: the runner lambda may contain top-level commas (structured bindings, braces).
#define DIFFSYNTH_PARITY_RUNNER(name, model_class, ...) \
  static const bool DIFFSYNTH_CONCAT(parity_runner_, __LINE__) =       \
      ::diffsynth::parity::add_runner(name, {model_class, __VA_ARGS__})
