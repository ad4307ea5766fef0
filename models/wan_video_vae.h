// The Wan 2.1 VAE, once, under both of its reference classes:
//   * WanVideoVAE  (diffsynth/models/wan_video_vae.py: WanVideoVAE wrapping VideoVAE_, the original
//     Wan names "model.encoder.conv1", "model.encoder.downsamples.N.residual.0.gamma", "model.conv1"...);
//   * QwenImageVAE (diffsynth/models/qwen_image_vae.py: the same network under diffusers'
//     AutoencoderKLQwenImage names "encoder.conv_in", "encoder.down_blocks.N.norm1.gamma", "quant_conv"...).
// One network (wan_vae::*, WanVAEImpl); the naming scheme only decides the names its layers are
// registered under (and which reference classes they stand for, for the VRAM module maps), so
// each class's state dict is its reference's, key for key.
//
// Two ways through the network:
//   * one frame without a feature cache (encode_image / decode_image): what QwenImageVAE's
//     encode()/decode() do for images; the resamplers' temporal convs do not run;
//   * the causal feature cache (encode_causal / decode_causal): VideoVAE_.encode/decode (and
//     QwenImageVAE.encode_video/decode_video). Encoding runs the first frame alone, then chunks
//     of 4 frames; decoding runs one latent frame at a time. Every causal conv keeps the last
//     CACHE_T = 2 frames of its input between chunks and prepends them to the next chunk (zeros
//     before the stream starts); the temporal downsampler keeps its input's last frame; the
//     temporal upsampler skips its time_conv on the first chunk (the reference's "Rep" marker),
//     so the first latent frame decodes to one frame and every further one to four.
// A single-frame video through encode_causal gives encode_image's values bit for bit.
//
// Tiling follows the reference (tile size and stride in latent pixels; tiles blended with linear
// ramps over their overlap; video tiles cover all frames). Each tile runs on its own, so the
// activation memory is bounded by one tile; only the output and a weight map are full size.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/module.h"
#include "models/general_modules.h"

namespace diffsynth {

struct WanVAEConfig {
  std::int64_t base_dim = 96;  // WanVideoVAE / VideoVAE_: `dim`
  std::int64_t z_dim = 16;
  std::vector<std::int64_t> dim_mult = {1, 2, 4, 4};
  std::int64_t num_res_blocks = 2;
  std::vector<double> attn_scales = {};
  std::vector<bool> temperal_downsample = {false, true, true};  // (sic) the reference's spelling
  double dropout = 0.0;  // inference only: dropout is the identity
  std::int64_t image_channels = 3;  // QwenImageVAE only (Wan: always 3)
  // QwenImageVAE(base_dim, z_dim, dim_mult, num_res_blocks, attn_scales, temperal_downsample,
  // dropout, image_channels).
  static WanVAEConfig from_qwen_image_kwargs(const nlohmann::ordered_json& kwargs);
  // WanVideoVAE(z_dim); beyond the reference (which hard-codes them, so that reduced models
  // exist): VideoVAE_'s dim, dim_mult, num_res_blocks, attn_scales, temperal_downsample, dropout.
  static WanVAEConfig from_wan_video_kwargs(const nlohmann::ordered_json& kwargs);
};
using QwenImageVAEConfig = WanVAEConfig;

// Which reference class's names the layers are registered under.
enum class WanVAENaming { QwenImage, Wan };

namespace wan_vae {

constexpr std::int64_t kCacheT = 2;  // the reference's CACHE_T

// The reference's feat_cache / feat_idx: one slot per cached call site, in call order, kept
// across the chunks of one encode or decode. `idx` restarts at 0 with every chunk.
struct FeatCache {
  struct Slot {
    torch::Tensor x;   // undefined: None
    bool rep = false;  // the reference's 'Rep' marker (temporal upsampler, first chunk seen)
    bool empty() const { return !x.defined() && !rep; }
  };
  std::vector<Slot> slots;
  std::size_t idx = 0;
  Slot& next() {
    if (idx == slots.size()) slots.emplace_back();
    return slots[idx++];
  }
};

// A layer of a block list (the encoder's down blocks mix residual, attention and resample
// layers, as the reference's ModuleList / Sequential does). `cache` null: no feature cache.
class Layer : public Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, FeatCache* cache) = 0;
};

