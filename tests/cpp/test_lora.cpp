// LoRA key conversion (the reference's formats and the kohya / prefixed ones only we read),
// error messages, and fusing. Numerical parity with the reference's pipe.load_lora:
// tests/python/test_lora_parity.py.
#include <gtest/gtest.h>

#include <sstream>

#include "core/error.h"
#include "core/loader/model.h"
#include "core/loader/safetensors.h"
#include "core/vram/layers.h"
#include "models/qwen_image_dit.h"
#include "test_util.h"
#include "utils/lora/general.h"

using namespace diffsynth;

namespace {

const char* kDiT = "diffsynth.models.qwen_image_dit.QwenImageDiT";
constexpr std::int64_t kRank = 4;

// A reduced DiT (dim 64, 2 x 32 heads, text 48, 2 blocks).
QwenImageDiTConfig tiny_config() {
  QwenImageDiTConfig c;
  c.num_layers = 2;
  c.dim = 64;
  c.num_attention_heads = 2;
  c.attention_head_dim = 32;
  c.joint_attention_dim = 48;
  return c;
}

// ... with random weights.
QwenImageDiT tiny_dit() {
  QwenImageDiT dit(tiny_config());
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

// ---- Hot-load (VRAM-managed models): pairs attached to the wrapped Linear layers ----

namespace {

// Every Linear weight of the blocks gets a rank-4 pair (a realistic DiT LoRA).
StateDict block_lora(const Module& model, std::uint64_t seed) {
  torch::manual_seed(seed);
  StateDict sd;
  for (const auto& [name, t] : module_state(model)) {
    if (name.rfind("transformer_blocks.", 0) != 0 || t.dim() != 2 || name.size() < 7 ||
        name.substr(name.size() - 7) != ".weight")
      continue;
    const std::string m = name.substr(0, name.size() - 7);
    sd.set(m + ".lora_A.weight", 0.1 * torch::randn({kRank, t.size(1)}));
    sd.set(m + ".lora_B.weight", 0.1 * torch::randn({t.size(0), kRank}));
  }
  return sd;
}

torch::Tensor dit_out(QwenImageDiTImpl& dit) {
  torch::NoGradGuard ng;
  torch::manual_seed(7);
  QwenImageDiTInputs in;
  in.latents = torch::randn({1, 16, 8, 8});
  in.prompt_emb = torch::randn({1, 5, 48});
  in.prompt_emb_mask = torch::ones({1, 5}, torch::kLong);
  in.timestep = torch::full({1}, 500.0);
  return dit.model_fn(in);
}

// Management with every state in fp32 on the CPU, or disk offload (computation in fp32).
VRAMConfig fp32_config(const std::string& offload) {
  VRAMConfig c = VRAMConfig::default_config();
  c.computation_dtype = "float32";
  const std::optional<std::string> dtype = offload == "disk" ? "disk" : "float32";
  c.offload_dtype = c.onload_dtype = dtype;
  c.offload_device = c.onload_device = offload;
  c.preparing_dtype = "float32";
  c.preparing_device = "cpu";
  return c;
}

void manage(Module& model, const VRAMConfig& c, bool from_disk, std::optional<double> limit = std::nullopt) {
  std::ostringstream log;
  ASSERT_GT(enable_vram_management(model, kDiT, vram_module_map(kDiT), c, limit, from_disk, log), 30u);
  vram_onload(model);
}

std::vector<torch::Tensor> weights(const Module& model) {
  std::vector<torch::Tensor> out;
  for (const auto& [k, v] : module_state(model)) out.push_back(v.clone());
  return out;
}

bool same(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i], b[i])) return false;
  return true;
}

// fp32 rounding: the hot-loaded x W^T + (x A^T) B^T and the fused x (W + B A)^T differ only in
// the order of float32 operations.
void expect_fp32_close(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  const double diff = (a - b).abs().max().item<double>();
  EXPECT_LE(diff, 2e-5 * scale) << "max |diff| " << diff << " vs max |ref| " << scale;
}

}  // namespace

