// WanImageEncoder (the CLIP ViT-H/14 vision tower of Wan image-to-video): the real-size layout built
// on meta is the registered file's once the converter has dropped the text tower; kwargs; the
// errors bad inputs get; forward properties and VRAM management at a tiny size.
// Numerical parity with the reference and the layout proof of a real-format file:
// tests/python/test_wan_image_encoder_parity.py.
#include <gtest/gtest.h>

#include <sstream>

#include "configs/model_configs.h"
#include "core/error.h"
#include "core/loader/file.h"
#include "core/loader/model.h"
#include "core/loader/safetensors.h"
#include "core/registry.h"
#include "core/vram/layers.h"
#include "models/model_loader.h"
#include "models/wan_video_image_encoder.h"
#include "test_util.h"

using namespace diffsynth;

namespace {

const char* kClassName = "diffsynth.models.wan_video_image_encoder.WanImageEncoder";
const char* kConverter =
    "diffsynth.utils.state_dict_converters.wan_video_image_encoder.WanImageEncoderStateDictConverter";
const char* kHash = "5941c53e207d62f20f9025686193c40b";
using S = std::vector<std::int64_t>;

std::shared_ptr<Module> build(const nlohmann::ordered_json& kwargs) {
  const auto* f = Registry::model(kClassName);
  if (!f) throw Error("not registered");
  return (*f)(kwargs);
}

nlohmann::ordered_json tiny_kwargs() {
  return {{"embed_dim", 16}, {"image_size", 56}, {"patch_size", 14}, {"vision_dim", 32},
          {"vision_heads", 4}, {"vision_layers", 3}};
}

// The text tower the published file also holds (XLM-RoBERTa-large with its head, Wan's
// XLMRobertaWithHead), which the model does not build: 391 tensors.
void add_text_tower(StateDict& sd) {
  auto t = [&](const std::string& k, S shape) {
    sd.set("textual." + k, torch::empty(shape, torch::TensorOptions().device(torch::kMeta)));
  };
  const std::int64_t dim = 1024;
  t("token_embedding.weight", {250002, dim});
  t("type_embedding.weight", {1, dim});
  t("pos_embedding.weight", {514, dim});
  for (int i = 0; i < 24; ++i) {
    const auto p = "blocks." + std::to_string(i) + ".";
    for (const char* n : {"q", "k", "v", "o"}) {
      t(p + "attn." + n + ".weight", {dim, dim});
      t(p + "attn." + n + ".bias", {dim});
    }
    for (const char* n : {"norm1", "norm2"}) {
      t(p + n + ".weight", {dim});
      t(p + n + ".bias", {dim});
    }
    t(p + "ffn.0.weight", {4 * dim, dim});
    t(p + "ffn.0.bias", {4 * dim});
    t(p + "ffn.2.weight", {dim, 4 * dim});
    t(p + "ffn.2.bias", {dim});
  }
  t("norm.weight", {dim});
  t("norm.bias", {dim});
  t("head.0.weight", {dim, dim});
  t("head.2.weight", {dim, dim});
}

std::vector<std::pair<std::string, torch::Tensor>> random_weights(const Module& m) {
  torch::manual_seed(0);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [k, v] : module_state(m)) {
    torch::Tensor t;
    if (k.find("norm") != std::string::npos && k.find("weight") != std::string::npos)
      t = 1.0 + 0.1 * torch::randn(v.sizes());
    else if (v.dim() >= 2 && k.find("embedding") == std::string::npos)
      t = torch::randn(v.sizes()) / std::sqrt(static_cast<double>(v[0].numel()));
    else
      t = 0.1 * torch::randn(v.sizes());
    out.emplace_back(k, t);
  }
  return out;
}