// Conv3d whose temporal padding is all in front: F.pad(x, (pw, pw, ph, ph, 2*pt, 0)), or the
// cached frames of the previous chunk (then only the frames they lack are zeros).
class CausalConv3d : public Module {
 public:
  CausalConv3d(WanVAENaming naming, std::int64_t in, std::int64_t out, std::vector<std::int64_t> kernel,
               std::vector<std::int64_t> stride = {1, 1, 1}, std::vector<std::int64_t> padding = {0, 0, 0});
  // x [B, C, T, H, W]; cache: the previous chunk's frames (undefined: none).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cache = {});
  std::vector<std::int64_t> kernel, stride, padding;
  // false (default): a single frame without cache runs as a 2-D conv with the last temporal tap,
  // and several frames as one concatenation (cache, missing zero frames, x) and a conv3d that
  // pads H and W itself. true: the reference's concatenation, F.pad and conv3d, kernel for kernel.
  bool exact_conv3d = false;
};

// F.normalize(x, dim=1) * sqrt(dim) * gamma; gamma [dim, 1, 1, 1] (video) or [dim, 1, 1] (images).
class RMSNorm : public Module {
 public:
  RMSNorm(WanVAENaming naming, std::int64_t dim, bool images);
  torch::Tensor forward(const torch::Tensor& x);
  std::int64_t dim;
};

// Qwen names: norm1, conv1, norm2, conv2, conv_shortcut. Wan names: residual.{0,2,3,6}, shortcut.
class ResidualBlock : public Layer {
 public:
  ResidualBlock(WanVAENaming naming, std::int64_t in_dim, std::int64_t out_dim);
  torch::Tensor forward(const torch::Tensor& x, FeatCache* cache) override;
  std::shared_ptr<RMSNorm> norm1, norm2;
  std::shared_ptr<CausalConv3d> conv1, conv2, conv_shortcut;  // conv_shortcut null when in == out
};

// Single-head self-attention over each frame's pixels (no cache: frames do not see each other).
class AttentionBlock : public Layer {
 public:
  AttentionBlock(WanVAENaming naming, std::int64_t dim);
  torch::Tensor forward(const torch::Tensor& x, FeatCache* cache) override;
  std::shared_ptr<RMSNorm> norm;
  Conv to_qkv{nullptr}, proj{nullptr};  // torch.nn.Conv2d (models/general_modules.h)
};

// mode: "upsample2d", "upsample3d", "downsample2d", "downsample3d" or "none".
class Resample : public Layer {
 public:
  Resample(WanVAENaming naming, std::int64_t dim, std::string mode);
  torch::Tensor forward(const torch::Tensor& x, FeatCache* cache) override;
  std::string mode;
  Conv conv{nullptr};             // state-dict name resample.1
  std::shared_ptr<CausalConv3d> time_conv;  // *3d modes; runs only with a feature cache
};

// Qwen names: resnets.0, attentions.0, resnets.1. Wan names (the `middle` Sequential): 0, 1, 2.
class MidBlock : public Module {
 public:
  MidBlock(WanVAENaming naming, std::int64_t dim);
  torch::Tensor forward(const torch::Tensor& x, FeatCache* cache);
  std::shared_ptr<ResidualBlock> resnet0, resnet1;
  std::shared_ptr<AttentionBlock> attention;
};

