#include "models/model_loader.h"

#include <set>

#include "core/dtype.h"
#include "core/error.h"
#include "core/loader/model.h"
#include "core/loader/torch_pickle.h"
#include "core/registry.h"
#include "core/vram/layers.h"
#include "configs/vram_module_maps.h"
#include "utils/pyjson.h"

namespace diffsynth {

std::string path_str(const ModelPaths& path) {
  if (path.size() == 1) return path[0];
  std::string s = "[";
  for (std::size_t i = 0; i < path.size(); ++i) s += (i ? ", " : "") + py_repr(path[i]);
  return s + "]";
}

std::string path_json(const ModelPaths& path, int indent) {
  if (path.size() == 1) return py_json_dumps(path[0], indent);
  return py_json_dumps(nlohmann::ordered_json(path), indent);
}

namespace {

std::string py_paths_repr(const std::vector<ModelPaths>& paths) {
  std::string s = "[";
  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (i) s += ", ";
    if (paths[i].size() == 1) s += py_repr(paths[i][0]);
    else s += path_str(paths[i]);
  }
  return s + "]";
}

nlohmann::ordered_json paths_json(const std::vector<ModelPaths>& paths) {
  nlohmann::ordered_json j = nlohmann::ordered_json::array();
  for (const auto& p : paths) j.push_back(p.size() == 1 ? nlohmann::ordered_json(p[0]) : nlohmann::ordered_json(p));
  return j;
}

std::string short_class(const std::string& dotted) {
  auto dot = dotted.rfind('.');
  return dot == std::string::npos ? dotted : dotted.substr(dot + 1);
}

// load_model's module_map branch: the model is built on meta, the file opened as zero-copy
// views, and every weight placed in the offload state -- cast to offload_dtype on
// offload_device (the reference's DiskMap(torch_dtype=offload_dtype)), or, for disk offload,
// left as views of the file mapping that no one reads until a layer computes with them.
std::shared_ptr<Module> load_model_with_vram_management(const ModelFactory& factory, const std::string& model_class,
                                                        const std::string& class_name, const ModelPaths& paths,
                                                        const nlohmann::ordered_json& extra_kwargs,
                                                        const StateDictConverter* converter, const VRAMConfig& vram_config,
                                                        std::optional<double> vram_limit, std::ostream& out) {
  const ResolvedVRAMConfig resolved = ResolvedVRAMConfig::resolve(vram_config, vram_limit);
  auto [model, sd, what] = open_model(factory, class_name, paths, extra_kwargs, converter);
  const bool disk = resolved.offload.disk;
  if (!disk) convert_state_dict(sd, resolved.offload.dtype, resolved.offload.device);
  assign_state_dict(*model, sd, what, class_name);
  sd = StateDict();
  enable_vram_management(*model, class_name, vram_module_map(model_class), vram_config, vram_limit, disk, out);
  if (disk) {
    // _materialize_root_params_from_disk: what no wrapper governs is read now (in the
    // computation dtype/device, so it can be used as is).
    for (const auto& item : model->named_modules("", true)) {
      auto* m = dynamic_cast<Module*>(item.value().get());
      if (!m || m->vram_wrapper()) continue;
      for (const auto& p : m->named_parameters(false)) {
        if (!p.value().defined()) continue;
        const auto dtype = p.value().is_floating_point() ? resolved.computation_dtype : p.value().scalar_type();
        m->assign_tensor(p.key(), p.value().to(resolved.computation_device, dtype, false, true));
      }
    }
  }
  model->eval();
  return model;
}

}  // namespace

std::optional<ModelConfigEntry> config_from_metadata(const ModelPaths& path) {
  if (path.empty()) return std::nullopt;
  const auto ends_with = [&](const std::string& tail) {
    return path[0].size() >= tail.size() && path[0].compare(path[0].size() - tail.size(), tail.size(), tail) == 0;
  };
  std::optional<std::string> text;
  if (ends_with(".safetensors")) {
    const auto metadata = load_metadata_from_safetensors({path[0]});
    const auto it = metadata.find(kModelConfigMetadataKey);
    if (it != metadata.end()) text = it->second;
  } else if (ends_with(".pth") || ends_with(".pt") || ends_with(".bin") || ends_with(".ckpt")) {
    // A torch.save zip keeps it as the record <archive>/diffsynth_model_config.
    text = read_torch_file_record(path[0], kModelConfigMetadataKey);
  }
  if (!text) return std::nullopt;
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(*text);
  } catch (const std::exception& e) {
    fail(path[0], std::string("metadata '") + kModelConfigMetadataKey + "' is not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("model_name") || !j["model_name"].is_string() || !j.contains("model_class") ||
      !j["model_class"].is_string())
    fail(path[0], std::string("metadata '") + kModelConfigMetadataKey + "' needs string fields model_name and model_class");
  ModelConfigEntry entry;
  entry.model_name = j["model_name"].get<std::string>();
  entry.model_class = j["model_class"].get<std::string>();
  if (j.contains("state_dict_converter") && j["state_dict_converter"].is_string())
    entry.state_dict_converter = j["state_dict_converter"].get<std::string>();
  entry.extra_kwargs = j.contains("extra_kwargs") ? j["extra_kwargs"] : nlohmann::ordered_json();
  return entry;
}

