// Qwen-Image DiT (MMDiT with double-stream blocks).
// Reference: diffsynth/models/qwen_image_dit.py and model_fn_qwen_image in
// diffsynth/pipelines/qwen_image.py (DiffSynth-Studio, version pinned in the README).
// The reference hard-codes the widths (3072 inner, 24 x 128 heads, 3584 text, 64 in/out); here
// they are config fields with those defaults, so reduced test models of the same architecture
// exist. The RoPE axes split the head dim as the reference's [16, 56, 56] does for 128:
// frame = head_dim / 8, height = width = (head_dim - frame) / 2.
#pragma once
#include <torch/torch.h>

#include <array>
#include <functional>
#include <optional>
#include <vector>

#include "core/module.h"
#include "models/general_modules.h"

namespace diffsynth {

struct QwenImageDiTConfig {
  std::int64_t num_layers = 60;
  bool use_layer3d_rope = false;      // Qwen-Image-Layered
  bool use_additional_t_cond = false; // Qwen-Image-Layered
  std::int64_t dim = 3072;
  std::int64_t num_attention_heads = 24;
  std::int64_t attention_head_dim = 128;
  std::int64_t joint_attention_dim = 3584;  // text encoder hidden size
  std::int64_t in_channels = 64;            // 16 latent channels x 2 x 2 patch
  std::int64_t timestep_dim = 256;
  static QwenImageDiTConfig from_kwargs(const nlohmann::ordered_json& kwargs);
  std::vector<std::int64_t> axes_dim() const;
};

// silu -> Linear, as nn.Sequential(nn.SiLU(), nn.Linear) (the linear is child "1").
class ModulationImpl : public Module {
 public:
  ModulationImpl(std::int64_t dim, std::int64_t out);
  torch::Tensor forward(const torch::Tensor& temb);
  Linear linear{nullptr};
};
TORCH_MODULE(Modulation);

// net = [ApproximateGELU(dim, 4 dim) (child "0", holding "proj"), Dropout, Linear(4 dim, dim) (child "2")]
class QwenFeedForwardImpl : public Module {
 public:
  explicit QwenFeedForwardImpl(std::int64_t dim);
  torch::Tensor forward(const torch::Tensor& x);
  Linear proj{nullptr}, out{nullptr};
};
TORCH_MODULE(QwenFeedForward);

class QwenDoubleStreamAttentionImpl : public Module {
 public:
  QwenDoubleStreamAttentionImpl(std::int64_t dim, std::int64_t num_heads, std::int64_t head_dim);
  // Returns (image_out, text_out). freqs are complex64 [S, head_dim/2]. `attention_mask`
  // (optional) is added to / masks the joint [text | image] scores.
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& image, const torch::Tensor& text,
                                                  const torch::Tensor& img_freqs, const torch::Tensor& txt_freqs,
                                                  const torch::Tensor& attention_mask);
  std::int64_t num_heads, head_dim;
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, add_q_proj{nullptr}, add_k_proj{nullptr}, add_v_proj{nullptr};
  RMSNorm norm_q{nullptr}, norm_k{nullptr}, norm_added_q{nullptr}, norm_added_k{nullptr};
  Linear to_out{nullptr}, to_add_out{nullptr};
};
TORCH_MODULE(QwenDoubleStreamAttention);

class QwenImageTransformerBlockImpl : public Module {
 public:
  QwenImageTransformerBlockImpl(std::int64_t dim, std::int64_t num_heads, std::int64_t head_dim);
  // Returns (text, image). `modulate_index` [B, S_img] (int) selects temb[0] / temb[1] per image
  // token when temb holds two rows (zero_cond_t); undefined otherwise.
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& image, const torch::Tensor& text,
                                                  const torch::Tensor& temb, const torch::Tensor& img_freqs,
                                                  const torch::Tensor& txt_freqs, const torch::Tensor& attention_mask,
                                                  const torch::Tensor& modulate_index);
  std::int64_t dim;
  Modulation img_mod{nullptr}, txt_mod{nullptr};
  QwenDoubleStreamAttention attn{nullptr};
  QwenFeedForward img_mlp{nullptr}, txt_mlp{nullptr};
};
TORCH_MODULE(QwenImageTransformerBlock);

// Everything model_fn_qwen_image takes besides the model.
struct QwenImageDiTInputs {
  torch::Tensor latents;          // [N, 16, h, w] (N = layer_num + 1 for the layered model, else 1)
  torch::Tensor timestep;         // [1], sigma * 1000 in the model dtype
  torch::Tensor prompt_emb;       // [1, Lt, text dim]
  torch::Tensor prompt_emb_mask;  // [1, Lt]: its sum gives the text length used for RoPE
  std::vector<torch::Tensor> edit_latents;   // each [F, 16, h_e, w_e]: appended image streams
  torch::Tensor context_latents;             // optional, appended before edit latents
  torch::Tensor layer_input_latents;         // optional (layered model): the RGBA condition image
  std::optional<std::int64_t> layer_num;     // layered model: number of output layers
  bool zero_cond_t = false;                  // Edit-2511: condition tokens modulated with t = 0
  // Called after each block with the image tokens; the Blockwise ControlNet adds its residual
  // to image[:, :image_seq_len] here.
  std::function<void(std::int64_t block_id, torch::Tensor& image, std::int64_t image_seq_len)> after_block;
};

class QwenImageDiTImpl : public Module {
 public:
  explicit QwenImageDiTImpl(const QwenImageDiTConfig& config = {});
  // model_fn_qwen_image: the velocity prediction [N, 16, h, w].
  torch::Tensor model_fn(const QwenImageDiTInputs& in);
  // Timestep embedding [B, dim] of `timestep` (already divided by 1000), in `dtype`.
  torch::Tensor time_text_embed(const torch::Tensor& timestep, c10::ScalarType dtype,
                                std::optional<std::int64_t> addition_t_cond = std::nullopt);
  // (img_freqs [S_img, head_dim/2], txt_freqs [max_txt_len, head_dim/2]), complex64, for the image
  // streams (frames, h/2, w/2) in order and the text lengths.
  std::pair<torch::Tensor, torch::Tensor> rope(const std::vector<std::array<std::int64_t, 3>>& img_shapes,
                                               std::int64_t max_txt_len) const;

  QwenImageDiTConfig config;
  Linear linear_1{nullptr}, linear_2{nullptr};   // time_text_embed.timestep_embedder.*
  Weight addition_t_embedding{nullptr};  // time_text_embed.addition_t_embedding (layered)
  RMSNorm txt_norm{nullptr};
  Linear img_in{nullptr}, txt_in{nullptr};
  torch::nn::ModuleList transformer_blocks{nullptr};
  std::vector<QwenImageTransformerBlock> blocks;  // typed view of transformer_blocks
  Linear norm_out_linear{nullptr};                // norm_out.linear
  Linear proj_out{nullptr};

 private:
  torch::Tensor rope_freqs(const torch::Tensor& positions, std::int64_t axis_dim) const;
};
TORCH_MODULE(QwenImageDiT);

}  // namespace diffsynth
