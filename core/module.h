// Base class of every diffsynth.cpp model and layer.
//
// Construction allocates nothing: parameters are created on the meta device with their
// shapes (DiffSynth's skip_model_initialization). Loading then *assigns* real tensors into
// the parameter slots (PyTorch's load_state_dict(assign=True)) -- a meta placeholder cannot be
// filled in place with set_data, so the slot itself is replaced.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace diffsynth {

class Module : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;

  // Replaces the parameter `name` (a direct member, no dots) by `value`. Persistent state the
  // reference keeps in buffers is registered as (non-trainable) parameters here: libtorch
  // keeps buffer slots private, and the state dict names are the same either way.
  void assign_tensor(const std::string& name, torch::Tensor value);

 protected:
  // Registers a parameter of `shape` on meta (no memory). Weights are not trainable here.
  torch::Tensor& meta_parameter(const std::string& name, std::vector<std::int64_t> shape,
                                c10::ScalarType dtype = c10::kFloat);
  // The current tensor in a parameter slot (after loading: the loaded weight).
  const torch::Tensor& param(const std::string& name) const;
};

// Dotted names and tensors of every parameter and buffer, as Python's state_dict() lists them.
std::vector<std::pair<std::string, torch::Tensor>> module_state(const torch::nn::Module& m);

}  // namespace diffsynth
