// Byte-level BPE from a Hugging Face tokenizer.json, the same steps as Rust `tokenizers`:
//   1. added tokens (normalized=false) are cut out of the raw text, leftmost-longest;
//   2. every other piece is normalised (NFC) and cut again by the normalized=true added tokens;
//   3. the pre-tokenizer splits it (Split regex, ByteLevel);
//   4. every word goes through BPE merges by rank, on byte ids (the ByteLevel byte->char mapping
//      is a bijection, so we keep raw bytes and map each byte straight to its vocabulary id).
#include "core/tokenizer/bpe_tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <shared_mutex>
#include <unordered_map>

#include "core/error.h"
#include "core/file_io.h"
#include "core/tokenizer/tokenizer_parts.h"

namespace diffsynth {
namespace {

using json = nlohmann::json;
using namespace tokenizer_parts;

// ---------------------------------------------------------------------------------------------
// NFC. utf8proc does the work; a quick check skips it for text that NFC cannot change, which is
// almost all text: a string of code points that have no canonical decomposition (Hangul
// syllables aside), combining class 0 and never appear as the second half of a canonical
// composition is its own NFC.

class NfcQuickCheck {
 public:
  static const NfcQuickCheck& get() {
    static const NfcQuickCheck instance;
    return instance;
  }
  bool maybe_changes(char32_t c) const { return (unstable_[c >> 6] >> (c & 63)) & 1; }

 private:
  NfcQuickCheck() : unstable_((0x110000 >> 6), 0) {
    const auto mark = [&](char32_t c) { unstable_[c >> 6] |= std::uint64_t{1} << (c & 63); };
    for (char32_t c = 0x80; c < 0x110000; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(c));
      if (p->combining_class != 0) mark(c);
      const bool hangul_syllable = c >= 0xAC00 && c <= 0xD7A3;
      if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0 && !hangul_syllable) {
        mark(c);
        utf8proc_int32_t parts[16];
        const auto n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), parts, 16, UTF8PROC_DECOMPOSE, nullptr);
        for (utf8proc_ssize_t k = 1; k < n && k < 16; ++k) mark(static_cast<char32_t>(parts[k]));
      }
    }
    for (char32_t c = 0x1161; c <= 0x1175; ++c) mark(c);  // Hangul vowel jamo compose with L / LV
    for (char32_t c = 0x11A8; c <= 0x11C2; ++c) mark(c);  // trailing jamo compose with LV
  }
  std::vector<std::uint64_t> unstable_;
};

// NFC of s: s itself when it cannot change, else the normalised text in `buffer`.
std::string_view nfc(std::string_view s, std::string& buffer) {
  std::size_t i = 0;
  while (i < s.size() && static_cast<unsigned char>(s[i]) < 0x80) ++i;
  if (i == s.size()) return s;
  const NfcQuickCheck& check = NfcQuickCheck::get();
  bool may_change = false;
  while (i < s.size() && !may_change) may_change = check.maybe_changes(next_code_point(s, i));
  if (!may_change) return s;
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &out,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) throw Error(std::string("NFC normalisation failed: ") + utf8proc_errmsg(n));
  buffer.assign(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
  std::free(out);
  return buffer;
}

std::string nfc_copy(std::string_view s) {
  std::string buffer;
  return std::string(nfc(s, buffer));
}

// ---------------------------------------------------------------------------------------------
// Regex (PCRE2, JIT when available)

// Oniguruma (what `tokenizers` uses) takes \s as Unicode White_Space; PCRE2 with UCP differs
// (it adds U+180E, for one). Rewrite \s / \S to that exact set so both engines agree.
std::string onig_compatible_pattern(std::string_view pattern) {
  static constexpr std::string_view kSpace =
      "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      ++i;
      if (e == 's') {
        if (in_class) out.append(kSpace);
        else out.append("[").append(kSpace).append("]");
      } else if (e == 'S' && !in_class) {
        out.append("[^").append(kSpace).append("]");
      } else {
        out += '\\';
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') { out += '^'; ++i; }
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') { out += ']'; ++i; }
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}


// ---------------------------------------------------------------------------------------------
// Byte-level alphabet (GPT-2's bytes_to_unicode)

std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> table{};
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = printable[b] ? static_cast<char32_t>(b) : next++;
  return table;
}

// ---------------------------------------------------------------------------------------------
// Merge table: (left id, right id) -> (rank, merged id), open addressing.

