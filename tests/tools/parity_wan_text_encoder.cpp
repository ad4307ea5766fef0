// Parity runner: WanTextEncoder.forward(ids, mask) and encode_prompt (the Wan pipeline's zeroing
// past each length). Inputs: one or more cases "ids<S>" [B, L] with optional "mask<S>" ([B, L]
// or [B, L, L]; any suffix S), kept in their integer dtypes; outputs "out<S>" (and
// "prompt_emb<S>" when the case has a [B, L] mask), in fp32.
#include "core/registry.h"
#include "models/wan_video_text_encoder.h"
#include "parity_runner.h"

namespace diffsynth::parity {

DIFFSYNTH_PARITY_RUNNER("wan_text_encoder", "diffsynth.models.wan_video_text_encoder.WanTextEncoder",
                        [](Module& m, const StateDict& inputs, c10::ScalarType, const Options&) {
                          auto& te = dynamic_cast<WanTextEncoderImpl&>(m);
                          const std::string ids_key = "ids";
                          Outputs out;
                          for (const auto& [name, ids] : inputs) {
                            if (name.rfind(ids_key, 0) != 0) continue;
                            const auto suffix = name.substr(ids_key.size());
                            const auto mask_key = "mask" + suffix;
                            const auto mask = inputs.contains(mask_key) ? inputs.at(mask_key) : torch::Tensor();
                            out.emplace_back("out" + suffix, te.forward(ids, mask).to(torch::kFloat32));
                            if (mask.defined() && mask.dim() == 2)
                              out.emplace_back("prompt_emb" + suffix, te.encode_prompt(ids, mask).to(torch::kFloat32));
                          }
                          if (out.empty()) throw Error("inputs: no 'ids' tensor");
                          return out;
                        });

}  // namespace diffsynth::parity
