// Parity runners: LoRA on QwenImageDiT, then model_fn (as the qwen_image_dit runner).
//   qwen_image_dit_lora: fused. Options {"lora": path, "alpha": a (default 1), + the
//     qwen_image_dit runner's options}. Outputs "out" and "weight:<module>" per fused weight.
//   qwen_image_dit_lora_hotload: VRAM management (every state in the run's dtype on the CPU),
//     then each of {"loras": [[path, alpha], ...]} hot-loaded in turn. Outputs "out", then
//     "out_cleared" (after clear_lora) and "weight:<module>" for every weight a LoRA targets.
#include <sstream>

#include "parity_qwen_image_dit.h"
#include "configs/vram_module_maps.h"
#include "core/dtype.h"
#include "core/registry.h"  // DIFFSYNTH_CONCAT
#include "core/vram/layers.h"
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

DIFFSYNTH_PARITY_RUNNER(
    "qwen_image_dit_lora_hotload", "diffsynth.models.qwen_image_dit.QwenImageDiT",
    [](Module& m, const StateDict& inputs, c10::ScalarType dtype, const Options& options) {
      auto& dit = dynamic_cast<QwenImageDiTImpl&>(m);
      VRAMConfig config;
      const std::string d = dtype_name(dtype);
      config.offload_dtype = config.onload_dtype = config.preparing_dtype = config.computation_dtype = d;
      config.offload_device = config.onload_device = config.preparing_device = config.computation_device = "cpu";
      std::ostringstream log;
      enable_vram_management(dit, "diffsynth.models.qwen_image_dit.QwenImageDiT",
                             vram_module_map("diffsynth.models.qwen_image_dit.QwenImageDiT"), config, std::nullopt,
                             false, log);
      vram_onload(dit);
      std::vector<std::string> targets;
      for (const auto& item : options.at("loras")) {
        const auto file = item.at(0).get<std::string>();
        const LoRAPairs pairs = convert_lora(load_lora_state_dict(file, dtype, torch::kCPU), dit, file);
        hotload_lora(dit, pairs, item.at(1).get<double>(), file);
        for (const auto& layer : pairs) targets.push_back(layer.module + ".weight");
      }
      Outputs out = run_qwen_image_dit_model_fn(dit, inputs, dtype, options);
      clear_lora({&dit});
      for (auto& [name, t] : run_qwen_image_dit_model_fn(dit, inputs, dtype, options))
        if (name == "out") out.emplace_back("out_cleared", t);
      for (const auto& [name, tensor] : module_state(dit))
        if (std::find(targets.begin(), targets.end(), name) != targets.end()) out.emplace_back("weight:" + name, tensor);
      return out;
    });

}  // namespace diffsynth::parity