class MergeTable {
 public:
  struct Entry {
    std::uint64_t key = kEmpty;
    std::uint32_t rank = 0;
    std::int32_t merged = 0;
  };
  static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};

  void reserve(std::size_t n) {
    const std::size_t size = std::bit_ceil(std::max<std::size_t>(16, n * 2));
    slots_.assign(size, Entry{});
    shift_ = 64 - std::countr_zero(size);
  }
  // A pair listed twice keeps its last rank, as the HashMap `tokenizers` collects into does.
  void insert_or_assign(std::int32_t left, std::int32_t right, std::uint32_t rank, std::int32_t merged) {
    Entry& e = slot(key(left, right));
    e = Entry{key(left, right), rank, merged};
  }
  const Entry* find(std::int32_t left, std::int32_t right) const {
    const std::uint64_t k = key(left, right);
    for (std::size_t i = index(k);; i = (i + 1) & (slots_.size() - 1)) {
      const Entry& e = slots_[i];
      if (e.key == k) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }

 private:
  static std::uint64_t key(std::int32_t l, std::int32_t r) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(l)) << 32) | static_cast<std::uint32_t>(r);
  }
  std::size_t index(std::uint64_t k) const { return static_cast<std::size_t>((k * 0x9E3779B97F4A7C15ull) >> shift_); }
  Entry& slot(std::uint64_t k) {
    for (std::size_t i = index(k);; i = (i + 1) & (slots_.size() - 1))
      if (slots_[i].key == k || slots_[i].key == kEmpty) return slots_[i];
  }
  std::vector<Entry> slots_;
  int shift_ = 60;
};


// ---------------------------------------------------------------------------------------------
// Pre-tokenizer steps

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreTokenizerStep {
  // Split: a regex or a literal; ByteLevel: optional prefix space + optional GPT-2 regex split.
  std::unique_ptr<Regex> regex;
  std::string literal;
  bool is_literal = false;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel only
  bool splits = true;             // false for ByteLevel with use_regex=false
  bool byte_level = false;
};

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---------------------------------------------------------------------------------------------
// JSON: a SAX handler that builds a DOM for everything except model.vocab and model.merges,
// which it stores directly (they are 99% of the file; a DOM of them costs ~0.5 s of parsing).

struct TokenizerJson {
  json root;
  std::vector<std::pair<std::string, int64_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
};

class TokenizerJsonReader : public tokenizer_parts::DomSax {
 public:
  explicit TokenizerJsonReader(TokenizerJson& out) : DomSax(out.root), out_(out) {}

  bool null() override { return put(nullptr); }
  bool boolean(bool v) override { return put(v); }
  bool number_integer(number_integer_t v) override {
    if (region_ == Region::Vocab) return vocab_entry(v);
    return put(v);
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (region_ == Region::Vocab) return vocab_entry(static_cast<int64_t>(std::min<number_unsigned_t>(v, INT64_MAX)));
    return put(v);
  }
  bool number_float(number_float_t v, const string_t&) override {
    if (region_ != Region::Dom) return bad("model.vocab ids and model.merges must be integers and strings");
    return put(v);
  }
  bool string(string_t& v) override {
    if (region_ == Region::Merges) {
      if (merge_depth_ == 0) {  // "a b"
        const auto space = v.find(' ');
        if (space == std::string::npos || v.find(' ', space + 1) != std::string::npos)
          return bad("model.merges entry \"" + v + "\" is not two tokens separated by one space");
        out_.merges.emplace_back(v.substr(0, space), v.substr(space + 1));
        return true;
      }
      merge_parts_.push_back(std::move(v));
      return true;
    }
    if (region_ == Region::Vocab) return bad("model.vocab values must be integer ids");
    return put(std::move(v));
  }
  bool start_object(std::size_t) override {
    if (region_ != Region::Dom) return bad("unexpected object inside model.vocab or model.merges");
    if (at_model() && key_ == "vocab") {
      region_ = Region::Vocab;
      return true;
    }
    return dom_open(json::object());
  }
  bool end_object() override {
    if (region_ == Region::Vocab) {
      region_ = Region::Dom;
      top()["vocab"] = json::object();  // mark it present
      return true;
    }
    return dom_close();
  }
  bool start_array(std::size_t) override {
    if (region_ == Region::Vocab) return bad("unexpected array inside model.vocab");
    if (region_ == Region::Merges) {
      if (merge_depth_ != 0) return bad("model.merges entries must be \"a b\" or [a, b]");
      merge_depth_ = 1;
      merge_parts_.clear();
      return true;
    }
    if (at_model() && key_ == "merges") {
      region_ = Region::Merges;
      return true;
    }
    return dom_open(json::array());
  }
  bool end_array() override {
    if (region_ == Region::Merges) {
      if (merge_depth_ == 1) {
        merge_depth_ = 0;
        if (merge_parts_.size() != 2) return bad("model.merges entry is not a pair of tokens");
        out_.merges.emplace_back(std::move(merge_parts_[0]), std::move(merge_parts_[1]));
        return true;
      }
      region_ = Region::Dom;
      top()["merges"] = json::array();
      return true;
    }
    return dom_close();
  }

