#include "models/qwen_image_text_encoder.h"

#include <cmath>

#include "core/error.h"
#include "core/registry.h"

namespace diffsynth {

namespace {
const char* kClass = "QwenImageTextEncoder";

std::string sizes_str(c10::IntArrayRef s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// transformers' rotate_half: cat(-x2, x1) over the two halves of the last dim.
torch::Tensor rotate_half(const torch::Tensor& x) {
  const auto half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, x.size(-1) - half);
  return torch::cat({-x2, x1}, -1);
}

// transformers' repeat_kv: [B, kv, L, D] -> [B, kv * n_rep, L, D] (each kv head repeated n_rep times).
torch::Tensor repeat_kv(const torch::Tensor& x, std::int64_t n_rep) {
  if (n_rep == 1) return x;
  const auto b = x.size(0), kv = x.size(1), l = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, kv, n_rep, l, d}).reshape({b, kv * n_rep, l, d});
}
}  // namespace

void QwenImageTextEncoderConfig::validate() const {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw Error(std::string(kClass) + "(): " + what);
  };
  for (auto [name, v] : std::initializer_list<std::pair<const char*, std::int64_t>>{
           {"hidden_size", hidden_size},
           {"intermediate_size", intermediate_size},
           {"num_hidden_layers", num_hidden_layers},
           {"num_attention_heads", num_attention_heads},
           {"num_key_value_heads", num_key_value_heads},
           {"vocab_size", vocab_size},
           {"vision_depth", vision_depth},
           {"vision_hidden_size", vision_hidden_size},
           {"vision_num_heads", vision_num_heads},
           {"vision_intermediate_size", vision_intermediate_size},
           {"vision_patch_size", vision_patch_size},
           {"vision_temporal_patch_size", vision_temporal_patch_size},
           {"vision_spatial_merge_size", vision_spatial_merge_size},
           {"vision_in_channels", vision_in_channels},
           {"vision_out_hidden_size", vision_out_hidden_size}})
    need(v > 0 || (v == 0 && std::string(name) == "vision_depth"),
         std::string(name) + " must be positive, got " + std::to_string(v));
  need(hidden_size % num_attention_heads == 0, "hidden_size " + std::to_string(hidden_size) +
                                                   " is not divisible by num_attention_heads " +
                                                   std::to_string(num_attention_heads));
  need(num_attention_heads % num_key_value_heads == 0, "num_attention_heads " + std::to_string(num_attention_heads) +
                                                           " is not divisible by num_key_value_heads " +
                                                           std::to_string(num_key_value_heads));
  const auto rope_half = mrope_section[0] + mrope_section[1] + mrope_section[2];
  need(head_dim() == 2 * rope_half, "head dim (hidden_size / num_attention_heads) must be " +
                                        std::to_string(2 * rope_half) + " for mrope_section [16, 24, 24], got " +
                                        std::to_string(head_dim()));
  need(vision_hidden_size % vision_num_heads == 0, "vision_hidden_size is not divisible by vision_num_heads");
  need(rms_norm_eps > 0 && rope_theta > 0, "rms_norm_eps and rope_theta must be positive");
}

