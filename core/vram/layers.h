// VRAM management (reference: diffsynth/core/vram/layers.py): AutoWrappedModule /
// AutoWrappedLinear as one wrapper object attached to the wrapped layer.
//
// A wrapper governs every parameter of the wrapped module's subtree. It keeps the reference's
// four states: offload (0), onload (1), preparing (2), and the transient computation copy.
// Layers read their weights through Module::compute_param(), which runs the reference's
// forward preamble (state 1 -> preparing while below vram_limit) and computation():
//   * stored tensor already in the computation dtype/device -> used as is;
//   * stored on "disk" (the slot holds the zero-copy view of the file mapping, never read)
//     -> a temporary copy read straight into the computation dtype/device, after which the
//     page-aligned range of the mapping it covered is dropped (madvise(MADV_DONTNEED)), so the
//     process never keeps the file's pages;
//   * otherwise -> a temporary cast/move (fp8 -> bf16 is a plain cast, as the reference's
//     empty_like + copy_).
// The temporary is a local of the layer's forward and is freed when it returns.
// Beyond the reference: computation() looks at where the weight actually is rather than
// assuming the onload pair, so a model still in the offload state computes correctly too.
//
// Beyond the reference: prefetch. Wrappers learn the order in which they are called (each
// remembers which wrapper was called after it; module order until the first call). When one is called, the copies of the next
// `vram_prefetch_layers()` wrappers are started ahead of their calls:
//   * CUDA computation, weights on the CPU or on disk: weights kept in CPU memory are pinned
//     (file reads go through a pinned staging buffer), copied to the GPU in their stored dtype
//     on a side stream and cast there, so the copy overlaps the current layer's kernels; the
//     layer's call makes the compute stream wait for that copy only;
//   * CPU computation, weights on disk (only when asked for: it measured slower on a 2-core
//     machine): a worker thread reads the next layers from the file mapping into the
//     computation dtype while this one computes.
// A prefetched copy is exactly what the call would have made; it is dropped when the wrapper
// changes state (offload / onload / preparing).
#pragma once
#include <c10/core/Event.h>
#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "configs/vram_module_maps.h"
#include "core/module.h"
#include "core/vram/config.h"

namespace diffsynth {

// One state's placement: a dtype and device, or "disk" (left in the file mapping).
struct VRAMPlace {
  bool disk = false;
  c10::ScalarType dtype = c10::kBFloat16;
  torch::Device device = torch::kCPU;
  bool operator==(const VRAMPlace& o) const {
    return disk == o.disk && (disk || (dtype == o.dtype && device == o.device));
  }
  std::string str() const;
};

// A VRAMConfig with the reference's defaults filled in (set_dtype_and_device): an unset dtype is
// the computation dtype; an unset device is "disk" when its dtype is "disk", else the
// computation device.
struct ResolvedVRAMConfig {
  VRAMPlace offload, onload, preparing;
  c10::ScalarType computation_dtype = c10::kBFloat16;
  torch::Device computation_device = torch::kCPU;
  std::optional<double> vram_limit;  // GiB
  bool disk_offload = false;         // offload_dtype == "disk" (the reference's disk_offload flag)
  static ResolvedVRAMConfig resolve(const VRAMConfig& c, std::optional<double> vram_limit);
};

// Bytes of weights held by managed layers outside file mappings, per device type. On devices
// without a driver query this process's accounting is what vram_limit is compared with.
std::int64_t vram_resident_bytes();

// How many wrappers ahead are prefetched for a computation device (0: off). Unset: 2 on CUDA,
// 0 on the CPU. Set by --prefetch.
int vram_prefetch_layers(const torch::Device& computation_device);
void set_vram_prefetch_layers(std::optional<int> n);

// Device-wide (free, total) bytes from the CUDA runtime (torch.cuda.mem_get_info), or nothing
// on devices without such a query or in a build without CUDA.
std::optional<std::pair<std::int64_t, std::int64_t>> device_mem_info(const torch::Device& device);

class VRAMWrapper : public std::enable_shared_from_this<VRAMWrapper> {
 public:
  VRAMWrapper(Module& module, std::string name, ResolvedVRAMConfig config,
              VRAMWrapperKind kind = VRAMWrapperKind::AutoWrappedModule);
  ~VRAMWrapper();
  VRAMWrapper(const VRAMWrapper&) = delete;
  VRAMWrapper& operator=(const VRAMWrapper&) = delete;

  // Attaches to the module and every module below it. Tensors in the slots are taken as the
  // stored (offload-state) weights; `from_disk` says they are zero-copy views of the file.
  static std::shared_ptr<VRAMWrapper> wrap(Module& module, const std::string& name, const ResolvedVRAMConfig& config,
                                           bool from_disk, VRAMWrapperKind kind = VRAMWrapperKind::AutoWrappedModule);

