// Parity runner: QwenImageBlockWiseControlNet's two entry points (conditioning, every block).
#include "core/registry.h"
#include "models/qwen_image_controlnet.h"
#include "parity_runner.h"

namespace diffsynth::parity {

DIFFSYNTH_PARITY_RUNNER("qwen_image_controlnet", "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet",
                        [](Module& m, const StateDict& inputs, c10::ScalarType dtype, const Options&) {
                          auto& net = dynamic_cast<QwenImageBlockWiseControlNetImpl&>(m);
                          Outputs out;
                          auto cond = net.process_controlnet_conditioning(input(inputs, "conditioning", dtype));
                          out.emplace_back("conditioning_out", cond.to(torch::kFloat32));
                          auto img = input(inputs, "img", dtype);
                          for (std::size_t i = 0; i < net.blocks.size(); ++i)
                            out.emplace_back("block_" + std::to_string(i),
                                             net.blockwise_forward(img, cond, i).to(torch::kFloat32));
                          return out;
                        });

}  // namespace diffsynth::parity
