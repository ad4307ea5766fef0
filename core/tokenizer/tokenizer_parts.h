// Parts the tokenizer.json readers and the text cleaning share (internal to core/tokenizer):
// UTF-8 decoding / encoding, Rust's char classes, the PCRE2 regex wrapper, added-token matching
// as `tokenizers`' AddedVocabulary does it, and the SAX base that builds a DOM of tokenizer.json
// except for the large regions (vocabulary, merges) a reader stores directly.
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"

namespace diffsynth::tokenizer_parts {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// UTF-8 (decoders take valid UTF-8: callers validate once, at the entry point)

// Bytes of the sequence that starts with b0.
inline std::size_t utf8_length_at(unsigned char b0) { return b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4; }
// Decodes the code point at s[i] and advances i.
inline char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const std::size_t n = utf8_length_at(b0);
  char32_t c = n == 1 ? b0 : n == 2 ? (b0 & 0x1Fu) : n == 3 ? (b0 & 0x0Fu) : (b0 & 0x07u);
  for (std::size_t k = 1; k < n; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3Fu);
  i += n;
  return c;
}
// The code point that ends s (non-empty).
inline char32_t last_code_point(std::string_view s) {
  std::size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return next_code_point(s, start);
}
void append_utf8(std::string& out, char32_t c);
// Length of the valid UTF-8 sequence at s[i], or 0 if it is invalid; `maximal_subpart` gets the
// length of the invalid prefix to replace by one U+FFFD (Unicode's "maximal subpart" rule, which
// Rust's from_utf8_lossy and Python's errors="replace" both follow).
std::size_t utf8_sequence_length(std::string_view s, std::size_t i, std::size_t& maximal_subpart);
bool is_valid_utf8(std::string_view s);
std::string utf8_lossy(std::string_view s);  // Rust String::from_utf8_lossy

// Rust char::is_whitespace (the Unicode White_Space property), which Oniguruma's \s also is.
constexpr bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
// Rust char::is_alphanumeric, approximated by the general categories L* and N*.
bool is_alphanumeric(char32_t c);

// A component's "type" (or the component itself, for messages).
std::string type_of(const json& component);

// ---------------------------------------------------------------------------------------------
// Regex (PCRE2 with UTF + UCP, JIT when available)

class Regex {
 public:
  // `what` names the pattern in the error (e.g. "pre_tokenizer regex"), `shown` is the pattern
  // as the file gives it; `pattern` is what compiles.
  Regex(const std::string& path, const std::string& what, std::string_view shown, const std::string& pattern);
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  // Calls on_match(begin, end) for each non-overlapping match of the valid UTF-8 text s; an
  // empty match steps over one character, as find_iter does.
  template <class F>
  void for_each_match(std::string_view s, F&& on_match) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    pcre2_match_data* data = match_data();
    std::size_t start = 0;
    while (start <= s.size()) {
      const int rc = jit_ ? pcre2_jit_match(code_, subject, s.size(), start, 0, data, nullptr)
                          : pcre2_match(code_, subject, s.size(), start, PCRE2_NO_UTF_CHECK, data, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) match_failed(rc);  // resource limits on pathological input
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
      const std::size_t begin = ovector[0], end = ovector[1];
      if (end == begin) {
        if (begin >= s.size()) return;
        std::size_t next = begin;
        next_code_point(s, next);
        start = next;
        continue;
      }
      on_match(begin, end);
      start = end;
    }
  }

 private:
  static pcre2_match_data* match_data();  // one per thread: encode() is const and may run on several
  [[noreturn]] static void match_failed(int rc);
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// ---------------------------------------------------------------------------------------------
// Added tokens (AddedVocabulary::find_matches)

struct AddedToken {
  std::string original;  // as in the file: what id_to_token / token_to_id see
  std::string content;   // as matched: normalised for normalized=true tokens
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// Leftmost-longest search over a few added tokens (aho-corasick's LeftmostLongest in `tokenizers`).
class AddedTokenMatcher {
 public:
  bool empty() const { return tokens_.empty(); }
  void build(std::vector<const AddedToken*> tokens);
  // The first match at or after `from`: (token, position), or (nullptr, npos).
  std::pair<const AddedToken*, std::size_t> find(std::string_view s, std::size_t from) const;

  // Calls on_piece(text, offset in s, token or nullptr) for the pieces of s in order, honouring
  // single_word / lstrip / rstrip.
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
      search = stop;  // matches never overlap
      if (token->single_word && !whole_word(s, start, stop)) continue;
      if (token->lstrip) start = std::max(strip_left(s, start), emitted);
      if (token->rstrip) stop = strip_right(s, stop);
      if (emitted < start) on_piece(s.substr(emitted, start - emitted), emitted, nullptr);
      on_piece(s.substr(start, stop - start), start, token);
      emitted = stop;
      search = std::max(search, stop);
    }
    if (emitted < s.size()) on_piece(s.substr(emitted), emitted, nullptr);
  }

 private:
  static bool whole_word(std::string_view s, std::size_t start, std::size_t stop);
  static std::size_t strip_left(std::string_view s, std::size_t start);   // over white space before
  static std::size_t strip_right(std::string_view s, std::size_t stop);   // over white space after
  std::vector<const AddedToken*> tokens_;  // longest first
  std::array<bool, 256> first_byte_{};
};

// ---------------------------------------------------------------------------------------------
// tokenizer.json by SAX: a DOM of everything a reader does not claim. A reader overrides the
// callbacks, handles its own regions (the vocabulary, merges: 99% of the file, which as a DOM
// cost ~0.5 s of parsing) and hands everything else to the dom_* helpers.

class DomSax : public nlohmann::json_sax<json> {
 public:
  explicit DomSax(json& root) : root_(root) {}
  std::string error;

  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool binary(binary_t&) override { return bad("binary values are not JSON"); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    if (error.empty()) error = e.what();
    return false;
  }

 protected:
  bool bad(const std::string& message) {
    if (error.empty()) error = message;
    return false;
  }
  // The parser is directly inside the top-level "model" object.
  bool at_model() const { return stack_.size() == 2 && keys_.back() == "model" && stack_.back()->is_object(); }
  // The innermost open container (a region's owner marks itself present there).
  json& top() { return *stack_.back(); }
  bool dom_value(json&& value) {
    place(std::move(value));
    return true;
  }
  bool dom_open(json&& container) {
    std::string under = stack_.empty() || !stack_.back()->is_object() ? std::string() : key_;
    stack_.push_back(place(std::move(container)));
    keys_.push_back(std::move(under));
    return true;
  }
  bool dom_close() {
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  std::string key_;  // the last key read

 private:
  json* place(json&& value);
  json& root_;
  std::vector<json*> stack_;
  std::vector<std::string> keys_;  // the key each open container sits under
};

}  // namespace diffsynth::tokenizer_parts
