// FlowMatchScheduler: behaviour checks. Bit-for-bit parity with the installed reference over a
// grid of templates, steps, strengths and options: tests/python/test_flow_match_parity.py.
#include <gtest/gtest.h>

#include "core/error.h"
#include "diffusion/flow_match.h"

using namespace diffsynth;

TEST(FlowMatch, QwenImageSpecExample) {
  // The spec's 1328 x 1328 example: dynamic_shift_len 83 * 83 = 6889, mu = 0.8343245967741936.
  EXPECT_NEAR(calculate_shift_qwen_image(6889), 0.8343245967741936, 1e-15);
  FlowMatchScheduler s("Qwen-Image");
  FlowMatchOptions o;
  o.dynamic_shift_len = 6889;
  s.set_timesteps(30, 1.0, o);
  ASSERT_EQ(s.sigmas.scalar_type(), torch::kFloat32);
  ASSERT_EQ(s.sigmas.size(0), 30);
  EXPECT_NEAR(s.sigmas[0].item<float>(), 1.0, 1e-6);
  EXPECT_NEAR(s.sigmas[1].item<float>(), 0.984396, 1e-6);
  EXPECT_NEAR(s.sigmas[28].item<float>(), 0.091612, 1e-6);
  EXPECT_NEAR(s.sigmas[29].item<float>(), 0.02, 1e-6);
  EXPECT_TRUE(torch::equal(s.timesteps, s.sigmas * 1000));
}

TEST(FlowMatch, UnknownTemplateFallsBackToFlux) {
  FlowMatchScheduler unknown("No-Such-Template"), flux("FLUX.1");
  EXPECT_EQ(unknown.template_name(), "FLUX.1");
  unknown.set_timesteps(20);
  flux.set_timesteps(20);
  EXPECT_TRUE(torch::equal(unknown.sigmas, flux.sigmas));
}

TEST(FlowMatch, OptionNotTakenIsAnError) {
  FlowMatchScheduler s("Qwen-Image");
  FlowMatchOptions o;
  o.shift = 3.0;
  try {
    s.set_timesteps(10, 1.0, o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("template 'Qwen-Image' takes no option 'shift'"), std::string::npos);
  }
  EXPECT_THROW(FlowMatchScheduler("Boogu"), Error);
}

TEST(FlowMatch, StepKeepsLatentDtypeAndEndsAtZero) {
  FlowMatchScheduler s("Wan");
  s.set_timesteps(4);
  auto x = torch::randn({2, 3}).to(torch::kBFloat16);
  auto v = torch::randn({2, 3}).to(torch::kBFloat16);
  const auto t_last = s.timesteps[-1].unsqueeze(0).to(torch::kBFloat16);
  auto y = s.step(v, t_last, x);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  // The last step goes to sigma 0, as to_final does from anywhere.
  EXPECT_TRUE(torch::equal(y, x + v * (-s.sigmas[-1])));
  EXPECT_TRUE(torch::equal(s.step(v, s.timesteps[0], x, true), x + v * (-s.sigmas[0])));
  EXPECT_TRUE(torch::equal(s.add_noise(x, v, s.timesteps[1]), (1 - s.sigmas[1]) * x + s.sigmas[1] * v));
}

TEST(FlowMatch, TrainingWeights) {
  FlowMatchScheduler s("Qwen-Image");
  s.set_timesteps(1000, 1.0, {}, /*training=*/true);
  ASSERT_TRUE(s.training);
  ASSERT_EQ(s.linear_timesteps_weights.size(0), 1000);
  // Normalised to a mean of 1 over the 1000 training timesteps.
  EXPECT_NEAR(s.linear_timesteps_weights.mean().item<double>(), 1.0, 1e-4);
  EXPECT_NO_THROW(s.training_weight(s.timesteps[10]));
}
