// Wan image-to-video image encoder: the vision tower of open-clip XLM-RoBERTa-large ViT-H/14.
// Reference: diffsynth/models/wan_video_image_encoder.py (DiffSynth-Studio, pinned in README):
// WanImageEncoder -> XLMRobertaCLIP (`model`) -> VisionTransformer (`model.visual`); the text
// tower is not built (`textual = None`).
//
// State dict (model names; models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth holds the same
// without "model." plus 391 `textual.*` tensors, which WanImageEncoderStateDictConverter drops):
//   model.log_scale                                        []  (unused by encode_image)
//   model.visual.patch_embedding.weight                    [dim, 3, patch, patch]  (no bias: pre_norm)
//   model.visual.cls_embedding                             [1, 1, dim]
//   model.visual.pos_embedding                             [1, (image_size / patch)^2 + 1, dim]
//   model.visual.pre_norm.{weight, bias}                   [dim]
//   model.visual.transformer.N.norm{1,2}.{weight, bias}    [dim]
//   model.visual.transformer.N.attn.to_qkv.{weight, bias}  [3 dim, dim], [3 dim]
//   model.visual.transformer.N.attn.proj.{weight, bias}    [dim, dim], [dim]
//   model.visual.transformer.N.mlp.0.{weight, bias}        [mlp, dim], [mlp]   (mlp = int(dim * ratio))
//   model.visual.transformer.N.mlp.2.{weight, bias}        [dim, mlp], [dim]
//   model.visual.post_norm.{weight, bias}                  [dim]               (unused by encode_image)
//   model.visual.head                                      [dim, embed_dim]   (unused by encode_image)
// The real model: dim 1280, 32 blocks, 16 heads, mlp 5120, patch 14, image 224 (257 tokens):
// 393 tensors, 632,076,801 parameters.
//
// Numerics follow the reference op for op (inference: every dropout is 0 / the identity):
//   encode_image(videos): each [B_i, 3, H, W] tensor bicubic-resized to image_size x image_size
//   (F.interpolate, align_corners=False, no antialias), concatenated on the batch, mapped from
//   [-1, 1] to [0, 1] (x * 0.5 + 0.5), normalised with CLIP's mean / std cast to the activation
//   dtype ((x - mean) / std, torchvision's Normalize), then visual(x, use_31_block=True): patch
//   conv, cls token, + pos embedding, pre_norm, the first num_layers - 1 blocks (pre-norm:
//   x + attn(norm1(x)), x + mlp(norm2(x)); attention = scaled_dot_product_attention over heads,
//   no mask; mlp = Linear, exact GELU, Linear). No post_norm, no head. Output [B, 257, dim].
#pragma once
#include <torch/torch.h>

#include <vector>

#include "core/module.h"
#include "models/general_modules.h"

