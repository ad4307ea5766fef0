// Unigram (SentencePiece) from a Hugging Face tokenizer.json, the same steps as Rust `tokenizers`:
//   1. added tokens (normalized=false) are cut out of the raw text, leftmost-longest;
//   2. every other piece is normalised (Replace steps) and cut again by the normalized=true ones;
//   3. the pre-tokenizer splits it (WhitespaceSplit, Metaspace: ' ' -> '▁', a '▁' prepended, a
//      cut before every '▁');
//   4. every word goes through the Viterbi search of Unigram::encode_optimized: the best-scoring
//      segmentation into vocabulary pieces, a character no piece starts with becoming <unk>;
//   5. the TemplateProcessing post-processor appends its special tokens (`</s>`).
// The vocabulary lookup is an open-addressing table of piece hashes; the search extends one
// rolling hash byte by byte from each character, up to the longest piece, so a position costs
// at most max_piece_bytes probes and no trie is built (loading stays a single pass).
#include "core/tokenizer/unigram_tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/error.h"
#include "core/file_io.h"
#include "core/tokenizer/tokenizer_parts.h"

namespace diffsynth {
namespace {

using json = nlohmann::json;
using namespace tokenizer_parts;

// Replace normalizer steps.
struct ReplaceStep {
  std::string literal;           // String pattern
  std::unique_ptr<Regex> regex;  // or Regex pattern
  std::string content;
};

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer steps

enum class Prepend { Always, First, Never };

struct PreTokenizerStep {
  enum Kind { WhitespaceSplit, Metaspace } kind = Metaspace;
  std::string replacement = "\xE2\x96\x81";  // Metaspace: one character, '▁' by default
  Prepend prepend = Prepend::Always;
  bool split = true;
};

// ---------------------------------------------------------------------------------------------
// JSON: a SAX handler that builds a DOM for everything except model.vocab (256,300 [piece, score]
// pairs, 99% of the file), which goes straight into a vector.

struct TokenizerJson {
  json root;
  std::vector<std::pair<std::string, double>> vocab;
  bool vocab_seen = false;
};

class TokenizerJsonReader : public tokenizer_parts::DomSax {
 public:
  explicit TokenizerJsonReader(TokenizerJson& out) : DomSax(out.root), out_(out) {}

  bool null() override { return put(nullptr); }
  bool boolean(bool v) override { return put(v); }
  bool number_integer(number_integer_t v) override {
    return region_ == Region::Entry ? score(static_cast<double>(v)) : put(v);
  }
  bool number_unsigned(number_unsigned_t v) override {
    return region_ == Region::Entry ? score(static_cast<double>(v)) : put(v);
  }
  bool number_float(number_float_t v, const string_t&) override {
    return region_ == Region::Entry ? score(v) : put(v);
  }
  bool string(string_t& v) override {
    if (region_ == Region::Entry) {
      if (entry_fields_ != 0) return bad(kEntryShape);
      out_.vocab.emplace_back(std::move(v), 0.0);
      entry_fields_ = 1;
      return true;
    }
    return put(std::move(v));
  }
  bool start_object(std::size_t) override {
    if (region_ != Region::Dom) return bad(kEntryShape);
    return dom_open(json::object());
  }
  bool end_object() override { return dom_close(); }
  bool start_array(std::size_t) override {
    if (region_ == Region::Entry) return bad(kEntryShape);
    if (region_ == Region::Vocab) {
      region_ = Region::Entry;
      entry_fields_ = 0;
      return true;
    }
    if (at_model() && key_ == "vocab") {
      region_ = Region::Vocab;
      out_.vocab_seen = true;
      return true;
    }
    return dom_open(json::array());
  }
  bool end_array() override {
    if (region_ == Region::Entry) {
      if (entry_fields_ != 2) return bad(kEntryShape);
      region_ = Region::Vocab;
      return true;
    }
    if (region_ == Region::Vocab) {
      region_ = Region::Dom;
      return true;
    }
    return dom_close();
  }

 private:
  enum class Region { Dom, Vocab, Entry };
  static constexpr const char* kEntryShape = "model.vocab entries must be [piece, score]";
  bool score(double v) {
    if (entry_fields_ != 1) return bad(kEntryShape);
    if (!std::isfinite(v)) return bad("model.vocab score of \"" + out_.vocab.back().first + "\" is not finite");
    out_.vocab.back().second = v;
    entry_fields_ = 2;
    return true;
  }
  bool put(json&& value) {
    if (region_ != Region::Dom) return bad(kEntryShape);
    return dom_value(std::move(value));
  }

