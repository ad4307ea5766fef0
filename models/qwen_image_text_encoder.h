// Qwen-Image text encoder: Qwen2.5-VL-7B (language model + vision tower), as DiffSynth wraps it.
// Reference: diffsynth/models/qwen_image_text_encoder.py (DiffSynth-Studio, pinned in README), which
// builds transformers' Qwen2_5_VLModel (transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py, the
// version installed with the reference) plus an unused lm_head.
//
// State dict (model names; the checkpoint's "model.*" / "visual.*" reach them through
// QwenImageTextEncoderStateDictConverter):
//   model.language_model.{embed_tokens, layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
//                         input_layernorm, post_attention_layernorm}, norm}
//   model.visual.{patch_embed.proj, blocks.N.{norm1, norm2, attn.{qkv, proj}, mlp.{gate,up,down}_proj},
//                 merger.{ln_q, mlp.0, mlp.2}}
//   lm_head
//
// What runs: the text-only forward the Qwen-Image pipeline uses (QwenImageUnit_PromptEmbedder:
// tokenizer output -> text_encoder(input_ids, attention_mask)[-1] -> rows where attention_mask is 1).
// The vision tower's parameters are registered (so real checkpoints load strictly) but its
// forward is NOT implemented: image-conditioned prompts (Qwen-Image-Edit) are not supported yet.
#pragma once
#include <torch/torch.h>

#include <array>
#include <vector>

#include "core/module.h"
#include "models/general_modules.h"

namespace diffsynth {

// Constructor keyword arguments (extra_kwargs). The reference class takes none: its config is
// fixed (the defaults here, value for value). The keywords are our extension so tests can build
// reduced sizes; every one defaults to the real Qwen2.5-VL-7B value.
//   text:   hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//           num_key_value_heads, vocab_size, rms_norm_eps, rope_theta
//   vision: vision_depth, vision_hidden_size, vision_num_heads, vision_intermediate_size,
//           vision_patch_size, vision_temporal_patch_size, vision_spatial_merge_size,
//           vision_in_channels, vision_out_hidden_size (defaults to hidden_size: the merger feeds
//           the language model)
// The M-RoPE sections are fixed at [16, 24, 24], so the head dim (hidden_size /
// num_attention_heads) must be 128 = 2 * (16 + 24 + 24), as in transformers.
struct QwenImageTextEncoderConfig {
  std::int64_t hidden_size = 3584;
  std::int64_t intermediate_size = 18944;
  std::int64_t num_hidden_layers = 28;
  std::int64_t num_attention_heads = 28;
  std::int64_t num_key_value_heads = 4;
  std::int64_t vocab_size = 152064;
  double rms_norm_eps = 1e-6;
  double rope_theta = 1000000.0;
  std::array<std::int64_t, 3> mrope_section{16, 24, 24};

  std::int64_t vision_depth = 32;
  std::int64_t vision_hidden_size = 1280;
  std::int64_t vision_num_heads = 16;
  std::int64_t vision_intermediate_size = 3420;
  std::int64_t vision_patch_size = 14;
  std::int64_t vision_temporal_patch_size = 2;
  std::int64_t vision_spatial_merge_size = 2;
  std::int64_t vision_in_channels = 3;
  std::int64_t vision_out_hidden_size = 3584;

  std::int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // Throws Error on inconsistent sizes.
  void validate() const;
  static QwenImageTextEncoderConfig from_kwargs(const nlohmann::ordered_json& kwargs);
};

namespace qwen2_5_vl {

// Qwen2_5_VLRMSNorm (transformers): the input cast to fp32, x * rsqrt(mean(x^2) + eps), cast
// back to the input dtype, then weight * x.
class RMSNormImpl : public Module {
 public:
  RMSNormImpl(std::int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  double eps;
};
TORCH_MODULE(RMSNorm);


// down_proj(silu(gate_proj(x)) * up_proj(x)); bias for the vision tower's MLP only.
class MLPImpl : public Module {
 public:
  MLPImpl(std::int64_t hidden, std::int64_t intermediate, bool bias);
  torch::Tensor forward(const torch::Tensor& x);
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

// Self-attention of the language model: GQA, q/k/v with bias, o_proj without, rotate-half RoPE.
class AttentionImpl : public Module {
 public:
  explicit AttentionImpl(const QwenImageTextEncoderConfig& c);
  // x [B, L, hidden]; cos/sin [B, L, head_dim] in x's dtype; mask: undefined (causal, no
  // padding) or bool [B, 1, L, L] (true = attend).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask);
  std::int64_t num_heads, num_kv_heads, head_dim;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(Attention);

class DecoderLayerImpl : public Module {
 public:
  explicit DecoderLayerImpl(const QwenImageTextEncoderConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask);
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

// Qwen2_5_VLTextModel.
class TextModelImpl : public Module {
 public:
  explicit TextModelImpl(const QwenImageTextEncoderConfig& c);
  // See QwenImageTextEncoderImpl::hidden_states. `position_ids` [3, B, L] int64 (undefined:
  // arange(L) on all three axes, what transformers uses for text-only input).
  std::vector<torch::Tensor> forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                     const torch::Tensor& position_ids, bool all_hidden_states);
  // Qwen2_5_VLRotaryEmbedding: cos, sin [B, L, head_dim] in `dtype`.
  std::pair<torch::Tensor, torch::Tensor> rotary(const torch::Tensor& position_ids, c10::ScalarType dtype) const;