// Qwen names: conv_in, down_blocks, mid_block, norm_out, conv_out.
// Wan names:  conv1, downsamples, middle, head.0, head.2.
class Encoder3d : public Module {
 public:
  Encoder3d(WanVAENaming naming, const WanVAEConfig& c, std::int64_t out_channels);
  torch::Tensor forward(const torch::Tensor& x, FeatCache* cache);
  std::shared_ptr<CausalConv3d> conv_in, conv_out;
  std::vector<std::shared_ptr<Layer>> down_blocks;
  std::shared_ptr<MidBlock> mid_block;
  std::shared_ptr<RMSNorm> norm_out;
};

// Qwen names: conv_in, mid_block, up_blocks.I.{resnets.J, upsamplers.0}, norm_out, conv_out.
// Wan names:  conv1, middle, upsamples.K (one flat Sequential, with attention where
// attn_scales asks), head.0, head.2.
class Decoder3d : public Module {
 public:
  Decoder3d(WanVAENaming naming, const WanVAEConfig& c);
  torch::Tensor forward(const torch::Tensor& x, FeatCache* cache);
  std::shared_ptr<CausalConv3d> conv_in, conv_out;
  std::shared_ptr<MidBlock> mid_block;
  std::vector<std::shared_ptr<Layer>> up_layers;  // in call order, whichever names they carry
  std::shared_ptr<RMSNorm> norm_out;
};

}  // namespace wan_vae

// Tile geometry in latent pixels (the reference's tile_size / tile_stride).
// 0 < stride <= size in each direction; the overlap (size - stride) is blended linearly.
struct WanVAETiling {
  std::int64_t tile_h = 128, tile_w = 128;
  std::int64_t stride_h = 64, stride_w = 64;
  constexpr WanVAETiling() = default;
  constexpr WanVAETiling(std::int64_t size, std::int64_t stride_)
      : tile_h(size), tile_w(size), stride_h(stride_), stride_w(stride_) {}
  constexpr WanVAETiling(std::int64_t th, std::int64_t tw, std::int64_t sh, std::int64_t sw)
      : tile_h(th), tile_w(tw), stride_h(sh), stride_w(sw) {}
};
using QwenImageVAETiling = WanVAETiling;  // QwenImageVAE's defaults: 128 / 64

// The network, shared by both registered classes.
class WanVAEImpl : public Module {
 public:
  WanVAEImpl(const WanVAEConfig& config, WanVAENaming naming);

  // One frame, no feature cache: image [B, C, H, W] (in [-1, 1]) -> normalised latents
  // [B, z, H/8, W/8] (the posterior mean, (mu - mean) * inv_std); latents -> image, not clamped.
  torch::Tensor encode_image(const torch::Tensor& image);
  torch::Tensor decode_image(const torch::Tensor& latents);
  // The causal feature cache (VideoVAE_.encode / decode with the scale): video [B, C, T, H, W]
  // -> normalised latents [B, 16, (T - 1) / 4 + 1, H/8, W/8] (frames after the last full chunk
  // of 4 are dropped, as the reference's loop does); latents [B, 16, t, h, w] -> video
  // [B, C, 4t - 3, 8h, 8w], not clamped. The whole batch runs together.
  torch::Tensor encode_causal(const torch::Tensor& video);
  torch::Tensor decode_causal(const torch::Tensor& latents);

  // By default a causal 3x3x3 conv on a single frame runs as the equivalent 2-D conv (3x less
  // work, same values up to summation order, fp32 ~1e-6 relative) and a cached conv over
  // several frames pads H and W inside conv3d instead of copying the input once more.
  // exact = true runs the reference's padded conv3d everywhere (bit-identical to the reference
  // on the same kernels, 3x slower on single frames; on CPU in bf16 up to ~5x), in the
  // reference's channels-first layout.
  void set_exact_conv3d(bool exact);
  // By default the activations run channels-last (NDHWC / NHWC strides, the reference's shapes):
  // oneDNN convolves that layout without reordering every input and output (measured on this
  // CPU: conv3d 1.2x faster in fp32, 2.2-2.5x in bf16) and the RMS norm reduces over contiguous
  // channels. Outputs are returned contiguous. Off with exact_conv3d.
  bool channels_last = true;