  TokenizerJson& out_;
  Region region_ = Region::Dom;
  int entry_fields_ = 0;
};

json read_json_file(const std::string& path, const char* what) {
  try {
    return json::parse(read_regular_file(path));
  } catch (const json::exception& e) {
    fail(path, std::string("malformed ") + what + " JSON: " + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// token -> id: open addressing over (32-bit hash tag, id) slots; the hash is FNV-1a so the
// Viterbi search can extend it one byte at a time.

class PieceIndex {
 public:
  static constexpr std::uint64_t kBasis = 0xcbf29ce484222325ull;
  static std::uint64_t step(std::uint64_t h, char c) {
    return (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  }
  static std::uint64_t hash(std::string_view s) {
    std::uint64_t h = kBasis;
    for (const char c : s) h = step(h, c);
    return h;
  }

  void build(const std::vector<std::string>& tokens, const std::vector<bool>& known) {
    tokens_ = &tokens;
    const std::size_t size = std::bit_ceil(std::max<std::size_t>(16, tokens.size() * 2));
    slots_.assign(size, kEmpty);
    mask_ = size - 1;
    for (std::size_t id = 0; id < tokens.size(); ++id)
      if (known[id]) assign(tokens[id], static_cast<int32_t>(id));
  }
  // Points `token` at id (an existing entry for the same text is replaced: the last id wins, as
  // the token_to_ids map of `tokenizers`).
  void assign(std::string_view token, int32_t id) {
    const std::uint64_t h = hash(token);
    for (std::size_t i = mix(h) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i] == kEmpty || ((slots_[i] >> 32) == (h >> 32) && (*tokens_)[slots_[i] & 0xFFFFFFFFu] == token)) {
        slots_[i] = (h & 0xFFFFFFFF00000000ull) | static_cast<std::uint32_t>(id);
        return;
      }
    }
  }
  // Lookup with a precomputed hash(token).
  int32_t find(std::uint64_t h, std::string_view token) const {
    if (slots_.empty()) return -1;
    for (std::size_t i = mix(h) & mask_;; i = (i + 1) & mask_) {
      const std::uint64_t slot = slots_[i];
      if (slot == kEmpty) return -1;
      if ((slot >> 32) == (h >> 32) && (*tokens_)[slot & 0xFFFFFFFFu] == token) return static_cast<int32_t>(slot & 0xFFFFFFFFu);
    }
  }
  int32_t find(std::string_view token) const { return find(hash(token), token); }

 private:
  static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
  static std::size_t mix(std::uint64_t h) { return static_cast<std::size_t>(h ^ (h >> 29)); }
  const std::vector<std::string>* tokens_ = nullptr;
  std::vector<std::uint64_t> slots_;
  std::size_t mask_ = 0;
};

constexpr double kUnkPenalty = 10.0;  // tokenizers' K_UNK_PENALTY

}  // namespace

// ---------------------------------------------------------------------------------------------

struct UnigramTokenizer::Impl {
  std::string path;
  TokenizerSemantics semantics = TokenizerSemantics::Tokenizers;

  // Vocabulary: id -> token (model pieces, then added tokens beyond them), token -> id.
  std::vector<std::string> id_to_token;
  std::vector<bool> id_known;
  std::vector<double> scores;  // model pieces only: scores[id] for id < scores.size()
  std::size_t model_size = 0;  // number of model pieces
  PieceIndex model_index;      // model pieces only (the Unigram lookup)
  std::unordered_map<std::string, int32_t> added_index;  // added token -> id (before the model, as tokenizers)
  std::size_t max_piece_bytes = 0;
  double min_score = 0;
  std::optional<int32_t> unk;
  bool byte_fallback = false;

  std::vector<std::unique_ptr<AddedToken>> added_tokens;
  std::vector<const AddedToken*> added_by_id;
  AddedTokenMatcher raw_matcher, normalized_matcher;

  std::vector<ReplaceStep> normalizers;
  std::vector<PreTokenizerStep> steps;
  std::vector<int32_t> prefix_ids, suffix_ids;  // TemplateProcessing around $A
  bool metaspace_decoder = false;
  std::string decoder_replacement;
  Prepend decoder_prepend = Prepend::Always;

  std::optional<int32_t> pad_id;
  std::size_t model_max_length = std::numeric_limits<std::size_t>::max();

  void load(const std::string& file, const json* t5_config);
  void load_normalizer(const json& n);
  void load_pre_tokenizer(const json& p);
  static Prepend parse_prepend(const std::string& path, const json& p, const char* where);
  void load_model(const json& model, TokenizerJson& parsed);
  void load_added_tokens(const std::vector<json>& list);
  void load_post_processor(const json& p);
  void set_template(const std::vector<std::string>& single_tokens);

  std::string normalize(std::string_view s) const;
  int32_t find_token(std::string_view token) const {  // added tokens first, then the model; -1 if neither
    if (const auto it = added_index.find(std::string(token)); it != added_index.end()) return it->second;
    return model_index.find(token);
  }
  void encode_into(std::string_view text, std::vector<int32_t>& ids) const;
  void pre_tokenize(std::string_view piece, bool at_start, std::size_t step, std::vector<int32_t>& ids) const;
  void viterbi(std::string_view word, std::vector<int32_t>& ids) const;
};

void UnigramTokenizer::Impl::load(const std::string& file, const json* t5_config) {
  path = file;
  const std::string text = read_regular_file(file);
  TokenizerJson parsed;
  TokenizerJsonReader reader(parsed);
  if (!json::sax_parse(text, &reader) || !reader.error.empty())
    fail(file, "malformed tokenizer JSON: " + (reader.error.empty() ? std::string("parse error") : reader.error));
  const json& root = parsed.root;
  if (!root.is_object()) fail(file, "not a JSON object");
  if (!root.contains("model") || !root["model"].is_object()) fail(file, "no \"model\" object");
  load_model(root["model"], parsed);

  std::vector<json> added;
  if (root.contains("added_tokens")) {
    if (!root["added_tokens"].is_array()) fail(path, "added_tokens is not a list");
    for (const json& t : root["added_tokens"]) added.push_back(t);
  }
  if (!t5_config) {
    load_normalizer(root.value("normalizer", json()));
    load_pre_tokenizer(root.value("pre_tokenizer", json()));
    load_added_tokens(added);
    load_post_processor(root.value("post_processor", json()));
    const json decoder = root.value("decoder", json());
    if (!decoder.is_null()) {
      if (type_of(decoder) != "Metaspace") fail(file, "unsupported decoder " + type_of(decoder) + " (supported: Metaspace, null)");
      metaspace_decoder = true;
      decoder_replacement = decoder.value("replacement", std::string("\xE2\x96\x81"));
      decoder_prepend = parse_prepend(path, decoder, "decoder");
    }
  } else {
    // transformers 5 T5Tokenizer.__init__: the vocabulary of the file in a new Unigram model with
    // unk_id=2, a Precompiled normalizer only if the file has one (refused here), WhitespaceSplit
    // + Metaspace(prepend_scheme="always", split=True), the Metaspace decoder, "$A </s>".
    const json normalizer = root.value("normalizer", json());
    const auto has_precompiled = [](const json& n) {
      const auto is_pc = [](const json& x) { return x.is_object() && x.value("type", std::string()) == "Precompiled"; };
      if (is_pc(n)) return true;
      if (n.is_object() && n.contains("normalizers") && n["normalizers"].is_array())
        for (const json& x : n["normalizers"])
          if (is_pc(x)) return true;
      return false;
    };
    if (has_precompiled(normalizer)) fail(file, "unsupported normalizer Precompiled (T5Tokenizer would apply its charsmap)");
    if (model_size <= 2) fail(file, "T5Tokenizer needs at least 3 vocabulary entries (its unk id is 2)");
    unk = 2;
    byte_fallback = false;
    steps.push_back(PreTokenizerStep{PreTokenizerStep::WhitespaceSplit, {}, Prepend::Always, true});
    steps.push_back(PreTokenizerStep{PreTokenizerStep::Metaspace, "\xE2\x96\x81", Prepend::Always, true});
    metaspace_decoder = true;
    decoder_replacement = "\xE2\x96\x81";
    decoder_prepend = Prepend::Always;
    // Added tokens: tokenizer_config.json's added_tokens_decoder (what transformers adds), else
    // the file's list.
    const json& decoder_map = t5_config->contains("added_tokens_decoder") ? (*t5_config)["added_tokens_decoder"] : json();
    if (decoder_map.is_object() && !decoder_map.empty()) {
      added.clear();
      for (const auto& [id_text, entry] : decoder_map.items()) {
        if (!entry.is_object()) fail(path, "tokenizer_config.json added_tokens_decoder entry " + id_text + " is not an object");
        json t = entry;
        char* stop = nullptr;
        const long long id = std::strtoll(id_text.c_str(), &stop, 10);
        if (id_text.empty() || *stop != '\0' || id < 0 || id > INT32_MAX)
          fail(path, "tokenizer_config.json added_tokens_decoder key \"" + id_text + "\" is not an id");
        t["id"] = id;
        added.push_back(std::move(t));
      }
    }
    load_added_tokens(added);
    const std::string eos = t5_config->contains("eos_token") && (*t5_config)["eos_token"].is_string()
                                ? (*t5_config)["eos_token"].get<std::string>()
                                : std::string("</s>");
    set_template({eos});
  }
  const json padding = root.value("padding", json());
  if (padding.is_object() && padding.contains("pad_id") && padding["pad_id"].is_number_integer())
    pad_id = padding["pad_id"].get<int32_t>();
}

void UnigramTokenizer::Impl::load_normalizer(const json& n) {
  if (n.is_null()) return;
  const std::string type = type_of(n);
  if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    for (const json& inner : n["normalizers"]) load_normalizer(inner);
  } else if (type == "Replace") {
    ReplaceStep step;
    const json pattern = n.value("pattern", json());
    if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
      const auto regex = pattern["Regex"].get<std::string>();
      step.regex = std::make_unique<Regex>(path, "normalizer Replace regex", regex, regex);
    } else if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string())
      step.literal = pattern["String"].get<std::string>();
    else
      fail(path, "normalizer Replace without a Regex or String pattern");
    if (!step.regex && step.literal.empty()) fail(path, "normalizer Replace with an empty String pattern");
    if (!n.contains("content") || !n["content"].is_string()) fail(path, "normalizer Replace without a string content");
    step.content = n["content"].get<std::string>();
    normalizers.push_back(std::move(step));
  } else {
    fail(path, "unsupported normalizer " + type + " (supported: Replace, Sequence, null)");
  }
}