 private:
  enum class Region { Dom, Vocab, Merges };
  bool vocab_entry(int64_t id) {
    out_.vocab.emplace_back(std::move(key_), id);
    return true;
  }
  bool put(json&& value) {
    if (region_ != Region::Dom) return bad("unexpected value inside model.vocab or model.merges");
    return dom_value(std::move(value));
  }

  TokenizerJson& out_;
  Region region_ = Region::Dom;
  int merge_depth_ = 0;
  std::vector<std::string> merge_parts_;
};

// Regular files only (a FIFO would block forever), at most 1 GiB.
std::string read_file(const std::string& path) { return read_regular_file(path); }


// Transparent hashing, so string_view lookups allocate nothing (the word cache).
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

// token -> id over the strings of id_to_token: open addressing on (hash tag, id) slots, one
// probe and one string compare per lookup. std::unordered_map made loading the 151k-token
// vocabulary (and its 151k merges, three lookups each) ~3x slower through cache misses.
class VocabIndex {
 public:
  void build(const std::vector<std::string>& tokens, const std::vector<bool>& known) {
    tokens_ = &tokens;
    const std::size_t size = std::bit_ceil(std::max<std::size_t>(16, tokens.size() * 2));
    slots_.assign(size, kEmpty);
    for (std::size_t id = 0; id < tokens.size(); ++id)
      if (known[id]) assign(tokens[id], static_cast<int32_t>(id));
  }
  // Points `token` at id (an existing entry for the same text is replaced).
  void assign(std::string_view token, int32_t id) {
    const std::uint64_t h = hash(token);
    for (std::size_t i = h & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i] == kEmpty || ((slots_[i] >> 32) == (h >> 32) && (*tokens_)[slots_[i] & 0xFFFFFFFFu] == token)) {
        slots_[i] = (h & 0xFFFFFFFF00000000ull) | static_cast<std::uint32_t>(id);
        return;
      }
    }
  }
  std::optional<int32_t> find(std::string_view token) const {
    if (slots_.empty()) return std::nullopt;
    const std::uint64_t h = hash(token);
    for (std::size_t i = h & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      const std::uint64_t slot = slots_[i];
      if (slot == kEmpty) return std::nullopt;
      if ((slot >> 32) == (h >> 32) && (*tokens_)[slot & 0xFFFFFFFFu] == token) return static_cast<int32_t>(slot & 0xFFFFFFFFu);
    }
  }

 private:
  static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
  static std::uint64_t hash(std::string_view s) {  // FNV-1a, then a mix so low bits spread
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
    return h ^ (h >> 29);
  }
  const std::vector<std::string>* tokens_ = nullptr;
  std::vector<std::uint64_t> slots_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

struct BPETokenizer::Impl {
  std::string path;
  // Vocabulary (model + added tokens): id -> token, token -> id.
  std::vector<std::string> id_to_token;
  std::vector<bool> id_known;
  VocabIndex token_to_id;
  std::vector<std::unique_ptr<AddedToken>> added_tokens;
  std::vector<const AddedToken*> added_by_id;  // indexed by id, nullptr if not added
  AddedTokenMatcher raw_matcher, normalized_matcher;

  bool apply_nfc = false;  // the normalizer is NFC
  std::vector<PreTokenizerStep> steps;
  MergeTable merges;
  std::array<int32_t, 256> byte_id{};            // vocabulary id of each single byte
  std::array<int16_t, 0x144> char_to_byte{};     // inverse of bytes_to_unicode, -1 elsewhere
  bool ignore_merges = false;