namespace diffsynth {

// The reference's WanImageEncoder() takes no keyword arguments (its config entry has none): it
// hard-codes clip_xlm_roberta_vit_h_14's vision side. These fields are that function's keyword
// names, with its values as defaults, so that reduced models exist (parity tests); the real
// model is the default. Only the vision tower's fields: the text tower is not built.
struct WanImageEncoderConfig {
  std::int64_t embed_dim = 1024;   // head's output width
  std::int64_t image_size = 224;   // encode_image resizes to image_size x image_size
  std::int64_t patch_size = 14;
  std::int64_t vision_dim = 1280;
  double vision_mlp_ratio = 4;     // mlp width = int(vision_dim * vision_mlp_ratio)
  std::int64_t vision_heads = 16;
  std::int64_t vision_layers = 32;  // encode_image runs the first vision_layers - 1 (use_31_block)
  double norm_eps = 1e-5;
  std::int64_t mlp_dim() const { return static_cast<std::int64_t>(static_cast<double>(vision_dim) * vision_mlp_ratio); }
  std::int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  // Throws Error on inconsistent sizes.
  void validate() const;
  static WanImageEncoderConfig from_kwargs(const nlohmann::ordered_json& kwargs);
};

namespace wan_clip {

// nn.Conv2d(3, dim, patch, stride=patch, bias=False): the patch embedding.
class PatchEmbeddingImpl : public Module {
 public:
  PatchEmbeddingImpl(std::int64_t dim, std::int64_t patch_size);
  torch::Tensor forward(const torch::Tensor& x);
  std::int64_t patch_size;
};
TORCH_MODULE(PatchEmbedding);

// SelfAttention: to_qkv [3 dim, dim], proj [dim, dim]; heads of dim / num_heads.
class SelfAttentionImpl : public Module {
 public:
  SelfAttentionImpl(std::int64_t dim, std::int64_t num_heads);
  torch::Tensor forward(const torch::Tensor& x);
  std::int64_t dim, num_heads, head_dim;
  Linear to_qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(SelfAttention);

// nn.Sequential(Linear, GELU, Linear, Dropout): children "0" and "2".
class MLPImpl : public Module {
 public:
  MLPImpl(std::int64_t dim, std::int64_t mid);
  torch::Tensor forward(const torch::Tensor& x);
  Linear fc1{nullptr}, fc2{nullptr};  // registered as "0" and "2"
};
TORCH_MODULE(MLP);

// AttentionBlock with post_norm False (the ViT's): pre-norm residual attention and MLP.
class AttentionBlockImpl : public Module {
 public:
  AttentionBlockImpl(std::int64_t dim, std::int64_t mlp_dim, std::int64_t num_heads, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  LayerNorm norm1{nullptr}, norm2{nullptr};
  SelfAttention attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(AttentionBlock);

// VisionTransformer (pool_type "token", pre_norm True, post_norm False).
class VisionTransformerImpl : public Module {
 public:
  explicit VisionTransformerImpl(const WanImageEncoderConfig& c);
  // The reference forward: x [B, 3, H, W] normalised pixels in any float dtype (cast to the
  // computation dtype / device) -> [B, 1 + (H / patch) * (W / patch), dim] after the blocks
  // (all of them, or all but the last with use_31_block). Without `interpolation` the token count
  // must be the pos embedding's; with it the embedding's grid is bicubic-resized to the square
  // grid of the token count (pos_interpolate).
  torch::Tensor forward(const torch::Tensor& x, bool interpolation = false, bool use_31_block = false);
  // The dtype and device the tower computes in (the pre_norm weight as a forward reads it).
  torch::TensorOptions computation_options() const;
  WanImageEncoderConfig config;
  PatchEmbedding patch_embedding{nullptr};
  LayerNorm pre_norm{nullptr}, post_norm{nullptr};
  torch::nn::ModuleList transformer{nullptr};
  std::vector<AttentionBlock> blocks;
};
TORCH_MODULE(VisionTransformer);

// XLMRobertaCLIP with textual = None: `log_scale` and the vision tower.
class XLMRobertaCLIPImpl : public Module {
 public:
  explicit XLMRobertaCLIPImpl(const WanImageEncoderConfig& c);
  VisionTransformer visual{nullptr};
};
TORCH_MODULE(XLMRobertaCLIP);

}  // namespace wan_clip

class WanImageEncoderImpl : public Module {
 public:
  explicit WanImageEncoderImpl(const WanImageEncoderConfig& config = {});

  // The reference's encode_image(videos): a list of [B_i, 3, H, W] float tensors with values in
  // [-1, 1] (the pipeline's preprocess_image), of any sizes, dtypes and devices (each cast to the
  // computation dtype and device first; the reference needs them to be the model's already).
  // Returns [sum B_i, 1 + (image_size / patch)^2, dim] in the computation dtype. Inputs are not
  // modified. Throws Error naming the problem on an empty list or a tensor of another rank,
  // channel count, an empty image or a non-floating dtype.
  torch::Tensor encode_image(const std::vector<torch::Tensor>& videos);
  torch::Tensor encode_image(const torch::Tensor& images) { return encode_image(std::vector<torch::Tensor>{images}); }

  WanImageEncoderConfig config;
  wan_clip::XLMRobertaCLIP model{nullptr};
};
TORCH_MODULE(WanImageEncoder);

}  // namespace diffsynth
