#include "models/wan_video_dit.h"

#include <cmath>

#include "core/error.h"
#include "core/registry.h"

namespace diffsynth {

namespace {

std::shared_ptr<Module> container() { return std::make_shared<Module>(); }

// "b s (n d) -> b n s d"
torch::Tensor heads(const torch::Tensor& x, std::int64_t num_heads) {
  return x.view({x.size(0), x.size(1), num_heads, -1}).transpose(1, 2);
}

// flash_attention (compatibility path): SDPA per head, "b n s d -> b s (n d)".
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, std::int64_t num_heads) {
  auto o = at::scaled_dot_product_attention(heads(q, num_heads), heads(k, num_heads), heads(v, num_heads));
  return o.transpose(1, 2).flatten(2);
}

// rope_apply: adjacent pairs as complex numbers, rotated in float64, cast back.
torch::Tensor rope_apply(const torch::Tensor& x, const torch::Tensor& freqs, std::int64_t num_heads) {
  auto xc = torch::view_as_complex(x.to(torch::kFloat64).reshape({x.size(0), x.size(1), num_heads, -1, 2}));
  return torch::view_as_real(xc * freqs).flatten(2).to(x.scalar_type());
}

// sinusoidal_embedding_1d: [cos | sin] of position x 10000^(-i / half), in float64, then cast
// to the position's dtype.
torch::Tensor sinusoidal_embedding_1d(std::int64_t dim, const torch::Tensor& position) {
  const std::int64_t half = dim / 2;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(position.device());
  auto inv = torch::pow(10000.0, -torch::arange(half, f64).div(half));
  auto sinusoid = torch::outer(position.to(torch::kFloat64), inv);
  return torch::cat({torch::cos(sinusoid), torch::sin(sinusoid)}, 1).to(position.scalar_type());
}

// precompute_freqs_cis: polar(1, outer(arange(end), 1 / theta^(arange(0, dim, 2) / dim))), complex128.
torch::Tensor precompute_freqs_cis(std::int64_t dim, std::int64_t end = 1024, double theta = 10000.0) {
  auto exponents = torch::arange(0, dim, 2, torch::kLong).narrow(0, 0, dim / 2).to(torch::kFloat64).div(dim);
  auto freqs = torch::pow(theta, exponents).reciprocal();
  auto angles = torch::outer(torch::arange(end, torch::kLong).to(torch::kFloat64), freqs);
  return torch::polar(torch::ones_like(angles), angles);
}

torch::Tensor gelu_tanh(const torch::Tensor& x) { return torch::gelu(x, "tanh"); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Config

bool WanModelConfig::uses_wantodance() const {
  return wantodance_enable_music_inject || wantodance_enable_refimage || wantodance_enable_refface ||
         wantodance_enable_global || wantodance_enable_dynamicfps || wantodance_enable_unimodel;
}

WanModelConfig WanModelConfig::from_kwargs(const nlohmann::ordered_json& kwargs) {
  // The reference's positional parameters have no defaults: a missing one is Python's TypeError.
  std::vector<std::string> missing;
  for (const char* name : {"dim", "in_dim", "ffn_dim", "out_dim", "text_dim", "freq_dim", "eps", "patch_size",
                           "num_heads", "num_layers", "has_image_input"})
    if (!kwargs.is_object() || !kwargs.contains(name)) missing.push_back(std::string("'") + name + "'");
  if (!missing.empty()) {
    std::string list;
    for (std::size_t i = 0; i < missing.size(); ++i)
      list += (i == 0 ? "" : i + 1 == missing.size() ? " and " : ", ") + missing[i];
    throw Error("WanModel(): missing " + std::to_string(missing.size()) + " required argument" +
                (missing.size() == 1 ? "" : "s") + ": " + list);
  }
  Kwargs k("WanModel", kwargs);
  WanModelConfig c;
  c.dim = k.get_int("dim", 0);
  c.in_dim = k.get_int("in_dim", 0);
  c.ffn_dim = k.get_int("ffn_dim", 0);
  c.out_dim = k.get_int("out_dim", 0);
  c.text_dim = k.get_int("text_dim", 0);
  c.freq_dim = k.get_int("freq_dim", 0);
  c.eps = k.get_float("eps", c.eps);
  const auto patch = k.get_int_list("patch_size", {});
  c.num_heads = k.get_int("num_heads", 0);
  c.num_layers = k.get_int("num_layers", 0);
  c.has_image_input = k.get_bool("has_image_input", false);
  c.has_image_pos_emb = k.get_bool("has_image_pos_emb", c.has_image_pos_emb);
  c.has_ref_conv = k.get_bool("has_ref_conv", c.has_ref_conv);
  c.add_control_adapter = k.get_bool("add_control_adapter", c.add_control_adapter);
  c.in_dim_control_adapter = k.get_int("in_dim_control_adapter", c.in_dim_control_adapter);
  c.seperated_timestep = k.get_bool("seperated_timestep", c.seperated_timestep);
  c.require_vae_embedding = k.get_bool("require_vae_embedding", c.require_vae_embedding);
  c.require_clip_embedding = k.get_bool("require_clip_embedding", c.require_clip_embedding);
  c.fuse_vae_embedding_in_latents = k.get_bool("fuse_vae_embedding_in_latents", c.fuse_vae_embedding_in_latents);
  c.wantodance_enable_music_inject = k.get_bool("wantodance_enable_music_inject", false);
  c.wantodance_music_inject_layers = k.get_int_list("wantodance_music_inject_layers", c.wantodance_music_inject_layers);
  c.wantodance_enable_refimage = k.get_bool("wantodance_enable_refimage", false);
  c.wantodance_enable_refface = k.get_bool("wantodance_enable_refface", false);
  c.wantodance_enable_global = k.get_bool("wantodance_enable_global", false);
  c.wantodance_enable_dynamicfps = k.get_bool("wantodance_enable_dynamicfps", false);
  c.wantodance_enable_unimodel = k.get_bool("wantodance_enable_unimodel", false);
  k.finish();
  auto bad = [](const std::string& what) { throw Error("WanModel(): " + what); };
  if (patch.size() != 3) bad("patch_size must be a list of 3 integers");
  for (std::size_t i = 0; i < 3; ++i) {
    if (patch[i] <= 0) bad("patch_size entries must be positive");
    c.patch_size[i] = patch[i];
  }
  if (c.dim <= 0 || c.in_dim <= 0 || c.ffn_dim <= 0 || c.out_dim <= 0 || c.text_dim <= 0 || c.freq_dim <= 0 ||
      c.num_heads <= 0 || c.num_layers < 0)
    bad("dim, in_dim, ffn_dim, out_dim, text_dim, freq_dim and num_heads must be positive, num_layers non-negative");
  if (c.freq_dim % 2) bad("freq_dim must be even");
  if (c.dim % c.num_heads) bad("dim " + std::to_string(c.dim) + " is not a multiple of num_heads " + std::to_string(c.num_heads));
  if (c.head_dim() % 2 || (c.head_dim() / 3) % 2)
    bad("head_dim " + std::to_string(c.head_dim()) + " cannot be split into the 3-D RoPE axes (head_dim and head_dim / 3 must be even)");
  if (!(c.eps > 0)) bad("eps must be positive");
  return c;
}

namespace wan_dit {

RMSNorm rms_norm(std::int64_t dim, double eps) {
  return RMSNorm(dim, eps, true, std::vector<std::string>{"diffsynth.models.wan_video_dit.RMSNorm"});
}

AttentionProjections::AttentionProjections(std::int64_t dim, std::int64_t nh, double eps) : num_heads(nh) {
  q = register_module("q", Linear(dim, dim));
  k = register_module("k", Linear(dim, dim));
  v = register_module("v", Linear(dim, dim));
  o = register_module("o", Linear(dim, dim));
  norm_q = register_module("norm_q", rms_norm(dim, eps));
  norm_k = register_module("norm_k", rms_norm(dim, eps));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& freqs) {
  auto qq = rope_apply(norm_q(q(x)), freqs, num_heads);
  auto kk = rope_apply(norm_k(k(x)), freqs, num_heads);
  return o(attention(qq, kk, v(x), num_heads));
}

CrossAttentionImpl::CrossAttentionImpl(std::int64_t dim, std::int64_t nh, double eps, bool image)
    : AttentionProjections(dim, nh, eps), has_image_input(image) {
  if (image) {
    k_img = register_module("k_img", Linear(dim, dim));
    v_img = register_module("v_img", Linear(dim, dim));
    norm_k_img = register_module("norm_k_img", rms_norm(dim, eps));
  }
}

torch::Tensor CrossAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  constexpr std::int64_t kImageTokens = 257;  // CLIP ViT-H/14: 256 patches + class token
  torch::Tensor img, ctx = context;
  if (has_image_input) {
    if (context.size(1) < kImageTokens) throw Error("WanModel: the context holds fewer than 257 CLIP image tokens");
    img = context.narrow(1, 0, kImageTokens);
    ctx = context.narrow(1, kImageTokens, context.size(1) - kImageTokens);
  }
  auto qq = norm_q(q(x));
  auto out = attention(qq, norm_k(k(ctx)), v(ctx), num_heads);
  if (has_image_input) out = out + attention(qq, norm_k_img(k_img(img)), v_img(img), num_heads);
  return o(out);
}

DiTBlockImpl::DiTBlockImpl(bool has_image_input, std::int64_t dim, std::int64_t num_heads, std::int64_t ffn_dim,
                           double eps) {
  set_reference_classes({"diffsynth.models.wan_video_dit.DiTBlock"});
  self_attn = register_module("self_attn", SelfAttention(dim, num_heads, eps));
  cross_attn = register_module("cross_attn", CrossAttention(dim, num_heads, eps, has_image_input));
  norm1 = register_module("norm1", LayerNorm(dim, eps, false));
  norm2 = register_module("norm2", LayerNorm(dim, eps, false));
  norm3 = register_module("norm3", LayerNorm(dim, eps, true));
  auto ffn = register_module("ffn", container());
  ffn_in = ffn->register_module("0", Linear(dim, ffn_dim));
  ffn_out = ffn->register_module("2", Linear(ffn_dim, dim));
  meta_parameter("modulation", {1, 6, dim});
}

torch::Tensor DiTBlockImpl::forward(const torch::Tensor& x_in, const torch::Tensor& context, const torch::Tensor& t_mod,
                                    const torch::Tensor& freqs) {
  const bool has_seq = t_mod.dim() == 4;
  auto mod = compute_param("modulation").to(t_mod.scalar_type()) + t_mod;
  auto chunks = mod.chunk(6, has_seq ? 2 : 1);
  if (has_seq)
    for (auto& c : chunks) c = c.squeeze(2);
  const auto &shift_msa = chunks[0], &scale_msa = chunks[1], &gate_msa = chunks[2];
  const auto &shift_mlp = chunks[3], &scale_mlp = chunks[4], &gate_mlp = chunks[5];
  auto x = x_in + gate_msa * self_attn(norm1(x_in) * (1 + scale_msa) + shift_msa, freqs);
  x = x + cross_attn(norm3(x), context);
  x = x + gate_mlp * ffn_out(gelu_tanh(ffn_in(norm2(x) * (1 + scale_mlp) + shift_mlp)));
  return x;
}

MLPImpl::MLPImpl(std::int64_t in_dim, std::int64_t out_dim, bool pos) : has_pos_emb(pos) {
  set_reference_classes({"diffsynth.models.wan_video_dit.MLP"});
  auto proj = register_module("proj", container());
  norm_in = proj->register_module("0", LayerNorm(in_dim, 1e-5, true));
  fc1 = proj->register_module("1", Linear(in_dim, in_dim));
  fc2 = proj->register_module("3", Linear(in_dim, out_dim));
  norm_out = proj->register_module("4", LayerNorm(out_dim, 1e-5, true));
  if (pos) meta_parameter("emb_pos", {1, 514, 1280});
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x_in) {
  auto x = x_in;
  if (has_pos_emb) {
    const auto pos = compute_param("emb_pos").to(x.scalar_type());
    // FLF2V: the first and last frames' CLIP features, 2 x 257 tokens.
    if (x.dim() != 3 || x.size(1) != pos.size(1) || x.size(2) != pos.size(2))
      throw Error("WanModel: this model's CLIP feature must be [B, 514, 1280] (img_emb.emb_pos), got " +
                  c10::str(x.sizes()));
    x = x + pos;
  }
  return norm_out(fc2(torch::gelu(fc1(norm_in(x)))));
}

HeadImpl::HeadImpl(std::int64_t dim, std::int64_t out_dim, const std::array<std::int64_t, 3>& p, double eps) {
  set_reference_classes({"diffsynth.models.wan_video_dit.Head"});
  norm = register_module("norm", LayerNorm(dim, eps, false));
  head = register_module("head", Linear(dim, out_dim * p[0] * p[1] * p[2]));
  meta_parameter("modulation", {1, 2, dim});
}

torch::Tensor HeadImpl::forward(const torch::Tensor& x, const torch::Tensor& t) {
  auto m = compute_param("modulation").to(t.scalar_type());
  torch::Tensor shift, scale;
  if (t.dim() == 3) {  // per-token: [1, 1, 2, dim] + [B, S, 1, dim]
    auto c = (m.unsqueeze(0) + t.unsqueeze(2)).chunk(2, 2);
    shift = c[0].squeeze(2);
    scale = c[1].squeeze(2);
  } else {  // [1, 2, dim] + [B, 1, dim]
    auto c = (m + t.unsqueeze(1)).chunk(2, 1);
    shift = c[0];
    scale = c[1];
  }
  return head(norm(x) * (1 + scale) + shift);
}

SimpleAdapterImpl::SimpleAdapterImpl(std::int64_t in_dim, std::int64_t out_dim, std::vector<std::int64_t> kernel) {
  set_reference_classes({"diffsynth.models.wan_video_camera_controller.SimpleAdapter"});
  conv = register_module("conv", Conv(in_dim * 64, out_dim, kernel, kernel));
  auto blocks = register_module("residual_blocks", container());
  auto block = blocks->register_module("0", container());
  res_conv1 = block->register_module("conv1", conv2d(out_dim, out_dim, 3, 1, 1));
  res_conv2 = block->register_module("conv2", conv2d(out_dim, out_dim, 3, 1, 1));
}

torch::Tensor SimpleAdapterImpl::forward(const torch::Tensor& x) {
  const auto b = x.size(0), c = x.size(1), f = x.size(2), h = x.size(3), w = x.size(4);
  auto frames = x.permute({0, 2, 1, 3, 4}).reshape({b * f, c, h, w});
  auto y = conv(torch::pixel_unshuffle(frames, 8));
  y = y + res_conv2(torch::relu(res_conv1(y)));
  return y.view({b, f, y.size(1), y.size(2), y.size(3)}).permute({0, 2, 1, 3, 4});
}

}  // namespace wan_dit

// ---------------------------------------------------------------------------------------------
// WanModel

namespace {
// nn.MultiheadAttention's parameters (layout only: WanToDance's music encoder).
std::shared_ptr<Module> multihead_attention_layout(std::int64_t d) {
  struct MHA : Module {
    explicit MHA(std::int64_t d) {
      set_reference_classes({"torch.nn.MultiheadAttention"});
      meta_parameter("in_proj_weight", {3 * d, d});
      meta_parameter("in_proj_bias", {3 * d});
      register_module("out_proj", Linear(d, d));
    }
  };
  return std::make_shared<MHA>(d);
}
}  // namespace

WanModelImpl::WanModelImpl(const WanModelConfig& c) : config(c) {
  using namespace wan_dit;
  const std::vector<std::int64_t> patch(c.patch_size.begin(), c.patch_size.end());
  patch_embedding = register_module("patch_embedding", Conv(c.in_dim, c.dim, patch, patch));
  auto text = register_module("text_embedding", container());
  text_embedding_0 = text->register_module("0", Linear(c.text_dim, c.dim));
  text_embedding_2 = text->register_module("2", Linear(c.dim, c.dim));
  auto time = register_module("time_embedding", container());
  time_embedding_0 = time->register_module("0", Linear(c.freq_dim, c.dim));
  time_embedding_2 = time->register_module("2", Linear(c.dim, c.dim));
  auto proj = register_module("time_projection", container());
  time_projection_1 = proj->register_module("1", Linear(c.dim, c.dim * 6));
  block_list = register_module("blocks", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    blocks.emplace_back(c.has_image_input, c.dim, c.num_heads, c.ffn_dim, c.eps);
    block_list->push_back(blocks.back());
  }
  head = register_module("head", Head(c.dim, c.out_dim, c.patch_size, c.eps));
  if (c.has_image_input) img_emb = register_module("img_emb", MLP(1280, c.dim, c.has_image_pos_emb));
  if (c.has_ref_conv)
    ref_conv = register_module("ref_conv", conv2d(16, c.dim, 2, 2));
  if (c.add_control_adapter)
    control_adapter = register_module("control_adapter", SimpleAdapter(c.in_dim_control_adapter, c.dim, std::vector<std::int64_t>{patch[1], patch[2]}));

  // WanToDance (layout only; model_fn refuses these models).
  if (c.wantodance_enable_music_inject) {
    auto injector = register_module("music_injector", container());
    auto list = injector->register_module("injector", container());
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < c.num_layers; ++i)
      for (auto layer : c.wantodance_music_inject_layers)
        if (layer == i) list->register_module(std::to_string(n++), CrossAttention(c.dim, c.num_heads, 1e-6, false));
  }
  if (c.wantodance_enable_refimage) register_module("img_emb_refimage", MLP(1280, c.dim, c.has_image_pos_emb));
  if (c.wantodance_enable_refface) register_module("img_emb_refface", MLP(1280, c.dim, c.has_image_pos_emb));
  if (c.wantodance_enable_global || c.wantodance_enable_dynamicfps || c.wantodance_enable_unimodel) {
    constexpr std::int64_t music_dim = 35, latent = 256, ff = 1024;
    register_module("music_projection", Linear(music_dim, latent));
    auto encoder = register_module("music_encoder", container());
    for (int i = 0; i < 2; ++i) {
      auto layer = encoder->register_module(std::to_string(i), container());
      layer->register_module("self_attn", multihead_attention_layout(latent));
      layer->register_module("linear1", Linear(latent, ff));
      layer->register_module("linear2", Linear(ff, latent));
      layer->register_module("norm1", LayerNorm(latent, 1e-5, true));
      layer->register_module("norm2", LayerNorm(latent, 1e-5, true));
    }
  }
  if (c.wantodance_enable_unimodel) {
    register_module("patch_embedding_global", Conv(c.in_dim, c.dim, patch, patch));
    register_module("head_global", Head(c.dim, c.out_dim, c.patch_size, c.eps));
  }

