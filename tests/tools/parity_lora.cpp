// Parity runner: a LoRA fused into QwenImageDiT, then model_fn (as the qwen_image_dit runner).
// Options: {"lora": path, "alpha": a (default 1), + the qwen_image_dit runner's options}.
// Outputs: "out" (model_fn) and "weight:<module>" for every fused weight.
#include "parity_qwen_image_dit.h"
#include "core/registry.h"  // DIFFSYNTH_CONCAT
#include "utils/lora/general.h"

namespace diffsynth::parity {

DIFFSYNTH_PARITY_RUNNER(
    "qwen_image_dit_lora", "diffsynth.models.qwen_image_dit.QwenImageDiT",
    [](Module& m, const StateDict& inputs, c10::ScalarType dtype, const Options& options) {
      auto& dit = dynamic_cast<QwenImageDiTImpl&>(m);
      const auto file = options.at("lora").get<std::string>();
      const StateDict lora = load_lora_state_dict(file, dtype, torch::kCPU);
      const LoRAPairs pairs = convert_lora(lora, dit, file);
      fuse_lora(dit, pairs, options.value("alpha", 1.0), dtype, torch::kCPU);
      Outputs out = run_qwen_image_dit_model_fn(dit, inputs, dtype, options);
      for (const auto& [name, tensor] : module_state(dit))
        for (const auto& layer : pairs)
          if (name == layer.module + ".weight") out.emplace_back("weight:" + name, tensor);
      return out;
    });

}  // namespace diffsynth::parity