  std::optional<int32_t> pad_id;
  std::size_t model_max_length = std::numeric_limits<std::size_t>::max();

  mutable std::shared_mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache;

  void load(const std::string& file);
  void load_normalizer(const json& n);
  void load_pre_tokenizer(const json& p);
  void load_model(const json& model, TokenizerJson& parsed);
  void load_added_tokens(const json& list);

  void encode_into(std::string_view text, std::vector<int32_t>& ids) const;
  void pre_tokenize(std::string_view piece, std::size_t step, std::vector<int32_t>& ids) const;
  void split_step(const PreTokenizerStep& s, std::string_view piece, std::size_t step, std::vector<int32_t>& ids) const;
  void bpe(std::string_view word, std::vector<int32_t>& ids) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
};

void BPETokenizer::Impl::load(const std::string& file) {
  path = file;
  const std::string text = read_file(file);
  TokenizerJson parsed;
  TokenizerJsonReader reader(parsed);
  if (!json::sax_parse(text, &reader) || !reader.error.empty())
    fail(file, "malformed tokenizer JSON: " + (reader.error.empty() ? std::string("parse error") : reader.error));
  const json& root = parsed.root;
  if (!root.is_object()) fail(file, "not a JSON object");
  if (!root.contains("model") || !root["model"].is_object()) fail(file, "no \"model\" object");
  load_normalizer(root.value("normalizer", json()));
  load_pre_tokenizer(root.value("pre_tokenizer", json()));
  if (std::none_of(steps.begin(), steps.end(), [](const PreTokenizerStep& s) { return s.byte_level; }))
    fail(file, "pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)");
  load_model(root["model"], parsed);
  if (root.contains("added_tokens")) load_added_tokens(root["added_tokens"]);

  const json post = root.value("post_processor", json());
  if (!post.is_null() && type_of(post) != "ByteLevel")
    fail(file, "unsupported post_processor " + type_of(post) + " (supported: ByteLevel, null)");
  const json decoder = root.value("decoder", json());
  if (type_of(decoder) != "ByteLevel") fail(file, "unsupported decoder " + type_of(decoder) + " (supported: ByteLevel)");
  const json padding = root.value("padding", json());
  if (padding.is_object() && padding.contains("pad_id") && padding["pad_id"].is_number_integer())
    pad_id = padding["pad_id"].get<int32_t>();
}

void BPETokenizer::Impl::load_normalizer(const json& n) {
  if (n.is_null()) return;
  const std::string type = type_of(n);
  if (type == "NFC") {
    apply_nfc = true;
  } else if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    for (const json& inner : n["normalizers"]) load_normalizer(inner);
  } else {
    fail(path, "unsupported normalizer " + type + " (supported: NFC, Sequence, null)");
  }
}

void BPETokenizer::Impl::load_pre_tokenizer(const json& p) {
  const std::string type = p.is_null() ? "null" : type_of(p);
  if (type == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array()) {
    for (const json& inner : p["pretokenizers"]) load_pre_tokenizer(inner);
    return;
  }
  PreTokenizerStep step;
  if (type == "Split") {
    const json pattern = p.value("pattern", json());
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      const auto regex = pattern["Regex"].get<std::string>();
      step.regex = std::make_unique<Regex>(path, "pre_tokenizer regex", regex, onig_compatible_pattern(regex));
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      step.is_literal = true;
      step.literal = pattern["String"].get<std::string>();
    } else {
      fail(path, "pre_tokenizer Split without a Regex or String pattern");
    }
    const std::string behavior = p.value("behavior", std::string("Isolated"));
    static const std::pair<std::string_view, SplitBehavior> kBehaviors[] = {
        {"Removed", SplitBehavior::Removed}, {"Isolated", SplitBehavior::Isolated},
        {"MergedWithPrevious", SplitBehavior::MergedWithPrevious}, {"MergedWithNext", SplitBehavior::MergedWithNext},
        {"Contiguous", SplitBehavior::Contiguous}};
    const auto it = std::find_if(std::begin(kBehaviors), std::end(kBehaviors), [&](auto& b) { return b.first == behavior; });
    if (it == std::end(kBehaviors)) fail(path, "unsupported Split behavior " + behavior);
    step.behavior = it->second;
    step.invert = p.value("invert", false);
  } else if (type == "ByteLevel") {
    step.byte_level = true;
    step.add_prefix_space = p.value("add_prefix_space", true);
    step.splits = p.value("use_regex", true);
    if (step.splits)
      step.regex = std::make_unique<Regex>(path, "pre_tokenizer regex", kGpt2Pattern, onig_compatible_pattern(kGpt2Pattern));
    steps.push_back(std::move(step));
    return;
  } else {
    fail(path, "unsupported pre_tokenizer " + type + " (supported: Split, ByteLevel, Sequence)");
  }
  steps.push_back(std::move(step));
}

