// The registries against the config table: every implemented class builds on meta at each
// registered config and hashes to the registered md5; every registered name exists in the table.
#include <gtest/gtest.h>

#include <set>

#include "configs/model_configs.h"
#include "core/error.h"
#include "core/loader/file.h"
#include "core/registry.h"

using namespace diffsynth;

namespace {
std::string layout_hash(const Module& m) {
  StateDict sd;
  for (const auto& [k, v] : module_state(m)) sd.set(k, v);
  return hash_state_dict_keys(sd);
}
}  // namespace

TEST(Registry, ConfigTableIsTheReferences) {
  const auto& table = model_configs();
  EXPECT_GE(table.size(), 207u);
  auto qwen = find_model_configs("a9e54e480a628f0b956a688a81c33bab");
  ASSERT_EQ(qwen.size(), 1u);
  EXPECT_EQ(qwen[0]->model_name, "qwen_image_blockwise_controlnet");
  EXPECT_EQ(qwen[0]->extra_kwargs, nlohmann::ordered_json({{"additional_in_dim", 4}}));
  // A hash shared by several entries (a file holding several models) lists all, in order.
  auto shared = find_model_configs("5f90e66a0672219f12d9a626c8c21f61");
  ASSERT_EQ(shared.size(), 2u);
  EXPECT_EQ(shared[0]->model_name, "wan_video_dit");
  EXPECT_EQ(shared[1]->model_name, "wan_video_vap");
}

TEST(Registry, EveryRegisteredNameIsInTheTable) {
  std::set<std::string> classes, converters;
  for (const auto& c : model_configs()) {
    classes.insert(c.model_class);
    if (c.state_dict_converter) converters.insert(*c.state_dict_converter);
  }
  for (const auto& name : Registry::model_names()) EXPECT_TRUE(classes.count(name)) << name;
  for (const auto& name : Registry::converter_names()) EXPECT_TRUE(converters.count(name)) << name;
}

// The real-size layout of every implemented config entry, built on meta (no memory), hashes
// to the registered value: the layout proof that needs no checkpoint.
TEST(Registry, MetaLayoutsHashToRegisteredValues) {
  int checked = 0;
  for (const auto& c : model_configs()) {
    const ModelFactory* factory = Registry::model(c.model_class);
    if (!factory || c.state_dict_converter) continue;  // converted layouts are proven per model
    auto m = (*factory)(c.extra_kwargs);
    for (const auto& [k, v] : module_state(*m)) ASSERT_TRUE(v.is_meta()) << c.model_class << " " << k;
    EXPECT_EQ(layout_hash(*m), c.model_hash) << c.model_name << " " << c.model_class << " " << c.extra_kwargs.dump();
    ++checked;
  }
  EXPECT_GE(checked, 2);  // both Blockwise ControlNet entries at least
}

TEST(Registry, ControlNetEntriesByHash) {
  for (const char* hash : {"073bce9cf969e317e5662cd570c3e79c", "a9e54e480a628f0b956a688a81c33bab"}) {
    auto entries = find_model_configs(hash);
    ASSERT_EQ(entries.size(), 1u);
    auto m = (*Registry::model(entries[0]->model_class))(entries[0]->extra_kwargs);
    EXPECT_EQ(layout_hash(*m), hash);
    std::int64_t params = 0;
    for (const auto& p : m->parameters()) params += p.numel();
    EXPECT_EQ(params, std::string(hash) == "073bce9cf969e317e5662cd570c3e79c" ? 1133399040 : 1133411328);
  }
}

TEST(Registry, UnknownKwargIsAnError) {
  const auto* f = Registry::model("diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet");
  ASSERT_NE(f, nullptr);
  try {
    (*f)(nlohmann::ordered_json{{"num_layer", 2}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unexpected keyword argument 'num_layer'"), std::string::npos);
  }
  EXPECT_THROW((*f)(nlohmann::ordered_json{{"dim", "big"}}), Error);
}

TEST(Registry, TextEncoderConverterRenamesLikeTheReference) {
  const auto* conv = Registry::converter(
      "diffsynth.utils.state_dict_converters.qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter");
  ASSERT_NE(conv, nullptr);
  StateDict sd;
  sd.set("visual.blocks.0.attn.qkv.weight", torch::zeros({1}));
  sd.set("model.layers.0.self_attn.q_proj.weight", torch::zeros({1}));
  sd.set("lm_head.weight", torch::zeros({1}));
  sd.set("model.embed_tokens.model.x", torch::zeros({1}));  // str.replace replaces every occurrence
  StateDict out = (*conv)(sd);
  std::vector<std::string> keys;
  for (const auto& [k, v] : out) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"model.visual.blocks.0.attn.qkv.weight",
                                            "model.language_model.layers.0.self_attn.q_proj.weight", "lm_head.weight",
                                            "model.language_model.embed_tokens.model.language_model.x"}));
}
