// WanModel (Wan video DiT): the real-size layouts named by issue 11 built on meta (no memory) hash
// to the registered values with the published parameter counts; required / unknown kwargs; VRAM
// management (DiTBlock as AutoWrappedNonRecurseModule) gives the resident result bit for bit.
// Numerical parity with the reference: tests/python/test_wan_video_dit_parity.py.
#include <gtest/gtest.h>

#include <sstream>

#include "core/error.h"
#include "core/loader/file.h"
#include "core/loader/safetensors.h"
#include "core/registry.h"
#include "core/vram/layers.h"
#include "models/model_loader.h"
#include "models/wan_video_dit.h"
#include "test_util.h"

using namespace diffsynth;

namespace {

const char* kClassName = "diffsynth.models.wan_video_dit.WanModel";

std::shared_ptr<Module> build(const nlohmann::ordered_json& kwargs) { return (*Registry::model(kClassName))(kwargs); }

std::string layout_hash(const Module& m) {
  StateDict sd;
  for (const auto& [k, v] : module_state(m)) sd.set(k, v);
  return hash_state_dict_keys(sd);
}

nlohmann::ordered_json t2v_kwargs(std::int64_t dim, std::int64_t ffn, std::int64_t heads, std::int64_t layers) {
  return {{"has_image_input", false}, {"patch_size", {1, 2, 2}}, {"in_dim", 16},   {"dim", dim},
          {"ffn_dim", ffn},           {"freq_dim", 256},         {"text_dim", 4096}, {"out_dim", 16},
          {"num_heads", heads},       {"num_layers", layers},    {"eps", 1e-6}};
}

}  // namespace

TEST(WanModel, T2VLayoutsHashToTheRegisteredValues) {
  struct Case {
    const char* hash;
    nlohmann::ordered_json kwargs;
    std::int64_t params;
  };
  for (const auto& c : {Case{"9269f8db9040a9d860eaca435be61814", t2v_kwargs(1536, 8960, 12, 30), 1418996800},
                        Case{"aafcfd9672c3a2456dc46e1cb6e52c70", t2v_kwargs(5120, 13824, 40, 40), 14288491584}}) {
    auto m = build(c.kwargs);
    std::int64_t n = 0;
    for (const auto& [k, v] : module_state(*m)) {
      ASSERT_TRUE(v.is_meta()) << k;
      n += v.numel();
    }
    EXPECT_EQ(layout_hash(*m), c.hash);
    EXPECT_EQ(n, c.params) << c.hash;
  }
}

TEST(WanModel, KwargsAreCheckedAsPythonBindsThem) {
  auto kw = t2v_kwargs(64, 96, 2, 1);
  kw.erase("dim");
  kw.erase("eps");
  try {
    build(kw);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "WanModel(): missing 2 required arguments: 'dim' and 'eps'");
  }
  kw = t2v_kwargs(64, 96, 2, 1);
  kw["has_image_imput"] = true;
  EXPECT_THROW(build(kw), Error);
  kw = t2v_kwargs(64, 96, 3, 1);  // 64 is not a multiple of 3 heads
  EXPECT_THROW(build(kw), Error);
}

TEST(WanModel, VRAMManagementMatchesTheResidentRun) {
  TempDir dir;
  const auto path = dir.path("dit.safetensors");
  auto kwargs = t2v_kwargs(64, 96, 2, 2);
  kwargs["text_dim"] = 32;
  kwargs["freq_dim"] = 16;
  {
    auto m = build(kwargs);
    torch::manual_seed(0);
    std::vector<std::pair<std::string, torch::Tensor>> w;
    for (const auto& [k, v] : module_state(*m))
      w.emplace_back(k, (torch::randn(v.sizes()) / std::sqrt(static_cast<double>(v.numel() / v.size(0)))).to(torch::kBFloat16));
    nlohmann::ordered_json cfg = {{"model_name", "wan_video_dit"}, {"model_class", kClassName}, {"extra_kwargs", kwargs}};
    save_safetensors(path, w, {{kModelConfigMetadataKey, cfg.dump()}});
  }
  torch::manual_seed(1);
  WanDiTInputs in;
  in.latents = torch::randn({1, 16, 2, 4, 6}).to(torch::kBFloat16);
  in.timestep = torch::tensor({700.0}).to(torch::kBFloat16);
  in.context = torch::randn({1, 5, 32}).to(torch::kBFloat16);
  auto run = [&](const VRAMConfig& cfg, std::size_t* wrappers) {
    std::ostringstream log;
    ModelPool pool(log);
    pool.auto_load_model({path}, cfg, std::nullopt);
    auto dit = std::dynamic_pointer_cast<WanModelImpl>(pool.fetch_model("wan_video_dit"));
    EXPECT_TRUE(dit);
    *wrappers = vram_wrappers(*dit).size();
    if (vram_management_enabled(*dit)) vram_onload(*dit);
    torch::NoGradGuard ng;
    return dit->model_fn(in);
  };
  std::size_t n = 0;
  const auto base = run(VRAMConfig::default_config(), &n);
  EXPECT_EQ(n, 0u);
  for (const std::string place : {"cpu", "disk"}) {
    VRAMConfig c = VRAMConfig::default_config();
    c.computation_dtype = "bfloat16";
    c.offload_dtype = c.onload_dtype = std::optional<std::string>(place == "disk" ? "disk" : "bfloat16");
    c.offload_device = c.onload_device = place;
    const auto out = run(c, &n);
    // patch_embedding, text 0/2, time 0/2, time_projection.1, head; per block: the block itself
    // (modulation), q k v o norm_q norm_k x 2 attentions, norm1..3, ffn 0 and 2 = 18.
    EXPECT_EQ(n, 7u + 2u * 18u) << place;
    EXPECT_TRUE(torch::equal(out, base)) << place;
  }
}
