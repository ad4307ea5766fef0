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
#include "core/file_io.h"
#include "core/tokenizer/bpe_tokenizer.h"
#include "core/tokenizer/text_cleaning.h"
#include "core/tokenizer/unigram_tokenizer.h"

namespace {

[[noreturn]] void exec_full(char** argv) {
  const std::string full = (diffsynth::cli::executable_dir() / "diffsynth-full").string();
  ::execv(full.c_str(), argv);
  std::cerr << "diffsynth: error: cannot run " << full << ": " << std::strerror(errno) << "\n";
  std::exit(2);
}

constexpr const char* kTokenizeUsage =
    "Usage: diffsynth tokenize [--tokenizer DIR] [--decode [--skip-special-tokens]] [--json]\n"
    "                          [--max-length N] [--pad | --pad-to-max-length] [--no-special-tokens]\n"
    "                          [--clean MODE [--print-clean]] [--semantics transformers|tokenizers]\n"
    "                          [TEXT...]\n"
    "Encodes each TEXT (no TEXT: each line of stdin) with a Hugging Face tokenizer.json tokenizer —\n"
    "byte-level BPE (Qwen) or Unigram (umt5, Wan), told apart by the file's model.type — exactly as\n"
    "the Python packages do, and prints one line of space-separated ids per input.\n"
    "  --tokenizer DIR        folder with tokenizer.json (+ tokenizer_config.json); default: the\n"
    "                         project's data/qwen-tokenizer ($DIFFSYNTH_DATA_DIR/qwen-tokenizer)\n"
    "  --semantics S          transformers (default): as transformers.AutoTokenizer.from_pretrained(DIR),\n"
    "                         which rebuilds a T5Tokenizer's pipeline (no normalizer, WhitespaceSplit,\n"
    "                         unk id 2); tokenizers: tokenizers.Tokenizer.from_file(DIR/tokenizer.json).\n"
    "                         The same for BPE tokenizers\n"
    "  --clean MODE           clean every text first as the Wan reference's HuggingfaceTokenizer does:\n"
    "                         whitespace, lower, canonicalize (ftfy.fix_text, HTML unescaping, ...) or\n"
    "                         none (the default)\n"
    "  --print-clean          with --clean: print the cleaned texts instead of ids (no tokenizer read)\n"
    "  --decode               inputs are lines of space-separated ids; prints the decoded text\n"
    "  --skip-special-tokens  with --decode: leave special added tokens out\n"
    "  --json                 every input and output line is JSON: texts are JSON strings, ids are\n"
    "                         JSON arrays (a JSON string of space-separated ids is accepted too)\n"
    "  --max-length N         truncate every input to N ids (transformers truncation=True; a Unigram\n"
    "                         tokenizer's </s> stays last)\n"
    "  --pad                  pad the inputs, as one batch, on the right with the pad token to the\n"
    "                         longest (transformers padding=True); prints the ids line then the\n"
    "                         attention-mask line per input (--json: one {\"input_ids\", \"attention_mask\"}\n"
    "                         object per input)\n"
    "  --pad-to-max-length    the same, every input padded to --max-length (padding=\"max_length\")\n"
    "  --no-special-tokens    add_special_tokens=False: no </s> from a Unigram tokenizer's post-processor\n";

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

// tokenizer.json's model.type, read by a SAX pass that stops there (the vocabulary usually
// follows it); empty when the file has none or cannot be parsed (the loader then says why).
class ModelTypeReader : public nlohmann::json_sax<nlohmann::json> {
 public:
  std::string type;
  bool null() override { return scalar(); }
  bool boolean(bool) override { return scalar(); }
  bool number_integer(number_integer_t) override { return scalar(); }
  bool number_unsigned(number_unsigned_t) override { return scalar(); }
  bool number_float(number_float_t, const string_t&) override { return scalar(); }
  bool string(string_t& v) override {
    if (depth_ == 2 && in_model_ && key_ == "type") {
      type = v;
      return false;  // found: stop parsing
    }
    return scalar();
  }
  bool binary(binary_t&) override { return false; }
  bool start_object(std::size_t) override { return open(); }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(); }
  bool end_array() override { return close(); }
  bool key(string_t& k) override {
    key_ = k;
    if (depth_ == 1) top_key_ = k;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  bool scalar() { return true; }
  bool open() {
    ++depth_;
    if (depth_ == 2) in_model_ = top_key_ == "model";
    return true;
  }
  bool close() {
    if (depth_ == 2) in_model_ = false;
    --depth_;
    return true;
  }
  int depth_ = 0;
  bool in_model_ = false;
  std::string key_, top_key_;
};

std::string tokenizer_model_type(const std::string& dir) {
  const std::string file = (std::filesystem::path(dir) / "tokenizer.json").string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) return {};
  std::string text;
  try {
    text = diffsynth::read_regular_file(file);
  } catch (const diffsynth::Error&) {
    return {};
  }
  ModelTypeReader reader;
  nlohmann::json::sax_parse(text, &reader);
  if (!reader.type.empty() && reader.type != "BPE" && reader.type != "Unigram")
    diffsynth::fail(file, "unsupported model type " + reader.type + " (supported: BPE, Unigram)");
  return reader.type;
}

