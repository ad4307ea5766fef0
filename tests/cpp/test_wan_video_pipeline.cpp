// WanVideoPipeline pieces that need no reference: the shape checker's rounding (the reference's
// Python floor division and notices), vae_output_to_video, input checks, and whole runs on the
// tiny Wan2.1 folder the build writes (models/tiny-wan, relative to the build folder where CTest
// runs the tests). Parity with the reference is tests/python/test_wan_video_pipeline_parity.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "models/model_loader.h"
#include "pipelines/wan_video.h"
#include "test_util.h"

using namespace diffsynth;

namespace {

const char* kTinyWan = "models/tiny-wan";
const char* kTinyWanI2V = "models/tiny-wan-i2v";  // the I2V DiT and the CLIP image encoder besides
const char* kClipFile = "/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth";

std::unique_ptr<WanVideoPipeline> tiny_pipeline(std::ostream& log, const std::string& dir = kTinyWan,
                                                bool image_encoder = true) {
  EXPECT_TRUE(std::filesystem::exists(dir + "/diffusion_pytorch_model.safetensors"))
      << "the tiny Wan folder " << dir << " is not built (targets tiny_wan, tiny_wan_i2v)";
  ModelPool pool(log);
  VRAMConfig config = VRAMConfig::default_config();
  config.computation_dtype = "float32";
  for (const char* f : {"/diffusion_pytorch_model.safetensors", "/models_t5_umt5-xxl-enc-bf16.pth", "/Wan2.1_VAE.pth"})
    pool.auto_load_model({dir + f}, config);
  if (image_encoder && std::filesystem::exists(dir + kClipFile)) pool.auto_load_model({dir + kClipFile}, config);
  auto pipe = WanVideoPipeline::from_model_pool(pool, dir + "/google/umt5-xxl", torch::kCPU, torch::kFloat32);
  pipe->log = &log;
  return pipe;
}

WanVideoInputs small_inputs() {
  WanVideoInputs in;
  in.prompt = "a red kite over the sea";
  in.negative_prompt = "blurry";
  in.seed = 11;
  in.width = 64;
  in.height = 32;
  in.num_frames = 5;
  in.num_inference_steps = 2;
  return in;
}

}  // namespace

TEST(WanVideoPipeline, ShapeCheckerRoundsAsTheReference) {
  WanVideoPipeline pipe;
  std::ostringstream log;
  pipe.log = &log;
  EXPECT_EQ(pipe.check_resize_height_width(480, 832, 81), std::make_tuple(480, 832, 81));
  EXPECT_EQ(log.str(), "");
  EXPECT_EQ(pipe.check_resize_height_width(470, 830, 80), std::make_tuple(480, 832, 81));
  EXPECT_EQ(log.str(),
            "height % 16 != 0. We round it up to 480.\nwidth % 16 != 0. We round it up to 832.\n"
            "num_frames % 4 != 1. We round it up to 81.\n");
  // (num_frames - 1 + 3) // 4 * 4 + 1 with Python's floor division.
  for (auto [in, out] : std::vector<std::pair<std::int64_t, std::int64_t>>{{1, 1}, {2, 5}, {4, 5}, {5, 5}, {6, 9}, {0, 1}})
    EXPECT_EQ(std::get<2>(pipe.check_resize_height_width(16, 16, in)), out) << in;
}

TEST(WanVideoPipeline, VaeOutputToVideo) {
  // [B=2, C=3, T=2, H=1, W=2]: the batch mean, then (x + 1) * 127.5 clipped and truncated.
  auto x = torch::tensor({-1.0, -0.5, 0.0, 0.999, 1.0, 2.0}).repeat({4}).reshape({2, 3, 2, 1, 2});
  const auto v = BasePipeline::vae_output_to_video(x);
  ASSERT_EQ(v.sizes(), (std::vector<std::int64_t>{2, 1, 2, 3}));
  EXPECT_EQ(v.scalar_type(), torch::kUInt8);
  // Frame 0 holds (-1, -0.5) in channel 0 -> 0, 63; values past 1 clip to 255.
  EXPECT_EQ(v[0][0][0][0].item<int>(), 0);
  EXPECT_EQ(v[0][0][1][0].item<int>(), 63);
  EXPECT_EQ(v.max().item<int>(), 255);
  EXPECT_THROW(BasePipeline::vae_output_to_video(torch::zeros({3, 2, 2, 2})), Error);
}