QwenImageTextEncoderConfig QwenImageTextEncoderConfig::from_kwargs(const nlohmann::ordered_json& kwargs) {
  Kwargs k(kClass, kwargs);
  QwenImageTextEncoderConfig c;
  c.hidden_size = k.get_int("hidden_size", c.hidden_size);
  c.intermediate_size = k.get_int("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = k.get_int("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = k.get_int("num_attention_heads", c.num_attention_heads);
  c.num_key_value_heads = k.get_int("num_key_value_heads", c.num_key_value_heads);
  c.vocab_size = k.get_int("vocab_size", c.vocab_size);
  c.rms_norm_eps = k.get_float("rms_norm_eps", c.rms_norm_eps);
  c.rope_theta = k.get_float("rope_theta", c.rope_theta);
  c.vision_depth = k.get_int("vision_depth", c.vision_depth);
  c.vision_hidden_size = k.get_int("vision_hidden_size", c.vision_hidden_size);
  c.vision_num_heads = k.get_int("vision_num_heads", c.vision_num_heads);
  c.vision_intermediate_size = k.get_int("vision_intermediate_size", c.vision_intermediate_size);
  c.vision_patch_size = k.get_int("vision_patch_size", c.vision_patch_size);
  c.vision_temporal_patch_size = k.get_int("vision_temporal_patch_size", c.vision_temporal_patch_size);
  c.vision_spatial_merge_size = k.get_int("vision_spatial_merge_size", c.vision_spatial_merge_size);
  c.vision_in_channels = k.get_int("vision_in_channels", c.vision_in_channels);
  c.vision_out_hidden_size = k.get_int("vision_out_hidden_size", c.hidden_size);
  k.finish();
  c.validate();
  return c;
}

namespace qwen2_5_vl {

RMSNormImpl::RMSNormImpl(std::int64_t dim, double e) : eps(e) {
  meta_parameter("weight", {dim});
  // Qwen2RMSNorm, renamed Qwen2_5_VLRMSNorm in transformers 5.2.0.
  set_reference_classes({"transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLRMSNorm",
                         "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2RMSNorm"});
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const auto input_dtype = x.scalar_type();
  auto h = x.to(torch::kFloat32);
  auto variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * torch::rsqrt(variance + eps);
  return compute_param("weight") * h.to(input_dtype);
}


MLPImpl::MLPImpl(std::int64_t hidden, std::int64_t intermediate, bool bias) {
  gate_proj = register_module("gate_proj", Linear(hidden, intermediate, bias));
  up_proj = register_module("up_proj", Linear(hidden, intermediate, bias));
  down_proj = register_module("down_proj", Linear(intermediate, hidden, bias));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) { return down_proj(torch::silu(gate_proj(x)) * up_proj(x)); }

AttentionImpl::AttentionImpl(const QwenImageTextEncoderConfig& c)
    : num_heads(c.num_attention_heads), num_kv_heads(c.num_key_value_heads), head_dim(c.head_dim()) {
  q_proj = register_module("q_proj", Linear(c.hidden_size, num_heads * head_dim, true));
  k_proj = register_module("k_proj", Linear(c.hidden_size, num_kv_heads * head_dim, true));
  v_proj = register_module("v_proj", Linear(c.hidden_size, num_kv_heads * head_dim, true));
  o_proj = register_module("o_proj", Linear(num_heads * head_dim, c.hidden_size, false));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                     const torch::Tensor& mask) {
  const auto b = x.size(0), l = x.size(1);
  auto q = q_proj(x).view({b, l, -1, head_dim}).transpose(1, 2);
  auto k = k_proj(x).view({b, l, -1, head_dim}).transpose(1, 2);
  auto v = v_proj(x).view({b, l, -1, head_dim}).transpose(1, 2);
  // apply_rotary_pos_emb, in the activation dtype (cos/sin already cast to it).
  const auto c = cos.unsqueeze(1), s = sin.unsqueeze(1);
  q = q * c + rotate_half(q) * s;
  k = k * c + rotate_half(k) * s;
  // transformers' sdpa_attention_forward: without a mask, SDPA's own causal mask and native
  // GQA (head dim <= 256); with a padding mask, kv heads repeated and the boolean mask given.
  const std::int64_t groups = num_heads / num_kv_heads;
  const double scale = std::pow(static_cast<double>(head_dim), -0.5);  // head_dim**-0.5
  torch::Tensor out;
  if (!mask.defined()) {
    const bool gqa = groups > 1 && head_dim <= 256;
    if (groups > 1 && !gqa) {
      k = repeat_kv(k, groups);
      v = repeat_kv(v, groups);
    }
    out = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, /*is_causal=*/l > 1, scale, gqa);
  } else {
    out = at::scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), mask, 0.0,
                                           /*is_causal=*/false, scale);
  }
  out = out.transpose(1, 2).contiguous().reshape({b, l, -1}).contiguous();
  return o_proj(out);
}