Prepend UnigramTokenizer::Impl::parse_prepend(const std::string& path, const json& p, const char* where) {
  // tokenizers' Metaspace deserializer: add_prefix_space=false means Never; default Always.
  Prepend prepend = Prepend::Always;
  bool explicit_scheme = false;
  if (p.contains("prepend_scheme") && !p["prepend_scheme"].is_null()) {
    const json& s = p["prepend_scheme"];
    const std::string scheme = s.is_string() ? s.get<std::string>() : s.dump();
    if (scheme == "always") prepend = Prepend::Always;
    else if (scheme == "first") prepend = Prepend::First;
    else if (scheme == "never") prepend = Prepend::Never;
    else fail(path, std::string(where) + " Metaspace prepend_scheme " + scheme + " (supported: always, first, never)");
    explicit_scheme = true;
  }
  if (p.contains("add_prefix_space") && p["add_prefix_space"].is_boolean() && !p["add_prefix_space"].get<bool>()) {
    if (explicit_scheme && prepend != Prepend::Never)
      fail(path, std::string(where) + " Metaspace add_prefix_space=false contradicts its prepend_scheme");
    prepend = Prepend::Never;
  }
  return prepend;
}

void UnigramTokenizer::Impl::load_pre_tokenizer(const json& p) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  if (type == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array()) {
    for (const json& inner : p["pretokenizers"]) load_pre_tokenizer(inner);
    return;
  }
  PreTokenizerStep step;
  if (type == "WhitespaceSplit") {
    step.kind = PreTokenizerStep::WhitespaceSplit;
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Metaspace;
    const json r = p.value("replacement", json("\xE2\x96\x81"));
    if (!r.is_string()) fail(path, "pre_tokenizer Metaspace replacement is not a string");
    step.replacement = r.get<std::string>();
    std::size_t k = 0;
    if (step.replacement.empty() || !is_valid_utf8(step.replacement) ||
        (next_code_point(step.replacement, k), k != step.replacement.size()))
      fail(path, "pre_tokenizer Metaspace replacement must be one character");
    step.prepend = parse_prepend(path, p, "pre_tokenizer");
    step.split = p.value("split", true);
  } else {
    fail(path, "unsupported pre_tokenizer " + type + " (supported: Metaspace, WhitespaceSplit, Sequence, null)");
  }
  steps.push_back(std::move(step));
}

