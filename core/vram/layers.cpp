#include "core/vram/layers.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <unordered_set>

#include "configs/vram_module_maps.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/loader/mapped_file.h"

namespace diffsynth {

namespace {
std::atomic<std::int64_t> g_resident_bytes{0};
std::atomic<int> g_prefetch_layers{-1};  // -1: the device's default
// The wrapper whose weights were asked for last on this thread (order learning).
thread_local std::weak_ptr<VRAMWrapper> t_last_called;
// Wrappers holding prefetched copies, oldest first: at most depth + 1 at a time, so a wrong
// prediction (module order before the first call) cannot pile up copies.
thread_local std::deque<std::weak_ptr<VRAMWrapper>> t_prefetched;

std::int64_t nbytes(const torch::Tensor& t) {
  return t.defined() ? static_cast<std::int64_t>(t.numel()) * static_cast<std::int64_t>(t.element_size()) : 0;
}
bool in_mapping(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.numel() > 0 && MappedFile::is_mapped(t.data_ptr(), nbytes(t));
}

// nn.Module.to(dtype) converts floating tensors only.
c10::ScalarType cast_dtype(const torch::Tensor& t, c10::ScalarType floating) {
  return t.is_floating_point() ? floating : t.scalar_type();
}

// Drops this process's pages of a file-mapping view (no-op for other memory).
void release_file_pages(const torch::Tensor& view) {
  if (view.is_contiguous() && view.device().is_cpu())
    MappedFile::release_if_mapped(view.data_ptr(), static_cast<std::size_t>(nbytes(view)));
}

// Views larger than this are read into CPU memory in slices of it, each slice's pages dropped
// once it is copied: the peak is the copy plus one slice rather than the copy plus the whole
// mapped view (the Wan2.1-14B DiT's F32 time_projection, 629 MB, read as bf16: 944 MB -> 346 MB).
constexpr std::int64_t kFileReadSliceBytes = std::int64_t{32} << 20;

// load_from_disk: a copy of a file-mapping view in `dtype` on `device`, then the view's pages go.
torch::Tensor read_from_file(const torch::Tensor& view, const torch::Device& device, c10::ScalarType dtype) {
  if (device.is_cpu() && view.is_contiguous() && nbytes(view) > 2 * kFileReadSliceBytes && in_mapping(view)) {
    // The same element-wise conversion as Tensor::to, slice by slice.
    torch::Tensor t = torch::empty(view.sizes(), view.options().dtype(dtype));
    const auto src = view.reshape({-1});
    auto dst = t.view({-1});
    const std::int64_t step = kFileReadSliceBytes / static_cast<std::int64_t>(view.element_size());
    for (std::int64_t i = 0; i < src.numel(); i += step) {
      const std::int64_t n = std::min(step, src.numel() - i);
      const auto slice = src.narrow(0, i, n);
      dst.narrow(0, i, n).copy_(slice);
      release_file_pages(slice);
    }
    release_file_pages(view);  // the pages the slices shared at their edges
    return t;
  }
  torch::Tensor t = view.to(device, dtype, /*non_blocking=*/false, /*copy=*/true);
  release_file_pages(view);
  return t;
}

// The current (compute) stream of a CUDA device, and the one side stream per device that
// prefetch copies run on.
c10::Stream compute_stream(const torch::Device& device) {
  return c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStream(device);
}
c10::Stream side_stream(const torch::Device& device) {
  static std::mutex mutex;
  static std::unordered_map<c10::DeviceIndex, c10::Stream> streams;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = streams.find(device.index());
  if (it == streams.end())
    it = streams.emplace(device.index(), c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStreamFromGlobalPool(device))
             .first;
  return it->second;
}

VRAMPlace place(const std::optional<std::string>& dtype, const std::optional<std::string>& device,
                c10::ScalarType comp_dtype, const torch::Device& comp_device) {
  VRAMPlace p;
  const std::string dt = dtype.value_or("");
  // set_dtype_and_device: dtype defaults to the computation dtype; device to "disk" if the dtype
  // is "disk", else the computation device.
  const std::string dev = device ? *device : (dt == "disk" ? "disk" : "");
  p.disk = dt == "disk" || dev == "disk";
  p.dtype = dt.empty() || dt == "disk" ? comp_dtype : parse_dtype(dt);
  p.device = dev.empty() || dev == "disk" ? comp_device : parse_device(dev);
  return p;
}
}  // namespace

std::string VRAMPlace::str() const { return disk ? "disk" : dtype_name(dtype) + " on " + device.str(); }

std::int64_t vram_resident_bytes() { return g_resident_bytes.load(); }

int vram_prefetch_layers(const torch::Device& computation_device) {
  const int n = g_prefetch_layers.load();
  // On the CPU, reading ahead on a worker thread measured slower than reading in line
  // (BENCHMARKS.md, disk-offload prefetch): off unless asked for.
  if (n < 0) return computation_device.is_cuda() ? 2 : 0;
  return n;
}
void set_vram_prefetch_layers(std::optional<int> n) {
  if (n && *n < 0) throw Error("prefetch: the number of layers must be >= 0");
  g_prefetch_layers = n ? *n : -1;
}

std::optional<std::pair<std::int64_t, std::int64_t>> device_mem_info(const torch::Device& device) {
  if (!device.is_cuda()) return std::nullopt;
  // The CUDA runtime is in the process when libtorch_cuda is; looked up at run time so the
  // CPU-only link needs no CUDA headers or libraries.
  using MemGetInfo = int (*)(std::size_t*, std::size_t*);
  static const MemGetInfo mem_get_info = reinterpret_cast<MemGetInfo>(dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
  if (!mem_get_info) return std::nullopt;
  c10::DeviceGuard guard(device);
  std::size_t free = 0, total = 0;
  if (mem_get_info(&free, &total) != 0) return std::nullopt;
  return std::make_pair(static_cast<std::int64_t>(free), static_cast<std::int64_t>(total));
}

ResolvedVRAMConfig ResolvedVRAMConfig::resolve(const VRAMConfig& c, std::optional<double> vram_limit) {
  ResolvedVRAMConfig r;
  const std::string cd = c.computation_dtype.value_or("bfloat16");
  if (cd == "disk") throw Error("vram_config: computation_dtype cannot be \"disk\"");
  r.computation_dtype = parse_computation_dtype(cd);
  const std::string cdev = c.computation_device.value_or("cpu");
  if (cdev == "disk") throw Error("vram_config: computation_device cannot be \"disk\"");
  r.computation_device = parse_device(cdev);
  r.offload = place(c.offload_dtype, c.offload_device, r.computation_dtype, r.computation_device);
  r.onload = place(c.onload_dtype, c.onload_device, r.computation_dtype, r.computation_device);
  r.preparing = place(c.preparing_dtype, c.preparing_device, r.computation_dtype, r.computation_device);
  r.disk_offload = c.offload_dtype.value_or("") == "disk" || c.offload_device.value_or("") == "disk";
  // The reference's flag is offload_dtype == "disk"; a disk device with a real dtype means the
  // same here (there is nowhere else to keep the weights).
  r.offload.disk = r.offload.disk || r.disk_offload;
  if (vram_limit && !(*vram_limit >= 0)) throw Error("vram_limit must be a number of GiB >= 0");
  r.vram_limit = vram_limit;
  return r;
}

VRAMWrapper::VRAMWrapper(Module& module, std::string name, ResolvedVRAMConfig config, VRAMWrapperKind kind)
    : module_(&module), name_(std::move(name)), config_(std::move(config)), kind_(kind) {}

VRAMWrapper::~VRAMWrapper() {
  g_resident_bytes -= accounted_;
  try {
    drop_pending();
  } catch (...) {
    // At process exit the CUDA runtime may already be gone; nothing is left to order then.
  }
}

std::shared_ptr<VRAMWrapper> VRAMWrapper::wrap(Module& module, const std::string& name,
                                               const ResolvedVRAMConfig& config, bool from_disk,
                                               VRAMWrapperKind kind) {
  auto w = std::make_shared<VRAMWrapper>(module, name, config, kind);
  // AutoWrappedNonRecurseModule manages only the module's own parameters; its children are
  // wrapped (or not) by the recursion that follows.
  const bool recurse = kind != VRAMWrapperKind::AutoWrappedNonRecurseModule;
  for (const auto& item : module.named_modules("", /*include_self=*/true)) {
    if (!recurse && !item.key().empty()) break;
    auto* m = dynamic_cast<Module*>(item.value().get());
    if (!m) continue;
    m->set_vram_wrapper(w, item.key());
    for (const auto& p : m->named_parameters(/*recurse=*/false)) {
      Entry e{m, p.key(), item.key().empty() ? p.key() : item.key() + "." + p.key(), torch::Tensor(), false};
      if (from_disk && p.value().defined()) {
        e.disk_view = p.value();
        e.on_disk = true;
      }
      w->entries_.push_back(std::move(e));
    }
  }
  // Account for whatever the slots hold now (offload state).
  for (auto& e : w->entries_) {
    const auto& t = e.owner->param(e.leaf);
    if (!e.on_disk && !in_mapping(t)) w->accounted_ += nbytes(t);
  }
  g_resident_bytes += w->accounted_;
  return w;
}

std::size_t VRAMWrapper::entry_index(const std::string& name) const {
  for (std::size_t i = 0; i < entries_.size(); ++i)
    if (entries_[i].name == name) return i;
  throw Error("internal: VRAM wrapper '" + name_ + "' has no parameter '" + name + "'");
}

void VRAMWrapper::set_slot(Entry& e, torch::Tensor t, bool on_disk) {
  const auto& old = e.owner->param(e.leaf);
  if (!e.on_disk && !in_mapping(old)) accounted_ -= nbytes(old), g_resident_bytes -= nbytes(old);
  if (!on_disk && !in_mapping(t)) accounted_ += nbytes(t), g_resident_bytes += nbytes(t);
  e.owner->assign_tensor(e.leaf, std::move(t));
  e.on_disk = on_disk;
}

void VRAMWrapper::place_all(const VRAMPlace& p) {
  for (auto& e : entries_) {
    if (p.disk) {
      // Back to the file: the reference moves the layer to meta; the view costs nothing.
      if (e.disk_view.defined()) set_slot(e, e.disk_view, true);
      continue;
    }
    torch::Tensor src = e.on_disk ? e.disk_view : e.owner->param(e.leaf);
    if (!src.defined()) continue;
    const auto dtype = cast_dtype(src, p.dtype);
    // Weights kept in CPU memory for a CUDA computation are pinned when prefetch is on, so the
    // side stream copies them straight to the GPU (no staging, full DMA speed).
    const bool pin = p.device.is_cpu() && pins_host_weights();
    if (!e.on_disk && src.scalar_type() == dtype && src.device() == p.device && (!pin || src.is_pinned())) continue;
    torch::Tensor t;
    if (pin) {
      t = torch::empty(src.sizes(), torch::TensorOptions().dtype(dtype).pinned_memory(true));
      t.copy_(src);
    } else {
      t = src.to(p.device, dtype, /*non_blocking=*/false, /*copy=*/true);
    }
    if (e.on_disk) release_file_pages(src);
    set_slot(e, std::move(t), false);
  }
}

void VRAMWrapper::offload() {
  drop_pending();
  if (state_ == 0) return;
  place_all(config_.offload);
  state_ = 0;
}

void VRAMWrapper::onload() {
  drop_pending();
  if (state_ >= 1) return;
  place_all(config_.onload);
  state_ = 1;
}

void VRAMWrapper::preparing() {
  drop_pending();
  if (state_ == 2) return;
  place_all(config_.preparing);
  state_ = 2;
}

bool VRAMWrapper::check_free_vram() const {
  // The reference: device-wide used memory from the driver (mem_get_info). Devices without such
  // a query (the CPU): the bytes of weights managed layers hold outside file mappings.
  double used = static_cast<double>(vram_resident_bytes());
  if (const auto info = device_mem_info(config_.computation_device))
    used = static_cast<double>(info->second - info->first);
  return used / (1024.0 * 1024.0 * 1024.0) < *config_.vram_limit;
}

bool VRAMWrapper::pins_host_weights() const {
  return config_.computation_device.is_cuda() && vram_prefetch_layers(config_.computation_device) > 0;
}

bool VRAMWrapper::copies(const Entry& e) const {
  if (e.on_disk) return true;
  const auto& s = e.owner->param(e.leaf);
  if (!s.defined()) return false;
  return s.scalar_type() != cast_dtype(s, config_.computation_dtype) || s.device() != config_.computation_device;
}

bool VRAMWrapper::prefetchable(const Entry& e) const {
  if (!copies(e)) return false;
  if (config_.computation_device.is_cuda()) return e.on_disk || e.owner->param(e.leaf).device().is_cpu();
  return e.on_disk;  // CPU computation: only file reads are worth a worker thread
}

torch::Tensor VRAMWrapper::computation_copy(const Entry& e) const {
  // Disk: a temporary read straight from the file, whose pages are then dropped.
  if (e.on_disk)
    return read_from_file(e.disk_view, config_.computation_device, cast_dtype(e.disk_view, config_.computation_dtype));
  const torch::Tensor& s = e.owner->param(e.leaf);
  // AutoTorchModule.cast_to: empty_like(dtype, device) + copy_ (a plain cast).
  auto r = torch::empty_like(
      s, torch::TensorOptions().dtype(cast_dtype(s, config_.computation_dtype)).device(config_.computation_device));
  r.copy_(s);
  return r;
}

bool VRAMWrapper::promotes_on_call() const {
  // The reference's forward preamble: onload -> preparing while below vram_limit.
  return state_ == 1 && (!config_.vram_limit || check_free_vram());
}

torch::Tensor VRAMWrapper::compute(const std::string& name) {
  if (promotes_on_call()) preparing();
  const std::size_t index = entry_index(name);
  called();
  Entry& e = entries_[index];
  if (!copies(e)) {
    // Stored as computed with (promoted, or never offloaded): a pending copy is not needed.
    return e.owner->param(e.leaf);
  }
  if (auto t = take_pending(index)) return *t;
  return computation_copy(e);
}

void VRAMWrapper::called() {
  auto last = t_last_called.lock();
  if (last.get() == this) return;  // another parameter of the same call
  auto self = shared_from_this();
  if (last) last->next_ = self;
  t_last_called = self;
  const int depth = vram_prefetch_layers(config_.computation_device);
  VRAMWrapper* w = this;
  for (int i = 0; i < depth; ++i) {
    auto next = w->next_.lock();
    if (!next || next.get() == this) break;
    next->prefetch();
    w = next.get();
  }
}

void VRAMWrapper::prefetch() {
  // A call that promotes the wrapper first then copies nothing: nothing to start for it.
  if (promotes_on_call()) return;
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    if (!prefetchable(e) ||
        std::any_of(pending_.begin(), pending_.end(), [i](const Pending& p) { return p.entry == i; }))
      continue;
    if (config_.computation_device.is_cuda()) {
      pending_.push_back(start_device_copy(i));
    } else {
      Pending p;
      p.entry = i;
      p.job = std::async(std::launch::async, read_from_file, e.disk_view, config_.computation_device,
                         cast_dtype(e.disk_view, config_.computation_dtype))
                  .share();
      pending_.push_back(std::move(p));
    }
    ++prefetch_started_;
  }
  if (pending_.empty()) return;
  auto self = shared_from_this();
  const auto current = t_last_called.lock();  // being called now: its copies are in use
  std::erase_if(t_prefetched, [&](const std::weak_ptr<VRAMWrapper>& w) {
    auto l = w.lock();
    return !l || l == self || l == current || l->pending_.empty();
  });
  while (t_prefetched.size() >= static_cast<std::size_t>(std::max(vram_prefetch_layers(config_.computation_device), 1))) {
    if (auto oldest = t_prefetched.front().lock()) oldest->drop_pending();
    t_prefetched.pop_front();
  }
  t_prefetched.push_back(self);
}

VRAMWrapper::Pending VRAMWrapper::start_device_copy(std::size_t index) const {
  // Host side: the weight itself when it is pinned (onload in CPU memory), else a pinned staging
  // copy in its stored dtype (read from the file for disk offload). Device side: an asynchronous
  // copy on the side stream, then the cast to the computation dtype there too (so fp8 storage
  // crosses the bus at half the bytes). The GPU memory is allocated on the compute stream, which
  // uses and frees it; the side stream first waits for what the compute stream has queued (the
  // memory may have just been freed by it).
  const Entry& e = entries_[index];
  const torch::Tensor& src = e.on_disk ? e.disk_view : e.owner->param(e.leaf);
  const auto dtype = cast_dtype(src, config_.computation_dtype);
  torch::Tensor host = src;
  if (!src.is_pinned()) {
    host = torch::empty(src.sizes(), torch::TensorOptions().dtype(src.scalar_type()).pinned_memory(true));
    host.copy_(src);
    if (e.on_disk) release_file_pages(src);
  }
  const auto on_gpu = torch::TensorOptions().device(config_.computation_device);
  Pending p;
  p.entry = index;
  p.value = torch::empty(src.sizes(), on_gpu.dtype(dtype));
  if (host.scalar_type() != dtype) p.keep = torch::empty(src.sizes(), on_gpu.dtype(host.scalar_type()));
  const c10::Stream side = side_stream(config_.computation_device);
  c10::Event allocated(c10::DeviceType::CUDA);
  allocated.record(compute_stream(config_.computation_device));
  allocated.block(side);
  {
    c10::StreamGuard on_side(side);
    // The host allocator keeps a staging buffer alive until this copy is done.
    if (p.keep.defined()) {
      p.keep.copy_(host, /*non_blocking=*/true);
      p.value.copy_(p.keep);
    } else {
      p.value.copy_(host, /*non_blocking=*/true);
    }
  }
  p.ready = std::make_shared<c10::Event>(c10::DeviceType::CUDA);
  p.ready->record(side);
  return p;
}

void VRAMWrapper::drop_pending() {
  // Device memory written by the side stream returns to the compute stream's pool when freed:
  // the compute stream must not reuse it before those copies are done.
  for (auto& p : pending_)
    if (p.ready) p.ready->block(compute_stream(config_.computation_device));
  pending_.clear();
}

std::optional<torch::Tensor> VRAMWrapper::take_pending(std::size_t index) {
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (it->entry != index) continue;
    Pending p = std::move(*it);
    pending_.erase(it);
    ++prefetch_used_;
    if (p.ready) {
      p.ready->block(compute_stream(config_.computation_device));
      return p.value;  // `keep` is freed now, after the compute stream waited for the side stream
    }
    return p.job.get();
  }
  return std::nullopt;
}

