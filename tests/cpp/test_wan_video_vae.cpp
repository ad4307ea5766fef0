// WanVideoVAE and QwenImageVAE: one network (models/wan_video_vae.h) under two naming schemes.
// The real-size Wan layout on meta is Wan2.1_VAE.pth's through the registered converter, hash for
// hash; the Qwen-Image layouts stay proven in test_registry (MetaLayoutsHashToRegisteredValues).
// Properties of the causal feature cache at a tiny size: a single-frame video is the image path
// bit for bit, the cache is causal, one tile covering everything is the untiled result.
// Numerical parity with the reference: tests/python/test_wan_video_vae_parity.py.
#include <gtest/gtest.h>

#include "configs/model_configs.h"
#include "configs/vram_module_maps.h"
#include "core/error.h"
#include "core/loader/file.h"
#include "core/loader/model.h"
#include "core/registry.h"
#include "core/vram/layers.h"
#include "models/wan_video_vae.h"

#include <set>
#include <sstream>

using namespace diffsynth;

namespace {

const char* kWan = "diffsynth.models.wan_video_vae.WanVideoVAE";
const char* kQwen = "diffsynth.models.qwen_image_vae.QwenImageVAE";
const char* kConverter = "diffsynth.utils.state_dict_converters.wan_video_vae.WanVideoVAEStateDictConverter";
const char* kHash = "ccc42284ea13e1ad04693284c7a09be6";

std::shared_ptr<Module> build(const char* cls, const nlohmann::ordered_json& kwargs) {
  const auto* f = Registry::model(cls);
  if (!f) throw Error(std::string("not registered: ") + cls);
  return (*f)(kwargs);
}

// Unit-gain random weights, assigned like a strict load.
void fill_random(Module& m, const char* cls, int seed = 0) {
  torch::manual_seed(seed);
  StateDict sd;
  for (const auto& [k, v] : module_state(m)) {
    torch::Tensor t;
    if (k.size() >= 5 && k.compare(k.size() - 5, 5, "gamma") == 0)
      t = 1 + 0.1 * torch::randn(v.sizes());
    else if (v.dim() == 1)
      t = 0.05 * torch::randn(v.sizes());
    else
      t = torch::randn(v.sizes()) / std::sqrt(static_cast<double>(v.numel() / v.size(0)));
    sd.set(k, t);
  }
  assign_state_dict(m, sd, "random", cls);
}

template <typename T>
std::shared_ptr<T> tiny(const char* cls, const nlohmann::ordered_json& kwargs, int seed = 0) {
  auto m = build(cls, kwargs);
  fill_random(*m, cls, seed);
  m->eval();
  auto p = std::dynamic_pointer_cast<T>(m);
  if (!p) throw Error("wrong class");
  return p;
}

const nlohmann::ordered_json kTinyWan = {{"dim", 8}, {"num_res_blocks", 1}};
const nlohmann::ordered_json kTinyQwen = {{"base_dim", 8}, {"num_res_blocks", 1}};

}  // namespace

// The real config on meta: 194 tensors, 126,892,531 parameters under WanVideoVAE's names
// ("model.*"); without the prefix (Wan2.1_VAE.pth's names) they hash to the registered md5, and the
// converter gives back exactly our names and shapes.
TEST(WanVideoVAE, MetaLayoutIsWan21VaePthThroughTheConverter) {
  auto m = build(kWan, nlohmann::ordered_json::object());
  StateDict model_sd, file_sd;
  std::int64_t params = 0;
  for (const auto& [k, v] : module_state(*m)) {
    ASSERT_TRUE(v.is_meta()) << k;
    ASSERT_EQ(k.rfind("model.", 0), 0u) << k;
    model_sd.set(k, v);
    file_sd.set(k.substr(6), v);
    params += v.numel();
  }
  EXPECT_EQ(model_sd.size(), 194u);
  EXPECT_EQ(params, 126892531);
  EXPECT_EQ(hash_state_dict_keys(file_sd), kHash);
  EXPECT_EQ(file_sd.at("encoder.conv1.weight").sizes(), (std::vector<std::int64_t>{96, 3, 3, 3, 3}));
  EXPECT_EQ(file_sd.at("encoder.downsamples.3.shortcut.weight").sizes(), (std::vector<std::int64_t>{192, 96, 1, 1, 1}));
  EXPECT_EQ(file_sd.at("encoder.downsamples.5.time_conv.weight").sizes(), (std::vector<std::int64_t>{192, 192, 3, 1, 1}));
  EXPECT_EQ(file_sd.at("encoder.middle.1.to_qkv.weight").sizes(), (std::vector<std::int64_t>{1152, 384, 1, 1}));
  EXPECT_EQ(file_sd.at("encoder.head.2.weight").sizes(), (std::vector<std::int64_t>{32, 384, 3, 3, 3}));
  EXPECT_EQ(file_sd.at("conv1.weight").sizes(), (std::vector<std::int64_t>{32, 32, 1, 1, 1}));
  EXPECT_EQ(file_sd.at("conv2.weight").sizes(), (std::vector<std::int64_t>{16, 16, 1, 1, 1}));
  EXPECT_EQ(file_sd.at("decoder.upsamples.3.time_conv.weight").sizes(), (std::vector<std::int64_t>{768, 384, 3, 1, 1}));
  EXPECT_EQ(file_sd.at("decoder.upsamples.11.resample.1.weight").sizes(), (std::vector<std::int64_t>{96, 192, 3, 3}));
  EXPECT_EQ(file_sd.at("decoder.head.2.weight").sizes(), (std::vector<std::int64_t>{3, 96, 3, 3, 3}));

  const auto* conv = Registry::converter(kConverter);
  ASSERT_NE(conv, nullptr);
  StateDict back = (*conv)(file_sd);
  std::vector<std::string> want, got;
  for (const auto& [k, v] : model_sd) want.push_back(k);
  for (const auto& [k, v] : back) got.push_back(k);
  EXPECT_EQ(got, want);
  for (const auto& [k, v] : back) EXPECT_EQ(v.sizes(), model_sd.at(k).sizes()) << k;
}

