// Wan text- and image-to-video (reference: diffsynth/pipelines/wan_video.py, WanVideoPipeline).
// The units that act on these, in the reference's order: ShapeChecker (sizes to multiples of
// 16, frames to 4k + 1), NoiseInitializer (float32 CPU noise of the latent shape),
// PromptEmbedder (positive, then negative), ImageEmbedderVAE (the masked first - and last -
// frame latents `y`), ImageEmbedderCLIP (the CLIP features of those frames); then the denoising
// loop (FlowMatchScheduler "Wan" with sigma_shift, true CFG; Wan2.2 A14B's two experts: `dit`
// above switch_DiT_boundary, `dit2` below) and the VAE decode, tiled by default.
// Video-to-video, VACE, TI2V-5B's fused first frame, camera/motion control, TeaCache and
// sequence parallelism are not in this pipeline yet (the DiT's model_fn takes their inputs).
#pragma once
#include <torch/torch.h>

#include <iosfwd>
#include <memory>
#include <optional>
#include <string>

#include "core/tokenizer/unigram_tokenizer.h"
#include "diffusion/base_pipeline.h"
#include "diffusion/flow_match.h"
#include "models/model_loader.h"
#include "models/wan_video_dit.h"
#include "models/wan_video_image_encoder.h"
#include "models/wan_video_text_encoder.h"
#include "models/wan_video_vae.h"

namespace diffsynth {

struct WanVideoInputs {
  std::string prompt, negative_prompt;
  std::optional<std::uint64_t> seed;
  std::int64_t height = 480, width = 832, num_frames = 81;
  double cfg_scale = 5.0;
  std::int64_t num_inference_steps = 50;
  double sigma_shift = 5.0;
  // Wan2.2 A14B: the denoising switches from `dit` (high noise) to `dit2` (low noise) at the first
  // timestep below switch_DiT_boundary * 1000. Without a dit2 it does nothing.
  double switch_DiT_boundary = 0.875;
  // VAE tiling, latent pixels (the pipeline's defaults, not WanVideoVAE's own).
  bool tiled = true;
  WanVAETiling tiling{30, 52, 15, 26};
  // Image-to-video (Wan2.1 I2V, FLF2V, Wan2.2 A14B I2V): the first frame and, first-last-frame,
  // the last; uint8 [H, W, 3] of any size, resized to the video's as PIL's Image.resize
  // (bicubic) does. end_image needs input_image.
  torch::Tensor input_image, end_image;
};

struct WanVideoOutput {
  torch::Tensor video;    // uint8 [T, H, W, 3]
  torch::Tensor latents;  // the final latents [1, 16, (T - 1) / 4 + 1, H/8, W/8], before decoding
  std::uint64_t seed = 0; // the seed used (drawn at random when none was given)
  std::int64_t height = 0, width = 0, num_frames = 0;  // after rounding
  double encode_seconds = 0, denoise_seconds = 0, decode_seconds = 0;
};

class WanVideoPipeline : public BasePipeline {
 public:
  // Bounds check_inputs enforces (memory is the tighter bound in practice).
  static constexpr std::int64_t kMaxSide = 16384;
  static constexpr std::int64_t kMaxFrames = 4097;
  static constexpr double kMaxGuidance = 100;  // |cfg_scale|
  static constexpr double kMaxShift = 1000;    // sigma_shift in (0, kMaxShift]
  // HuggingfaceTokenizer(seq_len=512): prompts are padded / truncated to it.
  static constexpr std::size_t kPromptTokens = 512;

  WanVideoPipeline(torch::Device device = torch::kCPU, c10::ScalarType dtype = torch::kBFloat16);

  // The models a pool holds (as the reference's from_pretrained fetches them: the first two
  // wan_video_dit models are dit and dit2, in the order they were loaded) and the UMT5
  // tokenizer of `tokenizer_dir` (the model folder's google/umt5-xxl/).
  static std::unique_ptr<WanVideoPipeline> from_model_pool(ModelPool& pool, const std::string& tokenizer_dir,
                                                           torch::Device device, c10::ScalarType dtype);

  WanVideoOutput operator()(const WanVideoInputs& inputs, std::ostream* progress = nullptr);

  // What needs no model: sizes, frames, steps, CFG scale, shift and tiling in range. operator()
  // runs it first; callers run it before loading so bad input fails at once.
  static void check_inputs(const WanVideoInputs& in);
  // What needs the models: the inputs the DiT(s) take and the models they need. An image-to-video
  // DiT (in_dim = 2 z_dim + 4: the latents, 4 mask channels and the image latents) needs
  // input_image; a text-to-video one (in_dim = z_dim) takes none; one with CLIP image input
  // (has_image_input) needs the image encoder. The reference instead fails inside a convolution
  // or, without an image encoder, silently conditions on no image. operator() runs it first.
  void check_model_inputs(const WanVideoInputs& in) const;
  // About how many bytes a run needs besides the weights: the largest stage's activations (a DiT
  // block over every token, the VAE decode of one tile or of the frame, the video buffers).
  // Without model configs only the pixel and latent buffers count: a floor.
  static double working_memory_bytes(const WanVideoInputs& in, c10::ScalarType dtype, const WanModelConfig* dit = nullptr,
                                     const WanVAEConfig* vae = nullptr);
  double working_memory_bytes(const WanVideoInputs& in) const;

  // WanVideoUnit_PromptEmbedder.encode_prompt: whitespace-cleaned, padded/truncated to 512
  // tokens with </s>, through the text encoder, positions past the prompt zeroed:
  // [1, 512, dim] in the text encoder's dtype, on the pipeline device.
  torch::Tensor encode_prompt(const std::string& prompt);
  // WanVideoUnit_ImageEmbedderVAE: the first frame (and with end_image the last) at the video
  // size, the frames between them black, through the VAE encoder (tiled as the decode is); in
  // front, the 4-channel frame mask (1 on the given frames, the first repeated 4x to fill its
  // latent frame): y = [1, 4 + z_dim, latent frames, H/8, W/8] in the pipeline dtype.
  torch::Tensor encode_image_vae(const torch::Tensor& input_image, const torch::Tensor& end_image, std::int64_t num_frames,
                                 std::int64_t height, std::int64_t width, bool tiled, const WanVAETiling& tiling);
  // WanVideoUnit_ImageEmbedderCLIP: the CLIP features of the first frame [1, 257, 1280] (with
  // end_image and a DiT with has_image_pos_emb, the last frame's appended: [1, 514, 1280]).
  torch::Tensor encode_image_clip(const torch::Tensor& input_image, const torch::Tensor& end_image, std::int64_t height,
                                  std::int64_t width);

  FlowMatchScheduler scheduler{"Wan"};
  std::shared_ptr<WanTextEncoderImpl> text_encoder;
  std::shared_ptr<WanModelImpl> dit, dit2;
  std::shared_ptr<WanVideoVAEImpl> vae;
  std::shared_ptr<WanImageEncoderImpl> image_encoder;
  std::shared_ptr<UnigramTokenizer> tokenizer;

  // The reference's load_models_to_device: with VRAM management, models not named are
  // offloaded and the named ones onloaded ("text_encoder", "image_encoder", "dit", "dit2", "vae").
  void load_models_to_device(const std::vector<std::string>& names);
};

}  // namespace diffsynth
