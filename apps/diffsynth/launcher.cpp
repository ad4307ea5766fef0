// bin/diffsynth: the command users run. `diffsynth hash` on safetensors checkpoints is answered
// here, from the headers alone, without loading libtorch (whose start-up alone costs ~0.5 s);
// every other command, and hash of torch.save files, is handed to bin/diffsynth-full (the whole
// CLI) by exec with the same arguments. `diffsynth tokenize` (no libtorch either) runs here too.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "apps/diffsynth/app_paths.h"
#include "core/error.h"
#include "core/loader/keys.h"
#include "core/tokenizer/bpe_tokenizer.h"

namespace {

[[noreturn]] void exec_full(char** argv) {
  const std::string full = (diffsynth::cli::executable_dir() / "diffsynth-full").string();
  ::execv(full.c_str(), argv);
  std::cerr << "diffsynth: error: cannot run " << full << ": " << std::strerror(errno) << "\n";
  std::exit(2);
}

constexpr const char* kTokenizeUsage =
    "Usage: diffsynth tokenize [--tokenizer DIR] [--decode [--skip-special-tokens]] [--json]\n"
    "                          [--max-length N] [--pad] [TEXT...]\n"
    "Encodes each TEXT (no TEXT: each line of stdin) with a Hugging Face tokenizer.json byte-level\n"
    "BPE tokenizer, exactly as the Python `tokenizers` package, and prints one line of\n"
    "space-separated ids per input.\n"
    "  --tokenizer DIR        folder with tokenizer.json (+ tokenizer_config.json); default: the\n"
    "                         project's data/qwen-tokenizer ($DIFFSYNTH_DATA_DIR/qwen-tokenizer)\n"
    "  --decode               inputs are lines of space-separated ids; prints the decoded text\n"
    "  --skip-special-tokens  with --decode: leave special added tokens out\n"
    "  --json                 every input and output line is JSON: texts are JSON strings, ids are\n"
    "                         JSON arrays (a JSON string of space-separated ids is accepted too)\n"
    "  --max-length N         truncate every input to N ids (transformers truncation=True)\n"
    "  --pad                  pad the inputs, as one batch, on the right with the pad token to the\n"
    "                         longest (transformers padding=True); prints the ids line then the\n"
    "                         attention-mask line per input (--json: one {\"input_ids\", \"attention_mask\"}\n"
    "                         object per input)\n";

struct TokenizeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};


std::vector<int32_t> parse_ids(const std::string& line) {
  std::vector<int32_t> ids;
  std::size_t i = 0;
  while (i < line.size()) {
    if (line[i] == ' ' || line[i] == '\t' || line[i] == '\r') { ++i; continue; }
    std::size_t end = i;
    while (end < line.size() && line[end] != ' ' && line[end] != '\t' && line[end] != '\r') ++end;
    const std::string word = line.substr(i, end - i);
    char* stop = nullptr;
    errno = 0;
    const long long v = std::strtoll(word.c_str(), &stop, 10);
    if (*stop != '\0' || errno != 0 || v < INT32_MIN || v > INT32_MAX) throw TokenizeError("not a token id: \"" + word + "\"");
    ids.push_back(static_cast<int32_t>(v));
    i = end;
  }
  return ids;
}

std::vector<int32_t> parse_json_ids(const std::string& line) {
  nlohmann::json v;
  try {
    v = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception&) {
    throw TokenizeError("input is not a JSON line: " + line);
  }
  if (v.is_string()) return parse_ids(v.get<std::string>());
  if (!v.is_array()) throw TokenizeError("input is not a JSON array of ids or a string: " + line);
  std::vector<int32_t> ids;
  for (const auto& e : v) {
    if (!e.is_number_integer() || e.get<int64_t>() < INT32_MIN || e.get<int64_t>() > INT32_MAX)
      throw TokenizeError("not a token id: " + e.dump());
    ids.push_back(e.get<int32_t>());
  }
  return ids;
}

std::string json_text(const std::string& line) {
  nlohmann::json v;
  try {
    v = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception&) {
    throw TokenizeError("input is not a JSON line: " + line);
  }
  if (!v.is_string()) throw TokenizeError("input is not a JSON string: " + line);
  return v.get<std::string>();
}

template <class Int>
void print_ids(std::string& out, const std::vector<Int>& ids, bool as_json) {
  if (as_json) out += '[';
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) out += as_json ? "," : " ";
    out += std::to_string(ids[i]);
  }
  if (as_json) out += ']';
  out += '\n';
}