std::shared_ptr<Module> ModelPool::load_model_file(const ModelConfigEntry& config, const ModelPaths& path,
                                                   const VRAMConfig& vram_config, std::optional<double> vram_limit) {
  const ModelFactory* factory = Registry::model(config.model_class);
  if (!factory)
    throw Error(path_str(path) + ": recognised as " + config.model_name + " (" + config.model_class +
                "), which diffsynth.cpp does not implement yet");
  const StateDictConverter* converter = nullptr;
  if (config.state_dict_converter) {
    converter = Registry::converter(*config.state_dict_converter);
    if (!converter)
      throw Error(path_str(path) + ": recognised as " + config.model_name + ", but its state dict converter " +
                  *config.state_dict_converter + " is not implemented yet");
  }
  if (!config.quant_config.is_null())
    throw Error(path_str(path) + ": " + config.model_name + " is a pre-quantized checkpoint; quantized loading is not implemented yet");
  if (vram_config.management_enabled())
    return load_model_with_vram_management(*factory, config.model_class, short_class(config.model_class), path,
                                           config.extra_kwargs, converter, vram_config, vram_limit, *out_);
  (void)vram_limit;
  const auto dtype = parse_dtype(vram_config.computation_dtype.value_or("bfloat16"));
  const auto device = parse_device(vram_config.computation_device.value_or("cpu"));
  return load_model(*factory, short_class(config.model_class), path, config.extra_kwargs, dtype, device, converter);
}

void ModelPool::auto_load_model(const ModelPaths& path, std::optional<VRAMConfig> vram_config,
                                std::optional<double> vram_limit, bool clear) {
  *out_ << "Loading models from: " << path_json(path) << std::endl;
  const VRAMConfig config = vram_config.value_or(default_vram_config());
  const std::string model_hash = hash_model_file(path);
  bool loaded = false;
  for (const auto& entry : model_configs()) {
    if (entry.model_hash != model_hash) continue;
    auto m = load_model_file(entry, path, config, vram_limit);
    if (clear) clear_parameters(*m);
    model.push_back(m);
    model_name.push_back(entry.model_name);
    model_path.push_back(path);
    nlohmann::ordered_json info;
    info["model_name"] = entry.model_name;
    info["model_class"] = entry.model_class;
    info["extra_kwargs"] = entry.extra_kwargs;
    *out_ << "Loaded model: " << py_json_dumps(info, 4) << std::endl;
    loaded = true;
  }
  if (!loaded) {
    // Beyond the reference: a file that declares its own config (diffsynth.cpp's example and test
    // models, or a user's converted checkpoint) loads with it when the table has no entry.
    if (auto own = config_from_metadata(path)) {
      *out_ << "Model hash " << model_hash << " is not in the config table; using the config stored in the file."
            << std::endl;
      own->model_hash = model_hash;
      auto m = load_model_file(*own, path, config, vram_limit);
      if (clear) clear_parameters(*m);
      model.push_back(m);
      model_name.push_back(own->model_name);
      model_path.push_back(path);
      nlohmann::ordered_json info;
      info["model_name"] = own->model_name;
      info["model_class"] = own->model_class;
      info["extra_kwargs"] = own->extra_kwargs;
      *out_ << "Loaded model: " << py_json_dumps(info, 4) << std::endl;
      return;
    }
    std::string msg = "Cannot detect the model type. File: " + path_str(path) + ". Model hash: " + model_hash;
    const std::string hint = diagnose_unknown_model(path);
    if (!hint.empty()) msg += ". " + hint;
    throw Error(msg);
  }
}

std::vector<ModelConfigEntry> identify_model_file(const ModelPaths& path) {
  const std::string model_hash = hash_model_file(path);
  std::vector<ModelConfigEntry> found;
  for (const auto& entry : model_configs())
    if (entry.model_hash == model_hash) found.push_back(entry);
  if (found.empty())
    if (auto own = config_from_metadata(path)) {
      own->model_hash = model_hash;
      found.push_back(*own);
    }
  return found;
}

std::vector<std::size_t> ModelPool::matches(const std::string& name) const {
  std::vector<std::size_t> idx;
  for (std::size_t i = 0; i < model_name.size(); ++i)
    if (model_name[i] == name) idx.push_back(i);
  return idx;
}