// The two tokenizer kinds behind one interface.
class AnyTokenizer {
 public:
  AnyTokenizer(const std::string& dir, diffsynth::TokenizerSemantics semantics) {
    if (tokenizer_model_type(dir) == "Unigram") unigram_.emplace(diffsynth::UnigramTokenizer::from_dir(dir, semantics));
    else bpe_.emplace(diffsynth::BPETokenizer::from_dir(dir));
  }
  std::vector<int32_t> encode(const std::string& text, bool add_special) const {
    return unigram_ ? unigram_->encode(text, add_special) : bpe_->encode(text, add_special);
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const {
    return unigram_ ? unigram_->decode(ids, skip_special) : bpe_->decode(ids, skip_special);
  }
  diffsynth::Encoding encode_batch(const std::vector<std::string>& texts, std::optional<std::size_t> max_length,
                                   diffsynth::Padding padding, bool add_special) const {
    const bool truncate = max_length.has_value();
    if (unigram_) return unigram_->encode_batch(texts, max_length, padding, truncate, add_special);
    diffsynth::Encoding batch = bpe_->encode_batch(texts, max_length, padding == diffsynth::Padding::Longest, truncate);
    if (padding == diffsynth::Padding::MaxLength) {  // the BPE tokenizer adds no special tokens to pad past
      const int64_t pad = bpe_->pad_token_id();
      for (std::size_t i = 0; i < batch.input_ids.size(); ++i) {
        if (batch.input_ids[i].size() >= *max_length) continue;
        batch.input_ids[i].resize(*max_length, pad);
        batch.attention_mask[i].resize(*max_length, 0);
      }
    }
    return batch;
  }

 private:
  std::optional<diffsynth::BPETokenizer> bpe_;
  std::optional<diffsynth::UnigramTokenizer> unigram_;
};

int tokenize_main(int argc, char** argv) {
  std::optional<std::string> dir;
  bool decode = false, skip_special = false, as_json = false, pad = false, pad_to_max = false, no_special = false;
  bool print_clean = false;
  diffsynth::TextClean clean = diffsynth::TextClean::None;
  bool clean_given = false;
  diffsynth::TokenizerSemantics semantics = diffsynth::TokenizerSemantics::Transformers;
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
    else if (a == "--pad-to-max-length") pad_to_max = true;
    else if (a == "--no-special-tokens") no_special = true;
    else if (a == "--print-clean") print_clean = true;
    else if (a == "--clean") {
      const std::string v = value(i);
      const auto mode = diffsynth::parse_text_clean(v);
      if (!mode) throw TokenizeError("--clean needs whitespace, lower, canonicalize or none, got \"" + v + "\"");
      clean = *mode;
      clean_given = true;
    } else if (a == "--semantics") {
      const std::string v = value(i);
      if (v == "transformers") semantics = diffsynth::TokenizerSemantics::Transformers;
      else if (v == "tokenizers") semantics = diffsynth::TokenizerSemantics::Tokenizers;
      else throw TokenizeError("--semantics needs transformers or tokenizers, got \"" + v + "\"");
    } else if (a == "--max-length" || a == "--bench") {
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
  if (decode && (pad || pad_to_max || max_length)) throw TokenizeError("--pad / --max-length apply to encoding, not --decode");
  if (decode && (clean_given || print_clean)) throw TokenizeError("--clean / --print-clean apply to encoding, not --decode");
  if (pad && pad_to_max) throw TokenizeError("--pad and --pad-to-max-length exclude each other");
  if (pad_to_max && !max_length) throw TokenizeError("--pad-to-max-length needs --max-length");
  if (print_clean && !clean_given) throw TokenizeError("--print-clean needs --clean MODE");
  if (print_clean && (pad || pad_to_max || max_length || no_special || bench_repeats))
    throw TokenizeError("--print-clean prints texts: --pad / --max-length / --no-special-tokens / --bench do not apply");
  if (!from_args) {
    std::string line;
    while (std::getline(std::cin, line)) inputs.push_back(std::move(line));
  }

  std::string out;
  if (!decode) {
    std::vector<std::string> texts;
    texts.reserve(inputs.size());
    for (std::string& input : inputs) texts.push_back(as_json ? json_text(input) : std::move(input));
    inputs = std::move(texts);
    if (clean != diffsynth::TextClean::None)
      for (std::string& text : inputs) text = diffsynth::clean_text(text, clean);
    if (print_clean) {
      for (const std::string& text : inputs) {
        out += as_json ? nlohmann::json(text).dump() : text;
        out += '\n';
      }
      std::cout << out << std::flush;
      return 0;
    }
  }

  const auto load_start = std::chrono::steady_clock::now();
  const AnyTokenizer tokenizer(dir ? *dir : diffsynth::cli::default_tokenizer_dir(), semantics);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

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
  const std::vector<std::string>& texts = inputs;
  const bool add_special = !no_special;

  if (bench_repeats > 0) {
    std::size_t bytes = 0, tokens = 0;
    for (const auto& t : texts) bytes += t.size();
    const auto start = std::chrono::steady_clock::now();
    for (long r = 0; r < bench_repeats; ++r)
      for (const auto& t : texts) tokens += tokenizer.encode(t, add_special).size();
    const double encode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << nlohmann::json{{"load_s", load_s}, {"encode_s", encode_s}, {"repeats", bench_repeats},
                                {"bytes", bytes * bench_repeats}, {"tokens", tokens}}.dump() << "\n";
    return 0;
  }
  if (pad || pad_to_max || max_length) {
    const diffsynth::Padding padding = pad_to_max ? diffsynth::Padding::MaxLength
                                       : pad      ? diffsynth::Padding::Longest
                                                  : diffsynth::Padding::None;
    const diffsynth::Encoding batch = tokenizer.encode_batch(texts, max_length, padding, add_special);
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
    for (const std::string& text : texts) print_ids(out, tokenizer.encode(text, add_special), as_json);
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