void UnigramTokenizer::Impl::load_model(const json& model, TokenizerJson& parsed) {
  const std::string type = model.value("type", std::string());
  if (type != "Unigram") fail(path, "unsupported model type " + (type.empty() ? model.dump().substr(0, 60) : type) + " (supported: Unigram)");
  if (!parsed.vocab_seen) fail(path, "model has no vocab list");
  if (parsed.vocab.empty()) fail(path, "model.vocab is empty");
  if (parsed.vocab.size() > static_cast<std::size_t>(INT32_MAX)) fail(path, "model.vocab is too large");
  byte_fallback = model.value("byte_fallback", false);
  if (model.contains("unk_id") && !model["unk_id"].is_null()) {
    if (!model["unk_id"].is_number_integer()) fail(path, "model.unk_id is not an integer");
    const int64_t u = model["unk_id"].get<int64_t>();
    if (u < 0 || static_cast<std::size_t>(u) >= parsed.vocab.size())
      fail(path, "model.unk_id " + std::to_string(u) + " is outside the vocabulary of " + std::to_string(parsed.vocab.size()));
    unk = static_cast<int32_t>(u);
  }
  model_size = parsed.vocab.size();
  id_to_token.resize(model_size);
  id_known.assign(model_size, true);
  scores.resize(model_size);
  min_score = std::numeric_limits<double>::infinity();
  for (std::size_t id = 0; id < model_size; ++id) {
    auto& [piece, score] = parsed.vocab[id];
    if (!is_valid_utf8(piece)) fail(path, "model.vocab entry " + std::to_string(id) + " is not valid UTF-8");
    max_piece_bytes = std::max(max_piece_bytes, piece.size());
    min_score = std::min(min_score, score);
    scores[id] = score;
    id_to_token[id] = std::move(piece);
  }
  parsed.vocab.clear();
  parsed.vocab.shrink_to_fit();
  // model_index is built once the added tokens are in (id_to_token may still grow).
}

