#include "models/wan_video_text_encoder.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/registry.h"

namespace diffsynth {

namespace {
const char* kClass = "WanTextEncoder";

std::string sizes_str(c10::IntArrayRef s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// torch.finfo(dtype).min, the value the reference fills masked logits with.
double finfo_min(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat: return std::numeric_limits<float>::lowest();
    case c10::kDouble: return std::numeric_limits<double>::lowest();
    case c10::kBFloat16: return static_cast<float>(std::numeric_limits<c10::BFloat16>::lowest());
    case c10::kHalf: return static_cast<float>(std::numeric_limits<c10::Half>::lowest());
    default: throw Error(std::string(kClass) + ": activations must be floating point, got " + c10::toString(t));
  }
}

// fp16_clamp: only fp16 activations, only when they hold an inf.
torch::Tensor fp16_clamp(torch::Tensor x) {
  if (x.scalar_type() == c10::kHalf && torch::isinf(x).any().item<bool>()) {
    const double clamp = 65504.0 - 1000.0;  // torch.finfo(torch.float16).max - 1000
    x = torch::clamp(x, -clamp, clamp);
  }
  return x;
}

}  // namespace

void WanTextEncoderConfig::validate() const {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw Error(std::string(kClass) + "(): " + what);
  };
  for (auto [name, v] : std::initializer_list<std::pair<const char*, std::int64_t>>{{"vocab", vocab},
                                                                                   {"dim", dim},
                                                                                   {"dim_attn", dim_attn},
                                                                                   {"dim_ffn", dim_ffn},
                                                                                   {"num_heads", num_heads},
                                                                                   {"num_layers", num_layers},
                                                                                   {"num_buckets", num_buckets}})
    need(v > 0 || (v == 0 && std::string(name) == "num_layers"),
         std::string(name) + " must be positive, got " + std::to_string(v));
  need(dim_attn % num_heads == 0, "dim_attn " + std::to_string(dim_attn) + " is not divisible by num_heads " +
                                      std::to_string(num_heads));
  // Bidirectional buckets: num_buckets / 2 per direction, a quarter exact; below 4 the
  // reference divides by log(max_dist / 0).
  need(num_buckets >= 4, "num_buckets must be at least 4, got " + std::to_string(num_buckets));
  need(dropout >= 0 && dropout <= 1, "dropout must be in [0, 1]");
}

WanTextEncoderConfig WanTextEncoderConfig::from_kwargs(const nlohmann::ordered_json& kwargs) {
  Kwargs k(kClass, kwargs);
  WanTextEncoderConfig c;
  c.vocab = k.get_int("vocab", c.vocab);
  c.dim = k.get_int("dim", c.dim);
  c.dim_attn = k.get_int("dim_attn", c.dim_attn);
  c.dim_ffn = k.get_int("dim_ffn", c.dim_ffn);
  c.num_heads = k.get_int("num_heads", c.num_heads);
  c.num_layers = k.get_int("num_layers", c.num_layers);
  c.num_buckets = k.get_int("num_buckets", c.num_buckets);
  c.shared_pos = k.get_bool("shared_pos", c.shared_pos);
  c.dropout = k.get_float("dropout", c.dropout);
  k.finish();
  c.validate();
  return c;
}