DecoderLayerImpl::DecoderLayerImpl(const QwenImageTextEncoderConfig& c) {
  self_attn = register_module("self_attn", Attention(c));
  mlp = register_module("mlp", MLP(c.hidden_size, c.intermediate_size, false));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                        const torch::Tensor& mask) {
  auto h = x + self_attn(input_layernorm(x), cos, sin, mask);
  return h + mlp(post_attention_layernorm(h));
}

TextModelImpl::TextModelImpl(const QwenImageTextEncoderConfig& c) : config(c) {
  embed_tokens = register_module("embed_tokens", Weight(std::vector<std::int64_t>{c.vocab_size, c.hidden_size}));
  layers = register_module("layers", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    typed_layers.emplace_back(c);
    layers->push_back(typed_layers.back());
  }
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  // compute_default_rope_parameters: 1 / (theta ** (arange(0, dim, 2) / dim)), fp32 on CPU.
  const auto dim = c.head_dim();
  inv_freq = torch::reciprocal(torch::pow(c.rope_theta, torch::arange(0, dim, 2, torch::kFloat32) / dim));
}

std::pair<torch::Tensor, torch::Tensor> TextModelImpl::rotary(const torch::Tensor& position_ids,
                                                              c10::ScalarType dtype) const {
  // In the reference inv_freq is a buffer, so the loader's model.to(dtype) rounds it to the model
  // dtype (bf16 in the pipeline); the forward then reads it back as fp32. Same here.
  auto inv = inv_freq.to(dtype).to(torch::kFloat32).to(position_ids.device());
  auto freqs = position_ids.unsqueeze(-1).to(torch::kFloat32) * inv;  // [3, B, L, head_dim / 2]
  auto recompose = [&](const torch::Tensor& f) {
    auto parts = f.split_with_sizes({config.mrope_section[0], config.mrope_section[1], config.mrope_section[2]}, -1);
    std::vector<torch::Tensor> picked;
    for (std::size_t i = 0; i < parts.size(); ++i) picked.push_back(parts[i][i % 3]);
    auto g = torch::cat(picked, -1);
    return torch::cat({g, g}, -1);
  };
  // attention_scaling is 1.0 for the default rope type (the multiply is exact, left out).
  return {recompose(freqs.cos()).to(dtype), recompose(freqs.sin()).to(dtype)};
}

std::vector<torch::Tensor> TextModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                                  const torch::Tensor& position_ids, bool all_hidden_states) {
  const auto w = embed_tokens->compute_weight();
  if (input_ids.dim() != 2)
    throw Error(std::string(kClass) + ": input_ids must be [B, L], got " + sizes_str(input_ids.sizes()));
  if (!c10::isIntegralType(input_ids.scalar_type(), /*includeBool=*/false))
    throw Error(std::string(kClass) + ": input_ids must be an integer tensor");
  const auto device = w.device();
  const auto b = input_ids.size(0), l = input_ids.size(1);
  auto ids = input_ids.to(device, torch::kLong);
  auto h = torch::embedding(w, ids);

  auto pos = position_ids.defined() ? position_ids.to(device, torch::kLong)
                                    : torch::arange(l, torch::TensorOptions().dtype(torch::kLong).device(device))
                                          .view({1, 1, l})
                                          .expand({3, b, l});
  if (pos.sizes() != c10::IntArrayRef{3, b, l})
    throw Error(std::string(kClass) + ": position_ids must be [3, B, L], got " + sizes_str(pos.sizes()));

  // create_causal_mask (sdpa): no mask at all when nothing is padded, else causal AND key-not-padded.
  torch::Tensor mask;
  if (attention_mask.defined()) {
    if (attention_mask.sizes() != input_ids.sizes())
      throw Error(std::string(kClass) + ": attention_mask must have the shape of input_ids " +
                  sizes_str(input_ids.sizes()) + ", got " + sizes_str(attention_mask.sizes()));
    auto pad = attention_mask.to(device).to(torch::kBool);
    if (!pad.all().item<bool>()) {
      auto causal = torch::ones({l, l}, torch::TensorOptions().dtype(torch::kBool).device(device)).tril();
      mask = causal.view({1, 1, l, l}).logical_and(pad.view({b, 1, 1, l}));
    }
  }
  auto [cos, sin] = rotary(pos, h.scalar_type());

  std::vector<torch::Tensor> out;
  if (all_hidden_states) out.push_back(h);
  for (std::size_t i = 0; i < typed_layers.size(); ++i) {
    h = typed_layers[i](h, cos, sin, mask);
    if (all_hidden_states && i + 1 < typed_layers.size()) out.push_back(h);
  }
  out.push_back(norm(h));  // the last recorded hidden state is replaced by the normed one
  return out;
}

