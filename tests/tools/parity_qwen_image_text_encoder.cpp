// Parity runner: QwenImageTextEncoder's text-only forward, every hidden state the reference
// returns (hidden_0 .. hidden_N; the last is the final-norm output the pipeline takes).
// Inputs: one or more cases "input_ids<S>" [B, L] with optional "attention_mask<S>" [B, L] (any
// suffix S, e.g. "" or ".left"), kept in their integer dtypes; outputs "hidden_<i><S>".
// Weights are usually in the checkpoint layout: pass {"converter": "<dotted name>"} as options.
#include "core/registry.h"
#include "models/qwen_image_text_encoder.h"
#include "parity_runner.h"

namespace diffsynth::parity {

DIFFSYNTH_PARITY_RUNNER("qwen_image_text_encoder", "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder",
                        [](Module& m, const StateDict& inputs, c10::ScalarType, const Options&) {
                          auto& te = dynamic_cast<QwenImageTextEncoderImpl&>(m);
                          const std::string ids_key = "input_ids";
                          Outputs out;
                          for (const auto& [name, ids] : inputs) {
                            if (name.rfind(ids_key, 0) != 0) continue;
                            const auto suffix = name.substr(ids_key.size());
                            const auto mask_key = "attention_mask" + suffix;
                            const auto mask = inputs.contains(mask_key) ? inputs.at(mask_key) : torch::Tensor();
                            auto hs = te.hidden_states(ids, mask);
                            for (std::size_t i = 0; i < hs.size(); ++i)
                              out.emplace_back("hidden_" + std::to_string(i) + suffix, hs[i].to(torch::kFloat32));
                          }
                          if (out.empty()) throw Error("inputs: no 'input_ids' tensor");
                          return out;
                        });

}  // namespace diffsynth::parity
