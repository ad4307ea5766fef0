#include "core/tokenizer/tokenizer_parts.h"

#include <utf8proc.h>

#include <algorithm>

namespace diffsynth::tokenizer_parts {

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

std::size_t utf8_sequence_length(std::string_view s, std::size_t i, std::size_t& maximal_subpart) {
  const auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = at(i);
  maximal_subpart = 1;
  if (b0 < 0x80) return 1;
  std::size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 2;
  else if (b0 == 0xE0) { need = 3; lo = 0xA0; }
  else if (b0 >= 0xE1 && b0 <= 0xEC) need = 3;
  else if (b0 == 0xED) { need = 3; hi = 0x9F; }
  else if (b0 >= 0xEE && b0 <= 0xEF) need = 3;
  else if (b0 == 0xF0) { need = 4; lo = 0x90; }
  else if (b0 >= 0xF1 && b0 <= 0xF3) need = 4;
  else if (b0 == 0xF4) { need = 4; hi = 0x8F; }
  else return 0;
  for (std::size_t k = 1; k < need; ++k) {
    if (i + k >= s.size()) return 0;
    const unsigned char b = at(i + k);
    const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return 0;
    maximal_subpart = k + 1;
  }
  return need;
}

bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0, sub = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) { ++i; continue; }
    const std::size_t n = utf8_sequence_length(s, i, sub);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0, sub = 0;
  while (i < s.size()) {
    const std::size_t n = utf8_sequence_length(s, i, sub);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += sub;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

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

Regex::Regex(const std::string& path, const std::string& what, std::string_view shown, const std::string& pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &error,
                        &offset, nullptr);
  if (!code_) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    fail(path, what + " " + std::string(shown) + " does not compile at offset " + std::to_string(offset) + ": " +
                   reinterpret_cast<const char*>(message));
  }
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

pcre2_match_data* Regex::match_data() {
  thread_local std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
      pcre2_match_data_create(32, nullptr), &pcre2_match_data_free);
  return data.get();
}

void Regex::match_failed(int rc) {
  PCRE2_UCHAR message[256];
  pcre2_get_error_message(rc, message, sizeof message);
  throw Error(std::string("tokenizer regex failed: ") + reinterpret_cast<const char*>(message));
}

void AddedTokenMatcher::build(std::vector<const AddedToken*> tokens) {
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

std::pair<const AddedToken*, std::size_t> AddedTokenMatcher::find(std::string_view s, std::size_t from) const {
  for (std::size_t i = from; i < s.size(); ++i) {
    if (!first_byte_[static_cast<unsigned char>(s[i])]) continue;
    for (const AddedToken* t : tokens_)
      if (s.compare(i, t->content.size(), t->content) == 0) return {t, i};
  }
  return {nullptr, std::string_view::npos};
}

bool AddedTokenMatcher::whole_word(std::string_view s, std::size_t start, std::size_t stop) {
  const bool space_before = start == 0 || !is_alphanumeric(last_code_point(s.substr(0, start)));
  std::size_t k = stop;
  const bool space_after = stop == s.size() || !is_alphanumeric(next_code_point(s, k));
  return space_before && space_after;
}

std::size_t AddedTokenMatcher::strip_left(std::string_view s, std::size_t start) {
  while (start > 0) {
    std::size_t b = start - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    std::size_t k = b;
    if (!is_white_space(next_code_point(s, k))) break;
    start = b;
  }
  return start;
}

std::size_t AddedTokenMatcher::strip_right(std::string_view s, std::size_t stop) {
  while (stop < s.size()) {
    std::size_t k = stop;
    if (!is_white_space(next_code_point(s, k))) break;
    stop = k;
  }
  return stop;
}

json* DomSax::place(json&& value) {
  if (stack_.empty()) {
    root_ = std::move(value);
    return &root_;
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

}  // namespace diffsynth::tokenizer_parts
