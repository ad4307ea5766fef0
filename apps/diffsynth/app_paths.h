// Where the CLI finds its own files, and its process figures. Torch-free: shared by the launcher
// (bin/diffsynth) and the full CLI (bin/diffsynth-full).
#pragma once
#include <filesystem>
#include <string>

namespace diffsynth::cli {

// The folder of the running executable (/proc/self/exe).
std::filesystem::path executable_dir();
// The bundled Qwen tokenizer (data/qwen-tokenizer): $DIFFSYNTH_DATA_DIR/qwen-tokenizer, else the
// source tree above build*/bin/, else <prefix>/data next to bin/. Throws Error naming every
// place tried.
std::string default_tokenizer_dir();
// The tiny random-weight Qwen-Image folder the build writes (<build>/models/tiny-qwen-image);
// empty when it was not built.
std::string default_model_dir();
// This process image's peak resident set in bytes: VmHWM, since ru_maxrss survives execve (after
// the launcher's exec, or a fork from a big parent, it would report the parent's peak).
double peak_rss_bytes();

}  // namespace diffsynth::cli
