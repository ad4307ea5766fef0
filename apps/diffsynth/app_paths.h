// Where the CLI finds its own files, and its process figures. Torch-free: shared by the launcher
// (bin/diffsynth) and the full CLI (bin/diffsynth-full).
#pragma once
#include <filesystem>
#include <string>

namespace diffsynth::cli {

// The folder of the running executable (/proc/self/exe).
std::filesystem::path executable_dir();
// A bundled tokenizer (data/<name>: qwen-tokenizer, umt5-tokenizer): $DIFFSYNTH_DATA_DIR/<name>,
// else the source tree above build*/bin/, else <prefix>/data next to bin/. Throws Error naming
// every place tried.
std::string default_tokenizer_dir(const std::string& name = "qwen-tokenizer");
// The tiny random-weight Qwen-Image folder the build writes (<build>/models/tiny-qwen-image);
// empty when it was not built.
std::string default_model_dir();
// This process image's peak resident set in bytes: VmHWM, since ru_maxrss survives execve (after
// the launcher's exec, or a fork from a big parent, it would report the parent's peak).
double peak_rss_bytes();

}  // namespace diffsynth::cli
