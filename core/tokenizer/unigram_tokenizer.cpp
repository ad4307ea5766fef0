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

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
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

namespace diffsynth {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// UTF-8 helpers (input is validated once, at encode)

inline std::size_t utf8_length_at(unsigned char b0) {
  return b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
}

inline char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const std::size_t n = utf8_length_at(b0);
  char32_t c = n == 1 ? b0 : n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
  for (std::size_t k = 1; k < n; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3Fu);
  i += n;
  return c;
}

inline char32_t last_code_point(std::string_view s) {
  std::size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return next_code_point(s, start);
}

bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0;
  const auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  while (i < s.size()) {
    const unsigned char b0 = at(i);
    if (b0 < 0x80) { ++i; continue; }
    std::size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) need = 2;
    else if (b0 == 0xE0) { need = 3; lo = 0xA0; }
    else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) need = 3;
    else if (b0 == 0xED) { need = 3; hi = 0x9F; }
    else if (b0 == 0xF0) { need = 4; lo = 0x90; }
    else if (b0 >= 0xF1 && b0 <= 0xF3) need = 4;
    else if (b0 == 0xF4) { need = 4; hi = 0x8F; }
    else return false;
    if (i + need > s.size()) return false;
    for (std::size_t k = 1; k < need; ++k) {
      const unsigned char b = at(i + k);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return false;
    }
    i += need;
  }
  return true;
}

