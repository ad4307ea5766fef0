// diffsynth_make_example OUT.safetensors [MODEL_HASH]
// Writes a checkpoint in the exact layout of a registered DiffSynth-Studio config entry
// (default: the Qwen-Image Blockwise ControlNet Inpaint, a9e54e48...) with random bf16 weights,
// so the main job and the benchmarks have a real-size, really-identified file to work on.
#include <iostream>

#include "configs/model_configs.h"
#include "core/error.h"
#include "core/loader/file.h"
#include "core/loader/safetensors.h"
#include "core/registry.h"

using namespace diffsynth;

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: diffsynth_make_example OUT.safetensors [MODEL_HASH]\n";
    return 2;
  }
  try {
    const std::string hash = argc == 3 ? argv[2] : "a9e54e480a628f0b956a688a81c33bab";
    auto entries = find_model_configs(hash);
    if (entries.empty()) throw Error("no config entry has hash " + hash);
    const auto* factory = Registry::model(entries[0]->model_class);
    if (!factory || entries[0]->state_dict_converter)
      throw Error(entries[0]->model_class + " cannot be generated (not implemented, or its file layout needs a converter)");
    auto model = (*factory)(entries[0]->extra_kwargs);
    torch::manual_seed(0);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& [name, meta] : module_state(*model))
      tensors.emplace_back(name, (torch::randn(meta.sizes()) * 0.02).to(torch::kBFloat16));
    save_safetensors(argv[1], tensors, {{"format", "pt"}, {"generator", "diffsynth_make_example (random weights)"}});
    const std::string got = hash_model_file({argv[1]});
    if (got != hash) throw Error(std::string(argv[1]) + ": wrote hash " + got + ", expected " + hash);
    std::cout << "wrote " << argv[1] << " (" << entries[0]->model_name << ", hash " << got << ")\n";
  } catch (const std::exception& e) {
    std::cerr << "diffsynth_make_example: error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