void UnigramTokenizer::Impl::load_added_tokens(const std::vector<json>& list) {
  std::vector<const AddedToken*> raw, normalized;
  for (const json& t : list) {
    if (!t.is_object() || !t.contains("id") || !t.contains("content") || !t["id"].is_number_integer() ||
        !t["content"].is_string())
      fail(path, "added_tokens entry without an integer id and a string content: " + t.dump());
    auto token = std::make_unique<AddedToken>();
    const int64_t id64 = t["id"].get<int64_t>();
    token->content = t["content"].get<std::string>();
    token->original = token->content;
    if (id64 < 0 || id64 > INT32_MAX) fail(path, "added token \"" + token->content + "\" has an id out of range");
    if (!is_valid_utf8(token->content)) fail(path, "added token " + std::to_string(id64) + " is not valid UTF-8");
    token->id = static_cast<int32_t>(id64);
    token->special = t.value("special", false);
    token->lstrip = t.value("lstrip", false);
    token->rstrip = t.value("rstrip", false);
    token->single_word = t.value("single_word", false);
    token->normalized = t.value("normalized", !token->special);
    const auto id = static_cast<std::size_t>(token->id);
    if (id >= id_to_token.size()) {
      if (id > id_to_token.size() + (1u << 24)) fail(path, "added token \"" + token->content + "\" has an id far beyond the vocabulary");
      id_to_token.resize(id + 1);
      id_known.resize(id + 1, false);
    }
    if (!id_known[id]) {
      id_to_token[id] = token->content;
      id_known[id] = true;
    }
    if (token->normalized) token->content = normalize(token->content);
    if (added_by_id.size() < id_to_token.size()) added_by_id.resize(id_to_token.size(), nullptr);
    added_by_id[id] = token.get();
    (token->normalized ? normalized : raw).push_back(token.get());
    added_tokens.push_back(std::move(token));
  }
  added_by_id.resize(id_to_token.size(), nullptr);
  for (const auto& t : added_tokens) added_index[t->original] = t->id;
  // The model index points into id_to_token, which no longer grows.
  std::vector<bool> model_known(id_to_token.size(), false);
  std::fill(model_known.begin(), model_known.begin() + static_cast<std::ptrdiff_t>(model_size), true);
  model_index.build(id_to_token, model_known);
  raw_matcher.build(raw);
  normalized_matcher.build(normalized);
}

void UnigramTokenizer::Impl::set_template(const std::vector<std::string>& single_tokens) {
  suffix_ids.clear();
  prefix_ids.clear();
  for (const std::string& t : single_tokens) {
    const int32_t id = find_token(t);
    if (id < 0) fail(path, "post-processor token \"" + t + "\" is not in the vocabulary");
    suffix_ids.push_back(id);
  }
}

void UnigramTokenizer::Impl::load_post_processor(const json& p) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  if (type != "TemplateProcessing") fail(path, "unsupported post_processor " + type + " (supported: TemplateProcessing, null)");
  const json single = p.value("single", json());
  const json specials = p.value("special_tokens", json::object());
  if (!single.is_array()) fail(path, "post_processor TemplateProcessing without a single template");
  bool seen_a = false;
  for (const json& item : single) {
    if (item.is_object() && item.contains("Sequence")) {
      const json& seq = item["Sequence"];
      if (!seq.is_object() || seq.value("id", std::string()) != "A" || seen_a)
        fail(path, "post_processor single template: only one $A sequence is supported");
      seen_a = true;
    } else if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object() &&
               item["SpecialToken"].contains("id") && item["SpecialToken"]["id"].is_string()) {
      const std::string name = item["SpecialToken"]["id"].get<std::string>();
      if (!specials.is_object() || !specials.contains(name) || !specials[name].is_object() ||
          !specials[name].contains("ids") || !specials[name]["ids"].is_array())
        fail(path, "post_processor special token \"" + name + "\" has no ids in special_tokens");
      for (const json& id : specials[name]["ids"]) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= static_cast<int64_t>(id_to_token.size()))
          fail(path, "post_processor special token \"" + name + "\" has an id outside the vocabulary");
        (seen_a ? suffix_ids : prefix_ids).push_back(id.get<int32_t>());
      }
    } else {
      fail(path, "post_processor single template item " + item.dump() + " is not supported");
    }
  }
  if (!seen_a) fail(path, "post_processor single template without $A");
}

// ---------------------------------------------------------------------------------------------
// Encoding