  // precompute_freqs_cis_3d: the frame axis takes what the two spatial axes (head_dim / 3 each) leave.
  const std::int64_t hd = c.head_dim();
  const std::int64_t end = (c.wantodance_enable_dynamicfps || c.wantodance_enable_unimodel)
                               ? static_cast<std::int64_t>(22350 / 8.0 + 0.5)
                               : 1024;
  freqs_ = {precompute_freqs_cis(hd - 2 * (hd / 3), end), precompute_freqs_cis(hd / 3, end),
            precompute_freqs_cis(hd / 3, end)};
}

torch::Tensor WanModelImpl::rope(std::int64_t f, std::int64_t h, std::int64_t w) const {
  const std::int64_t end = freqs_[0].size(0);
  if (f > end || h > end || w > end)
    throw Error("WanModel: a token grid of " + std::to_string(f) + " x " + std::to_string(h) + " x " +
                std::to_string(w) + " exceeds the RoPE table (" + std::to_string(end) + " positions per axis)");
  auto ff = freqs_[0].narrow(0, 0, f).view({f, 1, 1, -1}).expand({f, h, w, -1});
  auto hh = freqs_[1].narrow(0, 0, h).view({1, h, 1, -1}).expand({f, h, w, -1});
  auto ww = freqs_[2].narrow(0, 0, w).view({1, 1, w, -1}).expand({f, h, w, -1});
  return torch::cat({ff, hh, ww}, -1).reshape({f * h * w, 1, -1});
}

