#include "core/loader/model.h"

#include <map>
#include <unordered_map>

#include "core/error.h"

namespace diffsynth {

std::string shape_repr(c10::IntArrayRef shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

double LayoutDiff::score() const {
  // A key present with the wrong shape still says "same architecture, other size": half credit,
  // so a resized model of the right family beats an unrelated one that shares a key or two.
  const double total = static_cast<double>(matched + missing.size() + unexpected.size() + mismatched.size());
  return total == 0 ? 0.0 : (static_cast<double>(matched) + 0.5 * static_cast<double>(mismatched.size())) / total;
}

LayoutDiff diff_layout(const Module& model, const StateDict& sd) {
  LayoutDiff d;
  std::unordered_map<std::string, bool> seen;
  for (const auto& [name, t] : module_state(model)) {
    seen[name] = true;
    if (!sd.contains(name)) {
      d.missing.push_back(name);
      continue;
    }
    const auto& v = sd.at(name);
    if (v.sizes() != t.sizes())
      d.mismatched.push_back(name + " (file " + shape_repr(v.sizes()) + ", model " + shape_repr(t.sizes()) + ")");
    else
      ++d.matched;
  }
  for (const auto& [name, t] : sd)
    if (!seen.count(name)) d.unexpected.push_back(name);
  for (const auto& name : sd.non_tensor_keys)
    if (!seen.count(name)) d.unexpected.push_back(name + " (not a tensor)");
  return d;
}

std::string format_layout_diff(const LayoutDiff& d, std::size_t max_names) {
  auto list = [&](const char* label, const std::vector<std::string>& names) {
    if (names.empty()) return std::string();
    std::string s = std::string(label) + " " + std::to_string(names.size()) + ": ";
    for (std::size_t i = 0; i < names.size() && i < max_names; ++i) s += (i ? ", " : "") + names[i];
    if (names.size() > max_names) s += ", ... (" + std::to_string(names.size() - max_names) + " more)";
    return s;
  };
  std::string out;
  for (const auto& part : {list("missing", d.missing), list("unexpected", d.unexpected),
                           list("mis-shaped", d.mismatched)}) {
    if (part.empty()) continue;
    if (!out.empty()) out += "; ";
    out += part;
  }
  return out;
}

void assign_state_dict(Module& model, const StateDict& sd, const std::string& what, const std::string& class_name) {
  LayoutDiff d = diff_layout(model, sd);
  if (!d.missing.empty() || !d.unexpected.empty() || !d.mismatched.empty())
    throw Error(what + ": does not fit " + class_name + ": " + format_layout_diff(d));
  // Owners of each dotted name: the module at the prefix, the slot at the last segment.
  std::unordered_map<std::string, Module*> owners;
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    auto* m = dynamic_cast<Module*>(item.value().get());
    if (m) owners[item.key()] = m;
  }
  for (const auto& [name, t] : module_state(model)) {
    const auto dot = name.rfind('.');
    const std::string prefix = dot == std::string::npos ? "" : name.substr(0, dot);
    const std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
    auto it = owners.find(prefix);
    if (it == owners.end()) throw Error("internal: '" + prefix + "' of " + class_name + " is not a diffsynth::Module");
    it->second->assign_tensor(leaf, sd.at(name));
  }
}

OpenedModel open_model(const ModelFactory& factory, const std::string& class_name, const ModelPaths& paths,
                       const nlohmann::ordered_json& extra_kwargs, const StateDictConverter* converter) {
  OpenedModel m{factory(extra_kwargs), open_state_dict(paths), ""};
  if (converter) m.state_dict = (*converter)(m.state_dict);
  m.what = paths.size() == 1 ? paths[0] : paths[0] + " (+" + std::to_string(paths.size() - 1) + " shards)";
  LayoutDiff d = diff_layout(*m.model, m.state_dict);
  if (!d.missing.empty() || !d.unexpected.empty() || !d.mismatched.empty())
    throw Error(m.what + ": does not fit " + class_name + ": " + format_layout_diff(d));
  return m;
}

std::shared_ptr<Module> load_model(const ModelFactory& factory, const std::string& class_name, const ModelPaths& paths,
                                   const nlohmann::ordered_json& extra_kwargs, std::optional<c10::ScalarType> dtype,
                                   const torch::Device& device, const StateDictConverter* converter) {
  auto [model, sd, what] = open_model(factory, class_name, paths, extra_kwargs, converter);
  convert_state_dict(sd, dtype, device);
  assign_state_dict(*model, sd, what, class_name);
  model->eval();
  return model;
}

}  // namespace diffsynth