std::string UnigramTokenizer::Impl::normalize(std::string_view s) const {
  std::string text(s), out;
  for (const ReplaceStep& r : normalizers) {
    out.clear();
    std::size_t prev = 0;
    const auto on_match = [&](std::size_t b, std::size_t e) {
      out.append(text, prev, b - prev).append(r.content);
      prev = e;
    };
    if (r.regex) {
      r.regex->for_each_match(text, on_match);
    } else {
      for (std::size_t at = text.find(r.literal); at != std::string::npos; at = text.find(r.literal, prev))
        on_match(at, at + r.literal.size());
    }
    if (prev == 0 && out.empty()) continue;  // no match
    out.append(text, prev, std::string::npos);
    text.swap(out);
  }
  return text;
}

void UnigramTokenizer::Impl::encode_into(std::string_view text, std::vector<int32_t>& ids) const {
  raw_matcher.split(text, [&](std::string_view piece, std::size_t offset, const AddedToken* token) {
    if (token) {
      ids.push_back(token->id);
      return;
    }
    const bool at_start = offset == 0;
    if (normalizers.empty() && normalized_matcher.empty()) {
      pre_tokenize(piece, at_start, 0, ids);
      return;
    }
    const std::string normalized = normalize(piece);
    normalized_matcher.split(normalized, [&](std::string_view part, std::size_t inner_offset, const AddedToken* inner) {
      if (inner) ids.push_back(inner->id);
      else pre_tokenize(part, at_start && inner_offset == 0, 0, ids);
    });
  });
}

// Runs the pre-tokenizer steps from `step` on piece (at_start: it begins the original text, for
// Metaspace's prepend_scheme "first"), then the model on every resulting word.
void UnigramTokenizer::Impl::pre_tokenize(std::string_view piece, bool at_start, std::size_t step,
                                          std::vector<int32_t>& ids) const {
  if (piece.empty()) return;
  if (step == steps.size()) {
    viterbi(piece, ids);
    return;
  }
  const PreTokenizerStep& s = steps[step];
  if (s.kind == PreTokenizerStep::WhitespaceSplit) {
    std::size_t i = 0;
    while (i < piece.size()) {
      std::size_t k = i;
      if (is_white_space(next_code_point(piece, k))) {
        i = k;
        continue;
      }
      std::size_t end = k;
      while (end < piece.size()) {
        std::size_t m = end;
        if (is_white_space(next_code_point(piece, m))) break;
        end = m;
      }
      pre_tokenize(piece.substr(i, end - i), at_start && i == 0, step + 1, ids);
      i = end;
    }
    return;
  }
  // Metaspace: ' ' -> replacement, the replacement prepended, then a cut before every replacement
  // (SplitDelimiterBehavior::MergedWithNext on single characters).
  std::string text;
  text.reserve(piece.size() + s.replacement.size() + 8);
  const bool prepend = (s.prepend == Prepend::Always || (s.prepend == Prepend::First && at_start)) &&
                       !(piece.front() == ' ' || piece.starts_with(s.replacement));
  if (prepend) text += s.replacement;
  for (const char c : piece) {
    if (c == ' ') text += s.replacement;
    else text += c;
  }
  if (!s.split) {
    pre_tokenize(text, at_start, step + 1, ids);
    return;
  }
  std::string_view view(text);
  std::size_t begin = 0;
  for (std::size_t at = view.find(s.replacement, 1); at != std::string_view::npos; at = view.find(s.replacement, at + 1)) {
    pre_tokenize(view.substr(begin, at - begin), at_start && begin == 0, step + 1, ids);
    begin = at;
  }
  pre_tokenize(view.substr(begin), at_start && begin == 0, step + 1, ids);
}