void fill_random(Module& m) {
  StateDict sd;
  for (auto& [k, v] : random_weights(m)) sd.set(k, v);
  assign_state_dict(m, sd, "random", kClassName);
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// The registered entry's class (no kwargs) on meta: 393 tensors, 632,076,801 parameters. The
// published file holds them without "model." plus the text tower; that layout hashes to the
// registered md5, and the converter maps it onto exactly the model's names.
TEST(WanImageEncoder, MetaLayoutHashesToTheRegisteredValue) {
  auto entries = find_model_configs(kHash);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0]->model_name, "wan_video_image_encoder");
  EXPECT_EQ(entries[0]->model_class, kClassName);
  ASSERT_TRUE(entries[0]->state_dict_converter.has_value());
  EXPECT_EQ(*entries[0]->state_dict_converter, kConverter);
  auto m = build(entries[0]->extra_kwargs);
  StateDict model_sd, file_sd;
  std::int64_t params = 0;
  for (const auto& [k, v] : module_state(*m)) {
    ASSERT_TRUE(v.is_meta()) << k;
    ASSERT_EQ(k.rfind("model.", 0), 0u) << k;
    model_sd.set(k, v);
    file_sd.set(k.substr(6), v);
    params += v.numel();
  }
  EXPECT_EQ(model_sd.size(), 393u);
  EXPECT_EQ(params, 632076801);
  EXPECT_EQ(model_sd.at("model.log_scale").dim(), 0);
  EXPECT_EQ(model_sd.at("model.visual.patch_embedding.weight").sizes(), (S{1280, 3, 14, 14}));
  EXPECT_FALSE(model_sd.contains("model.visual.patch_embedding.bias"));
  EXPECT_EQ(model_sd.at("model.visual.pos_embedding").sizes(), (S{1, 257, 1280}));
  EXPECT_EQ(model_sd.at("model.visual.cls_embedding").sizes(), (S{1, 1, 1280}));
  EXPECT_EQ(model_sd.at("model.visual.head").sizes(), (S{1280, 1024}));
  EXPECT_EQ(model_sd.at("model.visual.transformer.31.attn.to_qkv.weight").sizes(), (S{3840, 1280}));
  EXPECT_EQ(model_sd.at("model.visual.transformer.0.mlp.0.weight").sizes(), (S{5120, 1280}));
  EXPECT_EQ(model_sd.at("model.visual.transformer.0.mlp.2.bias").sizes(), (S{1280}));
  add_text_tower(file_sd);
  EXPECT_EQ(file_sd.size(), 784u);
  EXPECT_EQ(hash_state_dict_keys(file_sd), kHash);

  const auto* conv = Registry::converter(kConverter);
  ASSERT_TRUE(conv);
  const auto converted = (*conv)(file_sd);
  EXPECT_EQ(converted.size(), model_sd.size());
  for (const auto& [k, v] : model_sd) {
    ASSERT_TRUE(converted.contains(k)) << k;
    EXPECT_EQ(converted.at(k).sizes(), v.sizes()) << k;
  }
  EXPECT_EQ(hash_state_dict_keys(converted), hash_state_dict_keys(model_sd));
}

TEST(WanImageEncoder, Kwargs) {
  auto m = build(tiny_kwargs());
  auto& enc = dynamic_cast<WanImageEncoderImpl&>(*m);
  EXPECT_EQ(enc.config.mlp_dim(), 128);
  EXPECT_EQ(enc.model->visual->blocks.size(), 3u);
  StateDict sd;
  for (const auto& [k, v] : module_state(*m)) sd.set(k, v);
  EXPECT_EQ(sd.at("model.visual.pos_embedding").sizes(), (S{1, 17, 32}));
  EXPECT_EQ(sd.at("model.visual.head").sizes(), (S{32, 16}));
  auto kw = tiny_kwargs();
  kw["vision_mlp_ratio"] = 2.5;
  auto m2 = build(kw);
  for (const auto& [k, v] : module_state(*m2))
    if (k == "model.visual.transformer.0.mlp.0.weight") EXPECT_EQ(v.sizes(), (S{80, 32}));

  EXPECT_TRUE(contains(error_of([] { build({{"vision_layer", 2}}); }), "unexpected keyword argument 'vision_layer'"));
  EXPECT_TRUE(contains(error_of([] { build({{"vision_dim", 30}, {"vision_heads", 4}}); }),
                       "vision_dim 30 is not divisible by vision_heads 4"));
  EXPECT_TRUE(contains(error_of([] { build({{"image_size", 100}}); }), "image_size 100 is not divisible by patch_size 14"));
  EXPECT_TRUE(contains(error_of([] { build({{"patch_size", 0}}); }), "patch_size must be positive"));
  EXPECT_THROW(build({{"vision_layers", 1.5}}), Error);
}

// Bad inputs: one line naming the problem, before any computation.
TEST(WanImageEncoder, BadInputsAreClearErrors) {
  torch::NoGradGuard no_grad;
  auto m = build(tiny_kwargs());
  fill_random(*m);
  auto& enc = dynamic_cast<WanImageEncoderImpl&>(*m);
  const auto ok = torch::rand({1, 3, 40, 60}) * 2 - 1;
  EXPECT_TRUE(contains(error_of([&] { enc.encode_image(std::vector<torch::Tensor>{}); }), "at least one image tensor"));
  EXPECT_TRUE(contains(error_of([&] { enc.encode_image(torch::rand({3, 40, 60})); }),
                       "takes [B, 3, H, W] images; image tensor 0 of 1 is [3, 40, 60]"));
  EXPECT_TRUE(contains(error_of([&] { enc.encode_image({ok, torch::rand({1, 4, 40, 60})}); }),
                       "image tensor 1 of 2 is [1, 4, 40, 60]"));
  EXPECT_TRUE(contains(error_of([&] { enc.encode_image(torch::rand({1, 3, 0, 60})); }),
                       "image tensor 0 of 1 is empty, [1, 3, 0, 60]"));
  EXPECT_TRUE(contains(error_of([&] { enc.encode_image(torch::zeros({1, 3, 8, 8}, torch::kUInt8)); }),
                       "floating-point images in [-1, 1]; image tensor 0 of 1 is Byte"));
  EXPECT_TRUE(contains(error_of([&] { enc.encode_image({ok, torch::Tensor()}); }), "image tensor 1 of 2 is undefined"));
  // The tower itself: the pos embedding fixes the token count unless asked to interpolate.
  auto& visual = *enc.model->visual;
  EXPECT_TRUE(contains(error_of([&] { visual.forward(torch::rand({1, 3, 28, 42})); }),
                       "images of 28x42 give 6 patches (2x3), the pos embedding holds 16 (image_size 56)"));
  EXPECT_TRUE(contains(error_of([&] { visual.forward(torch::rand({1, 3, 28, 42}), true); }),
                       "interpolation needs a square patch grid, got 6 patches (2x3)"));
  EXPECT_TRUE(contains(error_of([&] { visual.forward(torch::rand({1, 3, 10, 56})); }),
                       "images of 10x56 are smaller than one 14x14 patch"));
  EXPECT_TRUE(contains(error_of([&] { visual.forward(torch::rand({2, 1, 56, 56})); }),
                       "the vision tower takes images [B, 3, H, W], got [2, 1, 56, 56]"));
}