void VRAMWrapper::store(const std::string& name, torch::Tensor t) {
  Entry& e = entry(name);
  e.disk_view = torch::Tensor();
  set_slot(e, std::move(t), false);
}

void VRAMWrapper::add_lora(torch::Tensor scaled_down, torch::Tensor up) {
  if (!hotloads_lora()) throw Error("internal: LoRA hot-load on '" + name_ + "', which is not a wrapped Linear layer");
  lora_.emplace_back(std::move(scaled_down), std::move(up));
}

std::size_t VRAMWrapper::clear_lora() {
  const std::size_t n = lora_.size();
  lora_.clear();
  return n;
}

torch::Tensor VRAMWrapper::lora_forward(const torch::Tensor& x, torch::Tensor out) const {
  for (const auto& [down, up] : lora_) {
    const auto opts = torch::TensorOptions().dtype(x.scalar_type()).device(x.device());
    out = out + torch::matmul(torch::matmul(x, down.t().to(opts)), up.t().to(opts));
  }
  return out;
}

std::pair<std::int64_t, std::int64_t> VRAMWrapper::stored_bytes() const {
  std::int64_t res = 0, mapped = 0;
  for (const auto& e : entries_) {
    const auto& t = e.owner->param(e.leaf);
    if (e.on_disk || in_mapping(t)) mapped += nbytes(t);
    else res += nbytes(t);
  }
  return {res, mapped};
}