// The same network under QwenImageVAE's names has the same parameter count (its own layout
// hashes are proven in test_registry).
TEST(WanVideoVAE, QwenImageVAEIsTheSameNetwork) {
  auto wan = build(kWan, nlohmann::ordered_json::object());
  auto qwen = build(kQwen, nlohmann::ordered_json::object());
  std::int64_t pw = 0, pq = 0;
  std::size_t nw = 0, nq = 0;
  for (const auto& [k, v] : module_state(*wan)) pw += v.numel(), ++nw;
  for (const auto& [k, v] : module_state(*qwen)) pq += v.numel(), ++nq;
  EXPECT_EQ(nw, nq);
  EXPECT_EQ(pw, pq);
  EXPECT_NE(std::dynamic_pointer_cast<WanVAEImpl>(qwen), nullptr);
  EXPECT_EQ(std::dynamic_pointer_cast<WanVideoVAEImpl>(qwen), nullptr);
  EXPECT_NE(std::dynamic_pointer_cast<WanVideoVAEImpl>(wan), nullptr);
}

TEST(WanVideoVAE, ConfigEntryNamesThisClassAndConverter) {
  auto entries = find_model_configs(kHash);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0]->model_name, "wan_video_vae");
  EXPECT_EQ(entries[0]->model_class, kWan);
  ASSERT_TRUE(entries[0]->state_dict_converter.has_value());
  EXPECT_EQ(*entries[0]->state_dict_converter, kConverter);
  EXPECT_NE(Registry::model(kWan), nullptr);
}

// Each naming stands for its own reference classes (the VRAM maps match them as isinstance does).
TEST(WanVideoVAE, ReferenceClassesFollowTheNaming) {
  ASSERT_NE(vram_module_map(kWan), nullptr);
  auto classes_of = [](const Module& m) {
    std::set<std::string> out;
    for (const auto& sub : m.modules(/*include_self=*/false))
      if (auto* d = dynamic_cast<const Module*>(sub.get()))
        for (const auto& c : d->reference_classes()) out.insert(c);
    return out;
  };
  auto wan = classes_of(*build(kWan, kTinyWan));
  auto qwen = classes_of(*build(kQwen, kTinyQwen));
  EXPECT_TRUE(wan.count("diffsynth.models.wan_video_vae.CausalConv3d"));
  EXPECT_TRUE(wan.count("diffsynth.models.wan_video_vae.RMS_norm"));
  EXPECT_FALSE(wan.count("diffsynth.models.qwen_image_vae.QwenImageCausalConv3d"));
  EXPECT_TRUE(qwen.count("diffsynth.models.qwen_image_vae.QwenImageCausalConv3d"));
  EXPECT_TRUE(qwen.count("diffsynth.models.qwen_image_vae.QwenImageRMS_norm"));
  EXPECT_FALSE(qwen.count("diffsynth.models.wan_video_vae.RMS_norm"));
}

