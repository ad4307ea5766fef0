// QwenImageTextEncoder: the real-size layout (built on meta, no weights) is the checkpoint's
// through the registered converter, hash for hash; kwargs; forward properties at a tiny size.
// Numerical parity with the reference: tests/python/test_qwen_image_text_encoder_parity.py.
#include <gtest/gtest.h>

#include "configs/model_configs.h"
#include "core/error.h"
#include "core/loader/file.h"
#include "core/loader/model.h"
#include "core/registry.h"
#include "models/qwen_image_text_encoder.h"

using namespace diffsynth;

namespace {

const char* kTextEncoder = "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder";
const char* kConverter =
    "diffsynth.utils.state_dict_converters.qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter";
const char* kHash = "8004730443f55db63092006dd9f7110e";

// The converter's inverse: model names -> the HF checkpoint's names.
std::string to_checkpoint_name(const std::string& k) {
  const std::string lm = "model.language_model.", vis = "model.visual.";
  if (k.rfind(lm, 0) == 0) return "model." + k.substr(lm.size());
  if (k.rfind(vis, 0) == 0) return k.substr(std::string("model.").size());
  return k;
}

std::shared_ptr<Module> build(const nlohmann::ordered_json& kwargs) {
  const auto* f = Registry::model(kTextEncoder);
  if (!f) throw Error("not registered");
  return (*f)(kwargs);
}

nlohmann::ordered_json tiny_kwargs() {
  return {{"hidden_size", 256},       {"intermediate_size", 384},
          {"num_hidden_layers", 2},   {"num_attention_heads", 2},
          {"num_key_value_heads", 1}, {"vocab_size", 100},
          {"vision_depth", 1},        {"vision_hidden_size", 32},
          {"vision_num_heads", 2},    {"vision_intermediate_size", 48}};
}

// Random weights (norm weights near 1), assigned like a strict load.
void fill_random(Module& m) {
  torch::manual_seed(0);
  StateDict sd;
  for (const auto& [k, v] : module_state(m))
    sd.set(k,
           k.find("norm") != std::string::npos ? 1.0 + 0.1 * torch::randn(v.sizes()) : 0.1 * torch::randn(v.sizes()));
  assign_state_dict(m, sd, "random", kTextEncoder);
}

}  // namespace

// The real config on meta: 729 tensors, 8.29 B parameters, and its names mapped back to the
// checkpoint's hash to the registered md5; the forward converter gives back exactly our names.
TEST(QwenImageTextEncoder, MetaLayoutIsTheCheckpointsThroughTheConverter) {
  auto m = build(nlohmann::ordered_json::object());
  StateDict model_sd, checkpoint_sd;
  std::int64_t params = 0;
  for (const auto& [k, v] : module_state(*m)) {
    ASSERT_TRUE(v.is_meta()) << k;
    model_sd.set(k, v);
    checkpoint_sd.set(to_checkpoint_name(k), v);
    params += v.numel();
  }
  EXPECT_EQ(model_sd.size(), 729u);
  EXPECT_EQ(params, 8292166656);
  EXPECT_EQ(hash_state_dict_keys(checkpoint_sd), kHash);
  EXPECT_TRUE(checkpoint_sd.contains("model.embed_tokens.weight"));
  EXPECT_TRUE(checkpoint_sd.contains("visual.merger.mlp.2.bias"));
  EXPECT_TRUE(checkpoint_sd.contains("lm_head.weight"));
  EXPECT_EQ(checkpoint_sd.at("visual.patch_embed.proj.weight").sizes(),
            (std::vector<std::int64_t>{1280, 3, 2, 14, 14}));
  EXPECT_EQ(checkpoint_sd.at("model.layers.27.self_attn.k_proj.weight").sizes(),
            (std::vector<std::int64_t>{512, 3584}));

  const auto* conv = Registry::converter(kConverter);
  ASSERT_NE(conv, nullptr);
  StateDict back = (*conv)(checkpoint_sd);
  std::vector<std::string> want, got;
  for (const auto& [k, v] : model_sd) want.push_back(k);
  for (const auto& [k, v] : back) got.push_back(k);
  EXPECT_EQ(got, want);
  for (const auto& [k, v] : back) EXPECT_EQ(v.sizes(), model_sd.at(k).sizes()) << k;
}