TEST(WanVideoPipeline, CheckInputsNamesTheValue) {
  auto in = small_inputs();
  WanVideoPipeline::check_inputs(in);
  auto bad = [&](auto edit, const std::string& needle) {
    auto b = small_inputs();
    edit(b);
    const auto e = error_of([&] { WanVideoPipeline::check_inputs(b); });
    EXPECT_NE(e.find(needle), std::string::npos) << e;
  };
  bad([](WanVideoInputs& b) { b.num_inference_steps = 0; }, "num_inference_steps");
  bad([](WanVideoInputs& b) { b.sigma_shift = 0; }, "sigma_shift");
  bad([](WanVideoInputs& b) { b.sigma_shift = std::nan(""); }, "sigma_shift");
  bad([](WanVideoInputs& b) { b.cfg_scale = 1e9; }, "cfg_scale");
  bad([](WanVideoInputs& b) { b.num_frames = 0; }, "num_frames");
  bad([](WanVideoInputs& b) { b.width = 8; }, "height and width");
  bad([](WanVideoInputs& b) { b.tiling = WanVAETiling(10, 12, 11, 6); }, "stride");
  const auto rgb = torch::zeros({20, 30, 3}, torch::kUInt8);
  bad([&](WanVideoInputs& b) { b.input_image = rgb.to(torch::kFloat32); }, "input_image must be a uint8 [H, W, 3]");
  bad([&](WanVideoInputs& b) { b.input_image = rgb.slice(2, 0, 1); }, "input_image must be a uint8 [H, W, 3]");
  bad([&](WanVideoInputs& b) { b.input_image = torch::zeros({0, 30, 3}, torch::kUInt8); }, "input_image must be 1 to");
  bad([&](WanVideoInputs& b) { b.end_image = rgb; }, "end_image needs input_image");
  bad([&](WanVideoInputs& b) { b.input_image = b.end_image = rgb, b.num_frames = 1; }, "end_image needs num_frames >= 2");
  auto with_images = small_inputs();
  with_images.input_image = with_images.end_image = rgb;
  WanVideoPipeline::check_inputs(with_images);
}

namespace {
// A smooth RGB picture of another size than the video's (the pipeline resizes it).
torch::Tensor test_picture(std::int64_t h, std::int64_t w, double phase) {
  auto y = torch::arange(h, torch::kFloat32).view({h, 1, 1}), x = torch::arange(w, torch::kFloat32).view({1, w, 1});
  auto c = torch::arange(3, torch::kFloat32).view({1, 1, 3});
  return (127.5 + 120 * torch::sin(x / 4 + y / 7 + c * 2 + phase)).to(torch::kUInt8);
}
}  // namespace