namespace {

const VRAMModuleMapEntry* match(const Module& m, const std::vector<VRAMModuleMapEntry>& map) {
  for (const auto& entry : map)
    for (const auto& cls : m.reference_classes())
      if (cls == entry.source) return &entry;
  return nullptr;
}

std::string py_place(const std::optional<std::string>& dtype) {
  if (!dtype) return "None";
  if (*dtype == "disk") return "'disk'";
  return dtype_name(parse_dtype(*dtype));
}
std::string py_device(const std::optional<std::string>& dev) { return dev ? "'" + *dev + "'" : "None"; }

std::size_t wrap_recursively(torch::nn::Module& model, const std::vector<VRAMModuleMapEntry>& map,
                             const ResolvedVRAMConfig& config, bool from_disk, const std::string& prefix) {
  std::size_t n = 0;
  for (const auto& child : model.named_children()) {
    // Containers (ModuleList, plain name scopes) are torch::nn::Modules: recursed into.
    auto* m = dynamic_cast<Module*>(child.value().get());
    const std::string name = prefix.empty() ? child.key() : prefix + "." + child.key();
    const VRAMModuleMapEntry* hit = m ? match(*m, map) : nullptr;
    if (hit) {
      VRAMWrapper::wrap(*m, name, config, from_disk, hit->target);
      ++n;
      if (hit->target == VRAMWrapperKind::AutoWrappedNonRecurseModule)
        n += wrap_recursively(*m, map, config, from_disk, name);
    } else {
      n += wrap_recursively(*child.value(), map, config, from_disk, name);
    }
  }
  return n;
}

}  // namespace

