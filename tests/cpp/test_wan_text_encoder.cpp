// WanTextEncoder (UMT5-XXL encoder of Wan2.1): the real-size layout built on meta (no memory) is
// the registered hash's (models_t5_umt5-xxl-enc-bf16.pth, no converter); kwargs; the relative
// position buckets; forward properties and VRAM management at a tiny size.
// Numerical parity with the reference: tests/python/test_wan_text_encoder_parity.py.
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
#include "models/wan_video_text_encoder.h"
#include "test_util.h"

using namespace diffsynth;

namespace {

const char* kClassName = "diffsynth.models.wan_video_text_encoder.WanTextEncoder";
const char* kHash = "9c8818c2cbea55eca56c7b447df170da";

std::shared_ptr<Module> build(const nlohmann::ordered_json& kwargs) {
  const auto* f = Registry::model(kClassName);
  if (!f) throw Error("not registered");
  return (*f)(kwargs);
}

nlohmann::ordered_json tiny_kwargs() {
  return {{"vocab", 100},     {"dim", 32},       {"dim_attn", 32},   {"dim_ffn", 48},
          {"num_heads", 4},   {"num_layers", 2}, {"num_buckets", 32}};
}

std::vector<std::pair<std::string, torch::Tensor>> random_weights(const Module& m) {
  torch::manual_seed(0);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [k, v] : module_state(m)) {
    auto t = k.find("norm") != std::string::npos ? 1.0 + 0.1 * torch::randn(v.sizes())
                                                  : torch::randn(v.sizes()) / std::sqrt(static_cast<double>(v.size(-1)));
    out.emplace_back(k, t);
  }
  return out;
}

void fill_random(Module& m) {
  StateDict sd;
  for (auto& [k, v] : random_weights(m)) sd.set(k, v);
  assign_state_dict(m, sd, "random", kClassName);
}

}  // namespace

// The registered entry's class and kwargs on meta: 242 tensors, 5.68 B parameters, the names
// and shapes of the real file (/work/shared/reference/module_layouts/wan_t5.txt), the md5.
TEST(WanTextEncoder, MetaLayoutHashesToTheRegisteredValue) {
  auto entries = find_model_configs(kHash);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0]->model_name, "wan_video_text_encoder");
  EXPECT_EQ(entries[0]->model_class, kClassName);
  EXPECT_FALSE(entries[0]->state_dict_converter.has_value());  // the file's names are the model's
  auto m = build(entries[0]->extra_kwargs);
  StateDict sd;
  std::int64_t params = 0;
  for (const auto& [k, v] : module_state(*m)) {
    ASSERT_TRUE(v.is_meta()) << k;
    sd.set(k, v);
    params += v.numel();
  }
  EXPECT_EQ(sd.size(), 242u);
  EXPECT_EQ(params, 5680910336);
  EXPECT_EQ(hash_state_dict_keys(sd), kHash);
  using S = std::vector<std::int64_t>;
  EXPECT_EQ(sd.at("token_embedding.weight").sizes(), (S{256384, 4096}));
  EXPECT_EQ(sd.at("blocks.23.pos_embedding.embedding.weight").sizes(), (S{32, 64}));
  EXPECT_EQ(sd.at("blocks.0.ffn.gate.0.weight").sizes(), (S{10240, 4096}));
  EXPECT_EQ(sd.at("blocks.7.ffn.fc2.weight").sizes(), (S{4096, 10240}));
  EXPECT_EQ(sd.at("blocks.11.attn.o.weight").sizes(), (S{4096, 4096}));
  EXPECT_EQ(sd.at("norm.weight").sizes(), (S{4096}));
  EXPECT_FALSE(sd.contains("pos_embedding.embedding.weight"));  // shared_pos false
}

