// Building a model and loading its weights (reference: diffsynth/core/loader/model.py).
#pragma once
#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>

#include "core/loader/file.h"
#include "core/module.h"
#include "core/registry.h"

namespace diffsynth {

// Assigns `state_dict` into `model` (load_state_dict(strict=True, assign=True)). Missing keys,
// unexpected keys and shape mismatches are collected and reported together, by name, in one
// Error that starts with `what` (usually the file). Leaves the model untouched on error.
void assign_state_dict(Module& model, const StateDict& state_dict, const std::string& what,
                       const std::string& class_name);

// The first half of load_model, shared with the VRAM-managed branch: the model built on meta and
// its file(s) opened as zero-copy views under the model's names (converter applied), checked
// against the model's layout before any conversion work, so a wrong file fails at once.
struct OpenedModel {
  std::shared_ptr<Module> model;
  StateDict state_dict;
  std::string what;  // the file, for messages ("<first> (+N shards)")
};
OpenedModel open_model(const ModelFactory& factory, const std::string& class_name, const ModelPaths& paths,
                       const nlohmann::ordered_json& extra_kwargs, const StateDictConverter* converter);

// The reference's "normal" branch of load_model: build on meta, open the file(s) as zero-copy
// views, run the converter, cast/move the kept tensors (one copy each, none when dtype and
// device already match), assign strictly, eval().
std::shared_ptr<Module> load_model(const ModelFactory& factory, const std::string& class_name, const ModelPaths& paths,
                                   const nlohmann::ordered_json& extra_kwargs, std::optional<c10::ScalarType> dtype,
                                   const torch::Device& device, const StateDictConverter* converter);

// How well a state dict's layout fits a model's: the basis of "closest known model".
struct LayoutDiff {
  std::size_t matched = 0;
  std::vector<std::string> missing;      // in the model, not in the file
  std::vector<std::string> unexpected;   // in the file, not in the model
  std::vector<std::string> mismatched;   // "key (file [a, b], model [c, d])"
  double score() const;                  // (matched + mismatched / 2) / all keys of both
};
LayoutDiff diff_layout(const Module& model, const StateDict& state_dict);
std::string format_layout_diff(const LayoutDiff& d, std::size_t max_names = 8);
std::string shape_repr(c10::IntArrayRef shape);

}  // namespace diffsynth