std::shared_ptr<Module> ModelPool::fetch_model(const std::string& name) {
  auto idx = matches(name);
  if (idx.empty()) {
    *out_ << "No " << name << " models available. This is not an error." << std::endl;
    return nullptr;
  }
  if (idx.size() == 1) {
    *out_ << "Using " << name << " from " << path_json(model_path[idx[0]]) << "." << std::endl;
    return model[idx[0]];
  }
  std::vector<ModelPaths> paths;
  for (auto i : idx) paths.push_back(model_path[i]);
  *out_ << "More than one " << name << " models are loaded: " << py_paths_repr(paths) << ". Using " << name
        << " from " << path_json(paths[0]) << "." << std::endl;
  return model[idx[0]];
}

std::vector<std::shared_ptr<Module>> ModelPool::fetch_model(const std::string& name, FetchIndex index) {
  auto idx = matches(name);
  if (idx.size() <= 1) {
    auto m = fetch_model(name);
    return m ? std::vector<std::shared_ptr<Module>>{m} : std::vector<std::shared_ptr<Module>>{};
  }
  std::vector<ModelPaths> paths;
  for (auto i : idx) paths.push_back(model_path[i]);
  std::size_t n = idx.size();
  if (auto* k = std::get_if<std::int64_t>(&index)) {
    // Python slicing: [:k] with negative k counting from the end.
    std::int64_t kk = *k < 0 ? std::max<std::int64_t>(0, static_cast<std::int64_t>(n) + *k) : *k;
    n = std::min<std::size_t>(n, static_cast<std::size_t>(kk));
  }
  std::vector<ModelPaths> used(paths.begin(), paths.begin() + n);
  *out_ << "More than one " << name << " models are loaded: " << py_paths_repr(paths) << ". Using " << name
        << " from " << py_json_dumps(paths_json(used), 4) << "." << std::endl;
  std::vector<std::shared_ptr<Module>> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back(model[idx[i]]);
  return out;
}

void ModelPool::clear_parameters(Module& m) {
  for (const auto& item : m.named_modules("", true)) {
    auto* dm = dynamic_cast<Module*>(item.value().get());
    if (!dm) continue;
    for (const auto& p : dm->named_parameters(/*recurse=*/false)) dm->assign_tensor(p.key(), torch::Tensor());
  }
}

std::string diagnose_unknown_model(const ModelPaths& path) {
  try {
    return diagnose_unknown_model(load_keys_dict(path));
  } catch (const Error&) {
    return "";
  }
}

std::string diagnose_unknown_model(const KeysDict& layout) {
  // File layout as meta tensors, so converters can run on it without reading data.
  // One meta tensor per distinct shape: a checkpoint has few, and 200,000 tensors of them cost
  // more than the diagnosis itself.
  StateDict file_sd;
  std::map<std::vector<std::int64_t>, torch::Tensor> by_shape;
  for (const auto& e : layout.entries) {
    if (e.dict) continue;
    auto [it, fresh] = by_shape.try_emplace(e.shape);
    if (fresh) it->second = torch::empty(e.shape, torch::TensorOptions().device(torch::kMeta));
    file_sd.set(e.key, it->second);
  }
  const ModelConfigEntry* best = nullptr;
  LayoutDiff best_diff;
  std::set<std::string> tried;
  for (const auto& entry : model_configs()) {
    const std::string key = entry.model_class + "|" + entry.extra_kwargs.dump() + "|" + entry.state_dict_converter.value_or("");
    if (!tried.insert(key).second) continue;
    const ModelFactory* factory = Registry::model(entry.model_class);
    if (!factory) continue;
    const StateDictConverter* converter =
        entry.state_dict_converter ? Registry::converter(*entry.state_dict_converter) : nullptr;
    if (entry.state_dict_converter && !converter) continue;
    try {
      auto m = (*factory)(entry.extra_kwargs);
      const StateDict converted = converter ? (*converter)(file_sd) : StateDict();
      const StateDict& candidate = converter ? converted : file_sd;
      // No key in common: nothing to diagnose, and listing every key as unexpected would cost
      // more than the rest (a 200,000-tensor file against each implemented model).
      bool overlaps = false;
      for (const auto& [name, t] : module_state(*m))
        if ((overlaps = candidate.contains(name))) break;
      if (!overlaps) continue;
      LayoutDiff d = diff_layout(*m, candidate);
      if (d.matched + d.mismatched.size() == 0) continue;
      if (!best || d.score() > best_diff.score()) {
        best = &entry;
        best_diff = std::move(d);
      }
    } catch (const std::exception&) {
      continue;
    }
  }
  if (!best) return "";
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.1f%%", best_diff.score() * 100.0);
  std::string kwargs = best->extra_kwargs.is_null() ? "" : " " + best->extra_kwargs.dump();
  return "Closest known model: " + best->model_name + " (" + short_class(best->model_class) + kwargs + ", hash " +
         best->model_hash + "), " + std::to_string(best_diff.matched) + " tensors match, layout overlap " + pct +
         "; " + format_layout_diff(best_diff);
}

}  // namespace diffsynth
