#include "utils/lora/general.h"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include "core/dtype.h"
#include "core/error.h"
#include "core/loader/file.h"
#include "core/loader/model.h"
#include "core/vram/layers.h"

namespace diffsynth {
namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string::size_type start = 0, pos;
  while ((pos = s.find(sep, start)) != std::string::npos) {
    out.push_back(s.substr(start, pos - start));
    start = pos + 1;
  }
  out.push_back(s.substr(start));
  return out;
}

std::string join(const std::vector<std::string>& parts, char sep) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

// Python's str.replace: every occurrence.
std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (auto pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
  return s;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// One entry of the reference's get_name_dict: layer name -> (B key, A key, alpha key).
struct NameEntry {
  std::string layer;
  std::string b_key, a_key;
  std::optional<std::string> alpha_key;
};

// GeneralLoRALoader.get_name_dict, in key order; a later key with the same layer name replaces
// the earlier one in place (Python dict semantics). Keys containing the B marker that the
// reference would crash on (the marker not a whole segment) are returned in `malformed`.
std::vector<NameEntry> name_dict(const StateDict& lora, std::vector<std::string>* malformed = nullptr) {
  std::vector<NameEntry> entries;
  std::unordered_map<std::string, std::size_t> index;
  for (const auto& [key, value] : lora) {
    const bool down_up = key.find(".lora_up.") != std::string::npos;
    const std::string a_marker = down_up ? "lora_down" : "lora_A";
    const std::string b_marker = down_up ? "lora_up" : "lora_B";
    if (key.find(b_marker) == std::string::npos) continue;
    auto parts = split(key, '.');
    const auto b_pos = std::find(parts.begin(), parts.end(), b_marker);
    if (b_pos == parts.end() || parts.size() < 2) {
      if (malformed) malformed->push_back(key);
      continue;
    }
    const auto b_index = static_cast<std::size_t>(b_pos - parts.begin());
    if (parts.size() > b_index + 2) parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(b_index) + 1);  // adapter name
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(b_index));
    if (parts.front() == "diffusion_model") parts.erase(parts.begin());
    parts.pop_back();  // "weight"
    NameEntry e{join(parts, '.'), key, replace_all(key, b_marker, a_marker), std::nullopt};
    // "Alpha: Deprecated but retained for compatibility."
    const std::string alpha_key =
        replace_all(replace_all(key, b_marker + ".weight", "alpha"), b_marker + ".default.weight", "alpha");
    if (alpha_key != key && lora.contains(alpha_key)) e.alpha_key = alpha_key;
    auto it = index.find(e.layer);
    if (it != index.end()) {
      entries[it->second] = std::move(e);
    } else {
      index.emplace(e.layer, entries.size());
      entries.push_back(std::move(e));
    }
  }
  return entries;
}

// The down weight scaled as the reference does for files with `.alpha`: A * (alpha / rank),
// alpha being the file's 0-dim tensor (in the loaded dtype) and rank a Python int.
torch::Tensor scaled_down(const StateDict& lora, const NameEntry& e, bool& warned) {
  torch::Tensor down = lora.at(e.a_key);
  if (!e.alpha_key) return down;
  if (!warned) {
    std::cerr << "UserWarning: Alpha detected in the LoRA file. This may be a LoRA model not trained by DiffSynth-Studio. "
                 "To ensure compatibility, the LoRA weights will be converted to weight * alpha / rank.\n";
    warned = true;
  }
  const torch::Tensor alpha = lora.at(*e.alpha_key) / down.size(0);
  return down * alpha;
}

std::string shape_str(const torch::Tensor& t) { return shape_repr(t.sizes()); }

// "a, b, c (+N more)" with at most `max` names.
std::string name_list(const std::vector<std::string>& names, std::size_t max = 10) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < max; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > max) out += " (+" + std::to_string(names.size() - max) + " more)";
  return out;
}

// Resolves LoRA layer names to the model's modules that hold a weight.
class ModuleResolver {
 public:
  explicit ModuleResolver(const Module& model) {
    for (const auto& item : model.named_modules("", /*include_self=*/true)) {
      if (!item.value()->named_parameters(/*recurse=*/false).find("weight")) continue;
      modules_.insert(item.key());
      auto [it, inserted] = underscored_.emplace(replace_all(item.key(), ".", "_"), item.key());
      if (!inserted && it->second != item.key()) ambiguous_.insert(it->first);
    }
  }

