// VRAM management (core/vram/layers.h): a small Qwen-Image DiT with random weights gives the
// resident result under every offload configuration.
#include <gtest/gtest.h>

#include <sstream>

#include "core/loader/safetensors.h"
#include "core/vram/layers.h"
#include "models/model_loader.h"
#include "models/qwen_image_dit.h"
#include "test_util.h"

using namespace diffsynth;

namespace {

const nlohmann::ordered_json kKwargs = {{"dim", 64}, {"num_attention_heads", 2}, {"attention_head_dim", 32},
                                        {"joint_attention_dim", 48}, {"num_layers", 2}};

// Writes the DiT's layout with random bf16 weights (optionally rounded through fp8).
void write_dit(const std::string& path, bool fp8_rounded) {
  QwenImageDiT model(QwenImageDiTConfig::from_kwargs(kKwargs));
  torch::manual_seed(0);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, t] : module_state(*model)) {
    auto v = torch::randn(t.sizes()) / (t.dim() > 1 ? std::sqrt(static_cast<double>(t.size(-1))) : 10.0);
    if (t.dim() == 1 && name.find("norm") != std::string::npos) v = v + 1;
    v = v.to(torch::kBFloat16);
    if (fp8_rounded) v = v.to(c10::kFloat8_e4m3fn).to(torch::kBFloat16);
    tensors.emplace_back(name, v);
  }
  nlohmann::ordered_json cfg = {{"model_name", "qwen_image_dit"},
                                {"model_class", "diffsynth.models.qwen_image_dit.QwenImageDiT"},
                                {"extra_kwargs", kKwargs}};
  save_safetensors(path, tensors, {{kModelConfigMetadataKey, cfg.dump()}});
}

struct VRAMRun {
  torch::Tensor out;
  std::int64_t stored_bytes = 0;  // all parameters, as stored after loading
  std::size_t wrappers = 0;
};

VRAMRun run(const std::string& path, const VRAMConfig& cfg, c10::ScalarType dtype, std::optional<double> limit = {}) {
  std::ostringstream log;
  ModelPool pool(log);
  pool.auto_load_model({path}, cfg, limit);
  auto dit = std::dynamic_pointer_cast<QwenImageDiTImpl>(pool.fetch_model("qwen_image_dit"));
  EXPECT_TRUE(dit);
  VRAMRun r;
  auto [res, mapped] = stored_weight_bytes(*dit);
  r.stored_bytes = res + mapped;
  r.wrappers = vram_wrappers(*dit).size();
  if (vram_management_enabled(*dit)) vram_onload(*dit);
  torch::NoGradGuard ng;
  torch::manual_seed(1);
  QwenImageDiTInputs in;
  in.latents = torch::randn({1, 16, 8, 8}).to(dtype);
  in.prompt_emb = torch::randn({1, 5, 48}).to(dtype);
  in.prompt_emb_mask = torch::ones({1, 5}, torch::kLong);
  in.timestep = torch::full({1}, 500.0, torch::TensorOptions().dtype(dtype));
  r.out = dit->model_fn(in);
  // Twice: a second call goes through the same (possibly promoted) state.
  auto again = dit->model_fn(in);
  EXPECT_TRUE(torch::equal(r.out, again));
  return r;
}

VRAMConfig config(std::optional<std::string> off_dtype, std::optional<std::string> off_dev, const std::string& comp,
                  bool prepare_in_storage = true) {
  VRAMConfig c = VRAMConfig::default_config();
  c.computation_dtype = comp;
  c.offload_dtype = c.onload_dtype = off_dtype;
  c.offload_device = c.onload_device = off_dev;
  if (prepare_in_storage) {
    c.preparing_dtype = off_dtype;
    c.preparing_device = off_dev;
  }
  return c;
}

}  // namespace

TEST(VRAM, EveryOffloadConfigMatchesTheResidentRun) {
  TempDir dir;
  const auto path = dir.path("dit.safetensors"), path8 = dir.path("dit_fp8_rounded.safetensors");
  write_dit(path, false);
  write_dit(path8, true);
  VRAMConfig resident = VRAMConfig::default_config();
  const VRAMRun base = run(path, resident, torch::kBFloat16);
  EXPECT_EQ(base.wrappers, 0u);

  const VRAMRun cpu = run(path, config("bfloat16", "cpu", "bfloat16"), torch::kBFloat16);
  EXPECT_GT(cpu.wrappers, 30u);
  EXPECT_TRUE(torch::equal(cpu.out, base.out));

  const VRAMRun disk = run(path, config("disk", "disk", "bfloat16"), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(disk.out, base.out));

  // Disk with promotion (no limit: every layer reads itself once into the computation dtype).
  const VRAMRun disk_prep = run(path, config("disk", "disk", "bfloat16", false), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(disk_prep.out, base.out));

  // fp8 storage, bf16 computation: exactly the resident run of the fp8-rounded weights.
  const VRAMRun base8 = run(path8, resident, torch::kBFloat16);
  const VRAMRun fp8 = run(path, config("float8_e4m3fn", "cpu", "bfloat16"), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(fp8.out, base8.out));
  EXPECT_FALSE(torch::equal(fp8.out, base.out));
  EXPECT_EQ(fp8.stored_bytes * 2, cpu.stored_bytes);
  // ... also with a vram_limit that lets some layers be promoted to bf16.
  const VRAMRun fp8_lim = run(path, config("float8_e4m3fn", "cpu", "bfloat16", false), torch::kBFloat16, 0.0004);
  EXPECT_TRUE(torch::equal(fp8_lim.out, base8.out));

  // Disk with fp32 computation equals the resident fp32 load.
  VRAMConfig resident32 = VRAMConfig::default_config();
  resident32.computation_dtype = "float32";
  const VRAMRun base32 = run(path, resident32, torch::kFloat32);
  const VRAMRun disk32 = run(path, config("disk", "disk", "float32"), torch::kFloat32);
  EXPECT_TRUE(torch::equal(disk32.out, base32.out));
}

