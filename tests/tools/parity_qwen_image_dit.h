// The qwen_image_dit runner's body, shared with runners that modify the DiT first (LoRA).
#pragma once
#include "models/qwen_image_dit.h"
#include "parity_runner.h"

namespace diffsynth::parity {

// model_fn on the inputs (latents, timestep, prompt_emb, prompt_emb_mask, optional
// edit_latents_<i>, context_latents, layer_input_latents; options layer_num, zero_cond_t).
Outputs run_qwen_image_dit_model_fn(QwenImageDiTImpl& dit, const StateDict& inputs, c10::ScalarType dtype,
                                    const Options& options);

}  // namespace diffsynth::parity