void BPETokenizer::Impl::load_model(const json& model, TokenizerJson& parsed) {
  const std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE") fail(path, "unsupported model type " + type + " (supported: BPE)");
  if (!model.contains("vocab")) fail(path, "model has no vocab");
  if (!model.contains("merges")) fail(path, "model has no merges");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"] != 0)
    fail(path, "unsupported BPE option dropout (not deterministic)");
  if (model.value("byte_fallback", false)) fail(path, "unsupported BPE option byte_fallback");
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(affix) && model[affix].is_string() && !model[affix].get<std::string>().empty())
      fail(path, std::string("unsupported BPE option ") + affix);
  ignore_merges = model.value("ignore_merges", false);

  int64_t max_id = -1;
  for (const auto& [token, id] : parsed.vocab) {
    if (id < 0 || id > INT32_MAX) fail(path, "model.vocab id " + std::to_string(id) + " of \"" + token + "\" is out of range");
    max_id = std::max(max_id, id);
  }
  id_to_token.assign(static_cast<std::size_t>(max_id + 1), std::string());
  id_known.assign(id_to_token.size(), false);
  for (auto& [token, id] : parsed.vocab) {
    if (id_known[id]) fail(path, "model.vocab id " + std::to_string(id) + " is given twice");
    id_to_token[id] = std::move(token);
    id_known[id] = true;
  }
  parsed.vocab.clear();
  token_to_id.build(id_to_token, id_known);

  // Byte-level alphabet: every byte must be a token.
  const auto table = bytes_to_unicode();
  char_to_byte.fill(-1);
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_utf8(ch, table[b]);
    const auto id = token_to_id.find(ch);
    if (!id) fail(path, "model.vocab lacks the byte-level token for byte " + std::to_string(b) + " (only byte-level BPE is supported)");
    byte_id[b] = *id;
    char_to_byte[table[b]] = static_cast<int16_t>(b);
  }

  merges.reserve(parsed.merges.size());
  std::string joined;
  for (std::size_t rank = 0; rank < parsed.merges.size(); ++rank) {
    const auto& [left, right] = parsed.merges[rank];
    const auto l = token_to_id.find(left);
    const auto r = token_to_id.find(right);
    joined.assign(left).append(right);
    const auto m = token_to_id.find(joined);
    if (!l || !r || !m)
      fail(path, "model.merges entry " + std::to_string(rank) + " (\"" + left + "\" \"" + right +
                     "\") uses a token missing from model.vocab");
    merges.insert_or_assign(*l, *r, static_cast<uint32_t>(rank), *m);
  }
  parsed.merges.clear();
}

void BPETokenizer::Impl::load_added_tokens(const json& list) {
  if (!list.is_array()) fail(path, "added_tokens is not a list");
  std::vector<const AddedToken*> raw, normalized;
  for (const json& t : list) {
    if (!t.is_object() || !t.contains("id") || !t.contains("content") || !t["id"].is_number_integer() ||
        !t["content"].is_string())
      fail(path, "added_tokens entry without an integer id and a string content: " + t.dump());
    auto token = std::make_unique<AddedToken>();
    token->id = t["id"].get<int32_t>();
    token->original = token->content = t["content"].get<std::string>();
    token->special = t.value("special", false);
    token->lstrip = t.value("lstrip", false);
    token->rstrip = t.value("rstrip", false);
    token->single_word = t.value("single_word", false);
    token->normalized = t.value("normalized", !token->special);
    if (token->id < 0) fail(path, "added token \"" + token->content + "\" has a negative id");
    const auto id = static_cast<std::size_t>(token->id);
    if (id >= id_to_token.size()) {
      id_to_token.resize(id + 1);
      id_known.resize(id + 1, false);
    }
    if (added_by_id.size() < id_to_token.size()) added_by_id.resize(id_to_token.size(), nullptr);
    if (!id_known[id]) {
      id_to_token[id] = token->content;
      id_known[id] = true;
    }
    if (token->normalized && apply_nfc) token->content = nfc_copy(token->content);
    added_by_id[id] = token.get();
    (token->normalized ? normalized : raw).push_back(token.get());
    added_tokens.push_back(std::move(token));
  }
  added_by_id.resize(id_to_token.size(), nullptr);
  // id_to_token may have grown (moving its strings): rebuild the index, added tokens taking precedence.
  token_to_id.build(id_to_token, id_known);
  for (const auto& t : added_tokens) token_to_id.assign(id_to_token[t->id], t->id);
  raw_matcher.build(raw);
  normalized_matcher.build(normalized);
}

