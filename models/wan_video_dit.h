// Wan video DiT (Wan2.1 / Wan2.2 `WanModel`).
// Reference: diffsynth/models/wan_video_dit.py and model_fn_wan_video in
// diffsynth/pipelines/wan_video.py (DiffSynth-Studio, version pinned in the README).
//
// The constructor takes every keyword the registered WanModel entries use, so each entry builds
// on meta and proves its hash. The forward (model_fn) covers text-to-video and the conditioning
// inputs that are plain tensors (image latents `y`, CLIP features, reference latents, camera
// control latents, Wan2.2's per-token timestep); the WanToDance parts are built for their layout
// only and their use is refused. VACE, VAP, motion controller, TeaCache, sliding windows and
// sequence parallelism are not ported.
#pragma once
#include <torch/torch.h>

#include <array>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/module.h"
#include "models/general_modules.h"

namespace diffsynth {

struct WanModelConfig {
  // Required in the reference (no defaults there): every config entry gives them.
  std::int64_t dim = 0, in_dim = 0, ffn_dim = 0, out_dim = 0, text_dim = 0, freq_dim = 0;
  double eps = 1e-6;
  std::array<std::int64_t, 3> patch_size = {1, 2, 2};
  std::int64_t num_heads = 0, num_layers = 0;
  bool has_image_input = false;
  // Optional, with the reference's defaults.
  bool has_image_pos_emb = false;
  bool has_ref_conv = false;
  bool add_control_adapter = false;
  std::int64_t in_dim_control_adapter = 24;
  bool seperated_timestep = false;  // (sic) the reference's spelling
  bool require_vae_embedding = true;
  bool require_clip_embedding = true;
  bool fuse_vae_embedding_in_latents = false;
  bool wantodance_enable_music_inject = false;
  std::vector<std::int64_t> wantodance_music_inject_layers = {0, 4, 8, 12, 16, 20, 24, 27};
  bool wantodance_enable_refimage = false;
  bool wantodance_enable_refface = false;
  bool wantodance_enable_global = false;
  bool wantodance_enable_dynamicfps = false;
  bool wantodance_enable_unimodel = false;