namespace wan_t5 {

T5LayerNormImpl::T5LayerNormImpl(std::int64_t dim, double e) : eps(e) {
  meta_parameter("weight", {dim});
  set_reference_classes({"diffsynth.models.wan_video_text_encoder.T5LayerNorm"});
}

torch::Tensor T5LayerNormImpl::forward(const torch::Tensor& x) {
  const auto w = compute_param("weight");
  // x (any float dtype) times an fp32 factor: promoted to fp32.
  auto h = x * torch::rsqrt(x.to(torch::kFloat32).pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (w.scalar_type() == c10::kHalf || w.scalar_type() == c10::kBFloat16) h = h.to(w.scalar_type());
  return w * h;
}

T5RelativeEmbeddingImpl::T5RelativeEmbeddingImpl(std::int64_t nb, std::int64_t nh, bool bidir, std::int64_t md)
    : num_buckets(nb), num_heads(nh), max_dist(md), bidirectional(bidir) {
  set_reference_classes({"diffsynth.models.wan_video_text_encoder.T5RelativeEmbedding"});
  embedding = register_module("embedding", Weight(std::vector<std::int64_t>{nb, nh}));
}

torch::Tensor T5RelativeEmbeddingImpl::bucket(const torch::Tensor& rel) const {
  torch::Tensor rel_pos = rel, rel_buckets;
  std::int64_t nb = num_buckets;
  if (bidirectional) {
    nb = num_buckets / 2;
    rel_buckets = (rel_pos > 0).to(torch::kLong) * nb;
    rel_pos = torch::abs(rel_pos);
  } else {
    rel_buckets = torch::zeros_like(rel_pos);
    rel_pos = -torch::minimum(rel_pos, torch::zeros_like(rel_pos));
  }
  // Small distances exact, larger ones log-spaced up to max_dist, clamped beyond. log(0) = -inf
  // at rel_pos 0 is discarded by the where, as in the reference.
  const std::int64_t max_exact = nb / 2;
  auto large = max_exact + (torch::log(rel_pos.to(torch::kFloat32) / max_exact) /
                            std::log(static_cast<double>(max_dist) / static_cast<double>(max_exact)) *
                            (nb - max_exact))
                               .to(torch::kLong);
  large = torch::minimum(large, torch::full_like(large, nb - 1));
  return rel_buckets + torch::where(rel_pos < max_exact, rel_pos, large);
}

torch::Tensor T5RelativeEmbeddingImpl::forward(std::int64_t lq, std::int64_t lk) {
  const auto w = embedding->compute_weight();
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(w.device());
  auto rel_pos = torch::arange(lk, opts).unsqueeze(0) - torch::arange(lq, opts).unsqueeze(1);
  auto e = torch::embedding(w, bucket(rel_pos));  // [lq, lk, heads]
  return e.permute({2, 0, 1}).unsqueeze(0).contiguous();
}

T5AttentionImpl::T5AttentionImpl(std::int64_t dim, std::int64_t dim_attn, std::int64_t nh)
    : num_heads(nh), head_dim(dim_attn / nh) {
  q = register_module("q", Linear(dim, dim_attn, false));
  k = register_module("k", Linear(dim, dim_attn, false));
  v = register_module("v", Linear(dim, dim_attn, false));
  o = register_module("o", Linear(dim_attn, dim, false));
}

torch::Tensor T5AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask,
                                       const torch::Tensor& pos_bias) {
  const auto b = x.size(0), n = num_heads, c = head_dim;
  // [b, heads, L, head_dim]
  auto qx = q(x).view({b, -1, n, c}).transpose(1, 2);
  auto kx = k(x).view({b, -1, n, c}).transpose(1, 2);
  auto vx = v(x).view({b, -1, n, c}).transpose(1, 2);

  // The reference's additive bias: the position bias, masked keys at finfo(dtype).min.
  torch::Tensor attn_bias = pos_bias.defined() ? pos_bias.to(x.scalar_type()) : torch::Tensor();
  if (mask.defined()) {
    auto m = (mask.dim() == 2 ? mask.reshape({b, 1, 1, -1}) : mask.unsqueeze(1)) == 0;
    if (!attn_bias.defined()) attn_bias = torch::zeros({1, n, qx.size(2), kx.size(2)}, x.options());
    attn_bias = attn_bias.masked_fill(m, finfo_min(x.scalar_type()));
  }
  // T5: no 1/sqrt(head_dim) scaling. The reference writes out the logits, adds the bias, upcasts
  // them for the softmax and casts the weights back before the second product; the fused kernel
  // (flash attention on CPU) computes the same formula with fp32 softmax and accumulation
  // throughout: 6x faster here in bf16 and closer to the exact value (see the parity test).
  auto out = at::scaled_dot_product_attention(qx, kx, vx, attn_bias, 0.0, false, /*scale=*/1.0);
  return o(out.transpose(1, 2).reshape({b, -1, n * c}));
}

GateImpl::GateImpl(std::int64_t dim, std::int64_t dim_ffn) {
  proj = register_module("0", Linear(dim, dim_ffn, false));
}

// The reference's GELU module writes the tanh approximation out op by op (seven passes, each
// rounded to the activation dtype); torch's tanh GELU is the same formula in one pass.
torch::Tensor GateImpl::forward(const torch::Tensor& x) { return torch::gelu(proj(x), "tanh"); }

T5FeedForwardImpl::T5FeedForwardImpl(std::int64_t dim, std::int64_t dim_ffn) {
  gate = register_module("gate", Gate(dim, dim_ffn));
  fc1 = register_module("fc1", Linear(dim, dim_ffn, false));
  fc2 = register_module("fc2", Linear(dim_ffn, dim, false));
}

torch::Tensor T5FeedForwardImpl::forward(const torch::Tensor& x) { return fc2(fc1(x) * gate(x)); }

T5SelfAttentionImpl::T5SelfAttentionImpl(const WanTextEncoderConfig& c) : shared_pos(c.shared_pos) {
  norm1 = register_module("norm1", T5LayerNorm(c.dim));
  attn = register_module("attn", T5Attention(c.dim, c.dim_attn, c.num_heads));
  norm2 = register_module("norm2", T5LayerNorm(c.dim));
  ffn = register_module("ffn", T5FeedForward(c.dim, c.dim_ffn));
  if (!shared_pos) pos_embedding = register_module("pos_embedding", T5RelativeEmbedding(c.num_buckets, c.num_heads));
}

torch::Tensor T5SelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask,
                                           const torch::Tensor& pos_bias) {
  const auto e = shared_pos ? pos_bias : pos_embedding(x.size(1), x.size(1));
  auto h = fp16_clamp(x + attn(norm1(x), mask, e));
  return fp16_clamp(h + ffn(norm2(h)));
}

}  // namespace wan_t5

