// LoRA key conversion (the reference's formats and the kohya / prefixed ones only we read),
// error messages, and fusing. Numerical parity with the reference's pipe.load_lora:
// tests/python/test_lora_parity.py.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/loader/model.h"
#include "core/loader/safetensors.h"
#include "models/qwen_image_dit.h"
#include "test_util.h"
#include "utils/lora/general.h"

using namespace diffsynth;

namespace {

const char* kDiT = "diffsynth.models.qwen_image_dit.QwenImageDiT";
constexpr std::int64_t kRank = 4;

// A reduced DiT (dim 64, 2 x 32 heads, text 48, 2 blocks) with random weights.
QwenImageDiT tiny_dit() {
  QwenImageDiTConfig c;
  c.num_layers = 2;
  c.dim = 64;
  c.num_attention_heads = 2;
  c.attention_head_dim = 32;
  c.joint_attention_dim = 48;
  QwenImageDiT dit(c);
  torch::manual_seed(0);
  StateDict sd;
  for (const auto& [k, v] : module_state(*dit)) sd.set(k, 0.1 * torch::randn(v.sizes()));
  assign_state_dict(*dit, sd, "random", kDiT);
  return dit;
}

// A and B of a rank-4 LoRA for a [out, in] weight.
std::pair<torch::Tensor, torch::Tensor> lora_for(std::int64_t out, std::int64_t in) {
  return {torch::randn({kRank, in}), torch::randn({out, kRank})};
}

StateDict one_layer(const std::string& a_key, const std::string& b_key, std::int64_t out = 64, std::int64_t in = 64) {
  auto [a, b] = lora_for(out, in);
  StateDict sd;
  sd.set(a_key, a);
  sd.set(b_key, b);
  return sd;
}

std::string module_of(const StateDict& lora, const Module& model) {
  const auto pairs = convert_lora(lora, model, "test.safetensors");
  EXPECT_EQ(pairs.size(), 1u);
  return pairs.empty() ? "" : pairs[0].module;
}

std::string error_of(const StateDict& lora, const Module& model) {
  try {
    convert_lora(lora, model, "my_lora.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(LoRA, ReferenceKeyFormats) {
  auto dit = tiny_dit();
  const std::string m = "transformer_blocks.0.attn.to_q";
  EXPECT_EQ(module_of(one_layer(m + ".lora_A.weight", m + ".lora_B.weight"), *dit), m);
  EXPECT_EQ(module_of(one_layer(m + ".lora_A.default.weight", m + ".lora_B.default.weight"), *dit), m);
  EXPECT_EQ(module_of(one_layer(m + ".lora_down.weight", m + ".lora_up.weight"), *dit), m);
  EXPECT_EQ(module_of(one_layer("diffusion_model." + m + ".lora_down.weight", "diffusion_model." + m + ".lora_up.weight"),
                      *dit),
            m);
}

TEST(LoRA, PrefixedKeyFormats) {
  auto dit = tiny_dit();
  const std::string m = "transformer_blocks.1.attn.to_add_out";
  for (const std::string p : {"transformer.", "base_model.model.", "model.", "unet.", "base_model.model.transformer."})
    EXPECT_EQ(module_of(one_layer(p + m + ".lora_A.weight", p + m + ".lora_B.weight"), *dit), m) << p;
}

TEST(LoRA, KohyaNamesResolveAgainstModules) {
  auto dit = tiny_dit();
  // Names whose own segments contain underscores: to_add_out, img_mod, add_k_proj, net.0.proj ...
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"lora_unet_transformer_blocks_0_attn_to_add_out", "transformer_blocks.0.attn.to_add_out"},
      {"lora_unet_transformer_blocks_1_img_mod_1", "transformer_blocks.1.img_mod.1"},
      {"lora_unet_transformer_blocks_0_attn_to_out_0", "transformer_blocks.0.attn.to_out.0"},
      {"lora_unet_transformer_blocks_0_img_mlp_net_0_proj", "transformer_blocks.0.img_mlp.net.0.proj"},
      {"lora_transformer_transformer_blocks_1_attn_add_k_proj", "transformer_blocks.1.attn.add_k_proj"},
      {"lora_unet_time_text_embed_timestep_embedder_linear_1", "time_text_embed.timestep_embedder.linear_1"},
      {"lora_unet_diffusion_model_img_in", "img_in"},
  };
  for (const auto& [kohya, module] : cases) {
    auto w = dit->named_parameters()[module + ".weight"];
    EXPECT_EQ(module_of(one_layer(kohya + ".lora_down.weight", kohya + ".lora_up.weight", w.size(0), w.size(1)), *dit),
              module)
        << kohya;
  }
}

TEST(LoRA, AlphaScalesDownByAlphaOverRank) {
  auto dit = tiny_dit();
  const std::string k = "lora_unet_transformer_blocks_0_attn_to_q";
  StateDict lora = one_layer(k + ".lora_down.weight", k + ".lora_up.weight");
  lora.set(k + ".alpha", torch::tensor(6.0f));
  const auto pairs = convert_lora(lora, *dit, "x");
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_TRUE(torch::equal(pairs[0].lora_A, lora.at(k + ".lora_down.weight") * (torch::tensor(6.0f) / kRank)));
  EXPECT_TRUE(torch::equal(pairs[0].lora_B, lora.at(k + ".lora_up.weight")));
  EXPECT_EQ(pairs[0].source_keys.size(), 3u);
}

TEST(LoRA, ReferenceConvertStateDict) {
  // No model: the reference's canonical names, the adapter segment and diffusion_model. dropped.
  StateDict lora = one_layer("diffusion_model.a.b.lora_A.default.weight", "diffusion_model.a.b.lora_B.default.weight");
  lora.set("diffusion_model.a.b.alpha", torch::tensor(2.0f));
  const StateDict c = convert_lora_state_dict(lora);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_TRUE(c.contains("a.b.lora_A.weight"));
  EXPECT_TRUE(c.contains("a.b.lora_B.weight"));
  EXPECT_TRUE(torch::equal(c.at("a.b.lora_A.weight"), lora.at("diffusion_model.a.b.lora_A.default.weight") * 0.5));
}

TEST(LoRA, UnknownKeysAreOneErrorNamingFileAndKeys) {
  auto dit = tiny_dit();
  StateDict lora = one_layer("transformer_blocks.0.attn.to_q.lora_A.weight", "transformer_blocks.0.attn.to_q.lora_B.weight");
  lora.update(one_layer("transformer_blocks.0.attn.to_nothing.lora_A.weight",
                        "transformer_blocks.0.attn.to_nothing.lora_B.weight"));
  lora.set("transformer_blocks.0.attn.to_q.dora_scale", torch::zeros({64}));
  const std::string e = error_of(lora, *dit);
  EXPECT_NE(e.find("my_lora.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("2 keys fit no module"), std::string::npos) << e;
  EXPECT_NE(e.find("transformer_blocks.0.attn.to_nothing.lora_B.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("transformer_blocks.0.attn.to_q.dora_scale"), std::string::npos) << e;
}

TEST(LoRA, ManyUnknownKeysAreListedUpToTen) {
  auto dit = tiny_dit();
  StateDict lora;
  for (int i = 0; i < 15; ++i) lora.set("lora_te_layer_" + std::to_string(i) + ".lora_up.weight", torch::zeros({4, 4}));
  const std::string e = error_of(lora, *dit);
  EXPECT_NE(e.find("15 keys fit no module"), std::string::npos) << e;
  EXPECT_NE(e.find("(+5 more)"), std::string::npos) << e;
}

TEST(LoRA, MissingHalfAndShapeMismatch) {
  auto dit = tiny_dit();
  StateDict lora;
  lora.set("img_in.lora_B.weight", torch::zeros({64, kRank}));
  EXPECT_NE(error_of(lora, *dit).find("without their down half: img_in.lora_B.weight (no img_in.lora_A.weight)"),
            std::string::npos)
      << error_of(lora, *dit);

  StateDict bad = one_layer("proj_out.lora_A.weight", "proj_out.lora_B.weight", 64, 48);  // proj_out is [64, 64]
  const std::string e = error_of(bad, *dit);
  EXPECT_NE(e.find("shape mismatch: proj_out (B [64, 4] @ A [4, 48], weight [64, 64])"), std::string::npos) << e;
}

TEST(LoRA, FuseReplacesTheWeight) {
  auto dit = tiny_dit();
  const std::string m = "transformer_blocks.1.txt_mlp.net.2";
  auto w = dit->named_parameters()[m + ".weight"];
  const torch::Tensor before = w.clone();
  auto lora = one_layer(m + ".lora_A.weight", m + ".lora_B.weight", w.size(0), w.size(1));
  const auto pairs = convert_lora(lora, *dit, "x");
  EXPECT_EQ(fuse_lora(*dit, pairs, 0.5, torch::kFloat32, torch::kCPU, /*verbose=*/false), 1);
  const auto fused = dit->named_parameters()[m + ".weight"];
  EXPECT_TRUE(torch::equal(fused, before + torch::mm(lora.at(m + ".lora_B.weight"), lora.at(m + ".lora_A.weight")) * 0.5));
  EXPECT_TRUE(torch::equal(w, before));  // a new tensor in the slot: the old (maybe mapped) one is untouched
}

TEST(LoRA, FuseKeepsTheParameterDtype) {
  auto dit = tiny_dit();
  for (auto& p : dit->named_parameters()) {
    auto dot = p.key().rfind('.');
    auto& owner = dynamic_cast<Module&>(*dit->named_modules()[p.key().substr(0, dot)]);
    owner.assign_tensor(p.key().substr(dot + 1), p.value().to(torch::kBFloat16));
  }
  auto lora = one_layer("img_in.lora_A.weight", "img_in.lora_B.weight", 64, 64);
  fuse_lora(*dit, convert_lora(lora, *dit, "x"), 1.0, torch::kFloat32, torch::kCPU, false);
  EXPECT_EQ(dit->named_parameters()["img_in.weight"].scalar_type(), torch::kBFloat16);
}

TEST(LoRA, FuseFromFilePrintsTheReferenceMessage) {
  TempDir dir;
  auto dit = tiny_dit();
  const std::string k = "lora_unet_transformer_blocks_0_attn_to_q";
  auto lora = one_layer(k + ".lora_down.weight", k + ".lora_up.weight");
  std::vector<std::pair<std::string, torch::Tensor>> tensors(lora.begin(), lora.end());
  save_safetensors(dir.path("l.safetensors"), tensors);
  testing::internal::CaptureStdout();
  EXPECT_EQ(fuse_lora(*dit, dir.path("l.safetensors"), 1.0, torch::kFloat32, torch::kCPU), 1);
  EXPECT_EQ(testing::internal::GetCapturedStdout(),
            "1 tensors are fused by LoRA. Fused LoRA layers cannot be cleared by `pipe.clear_lora()`.\n");
}
