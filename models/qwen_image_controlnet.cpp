#include "models/qwen_image_controlnet.h"

#include "core/error.h"
#include "core/registry.h"

namespace diffsynth {

QwenImageBlockWiseControlNetConfig QwenImageBlockWiseControlNetConfig::from_kwargs(const nlohmann::ordered_json& kwargs) {
  Kwargs k("QwenImageBlockWiseControlNet", kwargs);
  QwenImageBlockWiseControlNetConfig c;
  c.num_layers = k.get_int("num_layers", c.num_layers);
  c.in_dim = k.get_int("in_dim", c.in_dim);
  c.additional_in_dim = k.get_int("additional_in_dim", c.additional_in_dim);
  c.dim = k.get_int("dim", c.dim);
  k.finish();
  return c;
}

BlockWiseControlBlockImpl::BlockWiseControlBlockImpl(std::int64_t dim) {
  x_rms = register_module("x_rms", RMSNorm(dim, 1e-6));
  y_rms = register_module("y_rms", RMSNorm(dim, 1e-6));
  input_proj = register_module("input_proj", Linear(dim, dim));
  output_proj = register_module("output_proj", Linear(dim, dim));
}

torch::Tensor BlockWiseControlBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& y) {
  auto h = input_proj(x_rms(x) + y_rms(y));
  h = torch::gelu(h);  // nn.GELU(): exact erf form
  return output_proj(h);
}

QwenImageBlockWiseControlNetImpl::QwenImageBlockWiseControlNetImpl(const QwenImageBlockWiseControlNetConfig& c)
    : config(c) {
  img_in = register_module("img_in", Linear(c.in_dim + c.additional_in_dim, c.dim));
  controlnet_blocks = register_module("controlnet_blocks", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    blocks.emplace_back(c.dim);
    controlnet_blocks->push_back(blocks.back());
  }
}

torch::Tensor QwenImageBlockWiseControlNetImpl::process_controlnet_conditioning(const torch::Tensor& cond) {
  return img_in(cond);
}

torch::Tensor QwenImageBlockWiseControlNetImpl::blockwise_forward(const torch::Tensor& img, const torch::Tensor& cond,
                                                                  std::int64_t block_id) {
  if (block_id < 0 || block_id >= static_cast<std::int64_t>(blocks.size()))
    throw Error("QwenImageBlockWiseControlNet: block_id " + std::to_string(block_id) + " out of range (" +
                std::to_string(blocks.size()) + " blocks)");
  return blocks[block_id](img, cond);
}

DIFFSYNTH_REGISTER_MODEL("diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet",
                         [](const nlohmann::ordered_json& kwargs) -> std::shared_ptr<Module> {
                           return QwenImageBlockWiseControlNet(QwenImageBlockWiseControlNetConfig::from_kwargs(kwargs))
                               .ptr();
                         });

}  // namespace diffsynth