TEST(WanVideoVAE, Kwargs) {
  auto m = build(kWan, {{"dim", 8}, {"dim_mult", {1, 2}}, {"num_res_blocks", 1}, {"temperal_downsample", {true}}});
  StateDict sd;
  for (const auto& [k, v] : module_state(*m)) sd.set(k, v);
  EXPECT_EQ(sd.at("model.encoder.downsamples.1.time_conv.weight").sizes(), (std::vector<std::int64_t>{8, 8, 3, 1, 1}));
  EXPECT_EQ(sd.at("model.decoder.upsamples.2.time_conv.weight").sizes(), (std::vector<std::int64_t>{32, 16, 3, 1, 1}));
  for (const nlohmann::ordered_json& bad :
       {nlohmann::ordered_json{{"base_dim", 8}}, nlohmann::ordered_json{{"image_channels", 4}}}) {
    try {
      build(kWan, bad);
      FAIL() << bad.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("WanVideoVAE() got an unexpected keyword argument"), std::string::npos)
          << e.what();
    }
  }
  EXPECT_THROW(build(kWan, {{"dim_mult", nlohmann::ordered_json::array()}}), Error);
  EXPECT_THROW(build(kWan, {{"dim", "wide"}}), Error);
}

// A single-frame video through the causal cache is the image path bit for bit (both namings),
// and one latent frame decodes to one frame, the image decode (clamped for WanVideoVAE).
TEST(WanVideoVAE, SingleFrameVideoIsTheImagePath) {
  torch::NoGradGuard no_grad;
  auto wan = tiny<WanVideoVAEImpl>(kWan, kTinyWan);
  auto qwen = tiny<QwenImageVAEImpl>(kQwen, kTinyQwen);
  torch::manual_seed(1);
  auto image = torch::rand({2, 3, 32, 48}) * 2 - 1;
  auto latents = torch::randn({2, 16, 4, 6});
  for (bool exact : {false, true}) {
    wan->set_exact_conv3d(exact);
    qwen->set_exact_conv3d(exact);
    auto enc = wan->encode_video(image.unsqueeze(2));
    ASSERT_EQ(enc.sizes(), (std::vector<std::int64_t>{2, 16, 1, 4, 6}));
    // Per video (the reference's list loop) vs the whole batch: compare video by video.
    for (int b = 0; b < 2; ++b)
      EXPECT_TRUE(torch::equal(enc[b].squeeze(1), wan->encode_image(image.slice(0, b, b + 1))[0])) << exact << b;
    EXPECT_TRUE(torch::equal(qwen->encode_video(image.unsqueeze(2)).squeeze(2), qwen->encode(image))) << exact;
    auto dec = wan->decode_video(latents.unsqueeze(2));
    ASSERT_EQ(dec.sizes(), (std::vector<std::int64_t>{2, 3, 1, 32, 48}));
    for (int b = 0; b < 2; ++b)
      EXPECT_TRUE(torch::equal(dec[b].squeeze(1), wan->decode_image(latents.slice(0, b, b + 1))[0].clamp(-1, 1)))
          << exact << b;
    EXPECT_TRUE(torch::equal(qwen->decode_video(latents.unsqueeze(2)).squeeze(2), qwen->decode(latents))) << exact;
  }
}

// The cache is causal: the first k latents of a 9-frame video are those of its first 4k - 3
// frames, and the first frames of a decode those of the first latents' decode.
TEST(WanVideoVAE, CacheIsCausal) {
  torch::NoGradGuard no_grad;
  auto vae = tiny<WanVideoVAEImpl>(kWan, kTinyWan, 3);
  torch::manual_seed(2);
  auto video = torch::rand({1, 3, 9, 32, 32}) * 2 - 1;
  auto enc9 = vae->encode_video(video);
  ASSERT_EQ(enc9.sizes(), (std::vector<std::int64_t>{1, 16, 3, 4, 4}));
  EXPECT_TRUE(torch::equal(vae->encode_video(video.slice(2, 0, 5)), enc9.slice(2, 0, 2)));
  EXPECT_TRUE(torch::equal(vae->encode_video(video.slice(2, 0, 1)), enc9.slice(2, 0, 1)));
  // Frames after the last full chunk of 4 are not read (the reference's loop): 11 frames -> 3.
  auto longer = torch::cat({video, torch::rand({1, 3, 2, 32, 32})}, 2);
  EXPECT_TRUE(torch::equal(vae->encode_video(longer), enc9));

  auto latents = torch::randn({1, 16, 3, 4, 4});
  auto dec3 = vae->decode_video(latents);
  ASSERT_EQ(dec3.sizes(), (std::vector<std::int64_t>{1, 3, 9, 32, 32}));
  EXPECT_TRUE(torch::equal(vae->decode_video(latents.slice(2, 0, 2)), dec3.slice(2, 0, 5)));
  // A later latent frame changes only the frames it decodes to.
  auto changed = latents.clone();
  changed.select(2, 2).add_(1.0);
  auto dec_changed = vae->decode_video(changed);
  EXPECT_TRUE(torch::equal(dec_changed.slice(2, 0, 5), dec3.slice(2, 0, 5)));
  EXPECT_FALSE(torch::equal(dec_changed.slice(2, 5, 9), dec3.slice(2, 5, 9)));
  // The fast path (2-D single frames, padding inside conv3d) agrees with the reference's
  // padded conv3d to fp32 rounding.
  vae->set_exact_conv3d(true);
  auto enc_exact = vae->encode_video(video);
  auto dec_exact = vae->decode_video(latents);
  EXPECT_LE((enc_exact - enc9).abs().max().item<double>(), 1e-5 * enc9.abs().max().item<double>());
  EXPECT_LE((dec_exact - dec3).abs().max().item<double>(), 1e-5);
}