TEST(LoRAHotLoad, EqualsFusedStacksAndClears) {
  auto fused = tiny_dit();
  auto hot = tiny_dit();
  const torch::Tensor base_out = dit_out(*hot);
  const auto lora1 = block_lora(*hot, 11), lora2 = block_lora(*hot, 12);
  const auto pairs1 = convert_lora(lora1, *hot, "one.safetensors"), pairs2 = convert_lora(lora2, *hot, "two.safetensors");
  ASSERT_GT(pairs1.size(), 20u);

  manage(*hot, fp32_config("cpu"), false);
  EXPECT_TRUE(torch::equal(dit_out(*hot), base_out));
  const auto base_weights = weights(*hot);
  testing::internal::CaptureStdout();
  EXPECT_EQ(hotload_lora(*hot, pairs1, 0.7, "one.safetensors"), static_cast<std::int64_t>(pairs1.size()));
  EXPECT_EQ(testing::internal::GetCapturedStdout(),
            std::to_string(pairs1.size()) +
                " tensors are patched by LoRA. You can use `pipe.clear_lora()` to clear all LoRA layers.\n");

  fuse_lora(*fused, pairs1, 0.7, torch::kFloat32, torch::kCPU, false);
  const torch::Tensor out1 = dit_out(*hot);
  EXPECT_FALSE(torch::allclose(out1, base_out, 1e-3, 1e-3));
  expect_fp32_close(out1, dit_out(*fused));

  // A second LoRA stacks on the first.
  hotload_lora(*hot, pairs2, -1.3, "two.safetensors", false);
  fuse_lora(*fused, pairs2, -1.3, torch::kFloat32, torch::kCPU, false);
  expect_fp32_close(dit_out(*hot), dit_out(*fused));
  EXPECT_TRUE(same(weights(*hot), base_weights));  // base weights untouched

  // clear_lora counts layers (not pairs) and restores the base output exactly.
  testing::internal::CaptureStdout();
  EXPECT_EQ(clear_lora({hot.get()}), static_cast<std::int64_t>(pairs1.size()));
  EXPECT_EQ(testing::internal::GetCapturedStdout(), std::to_string(pairs1.size()) + " LoRA layers are cleared.\n");
  EXPECT_TRUE(torch::equal(dit_out(*hot), base_out));
  EXPECT_EQ(clear_lora({hot.get()}, false), 0);
}

TEST(LoRAHotLoad, WorksUnderDiskOffloadAndFusingIntoAManagedModelSticks) {
  TempDir dir;
  auto plain = tiny_dit();
  save_safetensors(dir.path("dit.safetensors"), module_state(*plain));
  const auto pairs = convert_lora(block_lora(*plain, 21), *plain, "l.safetensors");
  fuse_lora(*plain, pairs, 1.0, torch::kFloat32, torch::kCPU, false);
  const torch::Tensor want = dit_out(*plain);

  // Weights as zero-copy views of the file, disk offload, vram_limit 0 (never promoted).
  auto load_disk = [&] {
    QwenImageDiT d(tiny_config());
    assign_state_dict(*d, load_state_dict({dir.path("dit.safetensors")}), "dit.safetensors", kDiT);
    manage(*d, fp32_config("disk"), /*from_disk=*/true, 0.0);
    return d;
  };
  // Hot-load leaves every base weight in the file.
  auto hot = load_disk();
  hotload_lora(*hot, pairs, 1.0, "l.safetensors", false);
  expect_fp32_close(dit_out(*hot), want);
  EXPECT_EQ(stored_weight_bytes(*hot).first, 0);

  // Fused into a disk-offloaded model: the fused layers stay in memory, through offload/onload.
  auto fused = load_disk();
  fuse_lora(*fused, pairs, 1.0, torch::kFloat32, torch::kCPU, false);
  EXPECT_GT(stored_weight_bytes(*fused).first, 0);
  vram_offload(*fused);
  vram_onload(*fused);
  EXPECT_TRUE(torch::allclose(dit_out(*fused), want, 1e-5, 1e-6));
}

TEST(LoRAHotLoad, Errors) {
  auto dit = tiny_dit();
  const auto pairs = convert_lora(block_lora(*dit, 3), *dit, "l.safetensors");
  // The reference's ValueError text when forced without VRAM management.
  try {
    hotload_lora(*dit, pairs, 1.0, "l.safetensors", false);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "VRAM Management is not enabled. LoRA hotloading is not supported.");
  }
  // Managed, but the Linear layers are not wrapped as Linear (a map that wraps only the norms):
  // an error naming the file and the layers, nothing attached.
  const std::vector<VRAMModuleMapEntry> norms_only{
      {"diffsynth.models.qwen_image_dit.RMSNorm", VRAMWrapperKind::AutoWrappedModule}};
  std::ostringstream log;
  enable_vram_management(*dit, kDiT, &norms_only, fp32_config("cpu"), std::nullopt, false, log);
  try {
    hotload_lora(*dit, pairs, 1.0, "l.safetensors", false);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("l.safetensors: LoRA hot-load needs Linear layers wrapped by VRAM management"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find(pairs[0].module), std::string::npos) << msg;
  }
  EXPECT_EQ(clear_lora({dit.get()}, false), 0);
}