// ---------------------------------------------------------------------------------------------
// Encoding

void BPETokenizer::Impl::encode_into(std::string_view text, std::vector<int32_t>& ids) const {
  std::string normalized_buffer;
  raw_matcher.split(text, [&](std::string_view piece, std::size_t, const AddedToken* token) {
    if (token) {
      ids.push_back(token->id);
      return;
    }
    const std::string_view normalized = apply_nfc ? nfc(piece, normalized_buffer) : piece;
    normalized_matcher.split(normalized, [&](std::string_view part, std::size_t, const AddedToken* inner) {
      if (inner) ids.push_back(inner->id);
      else pre_tokenize(part, 0, ids);
    });
  });
}

// Runs the pre-tokenizer steps from `step` on piece, then BPE on every resulting word.
void BPETokenizer::Impl::pre_tokenize(std::string_view piece, std::size_t step, std::vector<int32_t>& ids) const {
  if (piece.empty()) return;
  if (step == steps.size()) {
    bpe(piece, ids);
    return;
  }
  const PreTokenizerStep& s = steps[step];
  if (s.add_prefix_space && piece.front() != ' ') {
    // ByteLevel's add_prefix_space: the piece gets a leading space first.
    std::string spaced;
    spaced.reserve(piece.size() + 1);
    spaced.append(" ").append(piece);
    split_step(s, spaced, step, ids);
    return;
  }
  split_step(s, piece, step, ids);
}

// One Split (or ByteLevel regex) step on piece; every resulting piece goes on to step + 1.
void BPETokenizer::Impl::split_step(const PreTokenizerStep& s, std::string_view piece, std::size_t step,
                                    std::vector<int32_t>& ids) const {
  if (!s.splits) {
    pre_tokenize(piece, step + 1, ids);
    return;
  }
  // Pieces as (begin, end, is_match), gaps included, then grouped by the behaviour.
  // Scratch per step depth; sized once so deeper steps never move this depth's vector.
  thread_local std::vector<std::vector<std::tuple<std::size_t, std::size_t, bool>>> scratch_per_depth;
  if (scratch_per_depth.size() < steps.size()) scratch_per_depth.resize(steps.size());
  auto& parts = scratch_per_depth[step];
  parts.clear();
  std::size_t prev = 0;
  const auto on_match = [&](std::size_t b, std::size_t e) {
    if (b > prev) parts.emplace_back(prev, b, s.invert);
    parts.emplace_back(b, e, !s.invert);
    prev = e;
  };
  if (s.is_literal) {
    if (!s.literal.empty())
      for (std::size_t at = piece.find(s.literal); at != std::string_view::npos; at = piece.find(s.literal, prev))
        on_match(at, at + s.literal.size());
  } else {
    s.regex->for_each_match(piece, on_match);
  }
  if (prev < piece.size()) parts.emplace_back(prev, piece.size(), s.invert);

  const auto emit = [&](std::size_t b, std::size_t e) { pre_tokenize(piece.substr(b, e - b), step + 1, ids); };
  const std::size_t n = parts.size();
  switch (s.behavior) {
    case SplitBehavior::Isolated:
      for (std::size_t i = 0; i < n; ++i) emit(std::get<0>(parts[i]), std::get<1>(parts[i]));
      break;
    case SplitBehavior::Removed:
      for (std::size_t i = 0; i < n; ++i)
        if (!std::get<2>(parts[i])) emit(std::get<0>(parts[i]), std::get<1>(parts[i]));
      break;
    case SplitBehavior::Contiguous: {
      std::size_t i = 0;
      while (i < n) {
        std::size_t j = i + 1;
        while (j < n && std::get<2>(parts[j]) == std::get<2>(parts[i])) ++j;
        emit(std::get<0>(parts[i]), std::get<1>(parts[j - 1]));
        i = j;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      // A match joins the piece before it (unless that one was a match too).
      std::vector<std::pair<std::size_t, std::size_t>> merged;
      bool previous_match = false;
      for (const auto& [b, e, m] : parts) {
        if (m && !previous_match && !merged.empty()) merged.back().second = e;
        else merged.emplace_back(b, e);
        previous_match = m;
      }
      for (const auto& [b, e] : merged) emit(b, e);
      break;
    }
    case SplitBehavior::MergedWithNext: {
      std::vector<std::pair<std::size_t, std::size_t>> merged;
      bool previous_match = false;
      for (std::size_t k = n; k-- > 0;) {
        const auto& [b, e, m] = parts[k];
        if (m && !previous_match && !merged.empty()) merged.back().first = b;
        else merged.emplace_back(b, e);
        previous_match = m;
      }
      for (auto it = merged.rbegin(); it != merged.rend(); ++it) emit(it->first, it->second);
      break;
    }
  }
}

void BPETokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.size() == 1) {
    ids.push_back(byte_id[static_cast<unsigned char>(word[0])]);
    return;
  }
  // tokenizers caches words up to 256 bytes.
  const bool cacheable = word.size() <= 256;
  if (cacheable) {
    std::shared_lock lock(cache_mutex, std::try_to_lock);
    if (lock.owns_lock()) {
      const auto it = cache.find(word);
      if (it != cache.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
  }
  const std::size_t first = ids.size();
  merge_word(word, ids);
  if (cacheable) {
    std::unique_lock lock(cache_mutex, std::try_to_lock);
    if (lock.owns_lock() && cache.size() < cache_capacity())
      cache.emplace(std::string(word), std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end()));
  }
}