// Rust char::is_whitespace (the Unicode White_Space property): WhitespaceSplit, lstrip / rstrip.
constexpr bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Rust char::is_alphanumeric, approximated by the general categories L* and N* (single_word).
bool is_alphanumeric(char32_t c) {
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

std::string type_of(const json& component) {
  if (component.is_object() && component.contains("type") && component["type"].is_string())
    return component["type"].get<std::string>();
  return component.dump();
}

// ---------------------------------------------------------------------------------------------
// Regex for Replace normalizers (PCRE2, JIT when available)

class Regex {
 public:
  Regex(const std::string& path, const std::string& pattern) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                          &error, &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      fail(path, "normalizer Replace regex " + pattern + " does not compile at offset " + std::to_string(offset) +
                     ": " + reinterpret_cast<const char*>(message));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  // Calls on_match(begin, end) for each non-overlapping match (an empty match advances one character).
  template <class F>
  void for_each_match(std::string_view s, F&& on_match) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    std::size_t at = 0;
    while (at <= s.size()) {
      const auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
      const int rc = jit_ ? pcre2_jit_match(code_, subject, s.size(), at, PCRE2_NO_UTF_CHECK, md, nullptr)
                          : pcre2_match(code_, subject, s.size(), at, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[1] == ov[0]) {
        if (ov[0] >= s.size()) break;
        at = ov[0] + utf8_length_at(static_cast<unsigned char>(s[ov[0]]));
        continue;
      }
      on_match(static_cast<std::size_t>(ov[0]), static_cast<std::size_t>(ov[1]));
      at = ov[1];
    }
    pcre2_match_data_free(md);
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

struct ReplaceStep {
  std::string literal;           // String pattern
  std::unique_ptr<Regex> regex;  // or Regex pattern
  std::string content;
};

// ---------------------------------------------------------------------------------------------
// Added tokens (AddedVocabulary::find_matches)

struct AddedToken {
  std::string original;  // as in the file: what id_to_token / token_to_id see
  std::string content;   // as matched: normalised for normalized=true tokens
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

class AddedTokenMatcher {
 public:
  bool empty() const { return tokens_.empty(); }
  void build(std::vector<const AddedToken*> tokens) {
    std::stable_sort(tokens.begin(), tokens.end(),
                     [](const AddedToken* a, const AddedToken* b) { return a->content.size() > b->content.size(); });
    tokens_.clear();
    first_byte_.fill(false);
    for (const AddedToken* t : tokens) {
      if (t->content.empty()) continue;
      tokens_.push_back(t);
      first_byte_[static_cast<unsigned char>(t->content[0])] = true;
    }
  }

  // Leftmost, then longest match at or after `from`.
  std::pair<const AddedToken*, std::size_t> find(std::string_view s, std::size_t from) const {
    for (std::size_t i = from; i < s.size(); ++i) {
      if (!first_byte_[static_cast<unsigned char>(s[i])]) continue;
      for (const AddedToken* t : tokens_)
        if (s.compare(i, t->content.size(), t->content) == 0) return {t, i};
    }
    return {nullptr, std::string_view::npos};
  }

  // on_piece(text, offset in s, token or nullptr) for the pieces of s in order.
  template <class F>
  void split(std::string_view s, F&& on_piece) const {
    if (tokens_.empty()) {
      if (!s.empty()) on_piece(s, std::size_t{0}, nullptr);
      return;
    }
    std::size_t emitted = 0, search = 0;
    while (search < s.size()) {
      const auto [token, position] = find(s, search);
      if (!token) break;
      std::size_t start = position, stop = position + token->content.size();
      search = stop;
      if (token->single_word) {
        const bool space_before = start == 0 || !is_alphanumeric(last_code_point(s.substr(0, start)));
        std::size_t k = stop;
        const bool space_after = stop == s.size() || !is_alphanumeric(next_code_point(s, k));
        if (!space_before || !space_after) continue;
      }
      if (token->lstrip) {
        std::size_t new_start = start;
        while (new_start > 0) {
          std::size_t b = new_start - 1;
          while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
          std::size_t k = b;
          if (!is_white_space(next_code_point(s, k))) break;
          new_start = b;
        }
        start = std::max(new_start, emitted);
      }
      if (token->rstrip) {
        while (stop < s.size()) {
          std::size_t k = stop;
          if (!is_white_space(next_code_point(s, k))) break;
          stop = k;
        }
      }
      if (emitted < start) on_piece(s.substr(emitted, start - emitted), emitted, nullptr);
      on_piece(s.substr(start, stop - start), start, token);
      emitted = stop;
      search = std::max(search, stop);
    }
    if (emitted < s.size()) on_piece(s.substr(emitted), emitted, nullptr);
  }

 private:
  std::vector<const AddedToken*> tokens_;  // longest first
  std::array<bool, 256> first_byte_{};
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

class TokenizerJsonReader : public nlohmann::json_sax<json> {
 public:
  explicit TokenizerJsonReader(TokenizerJson& out) : out_(out) {}
  std::string error;

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
      if (entry_fields_ != 0) return bad("model.vocab entries must be [piece, score]");
      out_.vocab.emplace_back(std::move(v), 0.0);
      entry_fields_ = 1;
      return true;
    }
    return put(std::move(v));
  }
  bool binary(binary_t&) override { return bad("binary values are not JSON"); }
  bool start_object(std::size_t) override {
    if (region_ != Region::Dom) return bad("model.vocab entries must be [piece, score]");
    return open(json::object());
  }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (region_ == Region::Entry) return bad("model.vocab entries must be [piece, score]");
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
    return open(json::array());
  }
  bool end_array() override {
    if (region_ == Region::Entry) {
      if (entry_fields_ != 2) return bad("model.vocab entries must be [piece, score]");
      region_ = Region::Vocab;
      return true;
    }
    if (region_ == Region::Vocab) {
      region_ = Region::Dom;
      return true;
    }
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    if (error.empty()) error = e.what();
    return false;
  }

 private:
  enum class Region { Dom, Vocab, Entry };
  bool bad(const std::string& message) {
    if (error.empty()) error = message;
    return false;
  }
  bool score(double v) {
    if (entry_fields_ != 1) return bad("model.vocab entries must be [piece, score]");
    if (!std::isfinite(v)) return bad("model.vocab score of \"" + out_.vocab.back().first + "\" is not finite");
    out_.vocab.back().second = v;
    entry_fields_ = 2;
    return true;
  }
  bool at_model() const { return stack_.size() == 2 && keys_.back() == "model" && stack_.back()->is_object(); }
  json* place(json&& value) {
    if (stack_.empty()) {
      out_.root = std::move(value);
      return &out_.root;
    }
    json& top = *stack_.back();
    if (top.is_object()) {
      json& slot = top[key_];
      slot = std::move(value);
      return &slot;
    }
    top.push_back(std::move(value));
    return &top.back();
  }
  bool put(json&& value) {
    if (region_ != Region::Dom) return bad("model.vocab entries must be [piece, score]");
    place(std::move(value));
    return true;
  }
  bool open(json&& container) {
    std::string under = stack_.empty() || !stack_.back()->is_object() ? std::string() : key_;
    stack_.push_back(place(std::move(container)));
    keys_.push_back(std::move(under));
    return true;
  }

  TokenizerJson& out_;
  std::vector<json*> stack_;
  std::vector<std::string> keys_;
  std::string key_;
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
    if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string())
      step.regex = std::make_unique<Regex>(path, pattern["Regex"].get<std::string>());
    else if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string())
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
  const int64_t pad_with = padding == Padding::None ? 0 : pad_token_id();
  for (auto& row : batch.input_ids) {
    std::vector<int64_t> mask(row.size(), 1);
    if (row.size() < target) {
      mask.resize(target, 0);
      row.resize(target, pad_with);
    }
    batch.attention_mask.push_back(std::move(mask));
  }
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
