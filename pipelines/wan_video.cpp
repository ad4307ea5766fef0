#include "pipelines/wan_video.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <sstream>

#include "core/cpu_block_cache.h"
#include "core/error.h"
#include "core/tokenizer/text_cleaning.h"
#include "core/vram/layers.h"
#include "utils/image.h"
#include "utils/lora/general.h"

namespace diffsynth {
namespace {

// The VAE's spatial factor: latents are 1/8 of the pixels (WanVideoVAE.upsampling_factor).
constexpr std::int64_t kUpsampling = 8;
// What the DiT's img_emb takes: CLIP ViT-H/14's 257 tokens (256 patches and the class token) of
// width 1280 (MLP(1280, dim); the cross-attention splits the first 257 tokens off as the image's).
constexpr std::int64_t kClipTokens = 257, kClipWidth = 1280;
// The first frame's mask is repeated to fill its latent frame (the VAE's temporal factor).
constexpr std::int64_t kTemporalFactor = 4;

std::string shape_text(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes() << " " << t.scalar_type();
  return s.str();
}

// A uint8 [H, W, 3] image within the pipeline's size bounds.
void check_rgb_image(const torch::Tensor& t, const std::string& name, std::int64_t max_side) {
  if (!t.defined()) return;
  if (t.dim() != 3 || t.size(2) != 3 || t.scalar_type() != torch::kUInt8)
    throw Error(name + " must be a uint8 [H, W, 3] RGB image, got " + shape_text(t));
  if (t.size(0) < 1 || t.size(1) < 1 || t.size(0) > max_side || t.size(1) > max_side)
    throw Error(name + " must be 1 to " + std::to_string(max_side) + " pixels on each side, got " + std::to_string(t.size(1)) +
                "x" + std::to_string(t.size(0)));
}

}  // namespace

WanVideoPipeline::WanVideoPipeline(torch::Device device, c10::ScalarType dtype)
    : BasePipeline(device, dtype, 16, 16, /*time_division_factor=*/4, /*time_division_remainder=*/1) {}

std::unique_ptr<WanVideoPipeline> WanVideoPipeline::from_model_pool(ModelPool& pool, const std::string& tokenizer_dir,
                                                                    torch::Device device, c10::ScalarType dtype) {
  auto pipe = std::make_unique<WanVideoPipeline>(device, dtype);
  pipe->text_encoder = fetch_model_as<WanTextEncoderImpl>(pool, "wan_video_text_encoder");
  // fetch_model("wan_video_dit", index=2): a Wan2.2 A14B pair is (high-noise, low-noise).
  const auto dits = fetch_models_as<WanModelImpl>(pool, "wan_video_dit", FetchIndex{std::int64_t{2}});
  if (dits.size() > 0) pipe->dit = dits[0];
  if (dits.size() > 1) pipe->dit2 = dits[1];
  pipe->vae = fetch_model_as<WanVideoVAEImpl>(pool, "wan_video_vae");
  pipe->image_encoder = fetch_model_as<WanImageEncoderImpl>(pool, "wan_video_image_encoder");
  // The reference: height/width division factor = vae.upsampling_factor * 2.
  pipe->height_division_factor = pipe->width_division_factor = kUpsampling * 2;
  if (!tokenizer_dir.empty()) pipe->tokenizer = std::make_shared<UnigramTokenizer>(UnigramTokenizer::from_dir(tokenizer_dir));
  return pipe;
}

void WanVideoPipeline::load_models_to_device(const std::vector<std::string>& names) {
  std::vector<std::pair<std::string, Module*>> models;
  if (text_encoder) models.emplace_back("text_encoder", text_encoder.get());
  if (dit) models.emplace_back("dit", dit.get());
  if (dit2) models.emplace_back("dit2", dit2.get());
  if (image_encoder) models.emplace_back("image_encoder", image_encoder.get());
  if (vae) models.emplace_back("vae", vae.get());
  BasePipeline::load_models_to_device(models, names);
}

torch::Tensor WanVideoPipeline::encode_prompt(const std::string& prompt) {
  if (!text_encoder) throw Error("Wan pipeline: no wan_video_text_encoder model loaded (pass models_t5_umt5-xxl-enc-bf16.pth)");
  if (!tokenizer) throw Error("Wan pipeline: no tokenizer (pass --tokenizer DIR, the model folder's google/umt5-xxl)");
  load_models_to_device({"text_encoder"});
  const auto enc = tokenizer->encode_batch({clean_text(prompt, TextClean::Whitespace)}, kPromptTokens, Padding::MaxLength,
                                           /*truncate=*/true, /*add_special_tokens=*/true);
  auto ids = torch::tensor(enc.input_ids[0], torch::kInt64).unsqueeze(0).to(device);
  auto mask = torch::tensor(enc.attention_mask[0], torch::kInt64).unsqueeze(0).to(device);
  return text_encoder->encode_prompt(ids, mask);
}

torch::Tensor WanVideoPipeline::encode_image_vae(const torch::Tensor& input_image, const torch::Tensor& end_image,
                                                 std::int64_t num_frames, std::int64_t height, std::int64_t width, bool tiled,
                                                 const WanVAETiling& tiling) {
  if (!vae) throw Error("Wan pipeline: no wan_video_vae model loaded (pass Wan2.1_VAE.pth)");
  load_models_to_device({"vae"});
  const auto frame = [&](const torch::Tensor& image) {  // [3, 1, H, W] in the pipeline dtype
    return preprocess_image(resize_pil(image, width, height)).transpose(0, 1);
  };
  const std::int64_t h = height / kUpsampling, w = width / kUpsampling;
  auto msk = torch::ones({1, num_frames, h, w}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  msk.slice(1, 1).zero_();
  const auto black = [&](std::int64_t frames) {
    return torch::zeros({3, frames, height, width}, torch::TensorOptions().dtype(dtype).device(device));
  };
  torch::Tensor vae_input;
  if (end_image.defined()) {
    vae_input = torch::cat({frame(input_image), black(num_frames - 2), frame(end_image)}, 1);
    msk.slice(1, num_frames - 1).fill_(1);
  } else {
    vae_input = torch::cat({frame(input_image), black(num_frames - 1)}, 1);
  }
  // [1, F, h, w] -> the first frame 4x -> [4, F' = (F + 3) / 4, h, w]: one mask channel per frame
  // of a latent frame.
  msk = torch::cat({torch::repeat_interleave(msk.slice(1, 0, 1), kTemporalFactor, 1), msk.slice(1, 1)}, 1);
  msk = msk.view({1, msk.size(1) / kTemporalFactor, kTemporalFactor, h, w}).transpose(1, 2)[0];
  auto y = vae->encode_video(vae_input.unsqueeze(0), tiled ? std::optional<WanVAETiling>(tiling) : std::nullopt)[0];
  return torch::cat({msk.to(dtype), y.to(device, dtype)}, 0).unsqueeze(0);
}

torch::Tensor WanVideoPipeline::encode_image_clip(const torch::Tensor& input_image, const torch::Tensor& end_image,
                                                  std::int64_t height, std::int64_t width) {
  if (!image_encoder)
    throw Error("Wan pipeline: no wan_video_image_encoder model loaded (pass "
                "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)");
  load_models_to_device({"image_encoder"});
  const auto features = [&](const torch::Tensor& image) {
    return image_encoder->encode_image(preprocess_image(resize_pil(image, width, height)));
  };
  auto clip_context = features(input_image);
  // FLF2V: the last frame's features follow the first's (img_emb adds its 514-token position
  // embedding); a DiT without one conditions its CLIP input on the first frame only.
  if (end_image.defined() && dit && dit->config.has_image_pos_emb)
    clip_context = torch::cat({clip_context, features(end_image)}, 1);
  return clip_context.to(device, dtype);
}

void WanVideoPipeline::check_inputs(const WanVideoInputs& in) {
  if (in.num_inference_steps < 1 || in.num_inference_steps > 10000)
    throw Error("num_inference_steps must be in [1, 10000], got " + std::to_string(in.num_inference_steps));
  if (in.height < 16 || in.width < 16 || in.height > kMaxSide || in.width > kMaxSide)
    throw Error("height and width must be in [16, " + std::to_string(kMaxSide) + "], got " + std::to_string(in.width) +
                "x" + std::to_string(in.height));
  if (in.num_frames < 1 || in.num_frames > kMaxFrames)
    throw Error("num_frames must be in [1, " + std::to_string(kMaxFrames) + "], got " + std::to_string(in.num_frames));
  check_rgb_image(in.input_image, "input_image", kMaxSide);
  check_rgb_image(in.end_image, "end_image", kMaxSide);
  if (in.end_image.defined() && !in.input_image.defined())
    throw Error("end_image needs input_image (first-last-frame video: both ends are given)");
  // num_frames rounds up to 4k + 1: only 1 stays 1, and one frame cannot be both ends.
  if (in.end_image.defined() && in.num_frames < 2)
    throw Error("end_image needs num_frames >= 2 (the first and the last frame are different frames), got 1");
  check_in_range(in.cfg_scale, -kMaxGuidance, kMaxGuidance, "cfg_scale");
  // shift s maps sigma to s * sigma / (1 + (s - 1) * sigma): s <= 0 leaves no noise schedule.
  check_in_range(in.sigma_shift, 0, kMaxShift, "sigma_shift", /*lo_open=*/true);
  check_in_range(in.switch_DiT_boundary, 0, 1, "switch_DiT_boundary");
  if (in.tiled) {
    const auto& t = in.tiling;
    if (t.tile_h < 1 || t.tile_w < 1 || t.stride_h < 1 || t.stride_w < 1 || t.stride_h > t.tile_h || t.stride_w > t.tile_w)
      throw Error("VAE tiling: tile sizes and strides must be >= 1 and each stride at most its tile size, got tile " +
                  std::to_string(t.tile_h) + "x" + std::to_string(t.tile_w) + ", stride " + std::to_string(t.stride_h) +
                  "x" + std::to_string(t.stride_w));
  }
}

void WanVideoPipeline::check_model_inputs(const WanVideoInputs& in) const {
  if (!vae) throw Error("Wan pipeline: no wan_video_vae model loaded (pass Wan2.1_VAE.pth)");
  const std::int64_t z = vae->config.z_dim;
  for (const WanModelImpl* d : {dit.get(), dit2.get()}) {
    if (!d) continue;
    const auto& c = d->config;
    const std::string which = d == dit2.get() ? "the low-noise DiT (dit2)" : dit2 ? "the high-noise DiT" : "the DiT";
    const std::string in_dim = "in_dim " + std::to_string(c.in_dim);
    if (c.fuse_vae_embedding_in_latents)
      throw Error("Wan pipeline: " + which +
                  " fuses the first frame into the latents (Wan2.2 TI2V-5B); this pipeline does not run it yet");
    const bool image_latents = c.require_vae_embedding && c.in_dim == 2 * z + 4;
    if (c.in_dim != z && !image_latents)
      throw Error("Wan pipeline: " + which + " takes " + in_dim + " input channels: neither text-to-video (the VAE's " +
                  std::to_string(z) + " latent channels) nor image-to-video (" + std::to_string(2 * z + 4) +
                  ": latents, 4 mask channels, image latents); its other inputs (control video, reference image) are "
                  "not in this pipeline yet");
    if (image_latents && !in.input_image.defined())
      throw Error("Wan pipeline: " + which + " is an image-to-video model (" + in_dim +
                  "): it needs an input image (the first frame; --input-image)");
    if (!image_latents && in.input_image.defined())
      throw Error("Wan pipeline: " + which + " is a text-to-video model (" + in_dim + "): it takes no input image (--input-image, --end-image)");
    if (c.has_image_input && c.require_clip_embedding) {
      if (!image_encoder)
        throw Error("Wan pipeline: " + which +
                    " conditions on the input image's CLIP features: load the image encoder (wan_video_image_encoder, "
                    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)");
      const auto& e = image_encoder->config;
      if (e.vision_dim != kClipWidth || e.num_patches() + 1 != kClipTokens)
        throw Error("Wan pipeline: the image encoder makes " + std::to_string(e.num_patches() + 1) + " tokens of width " +
                    std::to_string(e.vision_dim) + "; " + which + " takes " + std::to_string(kClipTokens) + " of width " +
                    std::to_string(kClipWidth) + " (CLIP ViT-H/14)");
    }
  }
}

double WanVideoPipeline::working_memory_bytes(const WanVideoInputs& in, c10::ScalarType dtype, const WanModelConfig* dit,
                                              const WanVAEConfig* vae) {
  const double elt = static_cast<double>(c10::elementSize(dtype));
  const double h = static_cast<double>((in.height + 15) / 16 * 16), w = static_cast<double>((in.width + 15) / 16 * 16);
  const double frames = static_cast<double>((in.num_frames + 2) / 4 * 4 + 1);
  const double latent_frames = (frames - 1) / 4 + 1;
  // Latents and their companions (noise, two predictions, the step) in float32 at most, and the
  // decoded video: in the dtype, as float32 while converting, as uint8.
  const double latents = 6 * 16 * latent_frames * (h / 8) * (w / 8) * 4;
  const double pixels = 3 * frames * h * w * (elt + 4 + 1);
  double peak = latents + pixels;
  if (dit) {
    // One block over every video token: the residual stream, its modulated copy, q/k/v and the
    // FFN's hidden layer before and after the activation (~10 rows of width dim alive).
    const double tokens = latent_frames * (h / 16) * (w / 16);
    peak = std::max(peak, latents + 10 * tokens * static_cast<double>(std::max(dit->dim, dit->ffn_dim)) * elt);
  }
  if (vae) {
    // The decoder's last stage: a chunk of 4 frames at full resolution, ~6 maps of C channels;
    // tiles bound the area, and the tiled decode keeps a float32 sum and weight of the video.
    const double c = static_cast<double>(vae->base_dim * vae->dim_mult.front());
    const double area = in.tiled ? std::min(h, 8.0 * static_cast<double>(in.tiling.tile_h)) *
                                       std::min(w, 8.0 * static_cast<double>(in.tiling.tile_w))
                                 : h * w;
    const double blend = in.tiled ? 2 * 3 * frames * h * w * 4 : 0;
    peak = std::max(peak, pixels + blend + 6 * c * 4 * area * elt);
  }
  return peak;
}

double WanVideoPipeline::working_memory_bytes(const WanVideoInputs& in) const {
  return working_memory_bytes(in, dtype, dit ? &dit->config : nullptr, vae ? &vae->config : nullptr);
}

WanVideoOutput WanVideoPipeline::operator()(const WanVideoInputs& in, std::ostream* progress) {
  torch::NoGradGuard no_grad;
  if (!dit) throw Error("Wan pipeline: no wan_video_dit model loaded (pass its diffusion_pytorch_model*.safetensors)");
  if (!vae) throw Error("Wan pipeline: no wan_video_vae model loaded (pass Wan2.1_VAE.pth)");
  check_inputs(in);
  if (dit2 && (dit2->config.in_dim != dit->config.in_dim || dit2->config.out_dim != dit->config.out_dim ||
               dit2->config.text_dim != dit->config.text_dim))
    throw Error("Wan pipeline: the two DiTs do not fit together (in_dim " + std::to_string(dit->config.in_dim) + " / " +
                std::to_string(dit2->config.in_dim) + ", text_dim " + std::to_string(dit->config.text_dim) + " / " +
                std::to_string(dit2->config.text_dim) + ")");
  check_model_inputs(in);
  FlowMatchOptions shift;
  shift.shift = in.sigma_shift;
  scheduler.set_timesteps(in.num_inference_steps, /*denoising_strength=*/1.0, shift);

  WanVideoOutput out;
  using clock = std::chrono::steady_clock;
  const auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  auto t_stage = clock::now();
  // ShapeChecker.
  const auto [height, width, num_frames] = check_resize_height_width(in.height, in.width, in.num_frames);
  out.height = height;
  out.width = width;
  out.num_frames = num_frames;
  // NoiseInitializer: float32 on a CPU generator (rand_device "cpu"), then the pipeline's dtype.
  const std::int64_t length = (num_frames - 1) / 4 + 1;
  auto latents = generate_noise({1, vae->config.z_dim, length, height / kUpsampling, width / kUpsampling}, in.seed,
                                torch::kFloat32, &out.seed);
  // PromptEmbedder (the negative prompt only when CFG runs).
  auto context = encode_prompt(in.prompt);
  check_finite(context, "the prompt embeddings");
  torch::Tensor context_nega;
  if (in.cfg_scale != 1.0) {
    context_nega = encode_prompt(in.negative_prompt);
    check_finite(context_nega, "the negative prompt embeddings");
  }
  // ImageEmbedderVAE, then ImageEmbedderCLIP (check_model_inputs made sure the DiT takes them).
  torch::Tensor y, clip_feature;
  if (in.input_image.defined()) {
    y = encode_image_vae(in.input_image, in.end_image, num_frames, height, width, in.tiled, in.tiling);
    check_finite(y, "the input image's VAE latents");
    if (dit->config.has_image_input && dit->config.require_clip_embedding) {
      clip_feature = encode_image_clip(in.input_image, in.end_image, height, width);
      check_finite(clip_feature, "the input image's CLIP features");
    }
  }
  out.encode_seconds = seconds_since(t_stage);
  t_stage = clock::now();

  // Denoise (in_iteration_models: the first expert; the second from the boundary on).
  load_models_to_device({"dit"});
  WanModelImpl* model = dit.get();
  const auto steps = scheduler.timesteps.size(0);
  std::optional<ProgressBar> bar;
  if (progress) bar.emplace(steps, *progress);
  for (std::int64_t progress_id = 0; progress_id < steps; ++progress_id) {
    // The reference compares timestep.item() (float32) with switch_DiT_boundary * 1000 (a double).
    if (dit2 && model != dit2.get() &&
        static_cast<double>(scheduler.timesteps[progress_id].item<float>()) < in.switch_DiT_boundary * 1000) {
      load_models_to_device({"dit2"});
      model = dit2.get();
    }
    WanDiTInputs dit_in;
    dit_in.latents = latents;
    dit_in.y = y;
    dit_in.clip_feature = clip_feature;
    dit_in.timestep = scheduler.timesteps[progress_id].unsqueeze(0).to(device, dtype);
    auto noise_pred = cfg_guided(
        in.cfg_scale,
        [&] {
          dit_in.context = context;
          return model->model_fn(dit_in);
        },
        [&] {
          dit_in.context = context_nega;
          return model->model_fn(dit_in);
        });
    latents = scheduler.step(noise_pred, scheduler.timesteps[progress_id], latents);
    check_finite(latents, "the latents after step " + std::to_string(progress_id + 1) + " of " + std::to_string(steps));
    if (bar) bar->update(progress_id + 1);
  }
  if (bar) bar->finish();
  out.denoise_seconds = seconds_since(t_stage);
  t_stage = clock::now();

  // Decode.
  out.latents = latents;
  load_models_to_device({"vae"});
  auto decoded = vae->decode_video(latents, in.tiled ? std::optional<WanVAETiling>(in.tiling) : std::nullopt);
  check_finite(decoded, "the decoded video values");
  out.video = vae_output_to_video(decoded);
  out.decode_seconds = seconds_since(t_stage);
  load_models_to_device({});
  release_cpu_block_cache();  // the generation's idle activation blocks go back to the system
  return out;
}

}  // namespace diffsynth