// One tile that covers the whole input is the untiled result exactly (mask 1, weight 1); bf16
// runs in bf16 throughout.
TEST(WanVideoVAE, OneTileIsUntiledAndDtypeFollowsTheModel) {
  torch::NoGradGuard no_grad;
  auto vae = tiny<WanVideoVAEImpl>(kWan, kTinyWan, 4);
  torch::manual_seed(3);
  auto video = torch::rand({1, 3, 5, 32, 40}) * 2 - 1;
  auto latents = torch::randn({1, 16, 2, 4, 5});
  const WanVAETiling big(8, 8, 4, 4);
  EXPECT_TRUE(torch::equal(vae->encode_video(video, big), vae->encode_video(video)));
  EXPECT_TRUE(torch::equal(vae->decode_video(latents, big), vae->decode_video(latents)));
  auto dec = vae->decode_video(latents, WanVAETiling(2, 2, 1, 1));
  EXPECT_EQ(dec.sizes(), (std::vector<std::int64_t>{1, 3, 5, 32, 40}));
  EXPECT_LE(dec.abs().max().item<double>(), 1.0);

  vae->to(torch::kBFloat16);
  auto enc16 = vae->encode_video(video.to(torch::kBFloat16), WanVAETiling(2, 2, 1, 1));
  EXPECT_EQ(enc16.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(enc16.sizes(), (std::vector<std::int64_t>{1, 16, 2, 4, 5}));
  EXPECT_EQ(vae->decode_video(latents.to(torch::kBFloat16)).scalar_type(), torch::kBFloat16);
}

TEST(WanVideoVAE, BadInputsAreErrors) {
  torch::NoGradGuard no_grad;
  auto vae = tiny<WanVideoVAEImpl>(kWan, kTinyWan);
  auto expect_error = [](auto&& fn, const std::string& needle) {
    try {
      fn();
      FAIL() << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { vae->encode_video(torch::zeros({1, 3, 16, 16})); }, "expected videos [B, 3, T, H, W]");
  expect_error([&] { vae->encode_video(torch::zeros({1, 4, 1, 16, 16})); }, "expected videos [B, 3, T, H, W]");
  expect_error([&] { vae->decode_video(torch::zeros({1, 8, 1, 2, 2})); }, "expected latents [B, 16, t, h, w]");
  expect_error([&] { vae->encode_video(torch::zeros({1, 3, 1, 12, 16}), WanVAETiling(2, 1)); }, "multiples of 8");
  expect_error([&] { vae->decode_video(torch::zeros({1, 16, 1, 2, 2}), WanVAETiling(2, 3)); }, "tile stride");
}

// Under the reference's WanVideoVAE module map every CausalConv3d, Conv2d and RMS_norm is wrapped
// (nothing else holds weights), and a managed video decode / encode equals the resident one.
TEST(WanVideoVAE, VRAMManagementWrapsEveryWeightedLayer) {
  torch::NoGradGuard no_grad;
  auto vae = tiny<WanVideoVAEImpl>(kWan, kTinyWan, 6);
  torch::manual_seed(4);
  auto video = torch::rand({1, 3, 5, 16, 16}) * 2 - 1;
  auto latents = torch::randn({1, 16, 2, 2, 2});
  auto enc = vae->encode_video(video), dec = vae->decode_video(latents);
  std::size_t weighted = 0;
  for (const auto& m : vae->modules(/*include_self=*/false))
    if (dynamic_cast<wan_vae::CausalConv3d*>(m.get()) || dynamic_cast<ConvImpl*>(m.get()) ||
        dynamic_cast<wan_vae::RMSNorm*>(m.get()))
      ++weighted;
  VRAMConfig config;
  config.offload_dtype = config.onload_dtype = config.computation_dtype = "float32";
  config.offload_device = config.onload_device = config.computation_device = "cpu";
  std::ostringstream out;
  EXPECT_EQ(enable_vram_management(*vae, kWan, vram_module_map(kWan), config, std::nullopt, false, out), weighted);
  vram_offload(*vae);
  EXPECT_TRUE(torch::equal(vae->encode_video(video), enc));
  EXPECT_TRUE(torch::equal(vae->decode_video(latents), dec));
}
