#include "models/wan_video_vae.h"

#include <array>
#include <cmath>
#include <functional>

#include "core/error.h"
#include "core/registry.h"

namespace diffsynth {

namespace {
void validate(const WanVAEConfig& c, const std::string& cls) {
  auto bad = [&](const std::string& what) { throw Error(cls + "(): " + what); };
  if (c.base_dim <= 0 || c.z_dim <= 0 || c.num_res_blocks < 0 || c.image_channels <= 0)
    bad("the dims, z_dim and image_channels must be positive and num_res_blocks non-negative");
  if (c.dim_mult.empty()) bad("dim_mult must not be empty");
  for (auto m : c.dim_mult)
    if (m <= 0) bad("dim_mult entries must be positive");
  if (c.temperal_downsample.size() + 1 < c.dim_mult.size())
    bad("temperal_downsample needs one entry per downsampling stage (" + std::to_string(c.dim_mult.size() - 1) + ")");
}
}  // namespace

WanVAEConfig WanVAEConfig::from_qwen_image_kwargs(const nlohmann::ordered_json& kwargs) {
  Kwargs k("QwenImageVAE", kwargs);
  WanVAEConfig c;
  c.base_dim = k.get_int("base_dim", c.base_dim);
  c.z_dim = k.get_int("z_dim", c.z_dim);
  c.dim_mult = k.get_int_list("dim_mult", c.dim_mult);
  c.num_res_blocks = k.get_int("num_res_blocks", c.num_res_blocks);
  c.attn_scales = k.get_float_list("attn_scales", c.attn_scales);
  c.temperal_downsample = k.get_bool_list("temperal_downsample", c.temperal_downsample);
  c.dropout = k.get_float("dropout", c.dropout);
  c.image_channels = k.get_int("image_channels", c.image_channels);
  k.finish();
  validate(c, "QwenImageVAE");
  return c;
}

WanVAEConfig WanVAEConfig::from_wan_video_kwargs(const nlohmann::ordered_json& kwargs) {
  Kwargs k("WanVideoVAE", kwargs);
  WanVAEConfig c;
  c.z_dim = k.get_int("z_dim", c.z_dim);
  c.base_dim = k.get_int("dim", c.base_dim);
  c.dim_mult = k.get_int_list("dim_mult", c.dim_mult);
  c.num_res_blocks = k.get_int("num_res_blocks", c.num_res_blocks);
  c.attn_scales = k.get_float_list("attn_scales", c.attn_scales);
  c.temperal_downsample = k.get_bool_list("temperal_downsample", c.temperal_downsample);
  c.dropout = k.get_float("dropout", c.dropout);
  k.finish();
  validate(c, "WanVideoVAE");
  return c;
}

namespace wan_vae {

namespace {
using Naming = WanVAENaming;

std::vector<std::int64_t> triple(std::vector<std::int64_t> v) {
  if (v.size() == 1) return {v[0], v[0], v[0]};
  if (v.size() != 3) throw Error("internal: CausalConv3d expects 1 or 3 sizes");
  return v;
}

std::shared_ptr<CausalConv3d> conv3x3x3(Naming n, std::int64_t in, std::int64_t out) {
  return std::make_shared<CausalConv3d>(n, in, out, std::vector<std::int64_t>{3}, std::vector<std::int64_t>{1},
                                        std::vector<std::int64_t>{1});
}

// A weightless container level of the reference's tree (nn.Sequential), registered under `name`.
std::shared_ptr<torch::nn::Module> holder(torch::nn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

// The reference's pattern around every cached causal conv: remember the last CACHE_T frames of
// the conv's input (with the previous chunk's last frame in front when this chunk has only one),
// run the conv with the previous chunk's frames in front.
// SiLU over a fresh temporary (a norm's output), in place: the same kernel, no new activation.
torch::Tensor silu_in_place(torch::Tensor x) { return torch::silu_(x); }

torch::Tensor cached_conv(CausalConv3d& conv, const torch::Tensor& x, FeatCache* cache) {
  if (!cache) return conv.forward(x);
  auto& slot = cache->next();
  const std::int64_t t = x.size(2);
  torch::Tensor keep;
  if (t >= kCacheT)
    keep = x.slice(2, t - kCacheT, t).clone();
  else if (slot.x.defined())
    keep = torch::cat({slot.x.slice(2, slot.x.size(2) - 1, slot.x.size(2)), x}, 2);
  else
    keep = x.clone();
  auto y = conv.forward(x, slot.x);
  slot.x = std::move(keep);
  return y;
}
}  // namespace

CausalConv3d::CausalConv3d(Naming naming, std::int64_t in, std::int64_t out, std::vector<std::int64_t> k,
                           std::vector<std::int64_t> s, std::vector<std::int64_t> p)
    : kernel(triple(std::move(k))), stride(triple(std::move(s))), padding(triple(std::move(p))) {
  set_reference_classes({naming == Naming::Wan ? "diffsynth.models.wan_video_vae.CausalConv3d"
                                               : "diffsynth.models.qwen_image_vae.QwenImageCausalConv3d",
                         "torch.nn.Conv3d"});
  meta_parameter("weight", {out, in, kernel[0], kernel[1], kernel[2]});
  meta_parameter("bias", {out});
}

torch::Tensor CausalConv3d::forward(const torch::Tensor& x, const torch::Tensor& cache) {
  const std::int64_t front = 2 * padding[0];  // zero frames in front without a cache
  const bool use_cache = cache.defined() && front > 0;
  if (exact_conv3d) {
    // The reference: cat(cache, x), F.pad with what the cache does not cover, conv3d.
    auto in = use_cache ? torch::cat({cache.to(x.device()), x}, 2) : x;
    const std::int64_t pad_t = use_cache ? front - cache.size(2) : front;
    in = torch::constant_pad_nd(in, {padding[2], padding[2], padding[1], padding[1], pad_t, 0}, 0);
    return torch::conv3d(in, compute_param("weight"), compute_param("bias"), stride);
  }
  if (!use_cache && x.size(2) == 1 && stride[0] == 1 && kernel[0] == front + 1) {
    // One frame behind 2*pt zero frames: only the last temporal tap meets data. The same sum
    // without the zero products (a third of the work for 3x3x3; results differ from the padded
    // conv3d only in the summation order).
    auto w = compute_param("weight").select(2, kernel[0] - 1);
    return torch::conv2d(x.squeeze(2), w, compute_param("bias"), {stride[1], stride[2]}, {padding[1], padding[2]})
        .unsqueeze(2);
  }
  // One copy at most: the missing zero frames, the cached frames and x side by side; conv3d
  // pads H and W itself (zeros, as F.pad).
  std::vector<torch::Tensor> parts;
  const std::int64_t missing = use_cache ? front - cache.size(2) : front;
  if (missing > 0)
    parts.push_back(torch::zeros({x.size(0), x.size(1), missing, x.size(3), x.size(4)},
                                 x.options().memory_format(x.suggest_memory_format())));
  if (use_cache) parts.push_back(cache.to(x.device()));
  parts.push_back(x);
  auto in = parts.size() == 1 ? x : torch::cat(parts, 2);
  return torch::conv3d(in, compute_param("weight"), compute_param("bias"), stride, {0, padding[1], padding[2]});
}

RMSNorm::RMSNorm(Naming naming, std::int64_t d, bool images) : dim(d) {
  set_reference_classes({naming == Naming::Wan ? "diffsynth.models.wan_video_vae.RMS_norm"
                                               : "diffsynth.models.qwen_image_vae.QwenImageRMS_norm"});
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
  // The reference then adds a bias of 0.0 (a no-op) -- omitted. The scalar product in place:
  // the same values (a Python float does not promote), one fresh activation less.
  return x / denom * std::pow(static_cast<double>(dim), 0.5) * compute_param("gamma");
}

ResidualBlock::ResidualBlock(Naming n, std::int64_t in_dim, std::int64_t out_dim) {
  norm1 = std::make_shared<RMSNorm>(n, in_dim, false);
  conv1 = conv3x3x3(n, in_dim, out_dim);
  norm2 = std::make_shared<RMSNorm>(n, out_dim, false);
  conv2 = conv3x3x3(n, out_dim, out_dim);
  if (in_dim != out_dim)
    conv_shortcut = std::make_shared<CausalConv3d>(n, in_dim, out_dim, std::vector<std::int64_t>{1});
  if (n == Naming::Wan) {
    // residual = Sequential(RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d)
    auto residual = holder(*this, "residual");
    residual->register_module("0", norm1);
    residual->register_module("2", conv1);
    residual->register_module("3", norm2);
    residual->register_module("6", conv2);
    if (conv_shortcut) register_module("shortcut", conv_shortcut);
  } else {
    register_module("norm1", norm1);
    register_module("conv1", conv1);
    register_module("norm2", norm2);
    register_module("conv2", conv2);
    if (conv_shortcut) register_module("conv_shortcut", conv_shortcut);
  }
}

torch::Tensor ResidualBlock::forward(const torch::Tensor& x, FeatCache* cache) {
  auto h = conv_shortcut ? conv_shortcut->forward(x) : x;
  auto y = cached_conv(*conv1, silu_in_place(norm1->forward(x)), cache);
  y = cached_conv(*conv2, silu_in_place(norm2->forward(y)), cache);  // dropout: identity at inference
  return y + h;
}

AttentionBlock::AttentionBlock(Naming n, std::int64_t dim) {
  norm = register_module("norm", std::make_shared<RMSNorm>(n, dim, true));
  to_qkv = register_module("to_qkv", conv2d(dim, dim * 3, 1, 1, 0));
  proj = register_module("proj", conv2d(dim, dim, 1, 1, 0));
}

torch::Tensor AttentionBlock::forward(const torch::Tensor& x, FeatCache*) {
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

Resample::Resample(Naming n, std::int64_t dim, std::string m) : mode(std::move(m)) {
  // The reference's `resample` is an nn.Sequential whose element 0 (Upsample / ZeroPad2d) has
  // no weights; element 1 is the convolution.
  auto add_seq = [&](Conv c) { conv = holder(*this, "resample")->register_module("1", std::move(c)); };
  if (mode == "upsample2d" || mode == "upsample3d") {
    add_seq(conv2d(dim, dim / 2, 3, 1, 1));
    if (mode == "upsample3d")
      time_conv = register_module("time_conv", std::make_shared<CausalConv3d>(n, dim, dim * 2, std::vector<std::int64_t>{3, 1, 1},
                                                                              std::vector<std::int64_t>{1},
                                                                              std::vector<std::int64_t>{1, 0, 0}));
  } else if (mode == "downsample2d" || mode == "downsample3d") {
    add_seq(conv2d(dim, dim, 3, 2, 0));
    if (mode == "downsample3d")
      time_conv = register_module("time_conv", std::make_shared<CausalConv3d>(n, dim, dim, std::vector<std::int64_t>{3, 1, 1},
                                                                              std::vector<std::int64_t>{2, 1, 1},
                                                                              std::vector<std::int64_t>{0}));
  } else if (mode != "none") {
    throw Error("internal: unknown resample mode '" + mode + "'");
  }
}

torch::Tensor Resample::forward(const torch::Tensor& x, FeatCache* cache) {
  if (!conv) return x;
  const auto b = x.size(0), c = x.size(1), h = x.size(3), w = x.size(4);
  auto t = x.size(2);
  torch::Tensor frames;  // [(b t), c, h, w]
  if (mode == "upsample3d" && cache) {
    auto& slot = cache->next();
    if (slot.empty()) {
      slot.rep = true;  // first chunk: no temporal upsampling
    } else {
      auto keep = x.slice(2, std::max<std::int64_t>(t - kCacheT, 0), t).clone();
      if (keep.size(2) < kCacheT)
        keep = torch::cat({slot.rep ? torch::zeros_like(keep) : slot.x.slice(2, slot.x.size(2) - 1, slot.x.size(2)), keep}, 2);
      // 'Rep': the time conv pads with zeros, else it continues from the previous chunk.
      auto y = slot.rep ? time_conv->forward(x) : time_conv->forward(x, slot.x);
      slot.x = std::move(keep);
      slot.rep = false;
      // [b, (2 c), t] -> [b, c, (t 2)] (the reference's reshape + stack), here straight into
      // the per-frame layout [(b t 2), c, h, w] in one copy, channels-last when y is.
      if (y.is_contiguous(at::MemoryFormat::ChannelsLast3d))
        frames = y.view({b, 2, c, t, h, w})
                     .permute({0, 3, 1, 4, 5, 2})  // [b, t, 2, h, w, c]
                     .contiguous()
                     .view({b * t * 2, h, w, c})
                     .permute({0, 3, 1, 2});
      else
        frames = y.reshape({b, 2, c, t, h, w}).permute({0, 3, 1, 2, 4, 5}).reshape({b * t * 2, c, h, w});
      t *= 2;
    }
  }
  if (!frames.defined()) frames = x.permute({0, 2, 1, 3, 4}).reshape({b * t, c, h, w});
  if (mode[0] == 'u') {
    // nn.Upsample(scale_factor=2, mode="nearest-exact") (F.interpolate's own call: the output
    // size from the scale factors). The reference upsamples in fp32 and casts back; a nearest
    // upsample only copies values, and bf16/fp16 -> fp32 -> back is exact, so the same values
    // come out of the activation dtype directly without the two casts and the fp32 copy.
    const std::array<double, 2> scale_factors{2.0, 2.0};
    frames = at::_upsample_nearest_exact2d(frames, std::nullopt, at::ArrayRef<double>(scale_factors));
  } else {
    frames = torch::constant_pad_nd(frames, {0, 1, 0, 1}, 0);  // ZeroPad2d((0, 1, 0, 1)): right and bottom
  }
  frames = conv->forward(frames);
  auto y = frames.view({b, t, frames.size(1), frames.size(2), frames.size(3)}).permute({0, 2, 1, 3, 4});
  if (mode == "downsample3d" && cache) {
    auto& slot = cache->next();
    const auto ty = y.size(2);
    // Only the last frame is ever read back (the reference stores the whole first chunk).
    auto keep = y.slice(2, ty - 1, ty).clone();
    if (!slot.empty()) y = time_conv->forward(torch::cat({slot.x.slice(2, slot.x.size(2) - 1, slot.x.size(2)), y}, 2));
    slot.x = std::move(keep);
  }
  return y;
}

MidBlock::MidBlock(Naming n, std::int64_t dim) {
  resnet0 = std::make_shared<ResidualBlock>(n, dim, dim);
  attention = std::make_shared<AttentionBlock>(n, dim);
  resnet1 = std::make_shared<ResidualBlock>(n, dim, dim);
  if (n == Naming::Wan) {
    register_module("0", resnet0);
    register_module("1", attention);
    register_module("2", resnet1);
  } else {
    auto res = register_module("resnets", torch::nn::ModuleList());
    auto att = register_module("attentions", torch::nn::ModuleList());
    res->push_back(resnet0);
    att->push_back(attention);
    res->push_back(resnet1);
  }
}

torch::Tensor MidBlock::forward(const torch::Tensor& x, FeatCache* cache) {
  auto y = resnet0->forward(x, cache);
  return resnet1->forward(attention->forward(y, cache), cache);
}

namespace {
// head = Sequential(RMS_norm, SiLU, CausalConv3d) (Wan) or norm_out / conv_out (Qwen).
void register_head(torch::nn::Module& m, Naming n, const std::shared_ptr<RMSNorm>& norm,
                   const std::shared_ptr<CausalConv3d>& conv) {
  if (n == Naming::Wan) {
    auto head = holder(m, "head");
    head->register_module("0", norm);
    head->register_module("2", conv);
  } else {
    m.register_module("norm_out", norm);
    m.register_module("conv_out", conv);
  }
}
}  // namespace

Encoder3d::Encoder3d(Naming n, const WanVAEConfig& c, std::int64_t out_channels) {
  const bool wan = n == Naming::Wan;
  std::vector<std::int64_t> dims{c.base_dim};
  for (auto m : c.dim_mult) dims.push_back(c.base_dim * m);
  conv_in = register_module(wan ? "conv1" : "conv_in", conv3x3x3(n, c.image_channels, dims[0]));
  auto list = register_module(wan ? "downsamples" : "down_blocks", torch::nn::ModuleList());
  double scale = 1.0;
  const std::size_t stages = c.dim_mult.size();
  for (std::size_t i = 0; i < stages; ++i) {
    std::int64_t in_dim = dims[i];
    const std::int64_t out_dim = dims[i + 1];
    for (std::int64_t r = 0; r < c.num_res_blocks; ++r) {
      down_blocks.push_back(std::make_shared<ResidualBlock>(n, in_dim, out_dim));
      for (double s : c.attn_scales)
        if (s == scale) {
          down_blocks.push_back(std::make_shared<AttentionBlock>(n, out_dim));
          break;
        }
      in_dim = out_dim;
    }
    if (i != stages - 1) {
      down_blocks.push_back(std::make_shared<Resample>(n, out_dim, c.temperal_downsample[i] ? "downsample3d" : "downsample2d"));
      scale /= 2.0;
    }
  }
  for (auto& l : down_blocks) list->push_back(l);
  mid_block = register_module(wan ? "middle" : "mid_block", std::make_shared<MidBlock>(n, dims.back()));
  norm_out = std::make_shared<RMSNorm>(n, dims.back(), false);
  conv_out = conv3x3x3(n, dims.back(), out_channels);
  register_head(*this, n, norm_out, conv_out);
}

torch::Tensor Encoder3d::forward(const torch::Tensor& x, FeatCache* cache) {
  auto y = cached_conv(*conv_in, x, cache);
  for (auto& l : down_blocks) y = l->forward(y, cache);
  y = mid_block->forward(y, cache);
  return cached_conv(*conv_out, silu_in_place(norm_out->forward(y)), cache);
}

Decoder3d::Decoder3d(Naming n, const WanVAEConfig& c) {
  const bool wan = n == Naming::Wan;
  const std::size_t stages = c.dim_mult.size();
  std::vector<std::int64_t> dims{c.base_dim * c.dim_mult.back()};
  for (auto it = c.dim_mult.rbegin(); it != c.dim_mult.rend(); ++it) dims.push_back(c.base_dim * *it);
  // temperal_upsample = temperal_downsample[::-1]
  std::vector<bool> temporal_up(c.temperal_downsample.rbegin(), c.temperal_downsample.rend());
  conv_in = register_module(wan ? "conv1" : "conv_in", conv3x3x3(n, c.z_dim, dims[0]));
  mid_block = register_module(wan ? "middle" : "mid_block", std::make_shared<MidBlock>(n, dims[0]));
  auto list = register_module(wan ? "upsamples" : "up_blocks", torch::nn::ModuleList());
  double scale = 1.0 / std::pow(2.0, static_cast<double>(stages) - 2.0);
  for (std::size_t i = 0; i < stages; ++i) {
    // Every upsampler halves the channels, so the blocks after it take dims[i] / 2 (the Wan
    // code says `if i == 1 or i == 2 or i == 3`, diffusers' `if i > 0`).
    const bool halve = wan ? (i == 1 || i == 2 || i == 3) : i > 0;
    std::int64_t in_dim = halve ? dims[i] / 2 : dims[i];
    const std::int64_t out_dim = dims[i + 1];
    torch::nn::ModuleList resnets{nullptr};  // Qwen: up_blocks.i.resnets
    std::shared_ptr<torch::nn::Module> block;
    if (!wan) {
      block = std::make_shared<torch::nn::Module>();
      resnets = block->register_module("resnets", torch::nn::ModuleList());
      list->push_back(block);
    }
    for (std::int64_t r = 0; r < c.num_res_blocks + 1; ++r) {
      auto res = std::make_shared<ResidualBlock>(n, in_dim, out_dim);
      up_layers.push_back(res);
      if (wan) {
        list->push_back(res);
        // Only the Wan decoder places attention by scale (QwenImageDecoder3d ignores attn_scales).
        for (double s : c.attn_scales)
          if (s == scale) {
            up_layers.push_back(std::make_shared<AttentionBlock>(n, out_dim));
            list->push_back(up_layers.back());
            break;
          }
      } else {
        resnets->push_back(res);
      }
      in_dim = out_dim;
    }
    if (i != stages - 1) {
      auto up = std::make_shared<Resample>(n, out_dim, temporal_up[i] ? "upsample3d" : "upsample2d");
      up_layers.push_back(up);
      if (wan)
        list->push_back(up);
      else
        block->register_module("upsamplers", torch::nn::ModuleList())->push_back(up);
      scale *= 2.0;
    }
  }
  norm_out = std::make_shared<RMSNorm>(n, dims.back(), false);
  conv_out = conv3x3x3(n, dims.back(), c.image_channels);
  register_head(*this, n, norm_out, conv_out);
}

torch::Tensor Decoder3d::forward(const torch::Tensor& x, FeatCache* cache) {
  auto y = cached_conv(*conv_in, x, cache);
  y = mid_block->forward(y, cache);
  for (auto& l : up_layers) y = l->forward(y, cache);
  return cached_conv(*conv_out, silu_in_place(norm_out->forward(y)), cache);
}

}  // namespace wan_vae

namespace {
// Written as doubles (as Python parses them) and converted to fp32 like torch.tensor(list).
const std::vector<double> kLatentMean = {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                                         0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503, -0.2921};
const std::vector<double> kLatentStd = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};
constexpr std::int64_t kLatentChannels = 16;
}  // namespace

WanVAEImpl::WanVAEImpl(const WanVAEConfig& c, WanVAENaming n) : config(c), naming(n) {
  using wan_vae::CausalConv3d;
  const bool wan = n == WanVAENaming::Wan;
  // WanVideoVAE keeps the network in `model` (VideoVAE_); QwenImageVAE at the top level.
  torch::nn::Module* parent = this;
  std::shared_ptr<torch::nn::Module> model;
  if (wan) parent = (model = wan_vae::holder(*this, "model")).get();
  encoder = parent->register_module("encoder", std::make_shared<wan_vae::Encoder3d>(n, c, c.z_dim * 2));
  quant_conv = parent->register_module(wan ? "conv1" : "quant_conv",
                                       std::make_shared<CausalConv3d>(n, c.z_dim * 2, c.z_dim * 2, std::vector<std::int64_t>{1}));
  post_quant_conv = parent->register_module(wan ? "conv2" : "post_quant_conv",
                                            std::make_shared<CausalConv3d>(n, c.z_dim, c.z_dim, std::vector<std::int64_t>{1}));
  decoder = parent->register_module("decoder", std::make_shared<wan_vae::Decoder3d>(n, c));
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  mean = torch::tensor(kLatentMean, f64).to(torch::kFloat32).view({1, kLatentChannels, 1, 1, 1});
  // `1 / torch.tensor(std)`: the reciprocal in fp32.
  inv_std = torch::reciprocal(torch::tensor(kLatentStd, f64).to(torch::kFloat32)).view({1, kLatentChannels, 1, 1, 1});
}

void WanVAEImpl::set_exact_conv3d(bool exact) {
  channels_last = !exact;
  for (const auto& m : modules(/*include_self=*/false))
    if (auto* conv = dynamic_cast<wan_vae::CausalConv3d*>(m.get())) conv->exact_conv3d = exact;
}

void WanVAEImpl::check_latent_channels(const torch::Tensor& z, std::int64_t dims, const char* what) const {
  if (z.dim() != dims || z.size(1) != kLatentChannels || config.z_dim != kLatentChannels)
    throw Error(std::string(label()) + "." + what + ": expected latents [B, 16, " + (dims == 5 ? "t, " : "") +
                "h, w] (z_dim 16), got " + c10::str(z.sizes()) + " (z_dim " + std::to_string(config.z_dim) + ")");
}

torch::Tensor WanVAEImpl::to_compute_layout(const torch::Tensor& x) const {
  return channels_last ? x.contiguous(at::MemoryFormat::ChannelsLast3d) : x;
}

namespace {
torch::Tensor normalise(const torch::Tensor& mu, const torch::Tensor& mean, const torch::Tensor& inv_std) {
  return (mu - mean.to(mu.device(), mu.scalar_type())) * inv_std.to(mu.device(), mu.scalar_type());
}
torch::Tensor denormalise(const torch::Tensor& z, const torch::Tensor& mean, const torch::Tensor& inv_std) {
  return z / inv_std.to(z.device(), z.scalar_type()) + mean.to(z.device(), z.scalar_type());
}
}  // namespace

torch::Tensor WanVAEImpl::encode_image(const torch::Tensor& image) {
  if (image.dim() != 4 || image.size(1) != config.image_channels)
    throw Error(std::string(label()) + ".encode: expected an image [B, " + std::to_string(config.image_channels) +
                ", H, W], got " + c10::str(image.sizes()));
  auto x = encoder->forward(to_compute_layout(image.unsqueeze(2)), nullptr);  // one frame
  x = quant_conv->forward(x).slice(1, 0, kLatentChannels);  // the posterior mean; no sampling
  return normalise(x, mean, inv_std).squeeze(2).contiguous();
}

torch::Tensor WanVAEImpl::decode_image(const torch::Tensor& latents) {
  check_latent_channels(latents, 4, "decode");
  auto x = denormalise(latents.unsqueeze(2), mean, inv_std);
  x = to_compute_layout(post_quant_conv->forward(x));
  return decoder->forward(x, nullptr).squeeze(2).contiguous();  // not clamped
}

torch::Tensor WanVAEImpl::encode_causal(const torch::Tensor& video) {
  if (video.dim() != 5 || video.size(1) != config.image_channels || video.size(2) < 1)
    throw Error(std::string(label()) + ".encode_video: expected a video [B, " + std::to_string(config.image_channels) +
                ", T, H, W] with T >= 1, got " + c10::str(video.sizes()));
  if (config.z_dim != kLatentChannels)
    throw Error(std::string(label()) + ".encode_video: the latent normalisation has 16 channels, z_dim is " +
                std::to_string(config.z_dim));
  const std::int64_t chunks = 1 + (video.size(2) - 1) / 4;
  wan_vae::FeatCache cache;
  std::vector<torch::Tensor> outs;
  for (std::int64_t i = 0; i < chunks; ++i) {
    cache.idx = 0;
    auto chunk = i == 0 ? video.slice(2, 0, 1) : video.slice(2, 1 + 4 * (i - 1), 1 + 4 * i);
    outs.push_back(encoder->forward(to_compute_layout(chunk), &cache));
  }
  auto out = outs.size() == 1 ? outs[0] : torch::cat(outs, 2);
  outs.clear();
  // mu, log_var = conv1(out).chunk(2, dim=1)
  auto mu = quant_conv->forward(out).slice(1, 0, config.z_dim);
  return normalise(mu, mean, inv_std).contiguous();
}

torch::Tensor WanVAEImpl::decode_causal(const torch::Tensor& latents) {
  check_latent_channels(latents, 5, "decode_video");
  if (latents.size(2) < 1) throw Error(std::string(label()) + ".decode_video: no latent frames: " + c10::str(latents.sizes()));
  auto x = to_compute_layout(post_quant_conv->forward(denormalise(latents, mean, inv_std)));
  const std::int64_t t = x.size(2);
  wan_vae::FeatCache cache;
  torch::Tensor first, out;
  std::int64_t at = 0;
  for (std::int64_t i = 0; i < t; ++i) {
    cache.idx = 0;
    auto y = decoder->forward(x.slice(2, i, i + 1), &cache);
    if (i == 0) {
      first = y;
      if (t == 1) return first.contiguous();
      continue;
    }
    if (i == 1) {
      // The output's length is known from the second chunk on: one buffer, no growing cat.
      auto sizes = y.sizes().vec();
      sizes[2] = first.size(2) + (t - 1) * y.size(2);
      out = torch::empty(sizes, y.options());
      out.slice(2, 0, first.size(2)).copy_(first);
      at = first.size(2);
      first = torch::Tensor();
    }
    if (at + y.size(2) > out.size(2)) throw Error("internal: WanVAE decode chunk sizes differ");
    out.slice(2, at, at + y.size(2)).copy_(y);
    at += y.size(2);
  }
  return out;
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

// QwenImageVAE.tiled_forward and WanVideoVAE.tiled_encode / tiled_decode: the same tile
// placement and blending, on images [B, C, H, W] or videos [B, C, T, H, W] (tiles cover all
// frames; the mask is the same for every frame).
torch::Tensor tiled_forward(const std::function<torch::Tensor(const torch::Tensor&)>& fn, const torch::Tensor& x,
                            const WanVAETiling& t, std::int64_t input_scale, std::int64_t output_scale,
                            const std::string& label) {
  if (!(0 < t.stride_h && t.stride_h <= t.tile_h && 0 < t.stride_w && t.stride_w <= t.tile_w))
    throw Error(label + ": tile stride must be positive and not larger than the tile size, got tile_size=(" +
                std::to_string(t.tile_h) + ", " + std::to_string(t.tile_w) + ") and tile_stride=(" +
                std::to_string(t.stride_h) + ", " + std::to_string(t.stride_w) + ")");
  const std::int64_t hd = x.dim() - 2, wd = x.dim() - 1;  // the spatial dims
  const std::int64_t B = x.size(0), H = x.size(hd) / input_scale, W = x.size(wd) / input_scale;
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
  if (tiles.empty()) throw Error(label + ": tiled input is empty: " + c10::str(x.sizes()));

  const std::int64_t border_h = (t.tile_h - t.stride_h) * output_scale, border_w = (t.tile_w - t.stride_w) * output_scale;
  torch::Tensor values, weight;
  for (const auto& tile : tiles) {
    auto y = fn(x.slice(hd, tile.h0 * input_scale, tile.h1 * input_scale).slice(wd, tile.w0 * input_scale, tile.w1 * input_scale));
    if (!values.defined()) {
      auto sizes = y.sizes().vec();
      sizes[hd] = H * output_scale;
      sizes[wd] = W * output_scale;
      sizes[0] = B;
      values = torch::zeros(sizes, y.options());
      std::vector<std::int64_t> wsizes(x.dim(), 1);
      wsizes[hd] = H * output_scale;
      wsizes[wd] = W * output_scale;
      weight = torch::zeros(wsizes, x.options());
    }
    const std::int64_t yh = y.size(hd), yw = y.size(wd);
    auto mh = ramp_1d(yh, tile.h0 == 0, tile.h1 >= H, border_h);
    auto mw = ramp_1d(yw, tile.w0 == 0, tile.w1 >= W, border_w);
    std::vector<std::int64_t> msizes(x.dim(), 1);
    msizes[hd] = yh;
    msizes[wd] = yw;
    auto mask = torch::minimum(mh.unsqueeze(1).expand({yh, yw}), mw.unsqueeze(0).expand({yh, yw}))
                    .reshape(msizes)
                    .to(x.device(), x.scalar_type());
    const auto rows_lo = tile.h0 * output_scale, cols_lo = tile.w0 * output_scale;
    values.slice(hd, rows_lo, rows_lo + yh).slice(wd, cols_lo, cols_lo + yw) += y * mask;
    weight.slice(hd, rows_lo, rows_lo + yh).slice(wd, cols_lo, cols_lo + yw) += mask;
  }
  return values / weight;
}
}  // namespace

QwenImageVAEImpl::QwenImageVAEImpl(const WanVAEConfig& c) : WanVAEImpl(c, WanVAENaming::QwenImage) {}

torch::Tensor QwenImageVAEImpl::encode_tiled(const torch::Tensor& image, const WanVAETiling& tiling) {
  if (image.dim() != 4) throw Error("QwenImageVAE.encode: expected an image [B, C, H, W], got " + c10::str(image.sizes()));
  return tiled_forward([this](const torch::Tensor& x) { return encode_image(x); }, image, tiling, 8, 1, "QwenImageVAE");
}

torch::Tensor QwenImageVAEImpl::decode_tiled(const torch::Tensor& latents, const WanVAETiling& tiling) {
  if (latents.dim() != 4)
    throw Error("QwenImageVAE.decode: expected latents [B, 16, h, w], got " + c10::str(latents.sizes()));
  return tiled_forward([this](const torch::Tensor& z) { return decode_image(z); }, latents, tiling, 1, 8, "QwenImageVAE");
}

WanVideoVAEImpl::WanVideoVAEImpl(const WanVAEConfig& c) : WanVAEImpl(c, WanVAENaming::Wan) {}

namespace {
// The reference's encode / decode of a list of videos: one at a time, stacked.
torch::Tensor per_video(const torch::Tensor& batch, const std::function<torch::Tensor(const torch::Tensor&)>& fn) {
  if (batch.size(0) == 1) return fn(batch);
  std::vector<torch::Tensor> outs;
  for (std::int64_t b = 0; b < batch.size(0); ++b) outs.push_back(fn(batch.slice(0, b, b + 1)));
  return torch::cat(outs, 0);
}
}  // namespace

torch::Tensor WanVideoVAEImpl::encode_video(const torch::Tensor& video, const std::optional<WanVAETiling>& tiling) {
  if (video.dim() != 5 || video.size(1) != 3 || video.size(2) < 1)
    throw Error("WanVideoVAE.encode: expected videos [B, 3, T, H, W] with T >= 1, got " + c10::str(video.sizes()));
  if (!tiling) return per_video(video, [this](const torch::Tensor& v) { return encode_causal(v); });
  if (video.size(3) % 8 != 0 || video.size(4) % 8 != 0)
    throw Error("WanVideoVAE.encode: tiled encoding needs a height and width that are multiples of 8, got " +
                c10::str(video.sizes()));
  return per_video(video, [&](const torch::Tensor& v) {
    return tiled_forward([this](const torch::Tensor& x) { return encode_causal(x); }, v, *tiling, 8, 1, "WanVideoVAE");
  });
}

torch::Tensor WanVideoVAEImpl::decode_video(const torch::Tensor& latents, const std::optional<WanVAETiling>& tiling) {
  check_latent_channels(latents, 5, "decode");
  if (!tiling) return per_video(latents, [this](const torch::Tensor& z) { return decode_causal(z).clamp_(-1, 1); });
  return per_video(latents, [&](const torch::Tensor& z) {
    return tiled_forward([this](const torch::Tensor& x) { return decode_causal(x); }, z, *tiling, 1, 8, "WanVideoVAE")
        .clamp_(-1, 1);
  });
}

DIFFSYNTH_REGISTER_MODEL("diffsynth.models.qwen_image_vae.QwenImageVAE",
                         [](const nlohmann::ordered_json& kwargs) -> std::shared_ptr<Module> {
                           return QwenImageVAE(WanVAEConfig::from_qwen_image_kwargs(kwargs)).ptr();
                         });

DIFFSYNTH_REGISTER_MODEL("diffsynth.models.wan_video_vae.WanVideoVAE",
                         [](const nlohmann::ordered_json& kwargs) -> std::shared_ptr<Module> {
                           return WanVideoVAE(WanVAEConfig::from_wan_video_kwargs(kwargs)).ptr();
                         });

}  // namespace diffsynth