  QwenImageTextEncoderConfig config;
  torch::Tensor inv_freq;  // fp32, CPU; not part of the state dict (a non-persistent buffer there)
  Weight embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<DecoderLayer> typed_layers;
  RMSNorm norm{nullptr};
};
TORCH_MODULE(TextModel);

// ---- Vision tower: parameters only (no forward). ----
class VisionAttentionImpl : public Module {
 public:
  explicit VisionAttentionImpl(std::int64_t dim);
  Linear qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(VisionAttention);

class VisionBlockImpl : public Module {
 public:
  explicit VisionBlockImpl(const QwenImageTextEncoderConfig& c);
  RMSNorm norm1{nullptr}, norm2{nullptr};
  VisionAttention attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(VisionBlock);

// nn.Sequential(Linear, GELU, Linear): children "0" and "2".
class MergerMLPImpl : public Module {
 public:
  MergerMLPImpl(std::int64_t in, std::int64_t out);
};
TORCH_MODULE(MergerMLP);

class PatchMergerImpl : public Module {
 public:
  explicit PatchMergerImpl(const QwenImageTextEncoderConfig& c);
  RMSNorm ln_q{nullptr};
  MergerMLP mlp{nullptr};
};
TORCH_MODULE(PatchMerger);

class PatchEmbedImpl : public Module {
 public:
  explicit PatchEmbedImpl(const QwenImageTextEncoderConfig& c);
  Weight proj{nullptr};
};
TORCH_MODULE(PatchEmbed);

// Qwen2_5_VisionTransformerPretrainedModel (parameters only).
class VisionTransformerImpl : public Module {
 public:
  explicit VisionTransformerImpl(const QwenImageTextEncoderConfig& c);
  PatchEmbed patch_embed{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  PatchMerger merger{nullptr};
};
TORCH_MODULE(VisionTransformer);

// Qwen2_5_VLModel: "visual" + "language_model".
class ModelImpl : public Module {
 public:
  explicit ModelImpl(const QwenImageTextEncoderConfig& c);
  VisionTransformer visual{nullptr};
  TextModel language_model{nullptr};
};
TORCH_MODULE(Model);

}  // namespace qwen2_5_vl

class QwenImageTextEncoderImpl : public Module {
 public:
  explicit QwenImageTextEncoderImpl(const QwenImageTextEncoderConfig& config = {});

  // What the pipeline takes: text_encoder(input_ids, attention_mask)[-1], the final-RMSNorm
  // output [B, L, hidden] in the model dtype, on the model's device.
  //   input_ids       [B, L] integer token ids (any device; moved to the model's).
  //   attention_mask  [B, L], 1 = token, 0 = padding (either side), any integer/bool dtype;
  //                   undefined = no padding.
  // As transformers does for text-only input: RoPE positions are arange(L) for every row, padded
  // or not (the installed transformers no longer derives them from the mask), and attention is
  // causal with padded keys masked out. Rows of padding positions are computed but meaningless
  // (the pipeline drops them).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {});

  // The reference forward's full return value (outputs.hidden_states): num_hidden_layers + 1
  // tensors, the embeddings, then each decoder layer's output, the last one replaced by the
  // final-norm output (so hidden_states(...).back() == forward(...)).
  std::vector<torch::Tensor> hidden_states(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {});

  QwenImageTextEncoderConfig config;
  qwen2_5_vl::Model model{nullptr};
  Linear lm_head{nullptr};  // loaded, unused (as in the reference)
};
TORCH_MODULE(QwenImageTextEncoder);

}  // namespace diffsynth
