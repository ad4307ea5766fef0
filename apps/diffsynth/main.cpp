// diffsynth: the command-line front of diffsynth.cpp.
//   diffsynth hash FILE...      md5 of the checkpoint layout (DiffSynth-Studio's hash_model_file)
//   diffsynth inspect FILE...   tensors, totals, metadata and the identified model
//   diffsynth load FILE...      ModelPool.auto_load_model, with the reference's messages
//   diffsynth tokenize ...      token ids of texts (handled by the launcher, apps/diffsynth/launcher.cpp)
//   diffsynth generate ...      Qwen-Image text-to-image / img2img / inpaint / ControlNet / LoRA
//   diffsynth forward FILE...   one Qwen-Image or Wan DiT forward on seeded random inputs (apps/diffsynth/forward.cpp)
// Exit status: 0 on success, 2 on bad input (one line on stderr naming the file and problem).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <cstdio>
#include <iostream>
#include <map>

#include "apps/diffsynth/app_paths.h"
#include "apps/diffsynth/forward.h"
#include "apps/diffsynth/generate.h"
#include "apps/diffsynth/option_checks.h"
#include "apps/diffsynth/vram_options.h"
#include "configs/model_configs.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/loader/file.h"
#include "core/loader/safetensors.h"
#include "core/registry.h"
#include "core/vram/layers.h"
#include "models/model_loader.h"
#include "utils/pyjson.h"

using namespace diffsynth;