WanTextEncoderImpl::WanTextEncoderImpl(const WanTextEncoderConfig& c) : config(c) {
  config.validate();
  token_embedding = register_module("token_embedding", Weight(std::vector<std::int64_t>{c.vocab, c.dim}));
  if (c.shared_pos) pos_embedding = register_module("pos_embedding", wan_t5::T5RelativeEmbedding(c.num_buckets, c.num_heads));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    typed_blocks.emplace_back(c);
    blocks->push_back(typed_blocks.back());
  }
  norm = register_module("norm", wan_t5::T5LayerNorm(c.dim));
}

torch::Tensor WanTextEncoderImpl::forward(const torch::Tensor& ids, const torch::Tensor& mask) {
  if (ids.dim() != 2) throw Error(std::string(kClass) + ": ids must be [B, L], got " + sizes_str(ids.sizes()));
  if (!c10::isIntegralType(ids.scalar_type(), /*includeBool=*/false))
    throw Error(std::string(kClass) + ": ids must be an integer tensor");
  const auto b = ids.size(0), l = ids.size(1);
  const auto w = token_embedding->compute_weight();
  const auto device = w.device();
  torch::Tensor m;
  if (mask.defined()) {
    const bool ok = (mask.dim() == 2 && mask.sizes() == ids.sizes()) ||
                    (mask.dim() == 3 && mask.sizes() == c10::IntArrayRef{b, l, l});
    if (!ok)
      throw Error(std::string(kClass) + ": mask must be [B, L] or [B, L, L] for ids " + sizes_str(ids.sizes()) +
                  ", got " + sizes_str(mask.sizes()));
    m = mask.to(device);
  }
  auto x = torch::embedding(w, ids.to(device, torch::kLong));
  const auto e = config.shared_pos ? pos_embedding(l, l) : torch::Tensor();
  for (auto& block : typed_blocks) x = block(x, m, e);
  return norm(x);
}

torch::Tensor WanTextEncoderImpl::encode_prompt(const torch::Tensor& ids, const torch::Tensor& mask) {
  if (!mask.defined() || mask.dim() != 2)
    throw Error(std::string(kClass) + ": encode_prompt needs the tokenizer's [B, L] mask");
  auto seq_lens = mask.gt(0).sum(1).to(torch::kLong).cpu();
  auto out = forward(ids, mask);
  const auto l = out.size(1);
  for (std::int64_t i = 0; i < seq_lens.size(0); ++i) {
    const auto v = std::min(seq_lens[i].item<std::int64_t>(), l);
    out.narrow(1, v, l - v).zero_();  // prompt_emb[:, v:] = 0 (every row, as the reference)
  }
  return out;
}

DIFFSYNTH_REGISTER_MODEL("diffsynth.models.wan_video_text_encoder.WanTextEncoder",
                         [](const nlohmann::ordered_json& kwargs) -> std::shared_ptr<Module> {
                           return WanTextEncoder(WanTextEncoderConfig::from_kwargs(kwargs)).ptr();
                         });

}  // namespace diffsynth