  std::optional<std::string> resolve(const std::string& layer) const {
    if (modules_.count(layer)) return layer;  // the reference's only rule
    // Prefixes diffusers / PEFT / ComfyUI put before the model's own names.
    static const std::vector<std::string> prefixes = {"diffusion_model.", "transformer.", "base_model.model.",
                                                      "model.", "unet."};
    if (auto found = strip_and_find(layer, prefixes, [&](const std::string& n) { return find_dotted(n); })) return found;
    // kohya: one segment, dots written as underscores, behind "lora_unet_" / "lora_transformer_".
    if (layer.find('.') == std::string::npos) {
      static const std::vector<std::string> kohya_roots = {"lora_unet_", "lora_transformer_", "lora_"};
      static const std::vector<std::string> kohya_prefixes = {"diffusion_model_", "transformer_", "model_", "unet_"};
      for (const auto& root : kohya_roots) {
        if (!starts_with(layer, root)) continue;
        const std::string rest = layer.substr(root.size());
        if (auto found = find_underscored(rest)) return found;
        if (auto found = strip_and_find(rest, kohya_prefixes, [&](const std::string& n) { return find_underscored(n); }))
          return found;
      }
    }
    return std::nullopt;
  }

 private:
  template <class Find>
  static std::optional<std::string> strip_and_find(std::string name, const std::vector<std::string>& prefixes, Find find) {
    for (bool stripped = true; stripped;) {
      stripped = false;
      for (const auto& p : prefixes) {
        if (!starts_with(name, p)) continue;
        name = name.substr(p.size());
        if (auto found = find(name)) return found;
        stripped = true;
        break;
      }
    }
    return std::nullopt;
  }
  std::optional<std::string> find_dotted(const std::string& name) const {
    if (modules_.count(name)) return name;
    return std::nullopt;
  }
  std::optional<std::string> find_underscored(const std::string& name) const {
    auto it = underscored_.find(name);
    if (it == underscored_.end() || ambiguous_.count(name)) return std::nullopt;
    return it->second;
  }

  std::set<std::string> modules_;
  std::unordered_map<std::string, std::string> underscored_;
  std::set<std::string> ambiguous_;
};

// The weight parameter of the module at `path` (a module with a direct "weight").
std::pair<Module*, torch::Tensor> weight_of(const Module& model, const std::string& path) {
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    if (item.key() != path) continue;
    auto* owner = dynamic_cast<Module*>(item.value().get());
    // The dict is kept: find() points into it.
    const auto params = item.value()->named_parameters(/*recurse=*/false);
    const auto* w = params.find("weight");
    if (!owner || !w) break;
    return {owner, *w};
  }
  throw Error("internal: LoRA target '" + path + "' has no weight");
}

// B [out, r] @ A [r, in] (or both with trailing 1 x 1) must have the weight's shape.
bool fits(const torch::Tensor& up, const torch::Tensor& down, const torch::Tensor& weight) {
  const auto d = up.dim();
  if ((d != 2 && d != 4) || down.dim() != d || weight.dim() != d) return false;
  if (up.size(1) != down.size(0) || weight.size(0) != up.size(0) || weight.size(1) != down.size(1)) return false;
  if (d == 4)
    return up.size(2) == 1 && up.size(3) == 1 && down.size(2) == 1 && down.size(3) == 1 && weight.size(2) == 1 &&
           weight.size(3) == 1;
  return true;
}

}  // namespace

StateDict load_lora_state_dict(const std::string& path, std::optional<c10::ScalarType> dtype,
                               const torch::Device& device) {
  StateDict lora = load_state_dict(expand_model_paths({path}), dtype, device);
  // A NaN or Inf weight would turn every image it touches black; say which tensor it is.
  for (const auto& [key, value] : lora)
    if (value.is_floating_point() && !torch::isfinite(value).all().item<bool>())
      fail(path, "LoRA tensor '" + key + "' holds NaN or Inf values" +
                     (dtype ? " (read as " + dtype_name(*dtype).substr(6) + ")" : std::string()));
  return lora;
}