// BPE on one word, appending its ids: repeatedly merge the adjacent pair with the lowest rank
// (leftmost on ties), as `tokenizers`' Word::merge_all does with its priority queue.
void BPETokenizer::Impl::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    const auto id = token_to_id.find(word);
    // Only a model-vocabulary token, as BPE's own vocab lookup.
    if (id && !(static_cast<std::size_t>(*id) < added_by_id.size() && added_by_id[*id])) {
      out.push_back(*id);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // linked list over the original positions; -1 at the ends
    bool alive;
  };
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  const int32_t n = static_cast<int32_t>(word.size());
  symbols.resize(static_cast<std::size_t>(n));
  heap.clear();
  for (int32_t i = 0; i < n; ++i)
    symbols[i] = Symbol{byte_id[static_cast<unsigned char>(word[i])], i - 1, i + 1 < n ? i + 1 : -1, true};
  const auto consider = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    if (const MergeTable::Entry* e = merges.find(symbols[left].id, symbols[right].id)) {
      heap.push_back(Candidate{e->rank, left, e->merged});
      std::push_heap(heap.begin(), heap.end(), std::greater<>{});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Stale entry: the pair at this position changed since it was queued.
    const MergeTable::Entry* e = merges.find(left.id, right.id);
    if (!e || e->merged != top.merged) continue;
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

// ---------------------------------------------------------------------------------------------
// Public API

BPETokenizer::BPETokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BPETokenizer::BPETokenizer(BPETokenizer&&) noexcept = default;
BPETokenizer& BPETokenizer::operator=(BPETokenizer&&) noexcept = default;
BPETokenizer::~BPETokenizer() = default;

BPETokenizer BPETokenizer::from_file(const std::string& tokenizer_json) {
  auto impl = std::make_unique<Impl>();
  impl->load(tokenizer_json);
  return BPETokenizer(std::move(impl));
}

BPETokenizer BPETokenizer::from_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    const std::string kind = describe_file_type(dir);
    fail(dir, kind.empty() ? "not a tokenizer folder (no such folder)" : "is " + kind + ", not a tokenizer folder");
  }
  const std::string file = (fs::path(dir) / "tokenizer.json").string();
  if (!fs::exists(file, ec)) fail(dir, "no tokenizer.json in this directory");
  BPETokenizer tokenizer = from_file(file);
  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (fs::exists(config_path, ec)) {
    json config;
    try {
      config = json::parse(read_file(config_path));
    } catch (const json::exception& e) {
      fail(config_path, std::string("malformed JSON: ") + e.what());
    }
    if (!config.is_object()) fail(config_path, "not a JSON object");
    if (config.contains("pad_token") && !config["pad_token"].is_null()) {
      const json& pad = config["pad_token"];
      const std::string content = pad.is_object() ? pad.value("content", std::string()) : pad.get<std::string>();
      const auto id = tokenizer.token_to_id(content);
      if (!id) fail(config_path, "pad_token \"" + content + "\" is not in the vocabulary");
      tokenizer.impl_->pad_id = *id;
    }
    if (config.contains("model_max_length") && config["model_max_length"].is_number()) {
      const double length = config["model_max_length"].get<double>();
      if (length > 0 && length < 1e18) tokenizer.impl_->model_max_length = static_cast<std::size_t>(length);
    }
  }
  return tokenizer;
}

