// ModelPool: identification by hash, strict loading, zero-copy, fetch_model messages, several
// models from one file, and the "closest known model" diagnosis.
#include <gtest/gtest.h>

#include <sstream>

#include "configs/model_configs.h"
#include "core/error.h"
#include "core/loader/mapped_file.h"
#include "core/loader/model.h"
#include "core/loader/safetensors.h"
#include "models/model_loader.h"
#include "models/qwen_image_controlnet.h"
#include "test_util.h"

using namespace diffsynth;

namespace {

// A tiny Blockwise ControlNet checkpoint (random weights in the real architecture).
std::vector<std::pair<std::string, torch::Tensor>> tiny_controlnet(std::int64_t layers, std::int64_t dim,
                                                                   std::int64_t in_dim, c10::ScalarType dtype) {
  std::vector<std::pair<std::string, torch::Tensor>> t;
  t.emplace_back("img_in.weight", torch::randn({dim, in_dim}).to(dtype));
  t.emplace_back("img_in.bias", torch::randn({dim}).to(dtype));
  for (std::int64_t i = 0; i < layers; ++i) {
    const std::string p = "controlnet_blocks." + std::to_string(i) + ".";
    t.emplace_back(p + "x_rms.weight", torch::randn({dim}).to(dtype));
    t.emplace_back(p + "y_rms.weight", torch::randn({dim}).to(dtype));
    t.emplace_back(p + "input_proj.weight", torch::randn({dim, dim}).to(dtype));
    t.emplace_back(p + "input_proj.bias", torch::randn({dim}).to(dtype));
    t.emplace_back(p + "output_proj.weight", torch::randn({dim, dim}).to(dtype));
    t.emplace_back(p + "output_proj.bias", torch::randn({dim}).to(dtype));
  }
  return t;
}

const char* kControlNet = "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet";

// Registers a config entry for the tiny layout in `file` (as a user adding their own entry would).
std::string register_tiny(const std::string& file, const std::string& name, nlohmann::ordered_json kwargs) {
  const std::string h = hash_model_file({file});
  if (find_model_configs(h).empty() || find_model_configs(h).back()->model_name != name)
    add_model_config(ModelConfigEntry{h, name, kControlNet, std::nullopt, kwargs, nullptr});
  return h;
}

}  // namespace

