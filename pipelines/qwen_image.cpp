#include "pipelines/qwen_image.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>

#include "core/cpu_block_cache.h"
#include "core/error.h"
#include "core/vram/layers.h"
#include "utils/image.h"
#include "utils/lora/general.h"

namespace diffsynth {
namespace {

constexpr const char* kPromptTemplate =
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";
constexpr std::int64_t kPromptDropIdx = 34;   // the system part of the template
constexpr std::int64_t kPromptMaxTokens = 4096;

// "B C (H P) (W Q) -> B (H W) (C P Q)" with P = Q = 2.
torch::Tensor pack_latents(const torch::Tensor& x) {
  const auto b = x.size(0), c = x.size(1), h = x.size(2) / 2, w = x.size(3) / 2;
  return x.view({b, c, h, 2, w, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({b, h * w, c * 4});
}

// torchvision GaussianBlur(kernel_size=2k+1, sigma) on [1, 1, h, w]: the kernel is built in the
// tensor's dtype, sigma passes through a float32 (GaussianBlur draws it with uniform_(s, s)),
// reflect padding, depthwise conv.
torch::Tensor gaussian_blur(const torch::Tensor& img, std::int64_t kernel_size, double sigma) {
  const auto half = kernel_size / 2;
  if (half >= img.size(-1) || half >= img.size(-2))
    throw Error("inpaint blur: blur size " + std::to_string(half) + " must be smaller than the mask in latent pixels (" +
                std::to_string(img.size(-2)) + "x" + std::to_string(img.size(-1)) + ")");
  sigma = static_cast<double>(static_cast<float>(sigma));
  const double ksize_half = (kernel_size - 1) * 0.5;
  auto x = torch::linspace(-ksize_half, ksize_half, kernel_size, img.options());
  auto pdf = torch::exp(-0.5 * (x / sigma).pow(2));
  auto k1 = pdf / pdf.sum();
  auto kernel = torch::mm(k1.unsqueeze(1), k1.unsqueeze(0)).expand({img.size(-3), 1, kernel_size, kernel_size});
  namespace F = torch::nn::functional;
  auto padded = F::pad(img, F::PadFuncOptions({half, half, half, half}).mode(torch::kReflect));
  return F::conv2d(padded, kernel, F::Conv2dFuncOptions().groups(img.size(-3)));
}

}  // namespace

QwenImagePipeline::QwenImagePipeline(torch::Device device, c10::ScalarType dtype) : BasePipeline(device, dtype, 16, 16) {}

std::unique_ptr<QwenImagePipeline> QwenImagePipeline::from_model_pool(ModelPool& pool, const std::string& tokenizer_dir,
                                                                      torch::Device device, c10::ScalarType dtype) {
  auto pipe = std::make_unique<QwenImagePipeline>(device, dtype);
  pipe->text_encoder = fetch_model_as<QwenImageTextEncoderImpl>(pool, "qwen_image_text_encoder");
  pipe->dit = fetch_model_as<QwenImageDiTImpl>(pool, "qwen_image_dit");
  pipe->vae = fetch_model_as<QwenImageVAEImpl>(pool, "qwen_image_vae");
  pipe->blockwise_controlnet =
      fetch_models_as<QwenImageBlockWiseControlNetImpl>(pool, "qwen_image_blockwise_controlnet", FetchAll{});
  if (!tokenizer_dir.empty()) pipe->tokenizer = std::make_shared<BPETokenizer>(BPETokenizer::from_dir(tokenizer_dir));
  return pipe;
}

void QwenImagePipeline::load_models_to_device(const std::vector<std::string>& names) {
  std::vector<std::pair<std::string, Module*>> models;
  if (text_encoder) models.emplace_back("text_encoder", text_encoder.get());
  if (dit) models.emplace_back("dit", dit.get());
  if (vae) models.emplace_back("vae", vae.get());
  for (auto& c : blockwise_controlnet) models.emplace_back("blockwise_controlnet", c.get());
  BasePipeline::load_models_to_device(models, names);
}

std::int64_t QwenImagePipeline::clear_lora(bool verbose) {
  std::vector<Module*> models{text_encoder.get(), dit.get(), vae.get()};
  for (auto& c : blockwise_controlnet) models.push_back(c.get());
  return diffsynth::clear_lora(models, verbose);
}

std::pair<torch::Tensor, torch::Tensor> QwenImagePipeline::encode_prompt(const std::string& prompt) {
  if (!text_encoder) throw Error("Qwen-Image pipeline: no qwen_image_text_encoder model loaded (pass its file)");
  if (!tokenizer) throw Error("Qwen-Image pipeline: no tokenizer (pass --tokenizer DIR with tokenizer.json)");
  load_models_to_device({"text_encoder"});
  std::string text = kPromptTemplate;
  text.replace(text.find("{}"), 2, prompt);  // str.format: the prompt's own braces stay as they are
  const auto enc = tokenizer->encode_batch({text}, kPromptMaxTokens + kPromptDropIdx, /*pad=*/true, /*truncate=*/true);
  const auto length = static_cast<std::int64_t>(enc.input_ids[0].size());
  if (length >= 1024)
    *log << "Warning!!! QwenImage model was trained on prompts up to 512 tokens. Current prompt requires "
         << length - kPromptDropIdx << " tokens, which may lead to unpredictable behavior." << std::endl;
  auto ids = torch::tensor(enc.input_ids[0], torch::kInt64).unsqueeze(0);
  auto mask = torch::tensor(enc.attention_mask[0], torch::kInt64).unsqueeze(0);
  auto hidden = text_encoder->forward(ids, mask);
  auto selected = hidden[0].index({mask[0].to(hidden.device()).to(torch::kBool)});
  if (selected.size(0) <= kPromptDropIdx) throw Error("Qwen-Image pipeline: the prompt template was truncated");
  auto emb = selected.slice(0, kPromptDropIdx).unsqueeze(0).to(device, dtype);
  auto emb_mask = torch::ones({1, emb.size(1)}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  return {emb, emb_mask};
}

torch::Tensor QwenImagePipeline::vae_encode(const torch::Tensor& image, const QwenImageInputs& in) {
  if (!vae) throw Error("Qwen-Image pipeline: no qwen_image_vae model loaded (pass its file)");
  if (image.size(2) != vae->config.image_channels)
    throw Error("Qwen-Image pipeline: image has " + std::to_string(image.size(2)) + " channels, the VAE takes " +
                std::to_string(vae->config.image_channels));
  load_models_to_device({"vae"});
  auto x = preprocess_image(image);
  return in.tiled ? vae->encode_tiled(x, QwenImageVAETiling(in.tile_size, in.tile_stride)) : vae->encode(x);
}

torch::Tensor QwenImagePipeline::inpaint_latent_mask(const QwenImageInputs& in, std::int64_t height,
                                                     std::int64_t width) const {
  auto mask = resize_pil(to_rgb(in.inpaint_mask), width / 8, height / 8);
  auto m = preprocess_image(mask, 0, 1).mean(1, /*keepdim=*/true);
  if (in.inpaint_blur_size && in.inpaint_blur_sigma) m = gaussian_blur(m, *in.inpaint_blur_size * 2 + 1, *in.inpaint_blur_sigma);
  return m;
}

torch::Tensor QwenImagePipeline::controlnet_conditioning(const ControlNetInput& c, const QwenImageInputs& in) {
  auto image = c.image;
  if (c.inpaint_mask.defined()) {
    // Control pixels under the mask are zeroed.
    auto resized = resize_pil(c.inpaint_mask, image.size(1), image.size(0));
    auto on = preprocess_image(resized).mean(std::vector<std::int64_t>{0, 1}).to(torch::kCPU) > 0;
    image = image.clone();
    image.index_put_({on}, 0);
  }
  auto latents = vae_encode(image, in);
  if (c.inpaint_mask.defined()) {
    auto mask = ((preprocess_image(c.inpaint_mask) + 1) / 2).mean(1, /*keepdim=*/true);
    namespace F = torch::nn::functional;
    mask = 1 - F::interpolate(mask, F::InterpolateFuncOptions()
                                        .size(std::vector<std::int64_t>{latents.size(2), latents.size(3)})
                                        .mode(torch::kNearest));
    latents = torch::cat({latents, mask.to(latents.dtype())}, 1);
  }
  return latents;
}

namespace {

FlowMatchOptions schedule_options(const QwenImageInputs& in) {
  FlowMatchOptions shift;
  shift.dynamic_shift_len = (in.height / 16) * (in.width / 16);  // before rounding, as the reference
  shift.exponential_shift_mu = in.exponential_shift_mu;
  return shift;
}

}  // namespace

void QwenImagePipeline::check_inputs(const QwenImageInputs& in) {
  if (in.num_inference_steps < 1 || in.num_inference_steps > 10000)
    throw Error("num_inference_steps must be in [1, 10000], got " + std::to_string(in.num_inference_steps));
  if (in.height < 16 || in.width < 16 || in.height > kMaxImageSide || in.width > kMaxImageSide)
    throw Error("height and width must be in [16, " + std::to_string(kMaxImageSide) + "], got " +
                std::to_string(in.width) + "x" + std::to_string(in.height));
  if (!(in.denoising_strength > 0 && in.denoising_strength <= 1))
    throw Error("denoising_strength must be in (0, 1], got " + std::to_string(in.denoising_strength));
  check_in_range(in.cfg_scale, -kMaxGuidance, kMaxGuidance, "cfg_scale");
  if (in.exponential_shift_mu) check_in_range(*in.exponential_shift_mu, -kMaxShiftMu, kMaxShiftMu, "exponential_shift_mu");
  for (const auto& c : in.blockwise_controlnet_inputs) check_in_range(c.scale, -kMaxGuidance, kMaxGuidance, "ControlNet scale");
  if (in.inpaint_blur_sigma && !(std::isfinite(*in.inpaint_blur_sigma) && *in.inpaint_blur_sigma > 0))
    throw Error("inpaint_blur_sigma must be a finite number > 0, got " + std::to_string(*in.inpaint_blur_sigma));
  if (in.inpaint_blur_size) {
    // Reflect padding of the latent-resolution mask: the radius must stay inside it.
    const std::int64_t side = std::min(in.height, in.width) / 8;
    if (*in.inpaint_blur_size < 0 || *in.inpaint_blur_size >= side)
      throw Error("inpaint_blur_size must be in [0, " + std::to_string(side - 1) + "] for a " + std::to_string(in.width) +
                  "x" + std::to_string(in.height) + " image (the mask is blurred at 1/8 size), got " +
                  std::to_string(*in.inpaint_blur_size));
  }
  const auto [sigmas, timesteps] =
      flow_match_schedule("Qwen-Image", in.num_inference_steps, in.denoising_strength, schedule_options(in));
  // The schedule's terminal stretch divides 0 by 0 for a single full-strength step, and an
  // extreme shift leaves every noise level at 1 (the reference then denoises with NaN): refuse
  // instead of drawing a black image.
  const bool finite = torch::isfinite(sigmas).all().item<bool>();
  if (!finite && in.num_inference_steps == 1 && in.denoising_strength == 1)
    throw Error("the Qwen-Image schedule is undefined for 1 step at full denoising strength (its terminal stretch "
                "divides 0 by 0): use at least 2 steps, or a denoising strength below 1");
  const bool decreasing = finite && (sigmas.size(0) < 2 || (sigmas.slice(0, 1) <= sigmas.slice(0, 0, -1)).all().item<bool>());
  if (!decreasing) {
    const double mu = in.exponential_shift_mu ? *in.exponential_shift_mu
                                              : calculate_shift_qwen_image(static_cast<double>(*schedule_options(in).dynamic_shift_len));
    throw Error("the Qwen-Image schedule for " + std::to_string(in.num_inference_steps) +
                " steps is degenerate at exponential shift mu " + std::to_string(mu) +
                (in.exponential_shift_mu ? std::string(" (as given)")
                                         : " (derived from the " + std::to_string(in.width) + "x" + std::to_string(in.height) + " size)") +
                ": its noise levels are not finite and decreasing");
  }
}

double QwenImagePipeline::working_memory_bytes(const QwenImageInputs& in, c10::ScalarType dtype,
                                               const QwenImageDiTConfig* dit, const QwenImageVAEConfig* vae) {
  const double elt = static_cast<double>(c10::elementSize(dtype));
  const double h = static_cast<double>(in.height), w = static_cast<double>(in.width);
  // Latents and their companions (noise, input latents, the two predictions) in float32 at most,
  // and the decoded picture: in the dtype, as float32 while converting, as uint8.
  const double latents = 6 * 16 * (h / 8) * (w / 8) * 4;
  const double pixels = 3 * h * w * (elt + 4 + 1);
  double peak = latents + pixels;
  if (dit) {
    // One double-stream block over image + text tokens: the residual stream, its modulated copy
    // and the MLP's 4x hidden layer before and after the activation (~10 rows of width D alive).
    const double tokens = (h / 16) * (w / 16) + 1024;  // a long prompt
    peak = std::max(peak, latents + 10 * tokens * static_cast<double>(dit->dim) * elt);
  }
  if (vae) {
    // A decoder stage at full resolution: the upsampled 2C-channel map, the C-channel conv output
    // and a residual block's temporaries (~6C maps of H x W); tiles bound it for tiled runs.
    const double c = static_cast<double>(vae->base_dim * vae->dim_mult.front());
    const double tile_side = static_cast<double>(in.tile_size) * 8;
    const double area = in.tiled ? std::min(h, tile_side) * std::min(w, tile_side) : h * w;
    const double blend = in.tiled ? 2 * 3 * h * w * 4 : 0;  // tiled decode's sum and weight maps
    peak = std::max(peak, pixels + blend + 6 * c * area * elt);
  }
  return peak;
}

double QwenImagePipeline::working_memory_bytes(const QwenImageInputs& in) const {
  return working_memory_bytes(in, dtype, dit ? &dit->config : nullptr, vae ? &vae->config : nullptr);
}

QwenImageOutput QwenImagePipeline::operator()(const QwenImageInputs& in, std::ostream* progress) {
  torch::NoGradGuard no_grad;
  if (!dit) throw Error("Qwen-Image pipeline: no qwen_image_dit model loaded (pass its file)");
  check_inputs(in);
  scheduler.set_timesteps(in.num_inference_steps, in.denoising_strength, schedule_options(in));

  QwenImageOutput out;
  using clock = std::chrono::steady_clock;
  const auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  auto t_stage = clock::now();
  // ShapeChecker, NoiseInitializer.
  const auto [height, width] = check_resize_height_width(in.height, in.width);
  out.height = height;
  out.width = width;
  auto noise = generate_noise({1, 16, height / 8, width / 8}, in.seed, dtype, &out.seed);

  // InputImageEmbedder (img2img).
  torch::Tensor latents = noise, input_latents;
  if (in.input_image.defined()) {
    if (in.input_image.size(0) != height || in.input_image.size(1) != width)
      throw Error("input image is " + std::to_string(in.input_image.size(1)) + "x" + std::to_string(in.input_image.size(0)) +
                  ", the output is " + std::to_string(width) + "x" + std::to_string(height) + ": resize it first");
    input_latents = vae_encode(in.input_image, in).to(device, dtype);
    latents = scheduler.add_noise(input_latents, noise, scheduler.timesteps[0]);
  }
  // Inpaint.
  torch::Tensor inpaint_mask;
  if (in.inpaint_mask.defined()) {
    if (!input_latents.defined()) throw Error("an inpaint mask needs an input image (the picture to inpaint)");
    inpaint_mask = inpaint_latent_mask(in, height, width);
  }
  // PromptEmbedder (the negative prompt only when CFG runs).
  auto [prompt_emb, prompt_mask] = encode_prompt(in.prompt);
  check_finite(prompt_emb, "the prompt embeddings");
  torch::Tensor nega_emb, nega_mask;
  if (in.cfg_scale != 1.0) {
    std::tie(nega_emb, nega_mask) = encode_prompt(in.negative_prompt);
    check_finite(nega_emb, "the negative prompt embeddings");
  }
  // BlockwiseControlNet: VAE latents of each control image, packed and projected once.
  std::vector<torch::Tensor> conditionings;
  for (const auto& c : in.blockwise_controlnet_inputs) {
    if (c.controlnet_id < 0 || c.controlnet_id >= static_cast<std::int64_t>(blockwise_controlnet.size()))
      throw Error("ControlNet input refers to controlnet_id " + std::to_string(c.controlnet_id) + " but " +
                  std::to_string(blockwise_controlnet.size()) + " Blockwise ControlNet model(s) are loaded");
    if (c.image.size(0) != height || c.image.size(1) != width)
      throw Error("control image is " + std::to_string(c.image.size(1)) + "x" + std::to_string(c.image.size(0)) +
                  ", the output is " + std::to_string(width) + "x" + std::to_string(height) + ": resize it first");
    auto cond = controlnet_conditioning(c, in);
    conditionings.push_back(blockwise_controlnet[c.controlnet_id]->process_controlnet_conditioning(pack_latents(cond)));
  }

  out.encode_seconds = seconds_since(t_stage);
  t_stage = clock::now();

  // Denoise.
  load_models_to_device({"dit", "blockwise_controlnet"});
  const auto steps = scheduler.timesteps.size(0);
  std::optional<ProgressBar> bar;
  if (progress) bar.emplace(steps, *progress);
  for (std::int64_t progress_id = 0; progress_id < steps; ++progress_id) {
    const auto timestep = scheduler.timesteps[progress_id].unsqueeze(0).to(device, dtype);
    QwenImageDiTInputs dit_in;
    dit_in.latents = latents;
    dit_in.timestep = timestep;
    if (!conditionings.empty()) {
      dit_in.after_block = [&](std::int64_t block_id, torch::Tensor& image, std::int64_t image_seq_len) {
        auto image_slice = image.slice(1, 0, image_seq_len).clone();
        torch::Tensor res;
        for (std::size_t i = 0; i < conditionings.size(); ++i) {
          const auto& c = in.blockwise_controlnet_inputs[i];
          const double p = static_cast<double>(in.num_inference_steps - 1 - progress_id) /
                           std::max<std::int64_t>(in.num_inference_steps - 1, 1);
          if (p > c.start + 1e-4 || p < c.end - 1e-4) continue;
          auto r = blockwise_controlnet[c.controlnet_id]->blockwise_forward(image_slice, conditionings[i], block_id) * c.scale;
          res = res.defined() ? res + r : r;
        }
        if (res.defined()) image.slice(1, 0, image_seq_len).copy_(image_slice + res);
      };
    }
    auto noise_pred = cfg_guided(
        in.cfg_scale,
        [&] {
          dit_in.prompt_emb = prompt_emb;
          dit_in.prompt_emb_mask = prompt_mask;
          return dit->model_fn(dit_in);
        },
        [&] {
          dit_in.prompt_emb = nega_emb;
          dit_in.prompt_emb_mask = nega_mask;
          return dit->model_fn(dit_in);
        });
    latents = step(scheduler, latents, progress_id, noise_pred, input_latents, inpaint_mask);
    check_finite(latents, "the latents after step " + std::to_string(progress_id + 1) + " of " + std::to_string(steps));
    if (bar) bar->update(progress_id + 1);
  }
  if (bar) bar->finish();
  out.denoise_seconds = seconds_since(t_stage);
  t_stage = clock::now();

  // Decode.
  if (!vae) throw Error("Qwen-Image pipeline: no qwen_image_vae model loaded (pass its file)");
  out.latents = latents;
  load_models_to_device({"vae"});
  auto decoded = in.tiled ? vae->decode_tiled(latents, QwenImageVAETiling(in.tile_size, in.tile_stride)) : vae->decode(latents);
  check_finite(decoded, "the decoded image values");
  out.image = vae_output_to_image(decoded);
  out.decode_seconds = seconds_since(t_stage);
  load_models_to_device({});
  release_cpu_block_cache();  // the generation's idle activation blocks go back to the system
  return out;
}

}  // namespace diffsynth
