// Qwen-Image VAE (the Wan 2.1 VAE architecture under diffusers' AutoencoderKLQwenImage names).
// Reference: diffsynth/models/qwen_image_vae.py (DiffSynth-Studio, pinned in README).
//
// Single images only: encode/decode treat an image as one frame, exactly as the reference's
// encode()/decode() do (no feature cache), so the temporal `time_conv` layers of the resamplers
// are loaded (they are in the checkpoint) but never run; encode_video/decode_video (LingBot-Video)
// are not ported.
//
// Tiling follows the reference's `tiled_forward` (tile size and stride in latent pixels; tiles
// blended with linear ramps over their overlap). Each tile runs on its own, so the activation
// memory is bounded by one tile; only the output and a [1, 1, H, W] weight map are full size.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/module.h"

namespace diffsynth {

struct QwenImageVAEConfig {
  std::int64_t base_dim = 96;
  std::int64_t z_dim = 16;
  std::vector<std::int64_t> dim_mult = {1, 2, 4, 4};
  std::int64_t num_res_blocks = 2;
  std::vector<double> attn_scales = {};
  std::vector<bool> temperal_downsample = {false, true, true};  // (sic) the reference's spelling
  double dropout = 0.0;  // inference only: dropout is the identity
  std::int64_t image_channels = 3;
  static QwenImageVAEConfig from_kwargs(const nlohmann::ordered_json& kwargs);
};

namespace qwen_vae {

// A layer of a block list (the encoder's down_blocks mixes residual, attention and resample
// layers, as the reference's ModuleList does).
class Layer : public Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
};

// Conv3d whose temporal padding is all in front (zeros): F.pad(x, (pw, pw, ph, ph, 2*pt, 0)).
class CausalConv3d : public Module {
 public:
  CausalConv3d(std::int64_t in, std::int64_t out, std::vector<std::int64_t> kernel,
               std::vector<std::int64_t> stride = {1, 1, 1}, std::vector<std::int64_t> padding = {0, 0, 0});
  torch::Tensor forward(const torch::Tensor& x);  // [B, C, T, H, W]
  std::vector<std::int64_t> kernel, stride, padding;
  // A single frame runs as a 2-D conv with the last temporal tap (see QwenImageVAEImpl::set_exact_conv3d).
  bool single_frame_as_2d = true;
};

// nn.Conv2d (zero padding).
class Conv2d : public Module {
 public:
  Conv2d(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride = 1, std::int64_t padding = 0);
  torch::Tensor forward(const torch::Tensor& x);
  std::int64_t stride, padding;
};

// F.normalize(x, dim=1) * sqrt(dim) * gamma; gamma [dim, 1, 1, 1] (video) or [dim, 1, 1] (images).
class RMSNorm : public Module {
 public:
  RMSNorm(std::int64_t dim, bool images);
  torch::Tensor forward(const torch::Tensor& x);
  std::int64_t dim;
};

class ResidualBlock : public Layer {
 public:
  ResidualBlock(std::int64_t in_dim, std::int64_t out_dim);
  torch::Tensor forward(const torch::Tensor& x) override;
  std::shared_ptr<RMSNorm> norm1, norm2;
  std::shared_ptr<CausalConv3d> conv1, conv2, conv_shortcut;  // conv_shortcut null when in == out
};

// Single-head self-attention over each frame's pixels.
class AttentionBlock : public Layer {
 public:
  explicit AttentionBlock(std::int64_t dim);
  torch::Tensor forward(const torch::Tensor& x) override;
  std::shared_ptr<RMSNorm> norm;
  std::shared_ptr<Conv2d> to_qkv, proj;
};

// mode: "upsample2d", "upsample3d", "downsample2d", "downsample3d" or "none".
class Resample : public Layer {
 public:
  Resample(std::int64_t dim, std::string mode);
  torch::Tensor forward(const torch::Tensor& x) override;
  std::string mode;
  std::shared_ptr<Conv2d> conv;              // state-dict name resample.1
  std::shared_ptr<CausalConv3d> time_conv;   // *3d modes: loaded, used only with a feature cache
};

class MidBlock : public Module {
 public:
  explicit MidBlock(std::int64_t dim);
  torch::Tensor forward(const torch::Tensor& x);
  std::vector<std::shared_ptr<ResidualBlock>> resnets;
  std::vector<std::shared_ptr<AttentionBlock>> attentions;
};

class Encoder3d : public Module {
 public:
  Encoder3d(const QwenImageVAEConfig& c, std::int64_t out_channels);
  torch::Tensor forward(const torch::Tensor& x);
  std::shared_ptr<CausalConv3d> conv_in, conv_out;
  std::vector<std::shared_ptr<Layer>> down_blocks;
  std::shared_ptr<MidBlock> mid_block;
  std::shared_ptr<RMSNorm> norm_out;
};

class UpBlock : public Module {
 public:
  UpBlock(std::int64_t in_dim, std::int64_t out_dim, std::int64_t num_res_blocks, const std::string& upsample_mode);
  torch::Tensor forward(const torch::Tensor& x);
  std::vector<std::shared_ptr<ResidualBlock>> resnets;
  std::shared_ptr<Resample> upsampler;  // null on the last block
};

class Decoder3d : public Module {
 public:
  explicit Decoder3d(const QwenImageVAEConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  std::shared_ptr<CausalConv3d> conv_in, conv_out;
  std::shared_ptr<MidBlock> mid_block;
  std::vector<std::shared_ptr<UpBlock>> up_blocks;
  std::shared_ptr<RMSNorm> norm_out;
};

}  // namespace qwen_vae

// Tile geometry in latent pixels (the reference's tile_size / tile_stride, default 128 / 64).
// 0 < stride <= size in each direction; the overlap (size - stride) is blended linearly.
struct QwenImageVAETiling {
  std::int64_t tile_h = 128, tile_w = 128;
  std::int64_t stride_h = 64, stride_w = 64;
  QwenImageVAETiling() = default;
  QwenImageVAETiling(std::int64_t size, std::int64_t stride_)
      : tile_h(size), tile_w(size), stride_h(stride_), stride_w(stride_) {}
  QwenImageVAETiling(std::int64_t th, std::int64_t tw, std::int64_t sh, std::int64_t sw)
      : tile_h(th), tile_w(tw), stride_h(sh), stride_w(sw) {}
};

class QwenImageVAEImpl : public Module {
 public:
  explicit QwenImageVAEImpl(const QwenImageVAEConfig& config = {});

