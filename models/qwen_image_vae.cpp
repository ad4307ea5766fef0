#include "models/qwen_image_vae.h"

#include <array>
#include <cmath>

#include "core/error.h"
#include "core/registry.h"

namespace diffsynth {

QwenImageVAEConfig QwenImageVAEConfig::from_kwargs(const nlohmann::ordered_json& kwargs) {
  Kwargs k("QwenImageVAE", kwargs);
  QwenImageVAEConfig c;
  c.base_dim = k.get_int("base_dim", c.base_dim);
  c.z_dim = k.get_int("z_dim", c.z_dim);
  c.dim_mult = k.get_int_list("dim_mult", c.dim_mult);
  c.num_res_blocks = k.get_int("num_res_blocks", c.num_res_blocks);
  c.attn_scales = k.get_float_list("attn_scales", c.attn_scales);
  c.temperal_downsample = k.get_bool_list("temperal_downsample", c.temperal_downsample);
  c.dropout = k.get_float("dropout", c.dropout);
  c.image_channels = k.get_int("image_channels", c.image_channels);
  k.finish();
  auto bad = [](const std::string& what) { throw Error("QwenImageVAE(): " + what); };
  if (c.base_dim <= 0 || c.z_dim <= 0 || c.num_res_blocks < 0 || c.image_channels <= 0)
    bad("base_dim, z_dim and image_channels must be positive and num_res_blocks non-negative");
  if (c.dim_mult.empty()) bad("dim_mult must not be empty");
  for (auto m : c.dim_mult)
    if (m <= 0) bad("dim_mult entries must be positive");
  if (c.temperal_downsample.size() + 1 < c.dim_mult.size())
    bad("temperal_downsample needs one entry per downsampling stage (" + std::to_string(c.dim_mult.size() - 1) + ")");
  return c;
}

namespace qwen_vae {

namespace {
std::vector<std::int64_t> triple(std::vector<std::int64_t> v) {
  if (v.size() == 1) return {v[0], v[0], v[0]};
  if (v.size() != 3) throw Error("internal: CausalConv3d expects 1 or 3 sizes");
  return v;
}
}  // namespace

CausalConv3d::CausalConv3d(std::int64_t in, std::int64_t out, std::vector<std::int64_t> k, std::vector<std::int64_t> s,
                           std::vector<std::int64_t> p)
    : kernel(triple(std::move(k))), stride(triple(std::move(s))), padding(triple(std::move(p))) {
  set_reference_classes({"diffsynth.models.qwen_image_vae.QwenImageCausalConv3d", "torch.nn.Conv3d"});
  meta_parameter("weight", {out, in, kernel[0], kernel[1], kernel[2]});
  meta_parameter("bias", {out});
}

torch::Tensor CausalConv3d::forward(const torch::Tensor& x) {
  if (single_frame_as_2d && x.size(2) == 1 && stride[0] == 1 && kernel[0] == 2 * padding[0] + 1) {
    // One frame behind 2*pt zero frames: only the last temporal tap meets data. The same sum
    // without the zero products (a third of the work for 3x3x3; results differ from the padded
    // conv3d only in the summation order).
    auto w = compute_param("weight").select(2, kernel[0] - 1);
    return torch::conv2d(x.squeeze(2), w, compute_param("bias"), {stride[1], stride[2]}, {padding[1], padding[2]}).unsqueeze(2);
  }
  // All temporal padding in front: a frame never sees the frames after it.
  auto padded = torch::constant_pad_nd(x, {padding[2], padding[2], padding[1], padding[1], 2 * padding[0], 0}, 0);
  return torch::conv3d(padded, compute_param("weight"), compute_param("bias"), stride);
}

Conv2d::Conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t s, std::int64_t p)
    : stride(s), padding(p) {
  set_reference_classes({"torch.nn.Conv2d"});
  meta_parameter("weight", {out, in, kernel, kernel});
  meta_parameter("bias", {out});
}

torch::Tensor Conv2d::forward(const torch::Tensor& x) {
  return torch::conv2d(x, compute_param("weight"), compute_param("bias"), {stride, stride}, {padding, padding});
}

RMSNorm::RMSNorm(std::int64_t d, bool images) : dim(d) {
  set_reference_classes({"diffsynth.models.qwen_image_vae.QwenImageRMS_norm"});
  if (images)
    meta_parameter("gamma", {d, 1, 1});
  else
    meta_parameter("gamma", {d, 1, 1, 1});
}

torch::Tensor RMSNorm::forward(const torch::Tensor& x) {
  // F.normalize(x, dim=1): x / max(||x||_2, 1e-12) over channels, in the input dtype.
  auto denom = torch::linalg_vector_norm(x, 2, std::vector<std::int64_t>{1}, /*keepdim=*/true, std::nullopt)
                   .clamp_min(1e-12)
                   .expand_as(x);
  // The reference then adds a bias of 0.0 (a no-op) -- omitted.
  return x / denom * std::pow(static_cast<double>(dim), 0.5) * compute_param("gamma");
}

ResidualBlock::ResidualBlock(std::int64_t in_dim, std::int64_t out_dim) {
  norm1 = register_module("norm1", std::make_shared<RMSNorm>(in_dim, false));
  conv1 = register_module("conv1", std::make_shared<CausalConv3d>(in_dim, out_dim, std::vector<std::int64_t>{3},
                                                                  std::vector<std::int64_t>{1},
                                                                  std::vector<std::int64_t>{1}));
  norm2 = register_module("norm2", std::make_shared<RMSNorm>(out_dim, false));
  conv2 = register_module("conv2", std::make_shared<CausalConv3d>(out_dim, out_dim, std::vector<std::int64_t>{3},
                                                                  std::vector<std::int64_t>{1},
                                                                  std::vector<std::int64_t>{1}));
  if (in_dim != out_dim)
    conv_shortcut = register_module("conv_shortcut",
                                    std::make_shared<CausalConv3d>(in_dim, out_dim, std::vector<std::int64_t>{1}));
}

torch::Tensor ResidualBlock::forward(const torch::Tensor& x) {
  auto h = conv_shortcut ? conv_shortcut->forward(x) : x;
  auto y = conv1->forward(torch::silu(norm1->forward(x)));
  y = conv2->forward(torch::silu(norm2->forward(y)));  // dropout: identity at inference
  return y + h;
}

AttentionBlock::AttentionBlock(std::int64_t dim) {
  norm = register_module("norm", std::make_shared<RMSNorm>(dim, true));
  to_qkv = register_module("to_qkv", std::make_shared<Conv2d>(dim, dim * 3, 1));
  proj = register_module("proj", std::make_shared<Conv2d>(dim, dim, 1));
}

torch::Tensor AttentionBlock::forward(const torch::Tensor& x) {
  const auto b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  auto y = norm->forward(x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w}));
  // One head: tokens are the h*w pixels, features the channels.
  auto qkv = to_qkv->forward(y).reshape({b * t, 1, c * 3, -1}).permute({0, 1, 3, 2}).contiguous();
  auto parts = qkv.chunk(3, -1);
  y = at::scaled_dot_product_attention(parts[0], parts[1], parts[2]);
  y = y.squeeze(1).permute({0, 2, 1}).reshape({b * t, c, h, w});
  y = proj->forward(y);
  y = y.view({b, t, c, h, w}).permute({0, 2, 1, 3, 4});
  return y + x;
}

