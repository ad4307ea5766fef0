// ModelPool: identifies checkpoints by hash and loads every model the config table lists for
// them (reference: diffsynth/models/model_loader.py; messages are the reference's, verbatim).
#pragma once
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "configs/model_configs.h"
#include "core/error.h"
#include "core/loader/file.h"
#include "core/module.h"
#include "core/vram/config.h"

namespace diffsynth {

// fetch_model's `index`: an int (the first `index` models) or "all".
struct FetchAll {};
using FetchIndex = std::variant<std::int64_t, FetchAll>;

class ModelPool {
 public:
  explicit ModelPool(std::ostream& out = std::cout) : out_(&out) {}

  // Hashes the file(s), loads every config entry with that hash, prints the reference's messages.
  // A single path prints as a string, several as a list (as the reference's str / list argument).
  void auto_load_model(const ModelPaths& path, std::optional<VRAMConfig> vram_config = std::nullopt,
                       std::optional<double> vram_limit = std::nullopt, bool clear_parameters = false);
  std::shared_ptr<Module> load_model_file(const ModelConfigEntry& config, const ModelPaths& path,
                                          const VRAMConfig& vram_config, std::optional<double> vram_limit);

  // 0 matches -> nullptr; 1 -> it; several -> the first (with the reference's message).
  std::shared_ptr<Module> fetch_model(const std::string& model_name);
  // With an index: several matches -> the first `index` (int) or all; one match -> that one.
  std::vector<std::shared_ptr<Module>> fetch_model(const std::string& model_name, FetchIndex index);

  static VRAMConfig default_vram_config() { return VRAMConfig::default_config(); }
  static void clear_parameters(Module& model);

  std::vector<std::shared_ptr<Module>> model;
  std::vector<std::string> model_name;
  std::vector<ModelPaths> model_path;

 private:
  std::vector<std::size_t> matches(const std::string& name) const;
  std::ostream* out_;
};

// pool.fetch_model(name) as the class a pipeline expects: nullptr when the pool has none, an
// Error when the model is another class.
template <typename T>
std::shared_ptr<T> fetch_model_as(ModelPool& pool, const std::string& name) {
  auto m = pool.fetch_model(name);
  if (!m) return nullptr;
  auto typed = std::dynamic_pointer_cast<T>(m);
  if (!typed) throw Error("model '" + name + "' in the pool is not the expected class");
  return typed;
}
// The same for fetch_model(name, index): every model fetched, each as T.
template <typename T>
std::vector<std::shared_ptr<T>> fetch_models_as(ModelPool& pool, const std::string& name, FetchIndex index) {
  std::vector<std::shared_ptr<T>> out;
  for (auto& m : pool.fetch_model(name, index)) {
    auto typed = std::dynamic_pointer_cast<T>(m);
    if (!typed) throw Error("model '" + name + "' in the pool is not the expected class");
    out.push_back(std::move(typed));
  }
  return out;
}

// Beyond the reference: a file may carry its own config entry as JSON ({"model_name",
// "model_class", "extra_kwargs", "state_dict_converter"}) under this key: a safetensors file in
// its metadata, a torch.save file as the zip record <archive>/diffsynth_model_config (which
// torch.load ignores). ModelPool uses it when the file's hash is not in the table.
inline constexpr const char* kModelConfigMetadataKey = "diffsynth_model_config";
std::optional<ModelConfigEntry> config_from_metadata(const ModelPaths& path);

// The config entries auto_load_model would load for `path` (the table's entries with its hash,
// else the file's own config entry; empty when neither), found without loading anything: the
// header is read and hashed. Lets a caller pick a pipeline and check options first.
std::vector<ModelConfigEntry> identify_model_file(const ModelPaths& path);

// Beyond the reference: for a file no config recognises, the implemented model whose layout
// overlaps it most, with what is missing, extra or mis-shaped. Empty when nothing overlaps.
std::string diagnose_unknown_model(const ModelPaths& path);
std::string diagnose_unknown_model(const KeysDict& layout);
// The reference's `{path}` / json.dumps(path, indent=4) renderings of a path argument.
std::string path_str(const ModelPaths& path);
std::string path_json(const ModelPaths& path, int indent = 4);

}  // namespace diffsynth
