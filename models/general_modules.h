// Layers shared by the model files (reference: diffsynth/models/general_modules.py and the
// torch.nn layers it uses). Each is built on meta from its shapes and never initialised:
// weights arrive by loading.
#pragma once
#include <torch/torch.h>

#include "core/module.h"

namespace diffsynth {

// torch.nn.Linear: weight [out, in], bias [out].
class LinearImpl : public Module {
 public:
  LinearImpl(std::int64_t in_features, std::int64_t out_features, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);
  std::int64_t in_features, out_features;
  bool has_bias;
};
TORCH_MODULE(Linear);

// general_modules.RMSNorm: mean of squares in fp32, normalised input cast back to the input
// dtype before the weight multiply (so the product follows PyTorch's type promotion). The same
// arithmetic as wan_video_dit.RMSNorm, which passes its own reference class.
class RMSNormImpl : public Module {
 public:
  RMSNormImpl(std::int64_t dim, double eps, bool elementwise_affine = true,
              std::vector<std::string> reference_classes = {"diffsynth.models.general_modules.RMSNorm",
                                                            "diffsynth.models.qwen_image_dit.RMSNorm"});
  torch::Tensor forward(const torch::Tensor& x);
  std::int64_t dim;
  double eps;
  bool elementwise_affine;
};
TORCH_MODULE(RMSNorm);

// torch.nn.LayerNorm over the last dimension; weight and bias [dim] when elementwise_affine.
class LayerNormImpl : public Module {
 public:
  LayerNormImpl(std::int64_t dim, double eps, bool elementwise_affine = true);
  torch::Tensor forward(const torch::Tensor& x);
  std::int64_t dim;
  double eps;
  bool elementwise_affine;
};
TORCH_MODULE(LayerNorm);

// torch.nn.Conv2d / torch.nn.Conv3d (zero padding, no dilation or groups): weight
// [out, in, *kernel], bias [out]. The rank (2 or 3) is the kernel's length.
class ConvImpl : public Module {
 public:
  ConvImpl(std::int64_t in, std::int64_t out, std::vector<std::int64_t> kernel, std::vector<std::int64_t> stride,
           std::vector<std::int64_t> padding = {});
  torch::Tensor forward(const torch::Tensor& x);
  std::vector<std::int64_t> kernel, stride, padding;
};
TORCH_MODULE(Conv);
// nn.Conv2d(in, out, kernel, stride, padding) with square sizes.
Conv conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride = 1, std::int64_t padding = 0);

// A module that only holds "weight": nn.Embedding ([num, dim], looked up with torch::embedding)
// or a bias-free layer whose forward lives in its owner.
class WeightImpl : public Module {
 public:
  // `reference_classes`: what the weight stands for in the reference (nn.Embedding by default).
  explicit WeightImpl(std::vector<std::int64_t> shape, std::vector<std::string> reference_classes = {"torch.nn.Embedding"});
  const torch::Tensor& weight() const { return param("weight"); }
  // The weight as a forward uses it (VRAM management may hand out a temporary copy).
  torch::Tensor compute_weight() const { return compute_param("weight"); }
};
TORCH_MODULE(Weight);

}  // namespace diffsynth
