// diffsynth_parity: runs our C++ models on inputs written by the Python parity tests.
//   diffsynth_parity RUNNER WEIGHTS.safetensors INPUTS.safetensors OUTPUTS.safetensors [DTYPE] [KWARGS_JSON]
// The model is built from the registry by its reference class name, loaded strictly from
// WEIGHTS in DTYPE (default float32), and RUNNER decides which entry points run on INPUTS.
#include <chrono>
#include <functional>
#include <iostream>
#include <map>

#include "core/dtype.h"
#include "core/error.h"
#include "core/loader/model.h"
#include "core/loader/safetensors.h"
#include "core/registry.h"
#include "models/qwen_image_controlnet.h"

using namespace diffsynth;
using Outputs = std::vector<std::pair<std::string, torch::Tensor>>;

namespace {

struct Runner {
  std::string model_class;
  std::function<Outputs(Module&, const StateDict&, c10::ScalarType)> run;
};

// Inputs are cast to the model dtype, outputs saved as float32.
torch::Tensor in(const StateDict& inputs, const std::string& name, c10::ScalarType dtype) {
  if (!inputs.contains(name)) throw Error("inputs: missing tensor '" + name + "'");
  return inputs.at(name).to(dtype);
}

const std::map<std::string, Runner>& runners() {
  static const std::map<std::string, Runner> r = {
      {"qwen_image_controlnet",
       {"diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet",
        [](Module& m, const StateDict& inputs, c10::ScalarType dtype) {
          auto& net = dynamic_cast<QwenImageBlockWiseControlNetImpl&>(m);
          Outputs out;
          auto cond = net.process_controlnet_conditioning(in(inputs, "conditioning", dtype));
          out.emplace_back("conditioning_out", cond.to(torch::kFloat32));
          auto img = in(inputs, "img", dtype);
          for (std::size_t i = 0; i < net.blocks.size(); ++i)
            out.emplace_back("block_" + std::to_string(i), net.blockwise_forward(img, cond, i).to(torch::kFloat32));
          return out;
        }}},
  };
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: diffsynth_parity RUNNER WEIGHTS INPUTS OUTPUTS [DTYPE] [KWARGS_JSON]\n";
    return 2;
  }
  try {
    torch::NoGradGuard no_grad;
    if (std::string(argv[1]) == "roundtrip") {
      // Reader/writer interop: read every tensor (zero-copy) and metadata, write them back.
      auto file = SafetensorsFile::open(argv[2]);
      Outputs all;
      for (const auto& info : file->header().tensors) all.emplace_back(info.name, file->get_tensor(info));
      save_safetensors(argv[4], all, file->header().metadata);
      return 0;
    }
    auto it = runners().find(argv[1]);
    if (it == runners().end()) throw Error(std::string("unknown runner '") + argv[1] + "'");
    const auto dtype = parse_dtype(argc > 5 ? argv[5] : "float32");
    const auto kwargs = argc > 6 ? nlohmann::ordered_json::parse(argv[6]) : nlohmann::ordered_json::object();
    const ModelFactory* factory = Registry::model(it->second.model_class);
    if (!factory) throw Error("model class not registered: " + it->second.model_class);
    auto model = load_model(*factory, it->second.model_class, {argv[2]}, kwargs, dtype, torch::kCPU, nullptr);
    StateDict inputs = load_state_dict({argv[3]});
    const auto t0 = std::chrono::steady_clock::now();
    Outputs outputs = it->second.run(*model, inputs, dtype);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    save_safetensors(argv[4], outputs);
    std::cerr << "diffsynth_parity: " << argv[1] << " ran in " << s << " s\n";
  } catch (const std::exception& e) {
    std::cerr << "diffsynth_parity: error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