  void offload();    // any -> offload
  void onload();     // offload -> onload
  void preparing();  // onload -> preparing
  int state() const { return state_; }
  const std::string& name() const { return name_; }
  const ResolvedVRAMConfig& config() const { return config_; }
  // The computation tensor of parameter `name` (dotted, relative to the wrapped module).
  torch::Tensor compute(const std::string& name);
  // Bytes of the stored tensors: (outside file mappings, inside them).
  std::pair<std::int64_t, std::int64_t> stored_bytes() const;
  bool check_free_vram() const;
  // Replaces the stored tensor of parameter `name` (fusing a LoRA): it is kept as given, in
  // memory, and no longer reloaded from the file mapping.
  void store(const std::string& name, torch::Tensor t);

  // LoRA hot-load (the reference's LoRAHotLoadMixin): only AutoWrappedLinear wrappers take
  // LoRA pairs; the base weights are never touched.
  VRAMWrapperKind kind() const { return kind_; }
  bool hotloads_lora() const { return kind_ == VRAMWrapperKind::AutoWrappedLinear; }
  // Appends one pair: `scaled_down` is lora_A * alpha [rank, in], `up` is lora_B [out, rank].
  void add_lora(torch::Tensor scaled_down, torch::Tensor up);
  std::size_t lora_count() const { return lora_.size(); }
  // Drops every pair; returns how many there were.
  std::size_t clear_lora();
  // out + sum over pairs of (x @ A^T) @ B^T, the pairs cast to x's dtype and device.
  torch::Tensor lora_forward(const torch::Tensor& x, torch::Tensor out) const;

  // Prefetch bookkeeping, for tests and benchmarks: copies started ahead and used.
  std::int64_t prefetch_started() const { return prefetch_started_; }
  std::int64_t prefetch_used() const { return prefetch_used_; }
  // The wrapper expected to be called after this one (learned from calls; seeded in module order).
  void set_next(const std::shared_ptr<VRAMWrapper>& next) { next_ = next; }

 private:
  struct Entry {
    Module* owner;
    std::string leaf, name;
    torch::Tensor disk_view;  // the file mapping view (disk offload), kept to reload from
    bool on_disk = false;     // the slot holds disk_view
  };
  // A copy started ahead of the call: ready when `job` (CPU) or `ready` (CUDA) is.
  struct Pending {
    std::size_t entry;
    torch::Tensor value;
    std::shared_future<torch::Tensor> job;
    std::shared_ptr<c10::Event> ready;
    torch::Tensor keep;  // device memory the side stream still uses (CUDA: the stored-dtype copy)
  };
  std::size_t entry_index(const std::string& name) const;
  Entry& entry(const std::string& name) { return entries_[entry_index(name)]; }
  // Whether computing with entry `e` copies, and whether that copy can be started ahead.
  bool copies(const Entry& e) const;
  bool prefetchable(const Entry& e) const;
  bool promotes_on_call() const;                       // state 1 and below vram_limit
  Pending start_device_copy(std::size_t index) const;  // CUDA: pinned host -> side stream
  bool pins_host_weights() const;
  torch::Tensor computation_copy(const Entry& e) const;  // the synchronous copy
  void called();                                         // order learning, prefetch of what follows
  void prefetch();
  std::optional<torch::Tensor> take_pending(std::size_t index);
  void drop_pending();
  void place_all(const VRAMPlace& p);
  void set_slot(Entry& e, torch::Tensor t, bool on_disk);

  Module* module_;
  std::string name_;
  ResolvedVRAMConfig config_;
  VRAMWrapperKind kind_;
  int state_ = 0;
  std::vector<Entry> entries_;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> lora_;  // (lora_A * alpha, lora_B)
  std::weak_ptr<VRAMWrapper> next_;                             // called after this one last time
  std::vector<Pending> pending_;
  std::int64_t prefetch_started_ = 0, prefetch_used_ = 0;
  std::int64_t accounted_ = 0;  // bytes this wrapper adds to vram_resident_bytes()
};

// enable_vram_management: wraps each child matching the module map (first entry that any of the
// child's reference classes matches, depth-first), recursing into children that match none.
// With no map (nullptr), the whole model is wrapped as one unit after the reference's
// fill_vram_config (onload = preparing = computation, with its message on `out` when that
// changes the config). `from_disk`: the slots hold zero-copy views of the file. Returns the
// number of wrappers.
std::size_t enable_vram_management(Module& model, const std::string& class_name,
                                   const std::vector<VRAMModuleMapEntry>* module_map, const VRAMConfig& vram_config,
                                   std::optional<double> vram_limit, bool from_disk, std::ostream& out);

// Every wrapper of a model (in module order), and the pipeline's load_models_to_device steps.
std::vector<std::shared_ptr<VRAMWrapper>> vram_wrappers(const Module& model);
bool vram_management_enabled(const Module& model);
void vram_offload(Module& model);
void vram_onload(Module& model);

// Bytes of every parameter of the model as stored now: (outside file mappings, inside them).
std::pair<std::int64_t, std::int64_t> stored_weight_bytes(const Module& model);

}  // namespace diffsynth