  // Image [B, C, H, W] (in [-1, 1]) -> normalised latents [B, 16, H/8, W/8] (the posterior mean).
  torch::Tensor encode(const torch::Tensor& image);
  // Latents [B, 16, h, w] -> image [B, C, 8h, 8w], not clamped.
  torch::Tensor decode(const torch::Tensor& latents);
  // The same, tile by tile (the reference's encode/decode(..., tiled=True, tile_size, tile_stride)).
  torch::Tensor encode_tiled(const torch::Tensor& image, const QwenImageVAETiling& tiling = {});
  torch::Tensor decode_tiled(const torch::Tensor& latents, const QwenImageVAETiling& tiling = {});

  // By default a causal 3x3x3 conv on a single frame (every conv of encode/decode) runs as the
  // equivalent 2-D conv: 3x less work, same values up to summation order (fp32 ~1e-6 relative).
  // exact = true runs the reference's padded conv3d instead (bit-identical to the reference on
  // the same kernels, 3x slower; on CPU in bf16 up to ~5x).
  void set_exact_conv3d(bool exact);

  QwenImageVAEConfig config;
  std::shared_ptr<qwen_vae::Encoder3d> encoder;
  std::shared_ptr<qwen_vae::CausalConv3d> quant_conv, post_quant_conv;
  std::shared_ptr<qwen_vae::Decoder3d> decoder;
  // Latent normalisation constants (fp32, CPU; plain attributes in the reference, not weights).
  torch::Tensor mean, inv_std;  // [1, 16, 1, 1, 1]; inv_std = 1 / std (the reference's `std`)

 private:
  template <typename Fn>
  torch::Tensor tiled_forward(Fn&& fn, const torch::Tensor& x, const QwenImageVAETiling& tiling,
                              std::int64_t input_scale, std::int64_t output_scale);
};
TORCH_MODULE(QwenImageVAE);

}  // namespace diffsynth