  WanVAEConfig config;
  WanVAENaming naming;
  std::shared_ptr<wan_vae::Encoder3d> encoder;
  std::shared_ptr<wan_vae::CausalConv3d> quant_conv, post_quant_conv;  // Wan names: conv1, conv2
  std::shared_ptr<wan_vae::Decoder3d> decoder;
  // Latent normalisation constants (fp32, CPU; plain attributes in the reference, not weights).
  torch::Tensor mean, inv_std;  // [1, 16, 1, 1, 1]; inv_std = 1 / std (the reference's `scale[1]`)

 protected:
  // The class name for messages ("QwenImageVAE", "WanVideoVAE").
  const char* label() const { return naming == WanVAENaming::Wan ? "WanVideoVAE" : "QwenImageVAE"; }
  void check_latent_channels(const torch::Tensor& latents, std::int64_t dims, const char* what) const;
  // x [B, C, T, H, W] in the layout the network runs in (see channels_last).
  torch::Tensor to_compute_layout(const torch::Tensor& x) const;
};

// diffsynth.models.qwen_image_vae.QwenImageVAE.
class QwenImageVAEImpl : public WanVAEImpl {
 public:
  explicit QwenImageVAEImpl(const WanVAEConfig& config = {});
  // Image [B, C, H, W] (in [-1, 1]) -> normalised latents [B, 16, H/8, W/8] (the posterior mean).
  torch::Tensor encode(const torch::Tensor& image) { return encode_image(image); }
  // Latents [B, 16, h, w] -> image [B, C, 8h, 8w], not clamped.
  torch::Tensor decode(const torch::Tensor& latents) { return decode_image(latents); }
  // The same, tile by tile (the reference's encode/decode(..., tiled=True, tile_size, tile_stride)).
  torch::Tensor encode_tiled(const torch::Tensor& image, const WanVAETiling& tiling = {});
  torch::Tensor decode_tiled(const torch::Tensor& latents, const WanVAETiling& tiling = {});
  // The reference's encode_video / decode_video (LingBot): encode_causal / decode_causal on the
  // whole batch, not clamped.
  torch::Tensor encode_video(const torch::Tensor& video) { return encode_causal(video); }
  torch::Tensor decode_video(const torch::Tensor& latents) { return decode_causal(latents); }
};
TORCH_MODULE(QwenImageVAE);

// diffsynth.models.wan_video_vae.WanVideoVAE (state dict "model.*", loaded from Wan2.1_VAE.pth
// through WanVideoVAEStateDictConverter).
class WanVideoVAEImpl : public WanVAEImpl {
 public:
  // WanVideoVAE.encode / decode's default tile_size / tile_stride (latent pixels); the Wan
  // pipeline passes its own, (30, 52) / (15, 26).
  static constexpr WanVAETiling kDefaultTiling{34, 34, 18, 16};

  explicit WanVideoVAEImpl(const WanVAEConfig& config = {});
  // WanVideoVAE.encode(videos, device, tiled, tile_size, tile_stride): video [B, 3, T, H, W] in
  // [-1, 1] -> latents [B, 16, (T - 1) / 4 + 1, H/8, W/8] (normalised posterior mean, not clamped),
  // each video on its own as the reference does; with `tiling`, tiled_encode (H, W multiples of 8).
  torch::Tensor encode_video(const torch::Tensor& video, const std::optional<WanVAETiling>& tiling = std::nullopt);
  // WanVideoVAE.decode: latents [B, 16, t, h, w] -> video [B, 3, 4t - 3, 8h, 8w] clamped to
  // [-1, 1] (single_decode and tiled_decode both clamp), each video on its own.
  torch::Tensor decode_video(const torch::Tensor& latents, const std::optional<WanVAETiling>& tiling = std::nullopt);
};
TORCH_MODULE(WanVideoVAE);

}  // namespace diffsynth
