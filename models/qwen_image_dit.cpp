#include "models/qwen_image_dit.h"

#include <cmath>

#include "core/error.h"
#include "core/registry.h"

namespace diffsynth {

namespace {

// A parameter-less container that only gives its children their reference names.
std::shared_ptr<Module> container() { return std::make_shared<Module>(); }

torch::Tensor layer_norm(const torch::Tensor& x) {
  return torch::layer_norm(x, {x.size(-1)}, {}, {}, 1e-6);  // LayerNorm(dim, elementwise_affine=False)
}

// "b s (h d) -> b h s d"
torch::Tensor heads(const torch::Tensor& x, std::int64_t num_heads) {
  return x.view({x.size(0), x.size(1), num_heads, -1}).transpose(1, 2);
}

// apply_rotary_emb_qwen: adjacent pairs as complex numbers times freqs, in fp32.
torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& freqs) {
  auto shape = x.sizes().vec();
  shape.back() /= 2;
  shape.push_back(2);
  auto xc = torch::view_as_complex(x.to(torch::kFloat32).reshape(shape));
  return torch::view_as_real(xc * freqs).flatten(3).to(x.scalar_type());
}

// "B C (H P) (W Q) -> B (H W) (C P Q)"
torch::Tensor pack(const torch::Tensor& latents) {
  const auto B = latents.size(0), C = latents.size(1), H = latents.size(2) / 2, W = latents.size(3) / 2;
  return latents.view({B, C, H, 2, W, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({B, H * W, C * 4});
}

}  // namespace

QwenImageDiTConfig QwenImageDiTConfig::from_kwargs(const nlohmann::ordered_json& kwargs) {
  Kwargs k("QwenImageDiT", kwargs);
  QwenImageDiTConfig c;
  c.num_layers = k.get_int("num_layers", c.num_layers);
  c.use_layer3d_rope = k.get_bool("use_layer3d_rope", c.use_layer3d_rope);
  c.use_additional_t_cond = k.get_bool("use_additional_t_cond", c.use_additional_t_cond);
  // Beyond the reference's arguments: the widths it hard-codes.
  c.dim = k.get_int("dim", c.dim);
  c.num_attention_heads = k.get_int("num_attention_heads", c.num_attention_heads);
  c.attention_head_dim = k.get_int("attention_head_dim", c.attention_head_dim);
  c.joint_attention_dim = k.get_int("joint_attention_dim", c.joint_attention_dim);
  c.in_channels = k.get_int("in_channels", c.in_channels);
  k.finish();
  if (c.num_attention_heads * c.attention_head_dim != c.dim)
    throw Error("QwenImageDiT(): num_attention_heads x attention_head_dim must equal dim");
  const auto axes = c.axes_dim();
  if (axes[0] % 2 || axes[1] % 2 || axes[0] + 2 * axes[1] != c.attention_head_dim)
    throw Error("QwenImageDiT(): attention_head_dim " + std::to_string(c.attention_head_dim) +
                " cannot be split into RoPE axes (head_dim/8 and (head_dim - head_dim/8)/2 must be even)");
  return c;
}

std::vector<std::int64_t> QwenImageDiTConfig::axes_dim() const {
  const std::int64_t frame = attention_head_dim / 8;
  return {frame, (attention_head_dim - frame) / 2, (attention_head_dim - frame) / 2};
}

ModulationImpl::ModulationImpl(std::int64_t dim, std::int64_t out) {
  linear = register_module("1", Linear(dim, out));
}

torch::Tensor ModulationImpl::forward(const torch::Tensor& temb) { return linear(torch::silu(temb)); }

QwenFeedForwardImpl::QwenFeedForwardImpl(std::int64_t dim) {
  auto net = register_module("net", container());
  auto gelu = net->register_module("0", container());
  proj = gelu->register_module("proj", Linear(dim, dim * 4));
  out = net->register_module("2", Linear(dim * 4, dim));
}

torch::Tensor QwenFeedForwardImpl::forward(const torch::Tensor& x) {
  auto h = proj(x);
  h = h * torch::sigmoid(1.702 * h);  // ApproximateGELU: sigmoid form, as the reference
  return out(h);
}

QwenDoubleStreamAttentionImpl::QwenDoubleStreamAttentionImpl(std::int64_t dim, std::int64_t nh, std::int64_t hd)
    : num_heads(nh), head_dim(hd) {
  to_q = register_module("to_q", Linear(dim, dim));
  to_k = register_module("to_k", Linear(dim, dim));
  to_v = register_module("to_v", Linear(dim, dim));
  norm_q = register_module("norm_q", RMSNorm(hd, 1e-6));
  norm_k = register_module("norm_k", RMSNorm(hd, 1e-6));
  add_q_proj = register_module("add_q_proj", Linear(dim, dim));
  add_k_proj = register_module("add_k_proj", Linear(dim, dim));
  add_v_proj = register_module("add_v_proj", Linear(dim, dim));
  norm_added_q = register_module("norm_added_q", RMSNorm(hd, 1e-6));
  norm_added_k = register_module("norm_added_k", RMSNorm(hd, 1e-6));
  auto out = register_module("to_out", container());
  to_out = out->register_module("0", Linear(dim, dim));
  to_add_out = register_module("to_add_out", Linear(dim, dim));
}

std::pair<torch::Tensor, torch::Tensor> QwenDoubleStreamAttentionImpl::forward(
    const torch::Tensor& image, const torch::Tensor& text, const torch::Tensor& img_freqs,
    const torch::Tensor& txt_freqs, const torch::Tensor& attention_mask) {
  auto img_q = norm_q(heads(to_q(image), num_heads));
  auto img_k = norm_k(heads(to_k(image), num_heads));
  auto img_v = heads(to_v(image), num_heads);
  auto txt_q = norm_added_q(heads(add_q_proj(text), num_heads));
  auto txt_k = norm_added_k(heads(add_k_proj(text), num_heads));
  auto txt_v = heads(add_v_proj(text), num_heads);
  if (img_freqs.defined()) {
    img_q = apply_rotary(img_q, img_freqs);
    img_k = apply_rotary(img_k, img_freqs);
    txt_q = apply_rotary(txt_q, txt_freqs);
    txt_k = apply_rotary(txt_k, txt_freqs);
  }
  const auto seq_txt = text.size(1);
  // Joint attention, text first.
  auto q = torch::cat({txt_q, img_q}, 2), k = torch::cat({txt_k, img_k}, 2), v = torch::cat({txt_v, img_v}, 2);
  auto o = at::scaled_dot_product_attention(q, k, v, attention_mask.defined() ? std::optional<at::Tensor>(attention_mask)
                                                                            : std::nullopt);
  o = o.transpose(1, 2).flatten(2).to(q.scalar_type());  // b h s d -> b s (h d)
  auto txt_out = to_add_out(o.narrow(1, 0, seq_txt));
  auto img_out = to_out(o.narrow(1, seq_txt, o.size(1) - seq_txt));
  return {img_out, txt_out};
}

QwenImageTransformerBlockImpl::QwenImageTransformerBlockImpl(std::int64_t d, std::int64_t nh, std::int64_t hd) : dim(d) {
  img_mod = register_module("img_mod", Modulation(d, 6 * d));
  attn = register_module("attn", QwenDoubleStreamAttention(d, nh, hd));
  img_mlp = register_module("img_mlp", QwenFeedForward(d));
  txt_mod = register_module("txt_mod", Modulation(d, 6 * d));
  txt_mlp = register_module("txt_mlp", QwenFeedForward(d));
}

namespace {
// _modulate: (x * (1 + scale) + shift, gate); with `index`, per-token rows of a 2-row parameter.
std::pair<torch::Tensor, torch::Tensor> modulate(const torch::Tensor& x, const torch::Tensor& params,
                                                 const torch::Tensor& index) {
  auto chunks = params.chunk(3, -1);
  torch::Tensor shift, scale, gate;
  if (index.defined()) {
    const auto b = chunks[0].size(0) / 2;
    auto sel = (index.unsqueeze(-1) == 0);
    auto pick = [&](const torch::Tensor& p) {
      return torch::where(sel, p.narrow(0, 0, b).unsqueeze(1), p.narrow(0, b, b).unsqueeze(1));
    };
    shift = pick(chunks[0]);
    scale = pick(chunks[1]);
    gate = pick(chunks[2]);
  } else {
    shift = chunks[0].unsqueeze(1);
    scale = chunks[1].unsqueeze(1);
    gate = chunks[2].unsqueeze(1);
  }
  return {x * (1 + scale) + shift, gate};
}
}  // namespace

std::pair<torch::Tensor, torch::Tensor> QwenImageTransformerBlockImpl::forward(
    const torch::Tensor& image_in, const torch::Tensor& text_in, const torch::Tensor& temb,
    const torch::Tensor& img_freqs, const torch::Tensor& txt_freqs, const torch::Tensor& attention_mask,
    const torch::Tensor& modulate_index) {
  auto img_mods = img_mod(temb).chunk(2, -1);
  auto txt_temb = modulate_index.defined() ? temb.chunk(2, 0)[0] : temb;
  auto txt_mods = txt_mod(txt_temb).chunk(2, -1);

  auto [img_modulated, img_gate] = modulate(layer_norm(image_in), img_mods[0], modulate_index);
  auto [txt_modulated, txt_gate] = modulate(layer_norm(text_in), txt_mods[0], torch::Tensor());
  auto [img_attn, txt_attn] = attn(img_modulated, txt_modulated, img_freqs, txt_freqs, attention_mask);
  auto image = image_in + img_gate * img_attn;
  auto text = text_in + txt_gate * txt_attn;

  auto [img_modulated2, img_gate2] = modulate(layer_norm(image), img_mods[1], modulate_index);
  auto [txt_modulated2, txt_gate2] = modulate(layer_norm(text), txt_mods[1], torch::Tensor());
  image = image + img_gate2 * img_mlp(img_modulated2);
  text = text + txt_gate2 * txt_mlp(txt_modulated2);
  return {text, image};
}

QwenImageDiTImpl::QwenImageDiTImpl(const QwenImageDiTConfig& c) : config(c) {
  auto tte = register_module("time_text_embed", container());
  auto embedder = tte->register_module("timestep_embedder", container());
  linear_1 = embedder->register_module("linear_1", Linear(c.timestep_dim, c.dim));
  linear_2 = embedder->register_module("linear_2", Linear(c.dim, c.dim));
  if (c.use_additional_t_cond)
    addition_t_embedding = tte->register_module("addition_t_embedding", Weight(std::vector<std::int64_t>{2, c.dim}));
  txt_norm = register_module("txt_norm", RMSNorm(c.joint_attention_dim, 1e-6));
  img_in = register_module("img_in", Linear(c.in_channels, c.dim));
  txt_in = register_module("txt_in", Linear(c.joint_attention_dim, c.dim));
  transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    blocks.emplace_back(c.dim, c.num_attention_heads, c.attention_head_dim);
    transformer_blocks->push_back(blocks.back());
  }
  auto norm_out = register_module("norm_out", container());
  norm_out_linear = norm_out->register_module("linear", Linear(c.dim, 2 * c.dim));
  proj_out = register_module("proj_out", Linear(c.dim, c.in_channels));
}

torch::Tensor QwenImageDiTImpl::time_text_embed(const torch::Tensor& timestep, c10::ScalarType dtype,
                                                std::optional<std::int64_t> addition_t_cond) {
  // get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000), fp32.
  const std::int64_t half = config.timestep_dim / 2;
  auto exponent = torch::arange(0, half, torch::TensorOptions().dtype(torch::kFloat32).device(timestep.device())) *
                  (-std::log(10000.0));
  exponent = exponent / static_cast<double>(half);
  auto emb = timestep.unsqueeze(1).to(torch::kFloat32) * torch::exp(exponent).unsqueeze(0);
  emb = emb * 1000;
  emb = torch::cat({torch::cos(emb), torch::sin(emb)}, -1);  // flipped: [cos | sin]
  auto temb = linear_2(torch::silu(linear_1(emb.to(dtype))));
  if (addition_t_cond) {
    if (!addition_t_embedding) throw Error("QwenImageDiT: addition_t_cond given, but the model has no addition_t_embedding");
    const auto w = addition_t_embedding->compute_weight();
    auto idx = torch::full({1}, *addition_t_cond, torch::TensorOptions().dtype(torch::kLong).device(w.device()));
    temb = temb + torch::embedding(w, idx).to(dtype);
  }
  return temb;
}

torch::Tensor QwenImageDiTImpl::rope_freqs(const torch::Tensor& positions, std::int64_t axis_dim) const {
  // rope_params: outer(position, 1 / 10000^(arange(0, d, 2) / d)) as polar(1, angle), complex64.
  auto inv = torch::pow(10000.0, torch::arange(0, axis_dim, 2, torch::kLong).to(torch::kFloat32).div(axis_dim)).reciprocal();
  auto angles = torch::outer(positions.to(torch::kFloat32), inv);
  return torch::polar(torch::ones_like(angles), angles);
}

std::pair<torch::Tensor, torch::Tensor> QwenImageDiTImpl::rope(const std::vector<std::array<std::int64_t, 3>>& shapes,
                                                               std::int64_t max_txt_len) const {
  const auto axes = config.axes_dim();
  const auto L = torch::TensorOptions().dtype(torch::kLong);
  // Centred positions (scale_rope): -(n - n/2) .. n/2 - 1.
  auto centred = [&](std::int64_t n) { return torch::arange(-(n - n / 2), n / 2, L); };
  std::vector<torch::Tensor> vid;
  std::int64_t max_vid_index = 0;
  const std::int64_t n_images = static_cast<std::int64_t>(shapes.size());
  for (std::int64_t idx = 0; idx < n_images; ++idx) {
    const auto [frames, h, w] = shapes[idx];
    torch::Tensor frame_pos;
    if (config.use_layer3d_rope && idx == n_images - 1) {
      if (frames != 1) throw Error("QwenImageDiT: the layered model's condition image must have one frame");
      frame_pos = torch::full({1}, -1, L);  // the condition image sits at frame -1
    } else {
      frame_pos = torch::arange(idx, idx + frames, L);
    }
    auto f = rope_freqs(frame_pos, axes[0]).view({frames, 1, 1, -1}).expand({frames, h, w, -1});
    auto hh = rope_freqs(centred(h), axes[1]).view({1, h, 1, -1}).expand({frames, h, w, -1});
    auto ww = rope_freqs(centred(w), axes[2]).view({1, 1, w, -1}).expand({frames, h, w, -1});
    vid.push_back(torch::cat({f, hh, ww}, -1).reshape({frames * h * w, -1}));
    max_vid_index = std::max({max_vid_index, h / 2, w / 2});
  }
  if (config.use_layer3d_rope) max_vid_index = std::max(max_vid_index, n_images - 1);
  // Text token j sits at max_vid_index + j on all three axes.
  auto tpos = torch::arange(max_vid_index, max_vid_index + max_txt_len, L);
  auto txt = torch::cat({rope_freqs(tpos, axes[0]), rope_freqs(tpos, axes[1]), rope_freqs(tpos, axes[2])}, -1);
  return {torch::cat(vid, 0), txt};
}

torch::Tensor QwenImageDiTImpl::model_fn(const QwenImageDiTInputs& in) {
  const auto& latents = in.latents;
  if (!latents.defined() || latents.dim() != 4 || latents.size(2) % 2 || latents.size(3) % 2)
    throw Error("QwenImageDiT: latents must be [N, C, h, w] with even h and w");
  if (!in.prompt_emb.defined() || in.prompt_emb.dim() != 3 || in.prompt_emb.size(0) != 1)
    throw Error("QwenImageDiT: prompt_emb must be [1, L, " + std::to_string(config.joint_attention_dim) + "]");
  const auto dev = latents.device();
  const std::int64_t h = latents.size(2), w = latents.size(3);
  std::int64_t layer_num = 1;
  if (in.layer_num) layer_num = *in.layer_num + 1;
  if (latents.size(0) != layer_num)
    throw Error("QwenImageDiT: latents batch " + std::to_string(latents.size(0)) + " != " + std::to_string(layer_num) +
                " (layer_num + 1, or 1)");
  std::vector<std::array<std::int64_t, 3>> img_shapes(layer_num, {1, h / 2, w / 2});
  const auto mask = in.prompt_emb_mask.defined() ? in.prompt_emb_mask
                                                 : torch::ones({1, in.prompt_emb.size(1)}, torch::kLong);
  const std::int64_t txt_len = mask.sum(1).max().item<std::int64_t>();
  if (txt_len > in.prompt_emb.size(1)) throw Error("QwenImageDiT: prompt_emb_mask is longer than prompt_emb");
  auto timestep = in.timestep / 1000;

  // "(B N) C (H P) (W Q) -> B (N H W) (C P Q)": the N frames' tokens one after the other.
  auto image = pack(latents).reshape({1, -1, latents.size(1) * 4});
  const std::int64_t image_seq_len = image.size(1);
  std::vector<torch::Tensor> streams = {image};
  auto add_stream = [&](const torch::Tensor& e) {
    img_shapes.push_back({e.size(0), e.size(2) / 2, e.size(3) / 2});
    streams.push_back(pack(e).reshape({1, -1, e.size(1) * 4}));
  };
  if (in.context_latents.defined()) add_stream(in.context_latents);
  for (const auto& e : in.edit_latents) add_stream(e);
  if (in.layer_input_latents.defined()) add_stream(in.layer_input_latents);
  image = img_in(streams.size() == 1 ? image : torch::cat(streams, 1));

  torch::Tensor modulate_index;
  if (in.zero_cond_t) {
    timestep = torch::cat({timestep, timestep * 0}, 0);
    const std::int64_t first = img_shapes[0][0] * img_shapes[0][1] * img_shapes[0][2];
    modulate_index = torch::ones({1, image.size(1)}, torch::TensorOptions().dtype(torch::kInt).device(dev));
    modulate_index.narrow(1, 0, first).zero_();
  }
  std::optional<std::int64_t> t_cond;
  if (config.use_additional_t_cond) t_cond = 0;
  auto temb = time_text_embed(timestep, image.scalar_type(), t_cond);

  auto text = txt_in(txt_norm(in.prompt_emb));
  auto [img_freqs, txt_freqs] = rope(img_shapes, txt_len);
  img_freqs = img_freqs.to(dev);
  txt_freqs = txt_freqs.to(dev);
  // Beyond the reference (which strips padding and runs batch 1 unmasked): text tokens past the
  // mask get no attention. With a full mask nothing is masked, exactly as the reference.
  torch::Tensor attention_mask;
  if (txt_len < text.size(1)) {
    auto keep = torch::ones({text.size(1) + image.size(1)}, torch::TensorOptions().dtype(torch::kBool).device(dev));
    keep.narrow(0, 0, text.size(1)).copy_(mask[0].to(torch::kBool));
    attention_mask = keep.view({1, 1, 1, -1});
    // Padded text positions take the last valid position's frequencies.
    auto extra = txt_freqs.narrow(0, txt_len - 1, 1).expand({text.size(1) - txt_len, -1});
    txt_freqs = torch::cat({txt_freqs, extra}, 0);
  }

  for (std::int64_t i = 0; i < static_cast<std::int64_t>(blocks.size()); ++i) {
    std::tie(text, image) = blocks[i](image, text, temb, img_freqs, txt_freqs, attention_mask, modulate_index);
    if (in.after_block) in.after_block(i, image, image_seq_len);
  }
  if (in.zero_cond_t) temb = temb.chunk(2, 0)[0];
  // norm_out (AdaLayerNorm single): scale first, then shift.
  auto e = norm_out_linear(torch::silu(temb)).unsqueeze(1).chunk(2, 2);
  image = layer_norm(image) * (1 + e[0]) + e[1];
  image = proj_out(image).narrow(1, 0, image_seq_len);
  // "B (N H W) (C P Q) -> (B N) C (H P) (W Q)"
  const std::int64_t C = image.size(2) / 4;
  return image.reshape({layer_num, h / 2, w / 2, C, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({layer_num, C, h, w});
}

DIFFSYNTH_REGISTER_MODEL("diffsynth.models.qwen_image_dit.QwenImageDiT",
                         [](const nlohmann::ordered_json& kwargs) -> std::shared_ptr<Module> {
                           return QwenImageDiT(QwenImageDiTConfig::from_kwargs(kwargs)).ptr();
                         });

}  // namespace diffsynth
