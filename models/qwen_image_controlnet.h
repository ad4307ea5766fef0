// Qwen-Image Blockwise ControlNet.
// Reference: diffsynth/models/qwen_image_controlnet.py (DiffSynth-Studio, pinned in README).
// The DiT calls process_controlnet_conditioning() once per step and blockwise_forward() after
// each of its blocks; there is no single forward().
#pragma once
#include <torch/torch.h>

#include <vector>

#include "core/module.h"
#include "models/general_modules.h"

namespace diffsynth {

struct QwenImageBlockWiseControlNetConfig {
  std::int64_t num_layers = 60;
  std::int64_t in_dim = 64;
  std::int64_t additional_in_dim = 0;  // 4 for the inpaint variant (mask channels)
  std::int64_t dim = 3072;
  static QwenImageBlockWiseControlNetConfig from_kwargs(const nlohmann::ordered_json& kwargs);
};

// output_proj(gelu(input_proj(x_rms(x) + y_rms(y))))
class BlockWiseControlBlockImpl : public Module {
 public:
  explicit BlockWiseControlBlockImpl(std::int64_t dim = 3072);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& y);
  RMSNorm x_rms{nullptr}, y_rms{nullptr};
  Linear input_proj{nullptr}, output_proj{nullptr};
};
TORCH_MODULE(BlockWiseControlBlock);

class QwenImageBlockWiseControlNetImpl : public Module {
 public:
  explicit QwenImageBlockWiseControlNetImpl(const QwenImageBlockWiseControlNetConfig& config = {});
  // Packed control latents [B, L, in_dim + additional_in_dim] -> conditioning [B, L, dim].
  torch::Tensor process_controlnet_conditioning(const torch::Tensor& controlnet_conditioning);
  // The residual added to the image tokens after DiT block `block_id`.
  torch::Tensor blockwise_forward(const torch::Tensor& img, const torch::Tensor& controlnet_conditioning,
                                  std::int64_t block_id);

  QwenImageBlockWiseControlNetConfig config;
  Linear img_in{nullptr};
  torch::nn::ModuleList controlnet_blocks{nullptr};
  std::vector<BlockWiseControlBlock> blocks;  // typed view of controlnet_blocks
};
TORCH_MODULE(QwenImageBlockWiseControlNet);

}  // namespace diffsynth