TEST(ModelPool, LoadsZeroCopyAndStrictly) {
  TempDir dir;
  const auto p = dir.path("cn.safetensors");
  auto tensors = tiny_controlnet(2, 16, 64, torch::kBFloat16);
  save_safetensors(p, tensors);
  register_tiny(p, "tiny_controlnet_a", {{"num_layers", 2}, {"dim", 16}});
  std::ostringstream out;
  ModelPool pool(out);
  pool.auto_load_model({p});
  ASSERT_EQ(pool.model.size(), 1u);
  EXPECT_EQ(out.str(), "Loading models from: \"" + p +
                           "\"\nLoaded model: {\n    \"model_name\": \"tiny_controlnet_a\",\n    \"model_class\": \"" +
                           kControlNet + "\",\n    \"extra_kwargs\": {\n        \"num_layers\": 2,\n        \"dim\": 16\n    }\n}\n");
  auto& net = dynamic_cast<QwenImageBlockWiseControlNetImpl&>(*pool.model[0]);
  // bf16 file, bf16 computation dtype on CPU: the weights are the mapped file's bytes.
  auto w = net.blocks[1]->input_proj->named_parameters()["weight"];
  EXPECT_EQ(w.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(MappedFile::is_mapped(w.data_ptr(), w.numel() * 2));
  EXPECT_TRUE(torch::equal(w, tensors[10].second));
  EXPECT_FALSE(net.is_training());
}

TEST(ModelPool, ConvertsWithOneCopy) {
  TempDir dir;
  const auto p = dir.path("cn.safetensors");
  auto tensors = tiny_controlnet(1, 8, 64, torch::kBFloat16);
  save_safetensors(p, tensors);
  auto model = load_model(*Registry::model(kControlNet), "QwenImageBlockWiseControlNet", {p},
                          {{"num_layers", 1}, {"dim", 8}}, torch::kFloat32, torch::kCPU, nullptr);
  auto w = model->named_parameters()["img_in.weight"];
  EXPECT_EQ(w.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(MappedFile::is_mapped(w.data_ptr(), 4));
  EXPECT_TRUE(torch::equal(w, tensors[0].second.to(torch::kFloat32)));
}

TEST(ModelPool, StrictLoadReportsEverythingByName) {
  TempDir dir;
  const auto p = dir.path("bad.safetensors");
  auto tensors = tiny_controlnet(2, 8, 64, torch::kFloat32);
  tensors.erase(tensors.begin() + 3);                          // controlnet_blocks.0.y_rms.weight
  tensors.emplace_back("controlnet_blocks.0.extra", torch::zeros({1}));
  tensors[0].second = torch::zeros({8, 60});                   // img_in.weight mis-shaped
  save_safetensors(p, tensors);
  try {
    load_model(*Registry::model(kControlNet), "QwenImageBlockWiseControlNet", {p}, {{"num_layers", 2}, {"dim", 8}},
               torch::kFloat32, torch::kCPU, nullptr);
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("missing 1: controlnet_blocks.0.y_rms.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected 1: controlnet_blocks.0.extra"), std::string::npos) << msg;
    EXPECT_NE(msg.find("img_in.weight (file [8, 60], model [8, 64])"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
}

TEST(ModelPool, EveryConfigWithTheHashIsLoaded) {
  TempDir dir;
  const auto p = dir.path("two.safetensors");
  save_safetensors(p, tiny_controlnet(1, 8, 64, torch::kFloat32));
  const std::string h = hash_model_file({p});
  add_model_config(ModelConfigEntry{h, "tiny_first", kControlNet, std::nullopt, {{"num_layers", 1}, {"dim", 8}}, nullptr});
  add_model_config(ModelConfigEntry{h, "tiny_second", kControlNet, std::nullopt, {{"num_layers", 1}, {"dim", 8}}, nullptr});
  std::ostringstream out;
  ModelPool pool(out);
  pool.auto_load_model({p});
  EXPECT_EQ(pool.model_name, (std::vector<std::string>{"tiny_first", "tiny_second"}));
  EXPECT_NE(pool.model[0], pool.model[1]);
}

// Each test uses its own layout (dims), since registered entries are process-wide.
TEST(ModelPool, FetchModelMessages) {
  TempDir dir;
  const auto a = dir.path("a.safetensors"), b = dir.path("b.safetensors");
  save_safetensors(a, tiny_controlnet(1, 12, 64, torch::kFloat32));
  save_safetensors(b, tiny_controlnet(1, 12, 64, torch::kFloat32));
  register_tiny(a, "tiny_fetch", {{"num_layers", 1}, {"dim", 12}});
  std::ostringstream out;
  ModelPool pool(out);
  pool.auto_load_model({a});
  out.str("");
  EXPECT_EQ(pool.fetch_model("nothing"), nullptr);
  EXPECT_EQ(out.str(), "No nothing models available. This is not an error.\n");
  out.str("");
  EXPECT_EQ(pool.fetch_model("tiny_fetch"), pool.model[0]);
  EXPECT_EQ(out.str(), "Using tiny_fetch from \"" + a + "\".\n");
  pool.auto_load_model({b});
  out.str("");
  EXPECT_EQ(pool.fetch_model("tiny_fetch"), pool.model[0]);
  EXPECT_EQ(out.str(), "More than one tiny_fetch models are loaded: ['" + a + "', '" + b + "']. Using tiny_fetch from \"" +
                           a + "\".\n");
  out.str("");
  auto all = pool.fetch_model("tiny_fetch", FetchAll{});
  EXPECT_EQ(all.size(), 2u);
  EXPECT_EQ(out.str(), "More than one tiny_fetch models are loaded: ['" + a + "', '" + b +
                           "']. Using tiny_fetch from [\n    \"" + a + "\",\n    \"" + b + "\"\n].\n");
  EXPECT_EQ(pool.fetch_model("tiny_fetch", std::int64_t{1}).size(), 1u);
}

TEST(ModelPool, UnknownModelNamesTheClosestKnownOne) {
  TempDir dir;
  const auto p = dir.path("almost.safetensors");
  // The real ControlNet layout with one block missing and img_in widened: a sparse header-only
  // file is enough, identification never reads data.
  auto entry = find_model_configs("073bce9cf969e317e5662cd570c3e79c")[0];
  auto m = (*Registry::model(entry->model_class))(entry->extra_kwargs);
  // Build the header by hand: tensors of that size are too big to write for a unit test.
  nlohmann::ordered_json header;
  std::uint64_t off = 0;
  for (const auto& [k, v] : module_state(*m)) {
    if (k.rfind("controlnet_blocks.59.", 0) == 0) continue;
    std::vector<std::int64_t> shape = k == "img_in.weight" ? std::vector<std::int64_t>{3072, 70} : v.sizes().vec();
    std::uint64_t n = 2;
    for (auto d : shape) n *= d;
    header[k] = {{"dtype", "BF16"}, {"shape", shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  std::string json = header.dump();
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((json.size() >> (8 * i)) & 0xFF);
  write_bytes(p, len + json);
  std::filesystem::resize_file(p, 8 + json.size() + off);  // sparse: a hole, no data written
  std::ostringstream out;
  ModelPool pool(out);
  try {
    pool.auto_load_model({p});
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("Cannot detect the model type. File: " + p + ". Model hash: " + hash_model_file({p}), 0), 0u)
        << msg;
    EXPECT_NE(msg.find("Closest known model: qwen_image_blockwise_controlnet"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing 6: controlnet_blocks.59."), std::string::npos) << msg;
    EXPECT_NE(msg.find("img_in.weight (file [3072, 70], model [3072, 64])"), std::string::npos) << msg;
  }
}

TEST(ModelPool, RecognisedButNotImplementedSaysSo) {
  // The Qwen-Image DiT hash is in the table; until its class is implemented, loading says so.
  TempDir dir;
  const auto p = dir.path("x.safetensors");
  save_safetensors(p, {{"a", torch::zeros({1})}});
  add_model_config(ModelConfigEntry{hash_model_file({p}), "some_future_model",
                                    "diffsynth.models.future.FutureModel", std::nullopt, nullptr, nullptr});
  std::ostringstream out;
  ModelPool pool(out);
  try {
    pool.auto_load_model({p});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not implement yet"), std::string::npos) << e.what();
  }
}