StateDict convert_lora_state_dict(const StateDict& lora) {
  StateDict out;
  bool warned = false;
  for (const auto& e : name_dict(lora)) {
    if (!lora.contains(e.a_key)) throw Error("LoRA: '" + e.b_key + "' has no '" + e.a_key + "'");
    out.set(e.layer + ".lora_B.weight", lora.at(e.b_key));
    out.set(e.layer + ".lora_A.weight", scaled_down(lora, e, warned));
  }
  return out;
}

LoRAPairs convert_lora(const StateDict& lora, const Module& target, const std::string& source_name) {
  std::vector<std::string> malformed;
  const auto entries = name_dict(lora, &malformed);
  const ModuleResolver resolver(target);

  std::set<std::string> used;
  std::vector<std::string> unmatched, incomplete, mismatched, duplicated;
  std::map<std::string, LoRALayer> by_module;
  bool warned = false;
  for (const auto& e : entries) {
    used.insert(e.b_key);
    if (e.alpha_key) used.insert(*e.alpha_key);
    if (lora.contains(e.a_key)) used.insert(e.a_key);  // listed once, by its B key, if unmatched
    const auto module = resolver.resolve(e.layer);
    if (!module) {
      unmatched.push_back(e.b_key);
      continue;
    }
    if (!lora.contains(e.a_key)) {
      incomplete.push_back(e.b_key + " (no " + e.a_key + ")");
      continue;
    }
    const torch::Tensor& up = lora.at(e.b_key);
    const torch::Tensor& down = lora.at(e.a_key);
    const auto weight = weight_of(target, *module).second;
    if (!fits(up, down, weight)) {
      mismatched.push_back(*module + " (B " + shape_str(up) + " @ A " + shape_str(down) + ", weight " +
                           shape_str(weight) + ")");
      continue;
    }
    LoRALayer layer{*module, scaled_down(lora, e, warned), up, {e.b_key, e.a_key}};
    if (e.alpha_key) layer.source_keys.push_back(*e.alpha_key);
    if (!by_module.emplace(*module, std::move(layer)).second) duplicated.push_back(*module + " (from " + e.b_key + ")");
  }
  // Keys of no (A, B, alpha) triple: A halves without B, DoRA scales, biases, text-encoder parts...
  for (const auto& [key, value] : lora)
    if (!used.count(key)) unmatched.push_back(key);
  for (const auto& key : malformed)
    if (std::find(unmatched.begin(), unmatched.end(), key) == unmatched.end()) unmatched.push_back(key);

  std::vector<std::string> problems;
  if (!unmatched.empty())
    problems.push_back(std::to_string(unmatched.size()) + " key" + (unmatched.size() == 1 ? "" : "s") +
                       " fit no module of the model: " + name_list(unmatched));
  if (!incomplete.empty()) problems.push_back("LoRA up weights without their down half: " + name_list(incomplete));
  if (!mismatched.empty()) problems.push_back("shape mismatch: " + name_list(mismatched));
  if (!duplicated.empty()) problems.push_back("more than one LoRA for: " + name_list(duplicated));
  if (!problems.empty()) {
    std::string msg = source_name + ": LoRA does not fit the model: ";
    for (std::size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    throw Error(msg);
  }

  // In the model's module order, as the reference's named_modules() loop fuses them.
  LoRAPairs pairs;
  for (const auto& item : target.named_modules("", /*include_self=*/true)) {
    auto it = by_module.find(item.key());
    if (it != by_module.end()) pairs.push_back(std::move(it->second));
  }
  return pairs;
}

std::int64_t fuse_lora(Module& model, const LoRAPairs& lora, double alpha, c10::ScalarType dtype,
                       const torch::Device& device, bool verbose) {
  torch::NoGradGuard no_grad;
  std::int64_t updated = 0;
  for (const auto& layer : lora) {
    auto [owner, weight] = weight_of(model, layer.module);
    torch::Tensor up = layer.lora_B.to(device, dtype);
    torch::Tensor down = layer.lora_A.to(device, dtype);
    torch::Tensor delta;
    if (up.dim() == 4) {  // 1x1 conv
      up = up.squeeze(3).squeeze(2);
      down = down.squeeze(3).squeeze(2);
      delta = (torch::mm(up, down) * alpha).unsqueeze(2).unsqueeze(3);
    } else {
      delta = torch::mm(up, down) * alpha;
    }
    torch::Tensor fused = weight.to(device, dtype) + delta;
    // The reference copies into the parameter (load_state_dict): its dtype and device stay. Here
    // the slot gets a new tensor, since the old one may view read-only pages of the checkpoint.
    fused = fused.to(weight.device(), weight.scalar_type());
    if (const auto& w = owner->vram_wrapper()) {
      // Managed: the wrapper keeps the fused weight as its stored tensor (it is no longer the
      // file's, so disk offload holds it in memory) and moves it between states from there.
      w->store(owner->vram_prefix().empty() ? "weight" : owner->vram_prefix() + ".weight", std::move(fused));
    } else {
      owner->assign_tensor("weight", std::move(fused));
    }
    ++updated;
  }
  if (verbose)
    std::cout << updated << " tensors are fused by LoRA. Fused LoRA layers cannot be cleared by `pipe.clear_lora()`."
              << std::endl;
  return updated;
}

std::int64_t fuse_lora(Module& model, const std::string& file, double alpha, c10::ScalarType dtype,
                       const torch::Device& device, bool verbose) {
  const StateDict lora = load_lora_state_dict(file, dtype, device);
  return fuse_lora(model, convert_lora(lora, model, file), alpha, dtype, device, verbose);
}

std::int64_t hotload_lora(Module& model, const LoRAPairs& lora, double alpha, const std::string& source_name,
                          bool verbose) {
  if (!vram_management_enabled(model))
    throw Error("VRAM Management is not enabled. LoRA hotloading is not supported.");
  std::map<std::string, std::shared_ptr<VRAMWrapper>> hot;
  for (const auto& w : vram_wrappers(model))
    if (w->hotloads_lora()) hot.emplace(w->name(), w);
  // The reference skips layers without a hot-loadable wrapper silently; that would drop part of
  // the LoRA without a word, so it is an error here, before anything is attached.
  std::vector<std::string> missing;
  for (const auto& layer : lora)
    if (!hot.count(layer.module)) missing.push_back(layer.module);
  if (!missing.empty())
    throw Error(source_name + ": LoRA hot-load needs Linear layers wrapped by VRAM management; these layers are not: " +
                name_list(missing) + ". Load it fused instead (hotload = false).");
  torch::NoGradGuard no_grad;
  for (const auto& layer : lora) hot.at(layer.module)->add_lora(layer.lora_A * alpha, layer.lora_B);
  const auto n = static_cast<std::int64_t>(lora.size());
  if (verbose)
    std::cout << n << " tensors are patched by LoRA. You can use `pipe.clear_lora()` to clear all LoRA layers."
              << std::endl;
  return n;
}

std::int64_t load_lora(Module& model, const std::string& file, double alpha, std::optional<bool> hotload,
                       c10::ScalarType dtype, const torch::Device& device, bool verbose) {
  if (!std::isfinite(alpha)) fail(file, "LoRA alpha must be a finite number, got " + std::to_string(alpha));
  const bool hot = hotload.value_or(vram_management_enabled(model));
  const StateDict lora = load_lora_state_dict(file, dtype, device);
  const LoRAPairs pairs = convert_lora(lora, model, file);
  return hot ? hotload_lora(model, pairs, alpha, file, verbose) : fuse_lora(model, pairs, alpha, dtype, device, verbose);
}

std::int64_t clear_lora(const std::vector<Module*>& models, bool verbose) {
  std::int64_t cleared = 0;
  for (const Module* m : models) {
    if (!m) continue;
    for (const auto& w : vram_wrappers(*m))
      if (w->clear_lora() > 0) ++cleared;
  }
  if (verbose) std::cout << cleared << " LoRA layers are cleared." << std::endl;
  return cleared;
}

}  // namespace diffsynth