TEST(WanVideoPipeline, ImageToVideoInputsFitTheModel) {
  std::ostringstream log;
  auto i2v = tiny_pipeline(log, kTinyWanI2V);
  ASSERT_TRUE(i2v->dit && i2v->image_encoder);
  ASSERT_TRUE(i2v->dit->config.has_image_input);
  auto in = small_inputs();
  // An image-to-video DiT needs the first frame; a text-to-video one takes none.
  EXPECT_NE(error_of([&] { (*i2v)(in); }).find("is an image-to-video model (in_dim 36): it needs an input image"),
            std::string::npos);
  auto t2v = tiny_pipeline(log);
  auto with_image = small_inputs();
  with_image.input_image = test_picture(40, 50, 0);
  EXPECT_NE(error_of([&] { (*t2v)(with_image); }).find("is a text-to-video model (in_dim 16): it takes no input image"),
            std::string::npos);
  // CLIP conditioning without the image encoder is an error (the reference silently skips it).
  auto no_clip = tiny_pipeline(log, kTinyWanI2V, /*image_encoder=*/false);
  EXPECT_NE(error_of([&] { (*no_clip)(with_image); }).find("load the image encoder (wan_video_image_encoder"),
            std::string::npos);

  // y: 4 mask channels (the first latent frame given, with end_image the last frame of the last
  // latent frame) in front of the VAE latents of [first, black..., (last)].
  torch::NoGradGuard no_grad;
  const auto first = test_picture(40, 50, 0), last = test_picture(40, 50, 1.5);
  const auto y = i2v->encode_image_vae(first, {}, 5, 32, 64, false, {});
  ASSERT_EQ(y.sizes(), (std::vector<std::int64_t>{1, 20, 2, 4, 8}));
  EXPECT_TRUE(torch::equal(y.slice(1, 0, 4).select(2, 0), torch::ones({1, 4, 4, 8})));
  EXPECT_TRUE(torch::equal(y.slice(1, 0, 4).select(2, 1), torch::zeros({1, 4, 4, 8})));
  const auto y_end = i2v->encode_image_vae(first, last, 5, 32, 64, false, {});
  auto mask_end = torch::zeros({4, 2});
  mask_end.select(1, 0).fill_(1);
  mask_end[3][1] = 1;
  EXPECT_TRUE(torch::equal(y_end.slice(1, 0, 4)[0].amax({2, 3}), mask_end));
  EXPECT_TRUE(torch::equal(y_end.slice(1, 0, 4)[0].amin({2, 3}), mask_end));
  // The first latent frame encodes the first picture alone (causal); the last one sees the end.
  EXPECT_TRUE(torch::allclose(y_end.slice(1, 4).select(2, 0), y.slice(1, 4).select(2, 0)));
  EXPECT_FALSE(torch::allclose(y_end.slice(1, 4).select(2, 1), y.slice(1, 4).select(2, 1), 1e-3, 1e-3));
  // CLIP features: 257 x 1280 per frame; this DiT has no image position embedding, so the end
  // frame's are not appended.
  const auto clip = i2v->encode_image_clip(first, last, 32, 64);
  EXPECT_EQ(clip.sizes(), (std::vector<std::int64_t>{1, 257, 1280}));
  EXPECT_TRUE(torch::equal(clip, i2v->encode_image_clip(first, {}, 32, 64)));

  // A run: seeded, shaped, and conditioned on the picture.
  const auto a = (*i2v)(with_image);
  EXPECT_EQ(a.video.sizes(), (std::vector<std::int64_t>{5, 32, 64, 3}));
  EXPECT_TRUE(torch::equal(a.latents, (*i2v)(with_image).latents));
  auto other = with_image;
  other.input_image = last;
  EXPECT_FALSE(torch::allclose(a.latents, (*i2v)(other).latents, 1e-3, 1e-3));
}

TEST(WanVideoPipeline, TinyRunIsSeededAndShaped) {
  std::ostringstream log;
  auto pipe = tiny_pipeline(log);
  ASSERT_TRUE(pipe->dit && pipe->text_encoder && pipe->vae && pipe->tokenizer);
  const auto in = small_inputs();
  const auto a = (*pipe)(in);
  EXPECT_EQ(a.video.sizes(), (std::vector<std::int64_t>{5, 32, 64, 3}));
  EXPECT_EQ(a.latents.sizes(), (std::vector<std::int64_t>{1, 16, 2, 4, 8}));
  EXPECT_EQ(a.seed, 11u);
  EXPECT_GT(a.video.to(torch::kFloat32).std().item<double>(), 1.0);
  const auto b = (*pipe)(in);
  EXPECT_TRUE(torch::equal(a.video, b.video));
  auto other = in;
  other.seed = 12;
  EXPECT_FALSE(torch::equal(a.latents, (*pipe)(other).latents));
  // Untiled decode of a video inside one tile gives the same frames within rounding.
  auto untiled = in;
  untiled.tiled = false;
  const auto c = (*pipe)(untiled);
  EXPECT_LE((c.video.to(torch::kInt32) - a.video.to(torch::kInt32)).abs().max().item<int>(), 1);
  // The prompt embedding: 512 positions, zero past the prompt's tokens (and </s>).
  const auto emb = pipe->encode_prompt("a red kite");
  ASSERT_EQ(emb.sizes(), (std::vector<std::int64_t>{1, 512, 32}));
  EXPECT_GT(emb.slice(1, 0, 3).abs().sum().item<double>(), 0);
  EXPECT_EQ(emb.slice(1, 8).abs().sum().item<double>(), 0);
}

TEST(WanVideoPipeline, MissingPartsAreNamed) {
  WanVideoPipeline pipe(torch::kCPU, torch::kFloat32);
  EXPECT_NE(error_of([&] { pipe(small_inputs()); }).find("no wan_video_dit"), std::string::npos);
  std::ostringstream log;
  auto tiny = tiny_pipeline(log);
  tiny->tokenizer.reset();
  EXPECT_NE(error_of([&] { tiny->encode_prompt("x"); }).find("no tokenizer"), std::string::npos);
}
