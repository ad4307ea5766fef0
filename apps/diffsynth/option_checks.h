// Bounds on command-line values, shared by every command: a number that is out of range, not
// finite or cannot do anything is refused while the options are parsed, naming the option, so no
// run starts on a value that would end in a black picture or a killed process.
#pragma once
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace diffsynth::cli {

// A validator from a check that throws Error: its message becomes CLI11's "--option: <message>".
CLI::Validator throwing_check(std::function<void(const std::string&)> check, std::string description);
// --seed of generate: 0 .. 2^64-1 or -1 (draw one).
CLI::Validator seed_value();
// A finite floating-point value in [lo, hi] (or (lo, hi] with lo_open). NaN and Inf are refused
// (CLI::Range lets NaN through: every comparison with it is false).
CLI::Validator finite_in(double lo, double hi, bool lo_open = false);
// --threads: 1 .. this machine's CPUs.
CLI::Validator thread_count();
// --dtype for computation: bfloat16 / float32 / float16 (fp8 is refused with the way to use it).
CLI::Validator computation_dtype();
int max_threads();

// --seed: 0 .. 2^64-1, or -1 = draw one. Anything else (a sign, a fraction, a value past
// 2^64-1) is an Error saying why (the option's validator prefixes its name).
std::optional<std::uint64_t> parse_seed(const std::string& text);

// Each file of a model argument (a file, a folder of shards, an *.index.json) is a readable
// regular file: checked before anything loads, so a FIFO or a typo fails at once. Errors start
// with `option`.
void check_model_files(const std::string& arg, const std::string& option);

// Refuses work that would need more memory than `device` has: "<what> needs <bytes> (<detail>),
// <available> available on <device>". Unknown availability lets it pass.
void check_memory(double bytes_needed, const std::string& what, const torch::Device& device);

}  // namespace diffsynth::cli