Resample::Resample(std::int64_t dim, std::string m) : mode(std::move(m)) {
  // The reference's `resample` is an nn.Sequential whose element 0 (Upsample / ZeroPad2d) has
  // no weights; element 1 is the convolution.
  std::shared_ptr<torch::nn::Module> seq;
  auto add_seq = [&](std::shared_ptr<Conv2d> c) {
    seq = register_module("resample", std::make_shared<torch::nn::Module>());
    conv = seq->register_module("1", std::move(c));
  };
  if (mode == "upsample2d" || mode == "upsample3d") {
    add_seq(std::make_shared<Conv2d>(dim, dim / 2, 3, 1, 1));
    if (mode == "upsample3d")
      time_conv = register_module("time_conv", std::make_shared<CausalConv3d>(dim, dim * 2, std::vector<std::int64_t>{3, 1, 1},
                                                                              std::vector<std::int64_t>{1},
                                                                              std::vector<std::int64_t>{1, 0, 0}));
  } else if (mode == "downsample2d" || mode == "downsample3d") {
    add_seq(std::make_shared<Conv2d>(dim, dim, 3, 2, 0));
    if (mode == "downsample3d")
      time_conv = register_module("time_conv", std::make_shared<CausalConv3d>(dim, dim, std::vector<std::int64_t>{3, 1, 1},
                                                                              std::vector<std::int64_t>{2, 1, 1},
                                                                              std::vector<std::int64_t>{0}));
  } else if (mode != "none") {
    throw Error("internal: unknown resample mode '" + mode + "'");
  }
}

