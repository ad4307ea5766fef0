// Base class of every diffsynth.cpp model and layer.
//
// Construction allocates nothing: parameters are created on the meta device with their
// shapes (DiffSynth's skip_model_initialization). Loading then *assigns* real tensors into
// the parameter slots (PyTorch's load_state_dict(assign=True)) -- a meta placeholder cannot be
// filled in place with set_data, so the slot itself is replaced.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace diffsynth {

class VRAMWrapper;  // core/vram/layers.h

class Module : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;

  // Replaces the parameter `name` (a direct member, no dots) by `value`. Persistent state the
  // reference keeps in buffers is registered as (non-trainable) parameters here: libtorch
  // keeps buffer slots private, and the state dict names are the same either way.
  void assign_tensor(const std::string& name, torch::Tensor value);

  // The parameter `name` as a forward computes with it. Without VRAM management: the stored
  // tensor. Under a VRAM wrapper (core/vram/layers.h): the reference's computation() -- the
  // stored tensor when it already has the computation dtype/device, else a temporary copy in
  // them (read from the file mapping for disk offload) that the caller drops after the call.
  torch::Tensor compute_param(const std::string& name) const;

  // The reference classes this layer stands for, most derived first (e.g. {"torch.nn.Linear"}):
  // what the VRAM module maps (configs/vram_module_maps.h) match with isinstance.
  const std::vector<std::string>& reference_classes() const { return reference_classes_; }
  // The wrapper governing this module's parameters (itself or an ancestor), with this module's
  // dotted prefix relative to the wrapped module. Null when not managed.
  const std::shared_ptr<VRAMWrapper>& vram_wrapper() const { return vram_; }
  // This module's dotted prefix inside the wrapped module ("" when it is the wrapped module).
  const std::string& vram_prefix() const { return vram_prefix_; }
  void set_vram_wrapper(std::shared_ptr<VRAMWrapper> w, std::string prefix) {
    vram_ = std::move(w);
    vram_prefix_ = std::move(prefix);
  }

 protected:
  // Registers a parameter of `shape` on meta (no memory). Weights are not trainable here.
  torch::Tensor& meta_parameter(const std::string& name, std::vector<std::int64_t> shape,
                                c10::ScalarType dtype = c10::kFloat);
  // The current tensor in a parameter slot (after loading: the loaded weight).
  const torch::Tensor& param(const std::string& name) const;
  void set_reference_classes(std::vector<std::string> classes) { reference_classes_ = std::move(classes); }

 private:
  friend class VRAMWrapper;
  std::vector<std::string> reference_classes_;
  std::shared_ptr<VRAMWrapper> vram_;
  std::string vram_prefix_;
};

// Dotted names and tensors of every parameter and buffer, as Python's state_dict() lists them.
std::vector<std::pair<std::string, torch::Tensor>> module_state(const torch::nn::Module& m);

}  // namespace diffsynth
