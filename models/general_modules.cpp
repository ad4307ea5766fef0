#include "models/general_modules.h"

#include "core/vram/layers.h"

namespace diffsynth {

LinearImpl::LinearImpl(std::int64_t in, std::int64_t out, bool bias)
    : in_features(in), out_features(out), has_bias(bias) {
  set_reference_classes({"torch.nn.Linear"});
  meta_parameter("weight", {out, in});
  if (bias) meta_parameter("bias", {out});
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  auto out = torch::linear(x, compute_param("weight"), has_bias ? compute_param("bias") : torch::Tensor());
  // Hot-loaded LoRA pairs live on this layer's own AutoWrappedLinear wrapper.
  if (const auto& w = vram_wrapper(); w && w->lora_count() > 0) out = w->lora_forward(x, std::move(out));
  return out;
}

RMSNormImpl::RMSNormImpl(std::int64_t d, double e, bool affine, std::vector<std::string> reference_classes)
    : dim(d), eps(e), elementwise_affine(affine) {
  // By default: qwen_image_dit imports general_modules.RMSNorm, both names are the same class.
  set_reference_classes(std::move(reference_classes));
  if (affine) meta_parameter("weight", {d});
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const auto input_dtype = x.scalar_type();
  auto variance = x.to(torch::kFloat32).square().mean(-1, /*keepdim=*/true);
  auto h = (x * torch::rsqrt(variance + eps)).to(input_dtype);
  if (elementwise_affine) h = h * compute_param("weight");
  return h;
}

LayerNormImpl::LayerNormImpl(std::int64_t d, double e, bool affine) : dim(d), eps(e), elementwise_affine(affine) {
  set_reference_classes({"torch.nn.LayerNorm"});
  if (affine) {
    meta_parameter("weight", {d});
    meta_parameter("bias", {d});
  }
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  if (!elementwise_affine) return torch::layer_norm(x, {dim}, {}, {}, eps);
  return torch::layer_norm(x, {dim}, compute_param("weight"), compute_param("bias"), eps);
}

ConvImpl::ConvImpl(std::int64_t in, std::int64_t out, std::vector<std::int64_t> k, std::vector<std::int64_t> s,
                   std::vector<std::int64_t> p)
    : kernel(std::move(k)), stride(std::move(s)), padding(std::move(p)) {
  if (padding.empty()) padding.assign(kernel.size(), 0);
  set_reference_classes({kernel.size() == 3 ? "torch.nn.Conv3d" : "torch.nn.Conv2d"});
  std::vector<std::int64_t> shape = {out, in};
  shape.insert(shape.end(), kernel.begin(), kernel.end());
  meta_parameter("weight", shape);
  meta_parameter("bias", {out});
}

torch::Tensor ConvImpl::forward(const torch::Tensor& x) {
  if (kernel.size() == 3) return torch::conv3d(x, compute_param("weight"), compute_param("bias"), stride, padding);
  return torch::conv2d(x, compute_param("weight"), compute_param("bias"), stride, padding);
}

Conv conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride, std::int64_t padding) {
  return Conv(in, out, std::vector<std::int64_t>{kernel, kernel}, std::vector<std::int64_t>{stride, stride},
              std::vector<std::int64_t>{padding, padding});
}

WeightImpl::WeightImpl(std::vector<std::int64_t> shape, std::vector<std::string> reference_classes) {
  meta_parameter("weight", std::move(shape));
  set_reference_classes(std::move(reference_classes));
}

}  // namespace diffsynth