// Unigram::encode_optimized + Unigram::tokenize of `tokenizers`.
void UnigramTokenizer::Impl::viterbi(std::string_view word, std::vector<int32_t>& ids) const {
  struct Node {
    double score;
    int32_t start;  // -1: no path ends here yet
    int32_t id;
  };
  thread_local std::vector<Node> best;
  const std::size_t n = word.size();
  best.assign(n + 1, Node{0.0, -1, 0});
  const double unk_score = min_score - kUnkPenalty;
  for (std::size_t pos = 0; pos < n;) {
    const double till_here = best[pos].score;
    const std::size_t char_bytes = utf8_length_at(static_cast<unsigned char>(word[pos]));
    bool has_single_node = false;
    std::uint64_t h = PieceIndex::kBasis;
    const std::size_t longest = std::min(max_piece_bytes, n - pos);
    for (std::size_t len = 1; len <= longest; ++len) {
      h = PieceIndex::step(h, word[pos + len - 1]);
      if (pos + len < n && (static_cast<unsigned char>(word[pos + len]) & 0xC0) == 0x80) continue;  // mid-character
      const int32_t id = model_index.find(h, word.substr(pos, len));
      if (id < 0) continue;
      const double candidate = scores[id] + till_here;
      Node& target = best[pos + len];
      if (target.start < 0 || candidate > target.score) target = Node{candidate, static_cast<int32_t>(pos), id};
      if (len == char_bytes) has_single_node = true;
    }
    if (!has_single_node) {
      if (!unk) throw Error(path + ": the text has a character that no vocabulary piece covers and the model has no unk_id");
      Node& target = best[pos + char_bytes];
      const double candidate = unk_score + till_here;
      if (target.start < 0 || candidate > target.score) target = Node{candidate, static_cast<int32_t>(pos), *unk};
    }
    pos += char_bytes;
  }
  // Back from the end; consecutive unknowns fuse into one token (fuse_unk).
  thread_local std::vector<std::pair<std::size_t, std::size_t>> spans;  // (start, end), reversed
  thread_local std::vector<int32_t> span_ids;                           // id, or -1: a fused unknown run
  spans.clear();
  span_ids.clear();
  std::size_t end = n, unk_end = std::string_view::npos;
  while (end > 0) {
    const Node& node = best[end];
    const auto start = static_cast<std::size_t>(node.start);
    if (unk && node.id == *unk) {
      if (unk_end == std::string_view::npos) unk_end = end;
    } else {
      if (unk_end != std::string_view::npos) {
        spans.emplace_back(end, unk_end);
        span_ids.push_back(-1);
        unk_end = std::string_view::npos;
      }
      spans.emplace_back(start, end);
      span_ids.push_back(node.id);
    }
    end = start;
  }
  if (unk_end != std::string_view::npos) {
    spans.emplace_back(0, unk_end);
    span_ids.push_back(-1);
  }
  for (std::size_t k = spans.size(); k-- > 0;) {
    if (span_ids[k] >= 0) {
      ids.push_back(span_ids[k]);
      continue;
    }
    // A fused run: its text as a piece if it is one, else bytes (byte_fallback), else unk.
    const std::string_view text = word.substr(spans[k].first, spans[k].second - spans[k].first);
    const int32_t id = model_index.find(text);
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    if (byte_fallback) {
      const std::size_t mark = ids.size();
      bool all = true;
      char name[8];
      for (const char c : text) {
        std::snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned char>(c));
        const int32_t b = model_index.find(name);
        if (b < 0) { all = false; break; }
        ids.push_back(b);
      }
      if (all) continue;
      ids.resize(mark);
    }
    ids.push_back(*unk);
  }
}

// ---------------------------------------------------------------------------------------------
// Public API

UnigramTokenizer::UnigramTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
UnigramTokenizer::UnigramTokenizer(UnigramTokenizer&&) noexcept = default;
UnigramTokenizer& UnigramTokenizer::operator=(UnigramTokenizer&&) noexcept = default;
UnigramTokenizer::~UnigramTokenizer() = default;

UnigramTokenizer UnigramTokenizer::from_file(const std::string& tokenizer_json) {
  auto impl = std::make_unique<Impl>();
  impl->load(tokenizer_json, nullptr);
  return UnigramTokenizer(std::move(impl));
}

UnigramTokenizer UnigramTokenizer::from_dir(const std::string& dir, TokenizerSemantics semantics) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    const std::string kind = describe_file_type(dir);
    fail(dir, kind.empty() ? "not a tokenizer folder (no such folder)" : "is " + kind + ", not a tokenizer folder");
  }
  const std::string file = (fs::path(dir) / "tokenizer.json").string();
  if (!fs::exists(file, ec)) fail(dir, "no tokenizer.json in this directory");
  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  json config;
  const bool has_config = fs::exists(config_path, ec);
  if (has_config) {
    config = read_json_file(config_path, "tokenizer_config");
    if (!config.is_object()) fail(config_path, "not a JSON object");
  }
  const json* t5 = nullptr;
  if (semantics == TokenizerSemantics::Transformers && has_config && config.contains("tokenizer_class") &&
      !config["tokenizer_class"].is_null()) {
    const std::string cls = config["tokenizer_class"].is_string() ? config["tokenizer_class"].get<std::string>()
                                                                   : config["tokenizer_class"].dump();
    if (cls != "T5Tokenizer" && cls != "T5TokenizerFast")
      fail(config_path, "tokenizer_class " + cls + ": transformers rebuilds such tokenizers in its own way, which is " +
                            "not reproduced (supported: T5Tokenizer); read tokenizer.json as it stands with the " +
                            "tokenizers semantics instead");
    t5 = &config;
  }
  auto impl = std::make_unique<Impl>();
  impl->semantics = semantics;
  impl->load(file, t5);
  if (has_config) {
    if (config.contains("pad_token") && !config["pad_token"].is_null()) {
      const json& pad = config["pad_token"];
      const std::string content = pad.is_object() ? pad.value("content", std::string())
                                  : pad.is_string() ? pad.get<std::string>() : std::string();
      const int32_t id = impl->find_token(content);
      if (id < 0) fail(config_path, "pad_token \"" + content + "\" is not in the vocabulary");
      impl->pad_id = id;
    }
    if (config.contains("model_max_length") && config["model_max_length"].is_number()) {
      const double length = config["model_max_length"].get<double>();
      if (length > 0 && length < 1e18) impl->model_max_length = static_cast<std::size_t>(length);
    }
  }
  return UnigramTokenizer(std::move(impl));
}