std::size_t enable_vram_management(Module& model, const std::string& class_name,
                                   const std::vector<VRAMModuleMapEntry>* module_map, const VRAMConfig& vram_config,
                                   std::optional<double> vram_limit, bool from_disk, std::ostream& out) {
  if (!module_map) {
    // {ModelClass: AutoWrappedModule}: one unit, after fill_vram_config.
    VRAMConfig filled = vram_config;
    filled.onload_dtype = filled.preparing_dtype = vram_config.computation_dtype;
    filled.onload_device = filled.preparing_device = vram_config.computation_device;
    if (filled.to_json() != vram_config.to_json()) {
      const auto j = filled.to_json();
      std::string repr = "{";
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        const bool is_dtype = it.key().size() > 6 && it.key().substr(it.key().size() - 6) == "_dtype";
        std::optional<std::string> v;
        if (!it->is_null()) v = it->get<std::string>();
        repr += (first ? "'" : ", '") + it.key() + "': " + (is_dtype ? py_place(v) : py_device(v));
        first = false;
      }
      repr += "}";
      out << "No fine-grained VRAM configuration is provided for " << class_name
          << ". [`onload`, `preparing`, `computation`] will be the same state. `vram_config` is set to " << repr
          << std::endl;
    }
    VRAMWrapper::wrap(model, "", ResolvedVRAMConfig::resolve(filled, vram_limit), from_disk);
    return 1;
  }
  const std::size_t n =
      wrap_recursively(model, *module_map, ResolvedVRAMConfig::resolve(vram_config, vram_limit), from_disk, "");
  // Until the first call shows the real order, prefetch follows the module order.
  const auto wrappers = vram_wrappers(model);
  for (std::size_t i = 0; i + 1 < wrappers.size(); ++i) wrappers[i]->set_next(wrappers[i + 1]);
  return n;
}

std::vector<std::shared_ptr<VRAMWrapper>> vram_wrappers(const Module& model) {
  std::vector<std::shared_ptr<VRAMWrapper>> out;
  std::unordered_set<const VRAMWrapper*> seen;
  for (const auto& item : model.named_modules("", true)) {
    auto* m = dynamic_cast<const Module*>(item.value().get());
    if (!m || !m->vram_wrapper()) continue;
    if (seen.insert(m->vram_wrapper().get()).second) out.push_back(m->vram_wrapper());
  }
  return out;
}

bool vram_management_enabled(const Module& model) { return !vram_wrappers(model).empty(); }
void vram_offload(Module& model) {
  for (auto& w : vram_wrappers(model)) w->offload();
}
void vram_onload(Module& model) {
  for (auto& w : vram_wrappers(model)) w->onload();
}

std::pair<std::int64_t, std::int64_t> stored_weight_bytes(const Module& model) {
  std::int64_t res = 0, mapped = 0;
  for (const auto& p : model.parameters()) {
    if (!p.defined()) continue;
    if (in_mapping(p)) mapped += nbytes(p);
    else res += nbytes(p);
  }
  return {res, mapped};
}

}  // namespace diffsynth