  static WanModelConfig from_kwargs(const nlohmann::ordered_json& kwargs);
  std::int64_t head_dim() const { return dim / num_heads; }
  bool uses_wantodance() const;
};

namespace wan_dit {

// wan_video_dit.RMSNorm (over the whole width, not per head): general_modules' arithmetic.
RMSNorm rms_norm(std::int64_t dim, double eps);

// What self- and cross-attention share: q, k, v, o and the RMS norms of q and k.
class AttentionProjections : public Module {
 public:
  AttentionProjections(std::int64_t dim, std::int64_t num_heads, double eps);
  std::int64_t num_heads;
  Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  RMSNorm norm_q{nullptr}, norm_k{nullptr};
};

class SelfAttentionImpl : public AttentionProjections {
 public:
  using AttentionProjections::AttentionProjections;
  // freqs: complex128 [S, 1, head_dim / 2] (the 3-D RoPE of the token grid).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& freqs);
};
TORCH_MODULE(SelfAttention);

class CrossAttentionImpl : public AttentionProjections {
 public:
  CrossAttentionImpl(std::int64_t dim, std::int64_t num_heads, double eps, bool has_image_input);
  // With image input, the first 257 context tokens are the CLIP image tokens.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);
  bool has_image_input;
  Linear k_img{nullptr}, v_img{nullptr};
  RMSNorm norm_k_img{nullptr};
};
TORCH_MODULE(CrossAttention);

class DiTBlockImpl : public Module {
 public:
  DiTBlockImpl(bool has_image_input, std::int64_t dim, std::int64_t num_heads, std::int64_t ffn_dim, double eps);
  // t_mod: [B, 6, dim], or [B, S, 6, dim] for a per-token timestep.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context, const torch::Tensor& t_mod,
                        const torch::Tensor& freqs);
  SelfAttention self_attn{nullptr};
  CrossAttention cross_attn{nullptr};
  LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Linear ffn_in{nullptr}, ffn_out{nullptr};  // ffn.0, ffn.2 (ffn.1 is GELU tanh)
};
TORCH_MODULE(DiTBlock);

// The CLIP image embedding: LayerNorm, Linear, GELU, Linear, LayerNorm (+ position embedding).
class MLPImpl : public Module {
 public:
  MLPImpl(std::int64_t in_dim, std::int64_t out_dim, bool has_pos_emb);
  torch::Tensor forward(const torch::Tensor& x);
  bool has_pos_emb;
  LayerNorm norm_in{nullptr}, norm_out{nullptr};
  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(MLP);

class HeadImpl : public Module {
 public:
  HeadImpl(std::int64_t dim, std::int64_t out_dim, const std::array<std::int64_t, 3>& patch_size, double eps);
  // t: [B, dim], or [B, S, dim] for a per-token timestep.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t);
  LayerNorm norm{nullptr};
  Linear head{nullptr};
};
TORCH_MODULE(Head);

// wan_video_camera_controller.SimpleAdapter (num_residual_blocks = 1).
class SimpleAdapterImpl : public Module {
 public:
  SimpleAdapterImpl(std::int64_t in_dim, std::int64_t out_dim, std::vector<std::int64_t> kernel);
  torch::Tensor forward(const torch::Tensor& x);  // [B, C, F, H, W] -> [B, out, F, H/8/k, W/8/k]
  Conv conv{nullptr}, res_conv1{nullptr}, res_conv2{nullptr};
};
TORCH_MODULE(SimpleAdapter);

}  // namespace wan_dit

// Everything model_fn_wan_video takes for the supported paths.
struct WanDiTInputs {
  torch::Tensor latents;       // [B, in_dim (or less, with y), F, H, W]
  torch::Tensor timestep;      // [1] or [B]: sigma * 1000, in the latents' dtype
  torch::Tensor context;       // [B', L, text_dim]; B' = 2 B merges CFG (latents are repeated)
  torch::Tensor clip_feature;  // optional [B, 257, 1280]
  torch::Tensor y;             // optional image-condition latents, concatenated to the channels
  torch::Tensor reference_latents;               // optional [B, 16, (1,) H, W] (has_ref_conv)
  torch::Tensor control_camera_latents_input;    // optional (add_control_adapter)
  bool fuse_vae_embedding_in_latents = false;    // Wan2.2 TI2V: first frame at t = 0
  // Called after each block with the tokens [B, S, dim].
  std::function<void(std::int64_t block_id, torch::Tensor& x)> after_block;
};

class WanModelImpl : public Module {
 public:
  explicit WanModelImpl(const WanModelConfig& config);
  // model_fn_wan_video: the velocity prediction [B, out_dim, F, H, W].
  torch::Tensor model_fn(const WanDiTInputs& in);
  // The 3-D RoPE of an f x h x w token grid: complex128 [f h w, 1, head_dim / 2].
  torch::Tensor rope(std::int64_t f, std::int64_t h, std::int64_t w) const;

  WanModelConfig config;
  Conv patch_embedding{nullptr};
  Linear text_embedding_0{nullptr}, text_embedding_2{nullptr};
  Linear time_embedding_0{nullptr}, time_embedding_2{nullptr};
  Linear time_projection_1{nullptr};
  torch::nn::ModuleList block_list{nullptr};
  std::vector<wan_dit::DiTBlock> blocks;  // typed view of block_list ("blocks")
  wan_dit::Head head{nullptr};
  wan_dit::MLP img_emb{nullptr};
  Conv ref_conv{nullptr};
  wan_dit::SimpleAdapter control_adapter{nullptr};

 private:
  // precompute_freqs_cis_3d(head_dim): per axis [end, axis_dim / 2] complex128.
  std::array<torch::Tensor, 3> freqs_;
};
TORCH_MODULE(WanModel);

}  // namespace diffsynth
