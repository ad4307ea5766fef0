// Wan2.1 text encoder: the UMT5-XXL encoder. Reference: diffsynth/models/wan_video_text_encoder.py
// (DiffSynth-Studio, pinned in README): WanTextEncoder and its T5 parts.
//
// State dict (the checkpoint's own names, models_t5_umt5-xxl-enc-bf16.pth, no converter):
//   token_embedding.weight                       [vocab, dim]
//   blocks.N.{norm1, norm2}.weight               [dim]
//   blocks.N.attn.{q, k, v}.weight               [dim_attn, dim]   (no biases)
//   blocks.N.attn.o.weight                       [dim, dim_attn]
//   blocks.N.ffn.{gate.0, fc1}.weight            [dim_ffn, dim]
//   blocks.N.ffn.fc2.weight                      [dim, dim_ffn]
//   blocks.N.pos_embedding.embedding.weight      [num_buckets, num_heads]  (shared_pos false)
//   pos_embedding.embedding.weight               [num_buckets, num_heads]  (shared_pos true only)
//   norm.weight                                  [dim]
//
// Numerics follow the reference op for op (inference: dropout is the identity, as in eval()):
//   * T5LayerNorm: x * rsqrt(mean(x.float()^2) + 1e-6) in fp32, cast to the weight's dtype when
//     that is fp16/bf16, then weight * x;
//   * T5Attention: no 1/sqrt(d) scaling; an additive bias [B, H, Lq, Lk] in the activation dtype =
//     zeros + relative position bias, with masked keys (mask == 0) set to finfo(dtype).min;
//     logits = einsum(q, k) + bias; softmax in fp32, cast back; einsum(attn, v);
//   * T5RelativeEmbedding: bidirectional buckets (half per direction, exact below
//     num_buckets / 4, log-spaced up to max_dist 128, clamped beyond);
//   * T5FeedForward: fc2(fc1(x) * gelu_tanh(gate(x))), the tanh GELU written out as the
//     reference writes it (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))));
//   * fp16 only: activations clamped to +-(65504 - 1000) after each residual when they hold inf.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "core/module.h"
#include "models/general_modules.h"

namespace diffsynth {

// Constructor keyword arguments (extra_kwargs), the reference's, with its defaults (the real
// UMT5-XXL encoder): vocab, dim, dim_attn, dim_ffn, num_heads, num_layers, num_buckets, shared_pos,
// dropout (accepted, unused: inference only). `vocab` must be an integer (the reference also
// takes an nn.Embedding).
struct WanTextEncoderConfig {
  std::int64_t vocab = 256384;
  std::int64_t dim = 4096;
  std::int64_t dim_attn = 4096;
  std::int64_t dim_ffn = 10240;
  std::int64_t num_heads = 64;
  std::int64_t num_layers = 24;
  std::int64_t num_buckets = 32;
  bool shared_pos = false;
  double dropout = 0.1;
  // Throws Error on inconsistent sizes.
  void validate() const;
  static WanTextEncoderConfig from_kwargs(const nlohmann::ordered_json& kwargs);
};

namespace wan_t5 {

// T5LayerNorm (RMS, eps 1e-6).
class T5LayerNormImpl : public Module {
 public:
  explicit T5LayerNormImpl(std::int64_t dim, double eps = 1e-6);
  torch::Tensor forward(const torch::Tensor& x);
  double eps;
};
TORCH_MODULE(T5LayerNorm);

// T5RelativeEmbedding: "embedding" [num_buckets, num_heads].
class T5RelativeEmbeddingImpl : public Module {
 public:
  T5RelativeEmbeddingImpl(std::int64_t num_buckets, std::int64_t num_heads, bool bidirectional = true,
                          std::int64_t max_dist = 128);
  // The position bias [1, num_heads, lq, lk] in the embedding's (computation) dtype and device.
  torch::Tensor forward(std::int64_t lq, std::int64_t lk);
  // _relative_position_bucket: int64 buckets of rel_pos (= key index - query index).
  torch::Tensor bucket(const torch::Tensor& rel_pos) const;
  std::int64_t num_buckets, num_heads, max_dist;
  bool bidirectional;
  Weight embedding{nullptr};
};
TORCH_MODULE(T5RelativeEmbedding);

class T5AttentionImpl : public Module {
 public:
  T5AttentionImpl(std::int64_t dim, std::int64_t dim_attn, std::int64_t num_heads);
  // x [B, L, dim]; mask: undefined, [B, Lk] or [B, Lq, Lk] (0 = masked key); pos_bias:
  // undefined or broadcastable to [B, H, Lq, Lk].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& pos_bias);
  std::int64_t num_heads, head_dim;
  Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
};
TORCH_MODULE(T5Attention);

// nn.Sequential(Linear, GELU): child "0" (GELU holds nothing).
class GateImpl : public Module {
 public:
  GateImpl(std::int64_t dim, std::int64_t dim_ffn);
  torch::Tensor forward(const torch::Tensor& x);
  Linear proj{nullptr};  // registered as "0"
};
TORCH_MODULE(Gate);

class T5FeedForwardImpl : public Module {
 public:
  T5FeedForwardImpl(std::int64_t dim, std::int64_t dim_ffn);
  torch::Tensor forward(const torch::Tensor& x);
  Gate gate{nullptr};
  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(T5FeedForward);

// T5SelfAttention (one encoder block).
class T5SelfAttentionImpl : public Module {
 public:
  explicit T5SelfAttentionImpl(const WanTextEncoderConfig& c);
  // pos_bias: the shared bias (shared_pos), else ignored and the block's own is computed.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, const torch::Tensor& pos_bias);
  bool shared_pos;
  T5LayerNorm norm1{nullptr}, norm2{nullptr};
  T5Attention attn{nullptr};
  T5FeedForward ffn{nullptr};
  T5RelativeEmbedding pos_embedding{nullptr};  // null when shared_pos
};
TORCH_MODULE(T5SelfAttention);

}  // namespace wan_t5

class WanTextEncoderImpl : public Module {
 public:
  explicit WanTextEncoderImpl(const WanTextEncoderConfig& config = {});

  // The reference forward: text_encoder(ids, mask) -> final-norm output [B, L, dim] in the
  // parameters' (computation) dtype, on the model's device.
  //   ids   [B, L] integer token ids (any integer dtype / device; moved to the model's).
  //   mask  undefined (attend everywhere), [B, L] or [B, L, L]; 0 = masked key, anything else
  //         attends; any dtype. Only keys are masked: rows of padded positions are computed
  //         (and meaningless: the pipeline zeroes them, see encode_prompt).
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& mask = {});

  // What WanVideoUnit_PromptEmbedder.encode_prompt does around the call, given the tokenizer's
  // [B, L] mask: seq_lens = (mask > 0).sum(1); out = forward(ids, mask); then, as the reference
  // writes it, `for v in seq_lens: out[:, v:] = 0` -- every row, so with B > 1 all rows are
  // zeroed past the *shortest* length (the pipeline encodes one prompt at a time, B = 1).
  torch::Tensor encode_prompt(const torch::Tensor& ids, const torch::Tensor& mask);

  WanTextEncoderConfig config;
  Weight token_embedding{nullptr};
  wan_t5::T5RelativeEmbedding pos_embedding{nullptr};  // shared_pos only
  torch::nn::ModuleList blocks{nullptr};
  std::vector<wan_t5::T5SelfAttention> typed_blocks;
  wan_t5::T5LayerNorm norm{nullptr};
};
TORCH_MODULE(WanTextEncoder);

}  // namespace diffsynth