TEST(VRAM, DiskOffloadKeepsWeightsInTheFileAndPromotionHonoursTheLimit) {
  TempDir dir;
  const auto path = dir.path("dit.safetensors");
  write_dit(path, false);
  std::ostringstream log;
  ModelPool pool(log);
  pool.auto_load_model({path}, config("disk", "disk", "bfloat16", false), 0.0);
  auto dit = pool.fetch_model("qwen_image_dit");
  auto [res, mapped] = stored_weight_bytes(*dit);
  EXPECT_EQ(res, 0);
  EXPECT_GT(mapped, 0);
  vram_onload(*dit);
  for (const auto& w : vram_wrappers(*dit)) EXPECT_EQ(w->state(), 1);
  // A limit of 0 GiB: nothing is promoted, every call reads from the file.
  auto img = torch::randn({1, 7, 64}).to(torch::kBFloat16);
  auto m = std::dynamic_pointer_cast<QwenImageDiTImpl>(dit);
  (void)m->img_in(img);
  EXPECT_EQ(m->img_in->vram_wrapper()->state(), 1);
  EXPECT_EQ(stored_weight_bytes(*dit).first, 0);
  vram_offload(*dit);
  for (const auto& w : vram_wrappers(*dit)) EXPECT_EQ(w->state(), 0);
}

namespace {
std::int64_t total(const Module& m, std::int64_t (VRAMWrapper::*counter)() const) {
  std::int64_t n = 0;
  for (const auto& w : vram_wrappers(m)) n += ((*w).*counter)();
  return n;
}
}  // namespace

TEST(VRAM, DiskPrefetchLearnsTheCallOrderAndChangesNothing) {
  TempDir dir;
  const auto path = dir.path("dit.safetensors");
  write_dit(path, false);
  const VRAMRun base = run(path, VRAMConfig::default_config(), torch::kBFloat16);

  for (int depth : {0, 1, 3}) {
    set_vram_prefetch_layers(depth);
    std::ostringstream log;
    ModelPool pool(log);
    pool.auto_load_model({path}, config("disk", "disk", "bfloat16"), std::nullopt);
    auto dit = std::dynamic_pointer_cast<QwenImageDiTImpl>(pool.fetch_model("qwen_image_dit"));
    vram_onload(*dit);
    torch::NoGradGuard ng;
    torch::manual_seed(1);
    QwenImageDiTInputs in;
    in.latents = torch::randn({1, 16, 8, 8}).to(torch::kBFloat16);
    in.prompt_emb = torch::randn({1, 5, 48}).to(torch::kBFloat16);
    in.prompt_emb_mask = torch::ones({1, 5}, torch::kLong);
    in.timestep = torch::full({1}, 500.0, torch::TensorOptions().dtype(torch::kBFloat16));
    // The first call learns the order (predicting module order until then); later calls read
    // the next layers ahead.
    EXPECT_TRUE(torch::equal(dit->model_fn(in), base.out)) << "depth " << depth;
    const auto started1 = total(*dit, &VRAMWrapper::prefetch_started);
    const auto used1 = total(*dit, &VRAMWrapper::prefetch_used);
    for (int i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(dit->model_fn(in), base.out)) << "depth " << depth;
    const auto started = total(*dit, &VRAMWrapper::prefetch_started) - started1;
    const auto used = total(*dit, &VRAMWrapper::prefetch_used) - used1;
    if (depth == 0) {
      EXPECT_EQ(started1 + started, 0);
    } else {
      // Nearly every weight of the second and third call came from a prefetch (the first layer
      // of a call follows the last layer of the one before) ...
      const auto params = static_cast<std::int64_t>(dit->parameters().size());
      EXPECT_GE(used, 2 * (params - 2)) << "depth " << depth;
      // ... and, once the order is known, almost nothing is read for nothing.
      EXPECT_LE(started - used, 2 * depth + 2) << "depth " << depth;
    }
    EXPECT_EQ(stored_weight_bytes(*dit).first, 0);  // prefetched copies are temporaries, not stored
    vram_offload(*dit);
  }
  // Unset: off on the CPU (it measured slower there), 2 on CUDA.
  set_vram_prefetch_layers(std::nullopt);
  EXPECT_EQ(vram_prefetch_layers(torch::kCPU), 0);
  EXPECT_EQ(vram_prefetch_layers(torch::Device(torch::kCUDA, 0)), 2);
}
