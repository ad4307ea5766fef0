#include "core/module.h"

#include "core/error.h"
#include "core/vram/layers.h"

namespace diffsynth {

void Module::assign_tensor(const std::string& name, torch::Tensor value) {
  if (auto* p = parameters_.find(name)) {
    value.set_requires_grad(false);
    *p = std::move(value);
    return;
  }
  throw Error("internal: module has no parameter '" + name + "'");
}

torch::Tensor& Module::meta_parameter(const std::string& name, std::vector<std::int64_t> shape,
                                      c10::ScalarType dtype) {
  return register_parameter(name, torch::empty(shape, torch::TensorOptions().dtype(dtype).device(torch::kMeta)),
                            /*requires_grad=*/false);
}

const torch::Tensor& Module::param(const std::string& name) const {
  const auto* p = parameters_.find(name);
  if (!p) throw Error("internal: module has no parameter '" + name + "'");
  return *p;
}

torch::Tensor Module::compute_param(const std::string& name) const {
  if (!vram_) return param(name);
  return vram_->compute(vram_prefix_.empty() ? name : vram_prefix_ + "." + name);
}

std::vector<std::pair<std::string, torch::Tensor>> module_state(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : m.named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  for (const auto& item : m.named_buffers(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace diffsynth