TEST(WanImageEncoder, TinyForwardProperties) {
  torch::NoGradGuard no_grad;
  auto m = build(tiny_kwargs());
  fill_random(*m);
  auto& enc = dynamic_cast<WanImageEncoderImpl&>(*m);
  torch::manual_seed(1);
  const auto a = torch::rand({1, 3, 48, 80}) * 2 - 1, b = torch::rand({2, 3, 56, 56}) * 2 - 1;
  const auto a0 = a.clone();
  auto out = enc.encode_image({a, b});
  EXPECT_EQ(out.sizes(), (S{3, 17, 32}));
  EXPECT_EQ(out.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  EXPECT_TRUE(torch::equal(a, a0));  // inputs untouched (the reference's in-place ops act on the resized copy)
  // The list is a batch: each element alone gives its rows; a float64 input is cast to the model's dtype.
  EXPECT_TRUE(torch::allclose(enc.encode_image(a), out.narrow(0, 0, 1), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(enc.encode_image(b.to(torch::kFloat64)), out.narrow(0, 1, 2), 1e-5, 1e-6));
  // use_31_block: the last block is skipped.
  auto full = enc.model->visual->forward(torch::rand({1, 3, 56, 56}));
  EXPECT_EQ(full.sizes(), (S{1, 17, 32}));

  // bf16 weights: bf16 output, close to fp32.
  m->to(torch::kBFloat16);
  auto bf = enc.encode_image({a, b});
  EXPECT_EQ(bf.scalar_type(), torch::kBFloat16);
  EXPECT_LE((bf.to(torch::kFloat32) - out).abs().max().item<double>(), 0.1 * out.abs().max().item<double>());
}

// Loaded through ModelPool with the reference's module map: the whole VisionTransformer is one
// AutoWrappedModule; cpu and disk offload equal the resident run.
TEST(WanImageEncoder, VRAMManagementMatchesTheResidentRun) {
  TempDir dir;
  const auto path = dir.path("clip.safetensors");
  {
    auto m = build(tiny_kwargs());
    auto w = random_weights(*m);
    for (auto& [k, v] : w) v = v.to(torch::kBFloat16);
    nlohmann::ordered_json cfg = {
        {"model_name", "wan_video_image_encoder"}, {"model_class", kClassName}, {"extra_kwargs", tiny_kwargs()}};
    save_safetensors(path, w, {{kModelConfigMetadataKey, cfg.dump()}});
  }
  torch::manual_seed(2);
  const auto image = torch::rand({1, 3, 30, 50}) * 2 - 1;
  auto run = [&](const VRAMConfig& cfg, std::size_t* wrappers) {
    std::ostringstream log;
    ModelPool pool(log);
    pool.auto_load_model({path}, cfg, std::nullopt);
    auto enc = std::dynamic_pointer_cast<WanImageEncoderImpl>(pool.fetch_model("wan_video_image_encoder"));
    EXPECT_TRUE(enc);
    *wrappers = vram_wrappers(*enc).size();
    if (vram_management_enabled(*enc)) vram_onload(*enc);
    torch::NoGradGuard ng;
    return enc->encode_image(image);
  };
  std::size_t n = 0;
  const auto base = run(VRAMConfig::default_config(), &n);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(base.scalar_type(), torch::kBFloat16);
  for (const std::string place : {"cpu", "disk"}) {
    VRAMConfig c = VRAMConfig::default_config();
    c.computation_dtype = "bfloat16";
    c.offload_dtype = c.onload_dtype = std::optional<std::string>(place == "disk" ? "disk" : "bfloat16");
    c.offload_device = c.onload_device = place;
    const auto out = run(c, &n);
    EXPECT_EQ(n, 1u) << place;  // model.visual
    EXPECT_TRUE(torch::equal(out, base)) << place;
  }
}