int tokenize_main(int argc, char** argv) {
  std::optional<std::string> dir;
  bool decode = false, skip_special = false, as_json = false, pad = false;
  std::optional<std::size_t> max_length;
  long bench_repeats = 0;  // hidden: --bench N times the encoding of all inputs (bench/bench_tokenizer.py)
  std::vector<std::string> inputs;
  bool from_args = false;
  const auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) throw TokenizeError(std::string(argv[i]) + " needs a value");
    return argv[++i];
  };
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << kTokenizeUsage;
      return 0;
    } else if (a == "--tokenizer") dir = value(i);
    else if (a == "--decode") decode = true;
    else if (a == "--skip-special-tokens") skip_special = true;
    else if (a == "--json") as_json = true;
    else if (a == "--pad") pad = true;
    else if (a == "--max-length" || a == "--bench") {
      const std::string v = value(i);
      char* stop = nullptr;
      errno = 0;
      const long long n = std::strtoll(v.c_str(), &stop, 10);
      if (v.empty() || *stop != '\0' || n < 1 || errno == ERANGE || n > INT32_MAX)
        throw TokenizeError(a + " needs a positive integer up to " + std::to_string(INT32_MAX) + ", got \"" + v + "\"");
      if (a == "--bench") bench_repeats = static_cast<long>(n);
      else max_length = static_cast<std::size_t>(n);
    } else if (a == "--") {
      for (++i; i < argc; ++i) inputs.emplace_back(argv[i]);
      from_args = true;
    } else if (a.size() > 1 && a[0] == '-' && a[1] == '-') {
      throw TokenizeError("unknown option " + a + " (see diffsynth tokenize --help)");
    } else {
      inputs.push_back(a);
      from_args = true;
    }
  }
  if (decode && (pad || max_length)) throw TokenizeError("--pad / --max-length apply to encoding, not --decode");
  if (!from_args) {
    std::string line;
    while (std::getline(std::cin, line)) inputs.push_back(std::move(line));
  }

  const auto load_start = std::chrono::steady_clock::now();
  const diffsynth::BPETokenizer tokenizer = diffsynth::BPETokenizer::from_dir(dir ? *dir : diffsynth::cli::default_tokenizer_dir());
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  std::string out;
  if (decode) {
    for (const std::string& input : inputs) {
      const std::vector<int32_t> ids = as_json ? parse_json_ids(input) : parse_ids(input);
      const std::string text = tokenizer.decode(ids, skip_special);
      out += as_json ? nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) : text;
      out += '\n';
    }
    std::cout << out << std::flush;
    return 0;
  }
  std::vector<std::string> texts;
  texts.reserve(inputs.size());
  for (std::string& input : inputs) texts.push_back(as_json ? json_text(input) : std::move(input));

  if (bench_repeats > 0) {
    std::size_t bytes = 0, tokens = 0;
    for (const auto& t : texts) bytes += t.size();
    const auto start = std::chrono::steady_clock::now();
    for (long r = 0; r < bench_repeats; ++r)
      for (const auto& t : texts) tokens += tokenizer.encode(t).size();
    const double encode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << nlohmann::json{{"load_s", load_s}, {"encode_s", encode_s}, {"repeats", bench_repeats},
                                {"bytes", bytes * bench_repeats}, {"tokens", tokens}}.dump() << "\n";
    return 0;
  }
  if (pad || max_length) {
    const diffsynth::Encoding batch = tokenizer.encode_batch(texts, max_length, pad, max_length.has_value());
    for (std::size_t i = 0; i < texts.size(); ++i) {
      if (as_json) {
        out += nlohmann::json{{"input_ids", batch.input_ids[i]}, {"attention_mask", batch.attention_mask[i]}}.dump();
        out += '\n';
      } else {
        print_ids(out, batch.input_ids[i], false);
        print_ids(out, batch.attention_mask[i], false);
      }
    }
  } else {
    for (const std::string& text : texts) print_ids(out, tokenizer.encode(text), as_json);
  }
  std::cout << out << std::flush;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "tokenize") == 0) {
    try {
      return tokenize_main(argc, argv);
    } catch (const std::exception& e) {
      std::cerr << "diffsynth tokenize: error: " << diffsynth::one_line(e.what()) << "\n";
      return 2;
    }
  }
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
      merged.update(diffsynth::load_safetensors_keys_dict(p));
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
