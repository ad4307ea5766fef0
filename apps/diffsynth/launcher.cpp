// bin/diffsynth: the command users run. `diffsynth hash` on safetensors checkpoints is answered
// here, from the headers alone, without loading libtorch (whose start-up alone costs ~0.5 s);
// every other command, and hash of torch.save files, is handed to bin/diffsynth-full (the whole
// CLI) by exec with the same arguments.
#include <unistd.h>

#include <climits>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/loader/keys.h"

namespace {

[[noreturn]] void exec_full(char** argv) {
  char self[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  std::string dir = ".";
  if (n > 0) {
    self[n] = '\0';
    dir = self;
    dir = dir.substr(0, dir.rfind('/'));
  }
  const std::string full = dir + "/diffsynth-full";
  ::execv(full.c_str(), argv);
  std::cerr << "diffsynth: error: cannot run " << full << ": " << std::strerror(errno) << "\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || std::strcmp(argv[1], "hash") != 0) exec_full(argv);
  bool with_shape = true;
  std::vector<std::string> files;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--without-shape") == 0) with_shape = false;
    else if (argv[i][0] == '-') exec_full(argv);  // --help and anything else: the full CLI
    else files.emplace_back(argv[i]);
  }
  if (files.empty()) exec_full(argv);
  try {
    const diffsynth::ModelPaths paths = diffsynth::expand_model_paths(files);
    diffsynth::KeysDict merged;
    for (const auto& p : paths) {
      if (!diffsynth::is_safetensors_path(p)) exec_full(argv);  // torch.save files need libtorch
    }
    for (const auto& p : paths)
      for (auto& e : diffsynth::load_safetensors_keys_dict(p).entries) merged.set(std::move(e));
    std::cout << diffsynth::md5_hex(diffsynth::convert_keys_dict_to_single_str(merged, with_shape)) << "\n";
    return 0;
  } catch (const diffsynth::Error& e) {
    std::cerr << "diffsynth: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "diffsynth: error: " << e.what() << "\n";
    return 2;
  }
}