namespace {

std::string short_class(const std::string& dotted) {
  auto dot = dotted.rfind('.');
  return dot == std::string::npos ? dotted : dotted.substr(dot + 1);
}

struct TensorRow {
  std::string file, key, dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t nbytes = 0;
};

// Everything inspect shows, each file read once (a 200,000-tensor header is 13 MB of JSON).
struct Inspection {
  std::vector<TensorRow> rows;
  KeysDict layout;                    // for the hash and the diagnosis
  std::vector<SafetensorsHeader> headers;
  bool all_safetensors = true;
  std::vector<std::string> notes;
};

Inspection inspect_files(const ModelPaths& paths) {
  Inspection out;
  for (const auto& p : paths) {
    if (is_safetensors_path(p)) {
      out.headers.push_back(read_safetensors_header(p));
      KeysDict keys;
      keys.entries.reserve(out.headers.back().tensors.size());
      for (const auto& t : out.headers.back().tensors) {
        out.rows.push_back({p, t.name, t.dtype_name, t.shape, t.end - t.begin});
        keys.entries.push_back(KeysEntry{t.name, t.shape, nullptr});  // unique: the parser checked
      }
      out.layout.update(std::move(keys));
    } else {
      out.all_safetensors = false;
      StateDict sd = load_state_dict({p});
      for (const auto& [k, v] : sd)
        out.rows.push_back({p, k, dtype_name(v.scalar_type()).substr(6), v.sizes().vec(),
                            static_cast<std::uint64_t>(v.numel()) * v.element_size()});
      for (const auto& k : sd.non_tensor_keys)
        out.notes.push_back(p + ": '" + k + "' is not a tensor (nested dict or value)");
      out.layout.update(load_keys_dict({p}));
    }
  }
  return out;
}

int cmd_hash(const std::vector<std::string>& files, bool without_shape) {
  std::cout << hash_model_file(expand_model_paths(files), !without_shape) << "\n";
  return 0;
}

int cmd_inspect(const std::vector<std::string>& files, bool as_json, bool all_tensors) {
  const ModelPaths paths = expand_model_paths(files);
  Inspection found = inspect_files(paths);
  const auto& rows = found.rows;
  const auto& notes = found.notes;
  const std::string model_hash = md5_hex(convert_keys_dict_to_single_str(found.layout));
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> by_dtype;  // dtype -> (elements, bytes)
  std::uint64_t total_bytes = 0, total_elems = 0;
  for (const auto& r : rows) {
    std::uint64_t n = 1;
    for (auto d : r.shape) n *= static_cast<std::uint64_t>(d);
    by_dtype[r.dtype].first += n;
    by_dtype[r.dtype].second += r.nbytes;
    total_bytes += r.nbytes;
    total_elems += n;
  }
  std::map<std::string, std::string> metadata;
  if (found.all_safetensors) metadata = merge_safetensors_metadata(found.headers);
  const auto configs = find_model_configs(model_hash);
  // Not in the table: the config entry the file carries, as ModelPool would use it.
  const std::optional<ModelConfigEntry> own = configs.empty() ? config_from_metadata(paths) : std::nullopt;
  std::string diagnosis;
  if (configs.empty() && !own) diagnosis = diagnose_unknown_model(found.layout);

  if (as_json) {
    nlohmann::ordered_json j;
    j["files"] = paths;
    j["model_hash"] = model_hash;
    j["tensors"] = nlohmann::ordered_json::array();
    for (const auto& r : rows)
      j["tensors"].push_back({{"file", r.file}, {"key", r.key}, {"dtype", r.dtype}, {"shape", r.shape}, {"bytes", r.nbytes}});
    j["total_tensors"] = rows.size();
    j["total_elements"] = total_elems;
    j["total_bytes"] = total_bytes;
    j["metadata"] = metadata;
    j["models"] = nlohmann::ordered_json::array();
    for (const auto* c : configs)
      j["models"].push_back({{"model_name", c->model_name},
                             {"model_class", c->model_class},
                             {"extra_kwargs", c->extra_kwargs},
                             {"implemented", Registry::model(c->model_class) != nullptr}});
    if (own)
      j["models"].push_back({{"model_name", own->model_name},
                             {"model_class", own->model_class},
                             {"extra_kwargs", own->extra_kwargs},
                             {"implemented", Registry::model(own->model_class) != nullptr},
                             {"config", "stored in the file"}});
    if (!diagnosis.empty()) j["diagnosis"] = diagnosis;
    std::cout << j.dump(2) << "\n";
    return 0;
  }

  std::printf("%-60s %-8s %-22s %14s\n", "key", "dtype", "shape", "bytes");
  const std::size_t limit = all_tensors ? rows.size() : std::min<std::size_t>(rows.size(), 40);
  for (std::size_t i = 0; i < limit; ++i) {
    const auto& r = rows[i];
    std::string shape = "[";
    for (std::size_t k = 0; k < r.shape.size(); ++k) shape += (k ? ", " : "") + std::to_string(r.shape[k]);
    shape += "]";
    std::printf("%-60s %-8s %-22s %14llu\n", r.key.c_str(), r.dtype.c_str(), shape.c_str(),
                static_cast<unsigned long long>(r.nbytes));
  }
  if (limit < rows.size()) std::printf("... %zu more tensors (--all lists every one)\n", rows.size() - limit);
  std::printf("\nfiles: %zu   tensors: %zu   elements: %llu   bytes: %llu (%s)\n", paths.size(), rows.size(),
              static_cast<unsigned long long>(total_elems), static_cast<unsigned long long>(total_bytes),
              human_bytes(static_cast<double>(total_bytes)).c_str());
  for (const auto& [dt, v] : by_dtype)
    std::printf("  %-8s elements: %llu   bytes: %s\n", dt.c_str(), static_cast<unsigned long long>(v.first),
                human_bytes(static_cast<double>(v.second)).c_str());
  for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
  if (!metadata.empty()) {
    std::printf("metadata:\n");
    for (const auto& [k, v] : metadata) std::printf("  %s: %s\n", k.c_str(), v.c_str());
  }
  std::printf("model hash: %s\n", model_hash.c_str());
  if (own) {
    std::printf("identified model: %s  class %s%s  (no DiffSynth-Studio config has this hash: the config stored in "
                "the file)%s\n",
                own->model_name.c_str(), short_class(own->model_class).c_str(),
                own->extra_kwargs.is_null() ? "" : ("  extra_kwargs " + own->extra_kwargs.dump()).c_str(),
                Registry::model(own->model_class) ? "" : "  (not implemented in diffsynth.cpp yet)");
  } else if (configs.empty()) {
    std::printf("identified model: none (no DiffSynth-Studio config has this hash)\n");
    if (!diagnosis.empty()) std::printf("%s\n", diagnosis.c_str());
  }
  for (const auto* c : configs) {
    std::printf("identified model: %s  class %s%s%s\n", c->model_name.c_str(), short_class(c->model_class).c_str(),
                c->extra_kwargs.is_null() ? "" : ("  extra_kwargs " + c->extra_kwargs.dump()).c_str(),
                Registry::model(c->model_class) ? "" : "  (not implemented in diffsynth.cpp yet)");
  }
  return 0;
}

int cmd_load(const std::vector<std::string>& files, const std::string& dtype, const std::string& device, bool touch,
             const cli::VRAMArgs& vram) {
  const ModelPaths paths = expand_model_paths(files);
  VRAMConfig config = vram.config(dtype, device);
  const auto t0 = std::chrono::steady_clock::now();
  ModelPool pool;
  pool.auto_load_model(paths, config, vram.vram_limit);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::uint64_t params = 0, bytes = 0;
  double checksum = 0;
  for (const auto& m : pool.model)
    for (const auto& p : m->parameters()) {
      params += static_cast<std::uint64_t>(p.numel());
      bytes += static_cast<std::uint64_t>(p.numel()) * p.element_size();
      // Zero-copy weights are paged in on first use; --touch reads every one now.
      if (touch && p.defined()) checksum += p.sum(torch::kFloat32).item<double>();
    }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "diffsynth: loaded %zu model(s), %llu parameters (%s) in %.3f s; peak RSS %s\n",
               pool.model.size(), static_cast<unsigned long long>(params), human_bytes(static_cast<double>(bytes)).c_str(),
               seconds, human_bytes(cli::peak_rss_bytes()).c_str());
  if (touch) std::fprintf(stderr, "diffsynth: read every weight in %.3f s (sum %.6g)\n", total - seconds, checksum);
  if (config.management_enabled()) std::fprintf(stderr, "diffsynth: %s\n", cli::resident_summary(pool.model).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"diffsynth.cpp: DiffSynth-Studio models in C++ (libtorch)"};
  app.require_subcommand(1);
  std::vector<std::string> files;
  bool without_shape = false, as_json = false, all_tensors = false, touch = false;
  std::string dtype = "bfloat16", device = "cpu";

