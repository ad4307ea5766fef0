#include "core/loader/file.h"

#include <sys/stat.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/loader/mapped_file.h"
#include "core/loader/safetensors.h"
#include "core/loader/torch_pickle.h"
#include "utils/pyjson.h"

namespace diffsynth {

namespace {

std::string ivalue_kind(const c10::IValue& v) { return v.tagKind(); }

// torch.load's result as the reference sees it after load_state_dict_from_bin: a dict,
// unwrapped once when it has exactly one key that is state_dict / module / model_state.
c10::impl::GenericDict bin_state_dict(const std::string& path, const c10::IValue& root) {
  if (!root.isGenericDict())
    fail(path, "holds a " + ivalue_kind(root) + ", not a state dict (a dict of tensors)");
  auto dict = root.toGenericDict();
  if (dict.size() == 1) {
    const auto& key = dict.begin()->key();
    if (key.isString()) {
      const std::string k = key.toStringRef();
      if (k == "state_dict" || k == "module" || k == "model_state") {
        const c10::IValue inner = dict.begin()->value();
        if (!inner.isGenericDict())
          fail(path, "'" + k + "' holds a " + ivalue_kind(inner) + ", not a state dict (a dict of tensors)");
        return inner.toGenericDict();
      }
    }
  }
  return dict;
}

KeysDict keys_from_dict(const std::string& path, const c10::impl::GenericDict& dict, const std::string& prefix) {
  KeysDict out;
  for (const auto& item : dict) {
    if (!item.key().isString()) continue;  // the reference's hash skips non-string keys
    KeysEntry e;
    e.key = item.key().toStringRef();
    const c10::IValue& v = item.value();
    if (v.isTensor()) {
      e.shape = v.toTensor().sizes().vec();
    } else if (v.isGenericDict()) {
      e.dict = std::make_shared<KeysDict>(keys_from_dict(path, v.toGenericDict(), prefix + e.key + "."));
    } else {
      fail(path, "entry '" + prefix + e.key + "' is a " + ivalue_kind(v) +
                     ", not a tensor or dict (DiffSynth-Studio cannot hash this file either)");
    }
    out.set(std::move(e));
  }
  return out;
}

KeysDict load_keys_dict_one(const std::string& path) {
  KeysDict out;
  if (is_safetensors_path(path)) return load_safetensors_keys_dict(path);
  return keys_from_dict(path, bin_state_dict(path, load_torch_file(path)), "");
}

torch::Tensor convert_one(const torch::Tensor& t, std::optional<c10::ScalarType> dtype, const torch::Device& device) {
  const c10::ScalarType target = dtype.value_or(t.scalar_type());
  if (target == t.scalar_type() && t.device() == device) return t;
  return t.to(device, target, /*non_blocking=*/false, /*copy=*/true);
}

void load_one(const std::string& path, StateDict& out, std::optional<c10::ScalarType> dtype,
              const torch::Device& device) {
  if (is_safetensors_path(path)) {
    auto file = SafetensorsFile::open(path);
    for (const auto& info : file->header().tensors) out.set(info.name, file->get_tensor_converted(info, dtype, device));
    return;
  }
  auto dict = bin_state_dict(path, load_torch_file(path));
  for (const auto& item : dict) {
    if (!item.key().isString()) continue;
    const std::string key = item.key().toStringRef();
    if (item.value().isTensor()) {
      out.set(key, convert_one(item.value().toTensor(), dtype, device));
    } else {
      out.non_tensor_keys.push_back(key);
    }
  }
}

}  // namespace

KeysDict load_keys_dict(const ModelPaths& paths) {
  if (paths.empty()) throw Error("no model file given");
  KeysDict merged;
  for (const auto& p : paths) merged.update(load_keys_dict_one(p));
  return merged;
}

std::string hash_model_file(const ModelPaths& paths, bool with_shape) {
  return md5_hex(convert_keys_dict_to_single_str(load_keys_dict(paths), with_shape));
}

std::string hash_state_dict_keys(const StateDict& state_dict, bool with_shape) {
  KeysDict keys;
  for (const auto& [k, v] : state_dict) keys.set(KeysEntry{k, v.sizes().vec(), nullptr});
  return md5_hex(convert_keys_dict_to_single_str(keys, with_shape));
}

StateDict load_state_dict(const ModelPaths& paths, std::optional<c10::ScalarType> dtype, const torch::Device& device) {
  if (paths.empty()) throw Error("no model file given");
  StateDict out;
  for (const auto& p : paths) load_one(p, out, dtype, device);
  return out;
}

StateDict open_state_dict(const ModelPaths& paths) { return load_state_dict(paths, std::nullopt, torch::kCPU); }

void convert_state_dict(StateDict& state_dict, std::optional<c10::ScalarType> dtype, const torch::Device& device) {
  for (auto& [k, v] : state_dict) {
    torch::Tensor converted = convert_one(v, dtype, device);
    if (converted.is_same(v)) continue;
    // The source was read once; if it is a view of a mapped file, let the kernel drop those
    // pages so a converting load never holds the file and its copy together.
    if (v.is_contiguous() && v.device().is_cpu())
      MappedFile::release_if_mapped(v.data_ptr(), v.numel() * v.element_size());
    v = converted;
  }
}

std::map<std::string, std::string> load_metadata_from_safetensors(const ModelPaths& paths) {
  std::vector<SafetensorsHeader> headers;
  for (const auto& p : paths) headers.push_back(read_safetensors_header(p));
  return merge_safetensors_metadata(headers);
}

std::map<std::string, std::string> merge_safetensors_metadata(const std::vector<SafetensorsHeader>& headers) {
  std::map<std::string, std::string> out;
  for (const auto& header : headers) {
    for (const auto& [k, v] : header.metadata) {
      auto it = out.find(k);
      if (it == out.end()) {
        out[k] = v;
        continue;
      }
      // Lists stored as JSON merge (old + new items not already present); anything else: new wins.
      nlohmann::ordered_json a = nlohmann::ordered_json::parse(it->second, nullptr, false);
      nlohmann::ordered_json b = nlohmann::ordered_json::parse(v, nullptr, false);
      if (!a.is_discarded() && !b.is_discarded() && a.is_array() && b.is_array()) {
        for (const auto& item : b)
          if (std::find(a.begin(), a.end(), item) == a.end()) a.push_back(item);
        it->second = py_json_dumps(a);
      } else {
        it->second = v;
      }
    }
  }
  return out;
}

}  // namespace diffsynth
