// Parity runner: QwenImageDiT through model_fn (the pipeline's model function).
// Inputs: latents, timestep, prompt_emb, prompt_emb_mask, optional edit_latents_<i>,
// context_latents, layer_input_latents. Options: {"layer_num": n, "zero_cond_t": bool}.
#include "parity_qwen_image_dit.h"

#include "core/registry.h"

namespace diffsynth::parity {

Outputs run_qwen_image_dit_model_fn(QwenImageDiTImpl& dit, const StateDict& inputs, c10::ScalarType dtype,
                                    const Options& options) {
  QwenImageDiTInputs in;
  in.latents = input(inputs, "latents", dtype);
  in.timestep = input(inputs, "timestep", dtype);
  in.prompt_emb = input(inputs, "prompt_emb", dtype);
  in.prompt_emb_mask = inputs.at("prompt_emb_mask");
  for (int i = 0; inputs.contains("edit_latents_" + std::to_string(i)); ++i)
    in.edit_latents.push_back(input(inputs, "edit_latents_" + std::to_string(i), dtype));
  if (inputs.contains("context_latents")) in.context_latents = input(inputs, "context_latents", dtype);
  if (inputs.contains("layer_input_latents")) in.layer_input_latents = input(inputs, "layer_input_latents", dtype);
  if (options.contains("layer_num")) in.layer_num = options["layer_num"].get<std::int64_t>();
  in.zero_cond_t = options.value("zero_cond_t", false);
  return Outputs{{"out", dit.model_fn(in)}};
}

DIFFSYNTH_PARITY_RUNNER(
    "qwen_image_dit", "diffsynth.models.qwen_image_dit.QwenImageDiT",
    [](Module& m, const StateDict& inputs, c10::ScalarType dtype, const Options& options) {
      return run_qwen_image_dit_model_fn(dynamic_cast<QwenImageDiTImpl&>(m), inputs, dtype, options);
    });

}  // namespace diffsynth::parity