  auto* hash = app.add_subcommand("hash", "Print the model hash (md5 of keys and shapes, as DiffSynth-Studio's hash_model_file)");
  hash->add_option("files", files, "Model file(s); several = one sharded checkpoint; a folder or *.index.json stands for its shards")
      ->required();
  hash->add_flag("--without-shape", without_shape, "Hash keys only (hash_model_file(with_shape=False))");

  auto* inspect = app.add_subcommand("inspect", "List tensors (key, dtype, shape, bytes), totals, metadata and the identified model");
  inspect->add_option("files", files, "Model file(s), a folder or an *.index.json")->required();
  inspect->add_flag("--json", as_json, "Machine-readable output");
  inspect->add_flag("--all", all_tensors, "List every tensor (default: the first 40)");

  auto* load = app.add_subcommand("load", "Identify and load the model(s) in a checkpoint, as ModelPool.auto_load_model");
  load->add_option("files", files, "Model file(s), a folder or an *.index.json")->required();
  load->add_option("--dtype", dtype, "Computation dtype")->capture_default_str()->check(cli::computation_dtype());
  load->add_option("--device", device, "Computation device (cpu, cuda, cuda:N)")->capture_default_str();
  load->add_flag("--touch", touch, "Read every weight once after loading (zero-copy weights are otherwise paged in on first use)");
  cli::VRAMArgs vram_args;
  vram_args.add(*load);

  cli::ForwardArgs forward_args;
  auto* forward = app.add_subcommand("forward", "Run a DiT once on seeded random inputs (timestep 500): a Qwen-Image DiT "
                                                "(latents NxCxHxW) or a Wan video DiT (NxCxFxHxW), as the files identify; "
                                                "print output statistics, time and peak RSS");
  cli::add_forward_options(*forward, forward_args);

  // Answered by the launcher (no libtorch); listed here for --help.
  app.add_subcommand("tokenize", "Encode / decode text with a tokenizer.json byte-level BPE (diffsynth tokenize --help)");
  cli::GenerateArgs generate_args;
  auto* generate = app.add_subcommand("generate", "The identified DiT's pipeline: Qwen-Image text-to-image, img2img, inpaint, Blockwise ControlNet, LoRA -> PNG; Wan2.1 text-to-video -> mp4");
  cli::add_generate_options(*generate, generate_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "diffsynth: error: " << e.what() << " (see --help)\n";
    return 2;
  }
  try {
    if (*hash) return cmd_hash(files, without_shape);
    if (*inspect) return cmd_inspect(files, as_json, all_tensors);
    if (*load) return cmd_load(files, dtype, device, touch, vram_args);
    if (*forward) return cli::cmd_forward(forward_args);
    if (*generate) return cli::cmd_generate(generate_args);
  } catch (const Error& e) {
    std::cerr << "diffsynth: error: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "diffsynth: error: " << e.what_without_backtrace() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "diffsynth: error: " << e.what() << "\n";
    return 2;
  }
  return 2;
}
