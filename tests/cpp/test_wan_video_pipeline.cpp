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

std::unique_ptr<WanVideoPipeline> tiny_pipeline(std::ostream& log) {
  EXPECT_TRUE(std::filesystem::exists(std::string(kTinyWan) + "/diffusion_pytorch_model.safetensors"))
      << "the tiny Wan folder is not built (target tiny_wan)";
  ModelPool pool(log);
  VRAMConfig config = VRAMConfig::default_config();
  config.computation_dtype = "float32";
  const std::string dir = kTinyWan;
  for (const char* f : {"/diffusion_pytorch_model.safetensors", "/models_t5_umt5-xxl-enc-bf16.pth", "/Wan2.1_VAE.pth"})
    pool.auto_load_model({dir + f}, config);
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