TEST(QwenImageTextEncoder, ConfigEntryNamesThisClassAndConverter) {
  auto entries = find_model_configs(kHash);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0]->model_name, "qwen_image_text_encoder");
  EXPECT_EQ(entries[0]->model_class, kTextEncoder);
  ASSERT_TRUE(entries[0]->state_dict_converter.has_value());
  EXPECT_EQ(*entries[0]->state_dict_converter, kConverter);
  EXPECT_NE(Registry::model(entries[0]->model_class), nullptr);
}

TEST(QwenImageTextEncoder, Kwargs) {
  auto m = build(tiny_kwargs());
  auto& te = dynamic_cast<QwenImageTextEncoderImpl&>(*m);
  EXPECT_EQ(te.config.vision_out_hidden_size, 256);  // follows hidden_size
  StateDict sd;
  for (const auto& [k, v] : module_state(*m)) sd.set(k, v);
  EXPECT_EQ(sd.at("model.visual.merger.mlp.0.weight").sizes(), (std::vector<std::int64_t>{128, 128}));
  EXPECT_EQ(sd.at("model.visual.merger.mlp.2.weight").sizes(), (std::vector<std::int64_t>{256, 128}));
  EXPECT_EQ(sd.at("model.language_model.layers.1.self_attn.v_proj.bias").sizes(), (std::vector<std::int64_t>{128}));
  EXPECT_FALSE(sd.contains("model.language_model.layers.0.self_attn.o_proj.bias"));

  try {
    build({{"hidden_layers", 2}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unexpected keyword argument 'hidden_layers'"), std::string::npos);
  }
  try {
    build({{"hidden_size", 512}, {"num_attention_heads", 8}, {"num_key_value_heads", 2}});  // head dim 64
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head dim"), std::string::npos) << e.what();
  }
  EXPECT_THROW(build({{"num_attention_heads", 28}, {"num_key_value_heads", 5}}), Error);
}

// Forward at a tiny size: the pipeline's output is the last of hidden_states(); an all-ones mask
// is no mask; right padding leaves the valid rows as in the unpadded run (positions are arange).
TEST(QwenImageTextEncoder, TinyForwardProperties) {
  torch::NoGradGuard no_grad;
  auto m = build(tiny_kwargs());
  fill_random(*m);
  auto& te = dynamic_cast<QwenImageTextEncoderImpl&>(*m);
  torch::manual_seed(1);
  auto ids = torch::randint(0, 100, {2, 9}, torch::kLong);
  auto out = te.forward(ids);
  EXPECT_EQ(out.sizes(), (std::vector<std::int64_t>{2, 9, 256}));
  EXPECT_EQ(out.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());

  auto all = te.hidden_states(ids, torch::ones({2, 9}, torch::kLong));
  ASSERT_EQ(all.size(), 3u);
  EXPECT_TRUE(torch::equal(all.back(), out));

  auto mask = torch::ones({2, 9}, torch::kLong);
  mask.index_put_({1, torch::indexing::Slice(5)}, 0);  // right padding
  auto padded = te.forward(ids, mask);
  auto alone = te.forward(ids.narrow(0, 1, 1).narrow(1, 0, 5));
  EXPECT_LE((padded[1].narrow(0, 0, 5) - alone[0]).abs().max().item<double>(), 1e-5);
  EXPECT_LE((padded[0] - out[0]).abs().max().item<double>(), 1e-5);

  auto bf = te.forward(ids.to(torch::kInt32), mask.to(torch::kBool));  // other integer / bool dtypes
  EXPECT_TRUE(torch::equal(bf, padded));

  EXPECT_THROW(te.forward(ids, torch::ones({2, 8}, torch::kLong)), Error);
  EXPECT_THROW(te.forward(ids.to(torch::kFloat32)), Error);
}
