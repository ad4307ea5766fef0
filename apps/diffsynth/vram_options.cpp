#include "apps/diffsynth/vram_options.h"

#include "apps/diffsynth/option_checks.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/vram/layers.h"

namespace diffsynth::cli {

void VRAMArgs::add(CLI::App& app) {
  app.add_option("--offload", offload,
                 "Enable VRAM management: keep weights on 'cpu' (in --offload-dtype) or on 'disk' (left in the file "
                 "mapping, read per layer and call); 'none' = off");
  app.add_option("--offload-dtype", offload_dtype, "Storage dtype for --offload cpu (fp8 = float8_e4m3fn, bf16, fp32)");
  app.add_option("--vram-limit", vram_limit,
                 "GiB of weights managed layers may keep resident in the computation dtype/device (greedy, first "
                 "called first); without it the --offload shorthand keeps every layer offloaded")
      ->check(finite_in(0, 1 << 20));
  app.add_option("--vram-config", vram_config,
                 "The reference's vram_config as JSON text or a .json file (offload_dtype, offload_device, onload_*, "
                 "preparing_*, computation_*); overrides the shorthand options");
  app.add_option("--prefetch", prefetch,
                 "Managed layers copied ahead of their call (CUDA: pinned staging + side stream; CPU: file reads "
                 "for --offload disk on a worker thread); 0 = off; default 2 on CUDA, off on the CPU")
      ->check(CLI::Range(0, 1000));
}

VRAMConfig VRAMArgs::config(const std::string& dtype, const std::string& device) const {
  VRAMConfig c = VRAMConfig::default_config();
  c.computation_dtype = dtype_name(parse_computation_dtype(dtype)).substr(6);
  c.computation_device = parse_device(device).str();
  // --vram-limit and --prefetch are bounded by their validators (add()).
  set_vram_prefetch_layers(prefetch);
  if (!offload.empty() && offload != "cpu" && offload != "disk" && offload != "none")
    throw Error("--offload must be cpu, disk or none, got '" + offload + "'");
  if (!offload_dtype.empty() && offload != "cpu")
    throw Error("--offload-dtype applies to --offload cpu (disk offload reads the file's own dtype)");
  if (offload == "cpu" || offload == "disk") {
    const std::string dt = offload == "disk" ? "disk" : dtype_name(parse_dtype(offload_dtype.empty() ? dtype : offload_dtype)).substr(6);
    c.offload_dtype = c.onload_dtype = dt;
    c.offload_device = c.onload_device = offload;
    // Without a limit every layer stays in the storage state and computes from temporaries;
    // with one, layers are promoted to the computation dtype/device while below it.
    if (!vram_limit) {
      c.preparing_dtype = dt;
      c.preparing_device = offload;
    }
  }
  if (!vram_config.empty()) {
    std::string text = vram_config;
    if (text.find('{') == std::string::npos) {
      // Not JSON text: a file (a folder, FIFO or missing path says so).
      try {
        text = read_regular_file(vram_config, 1 << 20);
      } catch (const Error& e) {
        throw Error(std::string("--vram-config ") + e.what() + " (give the JSON text or a .json file)");
      }
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      throw Error(std::string("--vram-config: not valid JSON: ") + e.what());
    }
    VRAMConfig::from_json(j);  // validates the fields
    nlohmann::json merged = c.to_json();
    for (auto it = j.begin(); it != j.end(); ++it) merged[it.key()] = *it;
    c = VRAMConfig::from_json(merged);
  }
  if (vram_limit && !c.management_enabled()) throw Error("--vram-limit needs --offload or a --vram-config with offload set");
  // Validate every field now (one clear error instead of one at the first layer).
  ResolvedVRAMConfig::resolve(c, vram_limit);
  return c;
}

std::string resident_summary(const std::vector<std::shared_ptr<Module>>& models) {
  std::int64_t res = 0, mapped = 0;
  for (const auto& m : models) {
    auto [r, mp] = stored_weight_bytes(*m);
    res += r;
    mapped += mp;
  }
  return "weights held: " + human_bytes(static_cast<double>(res)) + " in memory, " +
         human_bytes(static_cast<double>(mapped)) + " as file views";
}

}  // namespace diffsynth::cli