torch::Tensor Resample::forward(const torch::Tensor& x) {
  // Without a feature cache (single images) the temporal convolutions are skipped, as in the
  // reference; the spatial resampling runs per frame.
  if (!conv) return x;
  const auto b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  auto y = x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
  if (mode[0] == 'u') {
    // nn.Upsample(scale_factor=2, mode="nearest-exact"), computed in fp32 and cast back.
    // (F.interpolate's own call: output size from the scale factors.)
    const std::array<double, 2> scale_factors{2.0, 2.0};
    y = at::_upsample_nearest_exact2d(y.to(torch::kFloat32), std::nullopt, at::ArrayRef<double>(scale_factors))
            .to(y.scalar_type());
  } else {
    y = torch::constant_pad_nd(y, {0, 1, 0, 1}, 0);  // ZeroPad2d((0, 1, 0, 1)): right and bottom
  }
  y = conv->forward(y);
  return y.view({b, t, y.size(1), y.size(2), y.size(3)}).permute({0, 2, 1, 3, 4});
}

MidBlock::MidBlock(std::int64_t dim) {
  auto res = register_module("resnets", torch::nn::ModuleList());
  auto att = register_module("attentions", torch::nn::ModuleList());
  resnets.push_back(std::make_shared<ResidualBlock>(dim, dim));
  attentions.push_back(std::make_shared<AttentionBlock>(dim));
  resnets.push_back(std::make_shared<ResidualBlock>(dim, dim));
  for (auto& r : resnets) res->push_back(r);
  for (auto& a : attentions) att->push_back(a);
}

torch::Tensor MidBlock::forward(const torch::Tensor& x) {
  auto y = resnets[0]->forward(x);
  for (std::size_t i = 0; i < attentions.size(); ++i) y = resnets[i + 1]->forward(attentions[i]->forward(y));
  return y;
}

Encoder3d::Encoder3d(const QwenImageVAEConfig& c, std::int64_t out_channels) {
  std::vector<std::int64_t> dims{c.base_dim};
  for (auto m : c.dim_mult) dims.push_back(c.base_dim * m);
  conv_in = register_module("conv_in", std::make_shared<CausalConv3d>(c.image_channels, dims[0], std::vector<std::int64_t>{3},
                                                                      std::vector<std::int64_t>{1},
                                                                      std::vector<std::int64_t>{1}));
  auto list = register_module("down_blocks", torch::nn::ModuleList());
  double scale = 1.0;
  const std::size_t stages = c.dim_mult.size();
  for (std::size_t i = 0; i < stages; ++i) {
    std::int64_t in_dim = dims[i];
    const std::int64_t out_dim = dims[i + 1];
    for (std::int64_t r = 0; r < c.num_res_blocks; ++r) {
      down_blocks.push_back(std::make_shared<ResidualBlock>(in_dim, out_dim));
      for (double s : c.attn_scales)
        if (s == scale) {
          down_blocks.push_back(std::make_shared<AttentionBlock>(out_dim));
          break;
        }
      in_dim = out_dim;
    }
    if (i != stages - 1) {
      down_blocks.push_back(std::make_shared<Resample>(out_dim, c.temperal_downsample[i] ? "downsample3d" : "downsample2d"));
      scale /= 2.0;
    }
  }
  for (auto& l : down_blocks) list->push_back(l);
  mid_block = register_module("mid_block", std::make_shared<MidBlock>(dims.back()));
  norm_out = register_module("norm_out", std::make_shared<RMSNorm>(dims.back(), false));
  conv_out = register_module("conv_out", std::make_shared<CausalConv3d>(dims.back(), out_channels, std::vector<std::int64_t>{3},
                                                                        std::vector<std::int64_t>{1},
                                                                        std::vector<std::int64_t>{1}));
}