TEST(WanTextEncoder, Kwargs) {
  auto m = build(tiny_kwargs());
  auto& te = dynamic_cast<WanTextEncoderImpl&>(*m);
  EXPECT_EQ(te.config.dim_ffn, 48);
  EXPECT_FALSE(te.config.shared_pos);
  EXPECT_DOUBLE_EQ(te.config.dropout, 0.1);

  auto kw = tiny_kwargs();
  kw["shared_pos"] = true;
  kw["dropout"] = 0.0;
  auto shared = build(kw);
  StateDict sd;
  for (const auto& [k, v] : module_state(*shared)) sd.set(k, v);
  EXPECT_TRUE(sd.contains("pos_embedding.embedding.weight"));
  EXPECT_FALSE(sd.contains("blocks.0.pos_embedding.embedding.weight"));
  EXPECT_EQ(sd.at("pos_embedding.embedding.weight").sizes(), (std::vector<std::int64_t>{32, 4}));

  try {
    build({{"num_layer", 2}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unexpected keyword argument 'num_layer'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(build({{"dim_attn", 30}, {"num_heads", 4}}), Error);
  EXPECT_THROW(build({{"num_buckets", 2}}), Error);
  EXPECT_THROW(build({{"shared_pos", 1}}), Error);  // a bool, as Python's
}

// _relative_position_bucket, bidirectional, 32 buckets, max_dist 128: 16 per direction (keys
// after the query in the upper half), exact below 8, then 8 + floor(log(d / 8) / log(16) * 8),
// clamped to 15.
TEST(WanTextEncoder, RelativePositionBuckets) {
  wan_t5::T5RelativeEmbedding e(32, 4);
  auto rel = torch::tensor({0, 1, -1, 7, -7, 8, -8, 20, -20, 127, -128, 200, -1000}, torch::kLong);
  auto b = e->bucket(rel);
  std::vector<std::int64_t> got(b.data_ptr<std::int64_t>(), b.data_ptr<std::int64_t>() + b.numel());
  EXPECT_EQ(got, (std::vector<std::int64_t>{0, 17, 1, 23, 7, 24, 8, 26, 10, 31, 15, 31, 15}));
}

TEST(WanTextEncoder, TinyForwardProperties) {
  torch::NoGradGuard no_grad;
  auto m = build(tiny_kwargs());
  fill_random(*m);
  auto& te = dynamic_cast<WanTextEncoderImpl&>(*m);
  torch::manual_seed(1);
  auto ids = torch::randint(0, 100, {2, 12}, torch::kLong);
  auto out = te.forward(ids);
  EXPECT_EQ(out.sizes(), (std::vector<std::int64_t>{2, 12, 32}));
  EXPECT_EQ(out.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  EXPECT_TRUE(torch::equal(te.forward(ids, torch::ones({2, 12}, torch::kLong)), out));

  // Right padding: the valid rows equal the short sequence run alone (keys masked, positions
  // relative).
  auto mask = torch::ones({2, 12}, torch::kLong);
  mask.index_put_({1, torch::indexing::Slice(7)}, 0);
  auto padded = te.forward(ids, mask);
  auto alone = te.forward(ids.narrow(0, 1, 1).narrow(1, 0, 7));
  EXPECT_LE((padded[1].narrow(0, 0, 7) - alone[0]).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(torch::equal(padded[0], out[0]));
  // Other integer / bool dtypes; a [B, L, L] mask of the same keys.
  EXPECT_TRUE(torch::equal(te.forward(ids.to(torch::kInt32), mask.to(torch::kBool)), padded));
  auto mask3 = mask.unsqueeze(1).expand({2, 12, 12});
  EXPECT_TRUE(torch::equal(te.forward(ids, mask3), padded));

  // encode_prompt: the pipeline's zeroing past each length, every row (the reference's loop).
  auto enc = te.encode_prompt(ids, mask);
  EXPECT_TRUE(torch::equal(enc.narrow(1, 0, 7), padded.narrow(1, 0, 7)));
  EXPECT_EQ(enc.narrow(1, 7, 5).abs().max().item<double>(), 0.0);

  // bf16 weights: bf16 output.
  m->to(torch::kBFloat16);
  auto bf = te.forward(ids, mask);
  EXPECT_EQ(bf.scalar_type(), torch::kBFloat16);
  EXPECT_LE((bf.to(torch::kFloat32) - padded).abs().max().item<double>(), 0.1 * padded.abs().max().item<double>());

  EXPECT_THROW(te.forward(ids, torch::ones({2, 11}, torch::kLong)), Error);
  EXPECT_THROW(te.forward(ids.to(torch::kFloat32)), Error);
  EXPECT_THROW(te.forward(ids.view({-1})), Error);
  EXPECT_THROW(te.encode_prompt(ids, {}), Error);
}

// Loaded through ModelPool with the reference's module map: every Linear, the embeddings, the
// relative embeddings and the norms wrapped; cpu and disk offload equal the resident run.
TEST(WanTextEncoder, VRAMManagementMatchesTheResidentRun) {
  TempDir dir;
  const auto path = dir.path("t5.safetensors");
  {
    auto m = build(tiny_kwargs());
    auto w = random_weights(*m);
    for (auto& [k, v] : w) v = v.to(torch::kBFloat16);
    nlohmann::ordered_json cfg = {
        {"model_name", "wan_video_text_encoder"}, {"model_class", kClassName}, {"extra_kwargs", tiny_kwargs()}};
    save_safetensors(path, w, {{kModelConfigMetadataKey, cfg.dump()}});
  }
  torch::manual_seed(2);
  auto ids = torch::randint(0, 100, {1, 20}, torch::kLong);
  auto mask = torch::ones({1, 20}, torch::kLong);
  mask.index_put_({0, torch::indexing::Slice(13)}, 0);
  auto run = [&](const VRAMConfig& cfg, std::size_t* wrappers) {
    std::ostringstream log;
    ModelPool pool(log);
    pool.auto_load_model({path}, cfg, std::nullopt);
    auto te = std::dynamic_pointer_cast<WanTextEncoderImpl>(pool.fetch_model("wan_video_text_encoder"));
    EXPECT_TRUE(te);
    *wrappers = vram_wrappers(*te).size();
    if (vram_management_enabled(*te)) vram_onload(*te);
    torch::NoGradGuard ng;
    return te->forward(ids, mask);
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
    // token_embedding + per block: q, k, v, o, gate.0, fc1, fc2, norm1, norm2, pos_embedding; + norm
    EXPECT_EQ(n, 1u + 2u * 10u + 1u) << place;
    EXPECT_TRUE(torch::equal(out, base)) << place;
  }
}