torch::Tensor WanModelImpl::model_fn(const WanDiTInputs& in) {
  const auto& c = config;
  if (c.uses_wantodance()) throw Error("WanModel: WanToDance models are not supported yet (layout only)");
  const auto& latents = in.latents;
  if (!latents.defined() || latents.dim() != 5)
    throw Error("WanModel: latents must be 5-D [B, C, F, H, W], got " +
                (latents.defined() ? std::to_string(latents.dim()) + "-D" : std::string("none")));
  if (!in.context.defined() || in.context.dim() != 3 || in.context.size(2) != c.text_dim)
    throw Error("WanModel: context must be [B, L, " + std::to_string(c.text_dim) + "]");
  if (!in.timestep.defined() || in.timestep.dim() != 1)
    throw Error("WanModel: timestep must be a 1-D tensor");
  const auto dtype = latents.scalar_type();
  const auto dev = latents.device();

  // Timestep embedding (per token for Wan2.2 TI2V: the first latent frame is clean, t = 0).
  torch::Tensor timestep = in.timestep, t, t_mod;
  if (c.seperated_timestep && in.fuse_vae_embedding_in_latents) {
    const std::int64_t per_frame = latents.size(3) * latents.size(4) / 4;
    const auto opts = torch::TensorOptions().dtype(dtype).device(dev);
    timestep = torch::cat({torch::zeros({1, per_frame}, opts),
                           torch::ones({latents.size(2) - 1, per_frame}, opts) * in.timestep})
                   .flatten();
    t = time_embedding_2(torch::silu(time_embedding_0(sinusoidal_embedding_1d(c.freq_dim, timestep).unsqueeze(0))));
    t_mod = time_projection_1(torch::silu(t)).unflatten(2, {6, c.dim});
  } else {
    t = time_embedding_2(torch::silu(time_embedding_0(sinusoidal_embedding_1d(c.freq_dim, timestep))));
    t_mod = time_projection_1(torch::silu(t)).unflatten(1, {6, c.dim});
  }
  auto context = text_embedding_2(gelu_tanh(text_embedding_0(in.context)));

  // Merged CFG: one batch of conditional and unconditional contexts.
  auto x = latents;
  const auto batch = context.size(0);
  if (x.size(0) != batch) {
    if (x.size(0) != 1) throw Error("WanModel: latents batch " + std::to_string(x.size(0)) + " != context batch " + std::to_string(batch));
    x = x.expand({batch, -1, -1, -1, -1});
  }
  // A timestep of batch 1 broadcasts over the merged batch (the reference repeats it only after
  // the embedding, which then goes unused).

  if (in.y.defined() && c.require_vae_embedding) x = torch::cat({x, in.y.to(dtype)}, 1);
  if (in.clip_feature.defined() && c.require_clip_embedding) {
    if (!img_emb) throw Error("WanModel: a CLIP feature was given, but this model has no image input (img_emb)");
    context = torch::cat({img_emb(in.clip_feature.to(dtype)), context}, 1);
  }
  if (x.size(1) != c.in_dim)
    throw Error("WanModel: the input has " + std::to_string(x.size(1)) + " channels (latents" +
                (in.y.defined() ? " + y" : "") + "), the model takes in_dim = " + std::to_string(c.in_dim));
  for (int i = 0; i < 3; ++i)
    if (x.size(2 + i) % c.patch_size[i])
      throw Error("WanModel: latent size " + std::to_string(x.size(2 + i)) + " is not a multiple of the patch size " +
                  std::to_string(c.patch_size[i]));

  x = patch_embedding(x);
  if (control_adapter && in.control_camera_latents_input.defined())
    x = x + control_adapter(in.control_camera_latents_input.to(dtype));
  std::int64_t f = x.size(2);
  const std::int64_t h = x.size(3), w = x.size(4);
  x = x.flatten(2).transpose(1, 2).contiguous();  // b c f h w -> b (f h w) c

  std::int64_t ref_tokens = 0;
  if (in.reference_latents.defined()) {
    if (!ref_conv) throw Error("WanModel: reference latents were given, but this model has no ref_conv");
    auto ref = in.reference_latents.to(dtype);
    if (ref.dim() == 5) ref = ref.select(2, 0);
    ref = ref_conv(ref).flatten(2).transpose(1, 2);
    ref_tokens = ref.size(1);
    x = torch::cat({ref, x}, 1);
    f += 1;
  }
  const auto freqs = rope(f, h, w).to(dev);

  for (std::int64_t i = 0; i < static_cast<std::int64_t>(blocks.size()); ++i) {
    x = blocks[i](x, context, t_mod, freqs);
    if (in.after_block) in.after_block(i, x);
  }
  x = head(x, t);
  if (ref_tokens) {
    x = x.narrow(1, ref_tokens, x.size(1) - ref_tokens);
    f -= 1;
  }
  // b (f h w) (x y z c) -> b c (f x) (h y) (w z)
  const auto [px, py, pz] = c.patch_size;
  const std::int64_t C = x.size(2) / (px * py * pz);
  return x.reshape({x.size(0), f, h, w, px, py, pz, C})
      .permute({0, 7, 1, 4, 2, 5, 3, 6})
      .reshape({x.size(0), C, f * px, h * py, w * pz});
}

DIFFSYNTH_REGISTER_MODEL("diffsynth.models.wan_video_dit.WanModel",
                         [](const nlohmann::ordered_json& kwargs) -> std::shared_ptr<Module> {
                           return WanModel(WanModelConfig::from_kwargs(kwargs)).ptr();
                         });

}  // namespace diffsynth