torch::Tensor Encoder3d::forward(const torch::Tensor& x) {
  auto y = conv_in->forward(x);
  for (auto& l : down_blocks) y = l->forward(y);
  y = mid_block->forward(y);
  return conv_out->forward(torch::silu(norm_out->forward(y)));
}

UpBlock::UpBlock(std::int64_t in_dim, std::int64_t out_dim, std::int64_t num_res_blocks, const std::string& upsample_mode) {
  auto list = register_module("resnets", torch::nn::ModuleList());
  for (std::int64_t r = 0; r < num_res_blocks + 1; ++r) {
    resnets.push_back(std::make_shared<ResidualBlock>(r == 0 ? in_dim : out_dim, out_dim));
    list->push_back(resnets.back());
  }
  if (!upsample_mode.empty()) {
    auto ups = register_module("upsamplers", torch::nn::ModuleList());
    upsampler = std::make_shared<Resample>(out_dim, upsample_mode);
    ups->push_back(upsampler);
  }
}

torch::Tensor UpBlock::forward(const torch::Tensor& x) {
  auto y = x;
  for (auto& r : resnets) y = r->forward(y);
  return upsampler ? upsampler->forward(y) : y;
}

Decoder3d::Decoder3d(const QwenImageVAEConfig& c) {
  const std::size_t stages = c.dim_mult.size();
  std::vector<std::int64_t> dims{c.base_dim * c.dim_mult.back()};
  for (auto it = c.dim_mult.rbegin(); it != c.dim_mult.rend(); ++it) dims.push_back(c.base_dim * *it);
  // temperal_upsample = temperal_downsample[::-1]
  std::vector<bool> temporal_up(c.temperal_downsample.rbegin(), c.temperal_downsample.rend());
  conv_in = register_module("conv_in", std::make_shared<CausalConv3d>(c.z_dim, dims[0], std::vector<std::int64_t>{3},
                                                                      std::vector<std::int64_t>{1},
                                                                      std::vector<std::int64_t>{1}));
  mid_block = register_module("mid_block", std::make_shared<MidBlock>(dims[0]));
  auto list = register_module("up_blocks", torch::nn::ModuleList());
  for (std::size_t i = 0; i < stages; ++i) {
    // Every upsampler halves the channels, so the blocks after the first take dims[i] / 2.
    const std::int64_t in_dim = i > 0 ? dims[i] / 2 : dims[i];
    std::string mode;
    if (i != stages - 1) mode = temporal_up[i] ? "upsample3d" : "upsample2d";
    up_blocks.push_back(std::make_shared<UpBlock>(in_dim, dims[i + 1], c.num_res_blocks, mode));
    list->push_back(up_blocks.back());
  }
  norm_out = register_module("norm_out", std::make_shared<RMSNorm>(dims.back(), false));
  conv_out = register_module("conv_out", std::make_shared<CausalConv3d>(dims.back(), c.image_channels, std::vector<std::int64_t>{3},
                                                                        std::vector<std::int64_t>{1},
                                                                        std::vector<std::int64_t>{1}));
}

torch::Tensor Decoder3d::forward(const torch::Tensor& x) {
  auto y = conv_in->forward(x);
  y = mid_block->forward(y);
  for (auto& u : up_blocks) y = u->forward(y);
  return conv_out->forward(torch::silu(norm_out->forward(y)));
}

}  // namespace qwen_vae

