#include "core/vram/layers.h"

#include <atomic>
#include <unordered_set>

#include "configs/vram_module_maps.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/loader/mapped_file.h"

namespace diffsynth {

namespace {
std::atomic<std::int64_t> g_resident_bytes{0};

std::int64_t nbytes(const torch::Tensor& t) {
  return t.defined() ? static_cast<std::int64_t>(t.numel()) * static_cast<std::int64_t>(t.element_size()) : 0;
}
bool in_mapping(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.numel() > 0 && MappedFile::is_mapped(t.data_ptr(), nbytes(t));
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

ResolvedVRAMConfig ResolvedVRAMConfig::resolve(const VRAMConfig& c, std::optional<double> vram_limit) {
  ResolvedVRAMConfig r;
  const std::string cd = c.computation_dtype.value_or("bfloat16");
  if (cd == "disk") throw Error("vram_config: computation_dtype cannot be \"disk\"");
  r.computation_dtype = parse_dtype(cd);
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

VRAMWrapper::~VRAMWrapper() { g_resident_bytes -= accounted_; }

std::shared_ptr<VRAMWrapper> VRAMWrapper::wrap(Module& module, const std::string& name,
                                               const ResolvedVRAMConfig& config, bool from_disk,
                                               VRAMWrapperKind kind) {
  auto w = std::make_shared<VRAMWrapper>(module, name, config, kind);
  for (const auto& item : module.named_modules("", /*include_self=*/true)) {
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

VRAMWrapper::Entry& VRAMWrapper::entry(const std::string& name) {
  for (auto& e : entries_)
    if (e.name == name) return e;
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
    // nn.Module.to(dtype) converts floating tensors only.
    const auto dtype = src.is_floating_point() ? p.dtype : src.scalar_type();
    if (!e.on_disk && src.scalar_type() == dtype && src.device() == p.device) continue;
    torch::Tensor t = src.to(p.device, dtype, /*non_blocking=*/false, /*copy=*/true);
    if (e.on_disk && src.is_contiguous() && src.device().is_cpu())
      MappedFile::release_if_mapped(src.data_ptr(), static_cast<std::size_t>(nbytes(src)));
    set_slot(e, std::move(t), false);
  }
}

void VRAMWrapper::offload() {
  if (state_ == 0) return;
  place_all(config_.offload);
  state_ = 0;
}

void VRAMWrapper::onload() {
  if (state_ >= 1) return;
  place_all(config_.onload);
  state_ = 1;
}

void VRAMWrapper::preparing() {
  if (state_ == 2) return;
  place_all(config_.preparing);
  state_ = 2;
}

bool VRAMWrapper::check_free_vram() const {
  // The reference asks the driver (mem_get_info: device-wide used memory). Here: the bytes of
  // weights managed layers hold outside file mappings, which is what is measurable on a CPU.
  const double used_gib = static_cast<double>(vram_resident_bytes()) / (1024.0 * 1024.0 * 1024.0);
  return used_gib < *config_.vram_limit;
}

torch::Tensor VRAMWrapper::compute(const std::string& name) {
  if (state_ == 1 && (!config_.vram_limit || check_free_vram())) preparing();
  Entry& e = entry(name);
  if (e.on_disk) {
    // load_from_disk(computation_dtype, computation_device): a temporary, then the file's pages
    // are dropped from this process.
    const torch::Tensor& v = e.disk_view;
    const auto dtype = v.is_floating_point() ? config_.computation_dtype : v.scalar_type();
    torch::Tensor t = v.to(config_.computation_device, dtype, /*non_blocking=*/false, /*copy=*/true);
    if (v.is_contiguous() && v.device().is_cpu())
      MappedFile::release_if_mapped(v.data_ptr(), static_cast<std::size_t>(nbytes(v)));
    return t;
  }
  const torch::Tensor& s = e.owner->param(e.leaf);
  if (!s.defined()) return s;
  const auto dtype = s.is_floating_point() ? config_.computation_dtype : s.scalar_type();
  if (s.scalar_type() == dtype && s.device() == config_.computation_device) return s;
  // AutoTorchModule.cast_to: empty_like(dtype, device) + copy_ (a plain cast).
  auto r = torch::empty_like(s, torch::TensorOptions().dtype(dtype).device(config_.computation_device));
  r.copy_(s);
  return r;
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
      // AutoWrappedNonRecurseModule is not used by any implemented model's map.
      VRAMWrapper::wrap(*m, name, config, from_disk, hit->target);
      ++n;
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
  return wrap_recursively(model, *module_map, ResolvedVRAMConfig::resolve(vram_config, vram_limit), from_disk, "");
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