std::vector<int32_t> BPETokenizer::encode(std::string_view text, bool /*add_special_tokens*/) const {
  if (!is_valid_utf8(text)) throw Error("tokenizer: text to encode is not valid UTF-8");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl_->encode_into(text, ids);
  return ids;
}

std::string BPETokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  // Byte-level decoding of runs of model tokens; added tokens go in verbatim between the runs,
  // as TokenizerImpl::decode does.
  std::string result, bytes;
  const auto flush = [&] {
    if (!bytes.empty()) result += utf8_lossy(bytes);
    bytes.clear();
  };
  for (const int32_t id : ids) {
    const std::string& token = id_to_token(id);
    const AddedToken* added = static_cast<std::size_t>(id) < impl_->added_by_id.size() ? impl_->added_by_id[id] : nullptr;
    if (added) {
      if (skip_special_tokens && added->special) continue;
      flush();
      result += token;
      continue;
    }
    // ByteLevel decoder: chars of the byte alphabet back to bytes; a token with any other char
    // goes in as its own UTF-8.
    const std::size_t mark = bytes.size();
    bool mapped = true;
    for (std::size_t i = 0; i < token.size() && mapped;) {
      const char32_t c = next_code_point(token, i);
      if (c < impl_->char_to_byte.size() && impl_->char_to_byte[c] >= 0) bytes += static_cast<char>(impl_->char_to_byte[c]);
      else mapped = false;
    }
    if (!mapped) {
      bytes.resize(mark);
      bytes += token;
    }
  }
  flush();
  return result;
}

Encoding BPETokenizer::encode_batch(const std::vector<std::string>& texts, std::optional<std::size_t> max_length,
                                    bool pad, bool truncate) const {
  Encoding batch;
  batch.input_ids.reserve(texts.size());
  const std::size_t limit = truncate ? max_length.value_or(impl_->model_max_length) : std::numeric_limits<std::size_t>::max();
  std::size_t longest = 0;
  for (const std::string& text : texts) {
    std::vector<int32_t> ids = encode(text);
    if (ids.size() > limit) ids.resize(limit);
    longest = std::max(longest, ids.size());
    batch.input_ids.emplace_back(ids.begin(), ids.end());
  }
  pad_and_mask(batch, pad ? longest : 0, pad ? pad_token_id() : 0);
  return batch;
}

std::optional<int32_t> BPETokenizer::token_to_id(std::string_view token) const {
  return impl_->token_to_id.find(token);
}

const std::string& BPETokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= impl_->id_to_token.size() || !impl_->id_known[id])
    fail(impl_->path, "token id " + std::to_string(id) + " is not in the vocabulary");
  return impl_->id_to_token[id];
}

bool BPETokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<std::size_t>(id) < impl_->added_by_id.size() && impl_->added_by_id[id] &&
         impl_->added_by_id[id]->special;
}

std::size_t BPETokenizer::vocab_size() const { return impl_->id_to_token.size(); }

int32_t BPETokenizer::pad_token_id() const {
  if (!impl_->pad_id) fail(impl_->path, "the tokenizer has no pad token (tokenizer_config.json pad_token)");
  return *impl_->pad_id;
}

std::size_t BPETokenizer::model_max_length() const { return impl_->model_max_length; }
const std::string& BPETokenizer::path() const { return impl_->path; }

std::size_t BPETokenizer::cache_size() const {
  std::shared_lock lock(impl_->cache_mutex);
  return impl_->cache.size();
}

void BPETokenizer::clear_cache() const {
  std::unique_lock lock(impl_->cache_mutex);
  impl_->cache.clear();
}

}  // namespace diffsynth