namespace {
// Written as doubles (as Python parses them) and converted to fp32 like torch.tensor(list).
const std::vector<double> kLatentMean = {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                                         0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503, -0.2921};
const std::vector<double> kLatentStd = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};
constexpr std::int64_t kLatentChannels = 16;
}  // namespace

QwenImageVAEImpl::QwenImageVAEImpl(const QwenImageVAEConfig& c) : config(c) {
  using qwen_vae::CausalConv3d;
  encoder = register_module("encoder", std::make_shared<qwen_vae::Encoder3d>(c, c.z_dim * 2));
  quant_conv = register_module("quant_conv", std::make_shared<CausalConv3d>(c.z_dim * 2, c.z_dim * 2, std::vector<std::int64_t>{1}));
  post_quant_conv = register_module("post_quant_conv", std::make_shared<CausalConv3d>(c.z_dim, c.z_dim, std::vector<std::int64_t>{1}));
  decoder = register_module("decoder", std::make_shared<qwen_vae::Decoder3d>(c));
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  mean = torch::tensor(kLatentMean, f64).to(torch::kFloat32).view({1, kLatentChannels, 1, 1, 1});
  // `1 / torch.tensor(std)`: the reciprocal in fp32.
  inv_std = torch::reciprocal(torch::tensor(kLatentStd, f64).to(torch::kFloat32)).view({1, kLatentChannels, 1, 1, 1});
}

void QwenImageVAEImpl::set_exact_conv3d(bool exact) {
  for (const auto& m : modules(/*include_self=*/false))
    if (auto* conv = dynamic_cast<qwen_vae::CausalConv3d*>(m.get())) conv->single_frame_as_2d = !exact;
}

torch::Tensor QwenImageVAEImpl::encode(const torch::Tensor& image) {
  if (image.dim() != 4 || image.size(1) != config.image_channels)
    throw Error("QwenImageVAE.encode: expected an image [B, " + std::to_string(config.image_channels) +
                ", H, W], got " + c10::str(image.sizes()));
  auto x = encoder->forward(image.unsqueeze(2));  // one frame
  x = quant_conv->forward(x).slice(1, 0, kLatentChannels);  // the posterior mean; no sampling
  x = (x - mean.to(x.device(), x.scalar_type())) * inv_std.to(x.device(), x.scalar_type());
  return x.squeeze(2);
}

torch::Tensor QwenImageVAEImpl::decode(const torch::Tensor& latents) {
  if (latents.dim() != 4 || latents.size(1) != kLatentChannels || config.z_dim != kLatentChannels)
    throw Error("QwenImageVAE.decode: expected latents [B, 16, h, w] (z_dim 16), got " + c10::str(latents.sizes()) +
                " (z_dim " + std::to_string(config.z_dim) + ")");
  auto x = latents.unsqueeze(2);
  x = x / inv_std.to(x.device(), x.scalar_type()) + mean.to(x.device(), x.scalar_type());
  x = post_quant_conv->forward(x);
  return decoder->forward(x).squeeze(2);  // not clamped
}

namespace {
// The reference's build_1d_mask: ones, with a ramp (1..border)/border on each side that is
// not an image border (the end ramp flipped).
torch::Tensor ramp_1d(std::int64_t length, bool left_bound, bool right_bound, std::int64_t border) {
  auto x = torch::ones({length});
  if (border == 0) return x;  // no overlap: nothing to blend
  auto ramp = (torch::arange(border, torch::kLong) + 1) / border;
  if (!left_bound) x.slice(0, 0, border).copy_(ramp);
  if (!right_bound) x.slice(0, length - border, length).copy_(ramp.flip(0));
  return x;
}
}  // namespace