std::vector<int32_t> UnigramTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (!is_valid_utf8(text)) throw Error("tokenizer: text to encode is not valid UTF-8");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids.insert(ids.end(), impl_->prefix_ids.begin(), impl_->prefix_ids.end());
  impl_->encode_into(text, ids);
  if (add_special_tokens) ids.insert(ids.end(), impl_->suffix_ids.begin(), impl_->suffix_ids.end());
  return ids;
}

std::string UnigramTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string out;
  std::size_t index = 0;  // of the token among those decoded
  for (const int32_t id : ids) {
    const std::string& token = id_to_token(id);
    if (skip_special_tokens && is_special(id)) continue;
    if (!impl_->metaspace_decoder) {
      if (index++) out += ' ';
      out += token;
      continue;
    }
    // Metaspace decoder: the replacement becomes ' ', except in the first token where it goes.
    const std::string& rep = impl_->decoder_replacement;
    const bool drop = index == 0 && impl_->decoder_prepend != Prepend::Never;
    for (std::size_t i = 0; i < token.size();) {
      if (!rep.empty() && token.compare(i, rep.size(), rep) == 0) {
        if (!drop) out += ' ';
        i += rep.size();
      } else {
        out += token[i++];
      }
    }
    ++index;
  }
  return out;
}

Encoding UnigramTokenizer::encode_batch(const std::vector<std::string>& texts, std::optional<std::size_t> max_length,
                                        Padding padding, bool truncate, bool add_special_tokens) const {
  const std::size_t unbounded = std::numeric_limits<std::size_t>::max();
  const std::size_t length = max_length.value_or(impl_->model_max_length);
  if (padding == Padding::MaxLength && length == unbounded)
    fail(impl_->path, "padding to max_length needs a max_length (the tokenizer has no model_max_length)");
  const std::size_t limit = truncate ? length : unbounded;
  const std::size_t added = add_special_tokens ? impl_->prefix_ids.size() + impl_->suffix_ids.size() : 0;
  Encoding batch;
  batch.input_ids.reserve(texts.size());
  std::size_t longest = 0;
  for (const std::string& text : texts) {
    if (!is_valid_utf8(text)) throw Error("tokenizer: text to encode is not valid UTF-8");
    std::vector<int32_t> ids;
    impl_->encode_into(text, ids);
    // transformers (tokenizers' truncation): the text ids make room for the special tokens.
    if (limit != unbounded) ids.resize(std::min(ids.size(), limit > added ? limit - added : 0));
    std::vector<int64_t> row;
    row.reserve(ids.size() + added);
    if (add_special_tokens) row.insert(row.end(), impl_->prefix_ids.begin(), impl_->prefix_ids.end());
    row.insert(row.end(), ids.begin(), ids.end());
    if (add_special_tokens) row.insert(row.end(), impl_->suffix_ids.begin(), impl_->suffix_ids.end());
    longest = std::max(longest, row.size());
    batch.input_ids.push_back(std::move(row));
  }
  const std::size_t target = padding == Padding::MaxLength ? length : padding == Padding::Longest ? longest : 0;
  pad_and_mask(batch, target, padding == Padding::None ? 0 : pad_token_id());
  return batch;
}

std::optional<int32_t> UnigramTokenizer::token_to_id(std::string_view token) const {
  const int32_t id = impl_->find_token(token);
  return id < 0 ? std::nullopt : std::optional<int32_t>(id);
}

const std::string& UnigramTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= impl_->id_to_token.size() || !impl_->id_known[id])
    fail(impl_->path, "token id " + std::to_string(id) + " is not in the vocabulary");
  if (const AddedToken* added = impl_->added_by_id[id]) return added->original;
  return impl_->id_to_token[id];
}

bool UnigramTokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<std::size_t>(id) < impl_->added_by_id.size() && impl_->added_by_id[id] &&
         impl_->added_by_id[id]->special;
}

std::size_t UnigramTokenizer::vocab_size() const { return impl_->id_to_token.size(); }

int32_t UnigramTokenizer::pad_token_id() const {
  if (!impl_->pad_id) fail(impl_->path, "the tokenizer has no pad token (tokenizer_config.json pad_token)");
  return *impl_->pad_id;
}

std::optional<int32_t> UnigramTokenizer::unk_id() const { return impl_->unk; }
std::size_t UnigramTokenizer::model_max_length() const { return impl_->model_max_length; }
TokenizerSemantics UnigramTokenizer::semantics() const { return impl_->semantics; }
const std::string& UnigramTokenizer::path() const { return impl_->path; }

}  // namespace diffsynth