VisionAttentionImpl::VisionAttentionImpl(std::int64_t dim) {
  qkv = register_module("qkv", Linear(dim, 3 * dim, true));
  proj = register_module("proj", Linear(dim, dim, true));
}

VisionBlockImpl::VisionBlockImpl(const QwenImageTextEncoderConfig& c) {
  norm1 = register_module("norm1", RMSNorm(c.vision_hidden_size, 1e-6));
  norm2 = register_module("norm2", RMSNorm(c.vision_hidden_size, 1e-6));
  attn = register_module("attn", VisionAttention(c.vision_hidden_size));
  mlp = register_module("mlp", MLP(c.vision_hidden_size, c.vision_intermediate_size, true));
}

MergerMLPImpl::MergerMLPImpl(std::int64_t in, std::int64_t out) {
  register_module("0", Linear(in, in, true));
  register_module("2", Linear(in, out, true));
}

PatchMergerImpl::PatchMergerImpl(const QwenImageTextEncoderConfig& c) {
  const auto merged = c.vision_hidden_size * c.vision_spatial_merge_size * c.vision_spatial_merge_size;
  ln_q = register_module("ln_q", RMSNorm(c.vision_hidden_size, 1e-6));
  mlp = register_module("mlp", MergerMLP(merged, c.vision_out_hidden_size));
}

PatchEmbedImpl::PatchEmbedImpl(const QwenImageTextEncoderConfig& c) {
  set_reference_classes({"transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VisionPatchEmbed"});
  proj = register_module(
      "proj", Weight(std::vector<std::int64_t>{c.vision_hidden_size, c.vision_in_channels, c.vision_temporal_patch_size,
                                               c.vision_patch_size, c.vision_patch_size},
                     std::vector<std::string>{"torch.nn.Conv3d"}));
}

VisionTransformerImpl::VisionTransformerImpl(const QwenImageTextEncoderConfig& c) {
  patch_embed = register_module("patch_embed", PatchEmbed(c));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < c.vision_depth; ++i) blocks->push_back(VisionBlock(c));
  merger = register_module("merger", PatchMerger(c));
}

ModelImpl::ModelImpl(const QwenImageTextEncoderConfig& c) {
  visual = register_module("visual", VisionTransformer(c));
  language_model = register_module("language_model", TextModel(c));
}

}  // namespace qwen2_5_vl

QwenImageTextEncoderImpl::QwenImageTextEncoderImpl(const QwenImageTextEncoderConfig& c) : config(c) {
  config.validate();
  model = register_module("model", qwen2_5_vl::Model(c));
  lm_head = register_module("lm_head", Linear(c.hidden_size, c.vocab_size, false));
}

torch::Tensor QwenImageTextEncoderImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  return model->language_model->forward(input_ids, attention_mask, {}, /*all_hidden_states=*/false).back();
}

std::vector<torch::Tensor> QwenImageTextEncoderImpl::hidden_states(const torch::Tensor& input_ids,
                                                                   const torch::Tensor& attention_mask) {
  return model->language_model->forward(input_ids, attention_mask, {}, /*all_hidden_states=*/true);
}

DIFFSYNTH_REGISTER_MODEL("diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder",
                         [](const nlohmann::ordered_json& kwargs) -> std::shared_ptr<Module> {
                           return QwenImageTextEncoder(QwenImageTextEncoderConfig::from_kwargs(kwargs)).ptr();
                         });

}  // namespace diffsynth
