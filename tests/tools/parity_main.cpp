// diffsynth_parity: runs our C++ models on inputs written by the Python parity tests.
//   diffsynth_parity RUNNER WEIGHTS INPUTS OUTPUTS [DTYPE] [KWARGS_JSON] [OPTIONS_JSON]
// The model is built from the registry by its reference class name with KWARGS, loaded
// strictly from WEIGHTS in DTYPE (default float32); RUNNER (tests/tools/parity_<model>.cpp)
// decides which entry points run on INPUTS; OUTPUTS are saved as float32 safetensors.
// A runner without a model class (e.g. the scheduler's) ignores WEIGHTS ("-").
//   diffsynth_parity roundtrip IN - OUT   reads IN with our reader and writes it with our writer.
#include <chrono>
#include <iostream>

#include "core/dtype.h"
#include "core/loader/model.h"
#include "core/loader/safetensors.h"
#include "core/registry.h"
#include "parity_runner.h"

using namespace diffsynth;

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: diffsynth_parity RUNNER WEIGHTS INPUTS OUTPUTS [DTYPE] [KWARGS_JSON] [OPTIONS_JSON]\n";
    return 2;
  }
  try {
    torch::NoGradGuard no_grad;
    if (std::string(argv[1]) == "roundtrip") {
      auto file = SafetensorsFile::open(argv[2]);
      parity::Outputs all;
      for (const auto& info : file->header().tensors) all.emplace_back(info.name, file->get_tensor(info));
      save_safetensors(argv[4], all, file->header().metadata);
      return 0;
    }
    auto it = parity::runners().find(argv[1]);
    if (it == parity::runners().end()) throw Error(std::string("unknown runner '") + argv[1] + "'");
    const auto dtype = parse_dtype(argc > 5 ? argv[5] : "float32");
    const auto kwargs = argc > 6 ? nlohmann::ordered_json::parse(argv[6]) : nlohmann::ordered_json::object();
    const auto options = argc > 7 ? nlohmann::ordered_json::parse(argv[7]) : nlohmann::ordered_json::object();
    StateDict inputs = load_state_dict({argv[3]});
    if (it->second.model_class.empty()) {  // a runner of something other than a model (schedulers)
      Module none;
      parity::Outputs outputs = it->second.run(none, inputs, dtype, options);
      for (auto& [k, v] : outputs) v = v.to(torch::kFloat32).contiguous();
      save_safetensors(argv[4], outputs);
      return 0;
    }
    const ModelFactory* factory = Registry::model(it->second.model_class);
    if (!factory) throw Error("model class not registered: " + it->second.model_class);
    // Optional {"converter": "<dotted name>"}: WEIGHTS are in a checkpoint layout that the
    // registered state-dict converter maps to the model's names (as ModelPool does).
    const StateDictConverter* converter = nullptr;
    if (options.contains("converter")) {
      const auto name = options["converter"].get<std::string>();
      converter = Registry::converter(name);
      if (!converter) throw Error("state-dict converter not registered: " + name);
    }
    auto model = load_model(*factory, it->second.model_class, {argv[2]}, kwargs, dtype, torch::kCPU, converter);
    // Benchmarks: DIFFSYNTH_PARITY_TOUCH=1 reads every (zero-copy, not yet paged-in) weight before
    // the timer starts, as the reference's load_file has done before its forward is timed.
    if (const char* touch = std::getenv("DIFFSYNTH_PARITY_TOUCH"); touch && std::string(touch) == "1")
      for (const auto& p : model->parameters()) (void)p.sum().item<double>();
    const auto t0 = std::chrono::steady_clock::now();
    parity::Outputs outputs = it->second.run(*model, inputs, dtype, options);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (auto& [k, v] : outputs) v = v.to(torch::kFloat32).contiguous();
    save_safetensors(argv[4], outputs);
    std::cerr << "diffsynth_parity: " << argv[1] << " ran in " << s << " s\n";
  } catch (const std::exception& e) {
    std::cerr << "diffsynth_parity: error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