template <typename Fn>
torch::Tensor QwenImageVAEImpl::tiled_forward(Fn&& fn, const torch::Tensor& x, const QwenImageVAETiling& t,
                                              std::int64_t input_scale, std::int64_t output_scale) {
  if (!(0 < t.stride_h && t.stride_h <= t.tile_h && 0 < t.stride_w && t.stride_w <= t.tile_w))
    throw Error("QwenImageVAE: tile stride must be positive and not larger than the tile size, got tile_size=(" +
                std::to_string(t.tile_h) + ", " + std::to_string(t.tile_w) + ") and tile_stride=(" +
                std::to_string(t.stride_h) + ", " + std::to_string(t.stride_w) + ")");
  const std::int64_t B = x.size(0), H = x.size(2) / input_scale, W = x.size(3) / input_scale;
  struct Tile {
    std::int64_t h0, h1, w0, w1;
  };
  std::vector<Tile> tiles;
  // A tile start is skipped when the previous start's tile already reaches the end.
  for (std::int64_t h = 0; h < H; h += t.stride_h) {
    if (h - t.stride_h >= 0 && h - t.stride_h + t.tile_h >= H) continue;
    for (std::int64_t w = 0; w < W; w += t.stride_w) {
      if (w - t.stride_w >= 0 && w - t.stride_w + t.tile_w >= W) continue;
      tiles.push_back({h, std::min(h + t.tile_h, H), w, std::min(w + t.tile_w, W)});
    }
  }
  if (tiles.empty()) throw Error("QwenImageVAE: tiled input is empty: " + c10::str(x.sizes()));

  const std::int64_t border_h = (t.tile_h - t.stride_h) * output_scale, border_w = (t.tile_w - t.stride_w) * output_scale;
  torch::Tensor values;
  auto weight = torch::zeros({1, 1, H * output_scale, W * output_scale}, x.options());
  for (const auto& tile : tiles) {
    auto y = fn(x.slice(2, tile.h0 * input_scale, tile.h1 * input_scale).slice(3, tile.w0 * input_scale, tile.w1 * input_scale));
    if (!values.defined()) values = torch::zeros({B, y.size(1), H * output_scale, W * output_scale}, y.options());
    const std::int64_t yh = y.size(2), yw = y.size(3);
    auto mh = ramp_1d(yh, tile.h0 == 0, tile.h1 >= H, border_h);
    auto mw = ramp_1d(yw, tile.w0 == 0, tile.w1 >= W, border_w);
    auto mask = torch::minimum(mh.unsqueeze(1).expand({yh, yw}), mw.unsqueeze(0).expand({yh, yw}))
                    .unsqueeze(0)
                    .unsqueeze(0)
                    .to(x.device(), x.scalar_type());
    const auto rows_lo = tile.h0 * output_scale, rows_hi = tile.h1 * output_scale;
    const auto cols_lo = tile.w0 * output_scale, cols_hi = tile.w1 * output_scale;
    values.slice(2, rows_lo, rows_hi).slice(3, cols_lo, cols_hi) += y * mask;
    weight.slice(2, rows_lo, rows_hi).slice(3, cols_lo, cols_hi) += mask;
  }
  return values / weight;
}

torch::Tensor QwenImageVAEImpl::encode_tiled(const torch::Tensor& image, const QwenImageVAETiling& tiling) {
  if (image.dim() != 4) throw Error("QwenImageVAE.encode: expected an image [B, C, H, W], got " + c10::str(image.sizes()));
  return tiled_forward([this](const torch::Tensor& x) { return encode(x); }, image, tiling, 8, 1);
}

torch::Tensor QwenImageVAEImpl::decode_tiled(const torch::Tensor& latents, const QwenImageVAETiling& tiling) {
  if (latents.dim() != 4)
    throw Error("QwenImageVAE.decode: expected latents [B, 16, h, w], got " + c10::str(latents.sizes()));
  return tiled_forward([this](const torch::Tensor& z) { return decode(z); }, latents, tiling, 1, 8);
}

DIFFSYNTH_REGISTER_MODEL("diffsynth.models.qwen_image_vae.QwenImageVAE",
                         [](const nlohmann::ordered_json& kwargs) -> std::shared_ptr<Module> {
                           return QwenImageVAE(QwenImageVAEConfig::from_kwargs(kwargs)).ptr();
                         });

}  // namespace diffsynth
