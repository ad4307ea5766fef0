// Qwen-Image text-to-image (reference: diffsynth/pipelines/qwen_image.py, QwenImagePipeline).
// Units in the reference's order: shape check, noise, input image (img2img), inpaint mask,
// prompt embedding (positive / negative), Blockwise ControlNet conditioning; then the denoising
// loop with true CFG and the VAE decode. Edit images, EliGen, the layered model's and context
// image inputs are not supported by this pipeline yet (the DiT's model_fn accepts them).
#pragma once
#include <torch/torch.h>

#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tokenizer/bpe_tokenizer.h"
#include "diffusion/base_pipeline.h"
#include "diffusion/flow_match.h"
#include "models/model_loader.h"
#include "models/qwen_image_controlnet.h"
#include "models/qwen_image_dit.h"
#include "models/qwen_image_text_encoder.h"
#include "models/wan_video_vae.h"

namespace diffsynth {

// One Blockwise ControlNet input (reference: diffsynth/utils/controlnet/ControlNetInput).
// Images are uint8 [H, W, C] as read by read_png; `image` must be the output size.
struct ControlNetInput {
  std::int64_t controlnet_id = 0;
  double scale = 1.0;
  double start = 1.0, end = 0.0;  // active while progress (1 -> 0 over the steps) is in [end, start]
  torch::Tensor image;
  torch::Tensor inpaint_mask;     // optional: masked control pixels are zeroed, a mask channel appended
};

struct QwenImageInputs {
  std::string prompt, negative_prompt;
  double cfg_scale = 4.0;
  torch::Tensor input_image;        // img2img: uint8 [height, width, C]
  double denoising_strength = 1.0;
  torch::Tensor inpaint_mask;       // uint8 image, any size (resized as the reference does)
  std::optional<std::int64_t> inpaint_blur_size;
  std::optional<double> inpaint_blur_sigma;
  std::int64_t height = 1328, width = 1328;
  std::optional<std::uint64_t> seed;
  std::int64_t num_inference_steps = 30;
  std::optional<double> exponential_shift_mu;
  std::vector<ControlNetInput> blockwise_controlnet_inputs;
  bool tiled = false;               // VAE tiling (reference semantics, latent pixels)
  std::int64_t tile_size = 128, tile_stride = 64;
};

struct QwenImageOutput {
  torch::Tensor image;    // uint8 [H, W, 3]
  torch::Tensor latents;  // the final latents [1, 16, H/8, W/8], before decoding
  std::uint64_t seed = 0; // the seed used (drawn at random when none was given)
  std::int64_t height = 0, width = 0;
  // Wall time of the stages: image/prompt/control encoding, the denoising loop, the VAE decode.
  double encode_seconds = 0, denoise_seconds = 0, decode_seconds = 0;
};

class QwenImagePipeline : public BasePipeline {
 public:
  // Bounds check_inputs enforces. Sides: 8192 patches of 16 px, the reference's RoPE table of
  // 4096 positions each way from the centre; memory is the tighter bound in practice.
  static constexpr std::int64_t kMaxImageSide = 131072;
  static constexpr double kMaxGuidance = 100;  // |cfg_scale|, |ControlNet scale|
  static constexpr double kMaxShiftMu = 15;    // |exponential_shift_mu|: past it every sigma rounds to 0 or 1

  QwenImagePipeline(torch::Device device = torch::kCPU, c10::ScalarType dtype = torch::kBFloat16);

  // The models a pool holds (fetch_model as the reference's from_pretrained) and the tokenizer
  // of `tokenizer_dir` (a folder with tokenizer.json).
  static std::unique_ptr<QwenImagePipeline> from_model_pool(ModelPool& pool, const std::string& tokenizer_dir,
                                                            torch::Device device, c10::ScalarType dtype);

  QwenImageOutput operator()(const QwenImageInputs& inputs, std::ostream* progress = nullptr);

  // What needs no model: sizes, steps, strength, CFG scale, shift, blur and ControlNet values
  // finite and in range, and the schedule they give finite and decreasing. operator() runs it
  // first; callers run it before loading anything so bad input fails in a second, not after
  // minutes of loading.
  static void check_inputs(const QwenImageInputs& in);
  // About how many bytes a run with these inputs needs besides the weights: the largest stage's
  // activations and buffers (DiT block, VAE decode/encode, pixel buffers), computed in `dtype`.
  // Without model configs (before loading) only the pixel and latent buffers count: a floor.
  static double working_memory_bytes(const QwenImageInputs& in, c10::ScalarType dtype,
                                     const QwenImageDiTConfig* dit = nullptr, const QwenImageVAEConfig* vae = nullptr);
  double working_memory_bytes(const QwenImageInputs& in) const;

  // The prompt template, tokenised, through the text encoder; the first drop_idx (34) template
  // tokens removed: ([1, L, hidden] in the pipeline dtype, int64 mask [1, L] of ones).
  std::pair<torch::Tensor, torch::Tensor> encode_prompt(const std::string& prompt);

  FlowMatchScheduler scheduler{"Qwen-Image"};
  std::shared_ptr<QwenImageTextEncoderImpl> text_encoder;
  std::shared_ptr<QwenImageDiTImpl> dit;
  std::shared_ptr<QwenImageVAEImpl> vae;
  std::vector<std::shared_ptr<QwenImageBlockWiseControlNetImpl>> blockwise_controlnet;
  std::shared_ptr<BPETokenizer> tokenizer;

 private:
  // The reference's load_models_to_device: with VRAM management, models not named are offloaded
  // and the named ones onloaded ("dit", "text_encoder", "vae", "blockwise_controlnet").
  void load_models_to_device(const std::vector<std::string>& names);
  // BasePipeline.clear_lora over every model of the pipeline.
  std::int64_t clear_lora(bool verbose = true);
  torch::Tensor vae_encode(const torch::Tensor& image, const QwenImageInputs& in);
  torch::Tensor inpaint_latent_mask(const QwenImageInputs& in, std::int64_t height, std::int64_t width) const;
  torch::Tensor controlnet_conditioning(const ControlNetInput& c, const QwenImageInputs& in);
};

}  // namespace diffsynth
