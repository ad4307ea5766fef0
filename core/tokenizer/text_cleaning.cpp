// ftfy 6.3.1's fix_text and the Python string functions of the Wan reference's text cleaning, on
// code points (std::u32string) so every index, length and regex step is the one Python takes.
// The regular expressions of ftfy (badness.BADNESS_RE, chardata.UTF8_DETECTOR_RE, ALTERED_UTF8_RE,
// LOSSY_UTF8_RE, fixes.A_GRAVE_WORD_RE, ANSI_RE, HTML_ENTITY_RE) and of html.unescape are short
// fixed-shape patterns; each is written out below as a matcher that takes the same path the
// backtracking engine takes, so no regex engine (and its Unicode tables) is involved.
#include "core/tokenizer/text_cleaning.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tokenizer/tokenizer_parts.h"

namespace diffsynth {
namespace {

using namespace tokenizer_parts;

struct CharBits {
  char32_t cp;
  std::uint32_t bits;
};
struct Entity {
  std::string_view name;  // without the '&'
  std::string_view value;
};
struct CodeRange {
  char32_t first, last;
};

#include "core/tokenizer/text_cleaning.tables.inc"

// Bits of kCharBits: badness.MOJIBAKE_CATEGORIES, then chardata.UTF8_CLUES.
enum : std::uint32_t {
  kCommon = 1u << 0, kC1 = 1u << 1, kBad = 1u << 2, kLaw = 1u << 3, kCurrency = 1u << 4, kStart = 1u << 5,
  kEnd = 1u << 6, kNumeric = 1u << 7, kKaomoji = 1u << 8, kUpperAccented = 1u << 9, kLowerAccented = 1u << 10,
  kUpperCommon = 1u << 11, kLowerCommon = 1u << 12, kBox = 1u << 13,
  kFirstOf2 = 1u << 16, kFirstOf3 = 1u << 17, kFirstOf4 = 1u << 18, kContinuation = 1u << 19,
  kContinuationStrict = 1u << 20,
};

using U32 = std::u32string;

// ---------------------------------------------------------------------------------------------
// UTF-8 <-> code points

// Valid UTF-8 only (the input is user text: refuse, do not guess).
U32 decode_utf8(std::string_view s) {
  if (!is_valid_utf8(s)) throw Error("text cleaning: text is not valid UTF-8");
  U32 out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) out += next_code_point(s, i);
  return out;
}

std::string encode_utf8(const U32& s) {
  std::string out;
  out.reserve(s.size());
  for (const char32_t c : s) append_utf8(out, c);
  return out;
}

void append(U32& out, std::string_view utf8) { out += decode_utf8(utf8); }

// ---------------------------------------------------------------------------------------------
// Character properties

std::uint32_t bits(char32_t c) {
  const auto it = std::lower_bound(std::begin(kCharBits), std::end(kCharBits), c,
                                   [](const CharBits& e, char32_t v) { return e.cp < v; });
  return it != std::end(kCharBits) && it->cp == c ? it->bits : 0;
}

bool in_ranges(std::span<const CodeRange> ranges, char32_t c) {
  const auto it = std::upper_bound(ranges.begin(), ranges.end(), c, [](char32_t v, const CodeRange& r) { return v < r.first; });
  return it != ranges.begin() && c <= std::prev(it)->last;
}

// str.isspace() / Python re's \s on str (bidirectional class WS, B, S or category Zs).
constexpr bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// The `regex` module's \s is the Unicode White_Space property: tokenizer_parts::is_white_space
// (whitespace_clean, canonicalize).

utf8proc_category_t category(char32_t c) {
  return static_cast<utf8proc_category_t>(utf8proc_category(static_cast<utf8proc_int32_t>(c)));
}

// Python re's \d on str: decimal digits (category Nd).
bool is_decimal(char32_t c) { return c < 0x80 ? (c >= '0' && c <= '9') : category(c) == UTF8PROC_CATEGORY_ND; }

// Python re's \w on str: str.isalnum() (letters and numbers) or '_'.
bool is_word(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
  const auto cat = category(c);
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

constexpr bool is_ascii_alpha(char32_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
constexpr bool is_ascii_lower(char32_t c) { return c >= 'a' && c <= 'z'; }
constexpr bool is_ascii_alnum(char32_t c) { return is_ascii_alpha(c) || (c >= '0' && c <= '9'); }

bool one_of(char32_t c, std::u32string_view set) { return set.find(c) != std::u32string_view::npos; }

// ---------------------------------------------------------------------------------------------
// NFC (utf8proc)

U32 nfc(const U32& s) {
  // Text below U+0300 is its own NFC (no combining marks, no composable pairs, no singletons).
  if (std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x300; })) return s;
  const std::string utf8 = encode_utf8(s);
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(utf8.data()),
                                          static_cast<utf8proc_ssize_t>(utf8.size()), &out,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) throw Error(std::string("text cleaning: NFC normalisation failed: ") + utf8proc_errmsg(n));
  U32 result = decode_utf8(std::string_view(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n)));
  std::free(out);
  return result;
}

// ---------------------------------------------------------------------------------------------
// html.unescape (Python 3.11)

const Entity* find_entity(std::span<const Entity> table, std::string_view name) {
  const auto it = std::lower_bound(table.begin(), table.end(), name, [](const Entity& e, std::string_view v) { return e.name < v; });
  return it != table.end() && it->name == name ? &*it : nullptr;
}

// ASCII code points as a string; false when one is not ASCII (then it names no entity).
bool ascii_name(const char32_t* begin, const char32_t* end, std::string& out) {
  out.clear();
  for (const char32_t* p = begin; p != end; ++p) {
    if (*p >= 0x80) return false;
    out += static_cast<char>(*p);
  }
  return true;
}

// _replace_charref for a numeric reference: num already parsed (saturated above 0x10FFFF).
void append_charref(U32& out, std::uint32_t num) {
  static constexpr char32_t kWindows1252[32] = {
      0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D, 0x017D, 0x8F,
      0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178};
  if (num == 0x00) { out += U'\uFFFD'; return; }                 // _invalid_charrefs
  if (num == 0x0D) { out += U'\r'; return; }
  if (num >= 0x80 && num <= 0x9F) { out += kWindows1252[num - 0x80]; return; }
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) { out += U'\uFFFD'; return; }
  // _invalid_codepoints: dropped.
  if ((num >= 0x01 && num <= 0x08) || num == 0x0B || (num >= 0x0E && num <= 0x1F) || (num >= 0x7F && num <= 0x9F) ||
      (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
    return;
  out += static_cast<char32_t>(num);
}

U32 html_unescape_u32(const U32& s) {
  if (s.find(U'&') == U32::npos) return s;
  U32 out;
  out.reserve(s.size());
  std::string name;
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    if (s[i] != U'&') {
      out += s[i++];
      continue;
    }
    // &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
    const std::size_t j = i + 1;
    if (j < n && s[j] == U'#') {
      const bool hex = j + 1 < n && (s[j + 1] == U'x' || s[j + 1] == U'X');
      const auto digit = [&](char32_t c) {
        return hex ? ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) : (c >= '0' && c <= '9');
      };
      // [0-9]+ is tried first: "&#x..." only reaches the hex branch because 'x' is no digit.
      const bool decimal_first = j + 1 < n && s[j + 1] >= '0' && s[j + 1] <= '9';
      const std::size_t digits_at = decimal_first ? j + 1 : j + 2;
      if (!decimal_first && !(hex && digits_at < n && digit(s[digits_at]))) {
        out += s[i++];  // no numeric reference, and the named branch cannot start with '#'
        continue;
      }
      const bool is_hex = !decimal_first;
      std::size_t k = digits_at;
      std::uint32_t num = 0;
      while (k < n && (is_hex ? digit(s[k]) : (s[k] >= '0' && s[k] <= '9'))) {
        const char32_t c = s[k];
        const std::uint32_t d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
        num = std::min<std::uint64_t>(0x110000, static_cast<std::uint64_t>(num) * (is_hex ? 16 : 10) + d);
        ++k;
      }
      if (k < n && s[k] == U';') ++k;
      append_charref(out, num);
      i = k;
      continue;
    }
    std::size_t k = j;
    while (k < n && k - j < 32 && !one_of(s[k], U"\t\n\f <&#;")) ++k;
    if (k == j) {
      out += s[i++];
      continue;
    }
    std::size_t end = k;
    if (end < n && s[end] == U';') ++end;
    // s = the group: the whole name (with its ';'), then the longest prefix of at least 2.
    const char32_t* group = s.data() + j;
    const std::size_t len = end - j;
    bool done = false;
    if (ascii_name(group, group + len, name)) {
      if (const Entity* e = find_entity(kHtml5, name)) {
        append(out, e->value);
        done = true;
      }
    }
    for (std::size_t x = len - 1; !done && x >= 2; --x) {
      if (!ascii_name(group, group + x, name)) continue;
      if (const Entity* e = find_entity(kHtml5, name)) {
        append(out, e->value);
        out.append(group + x, group + len);
        done = true;
      }
    }
    if (!done) {
      out += U'&';
      out.append(group, group + len);
    }
    i = end;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// ftfy fixers on code points

// fixes.unescape_html: HTML_ENTITY_RE = &#?[0-9A-Za-z]{1,24};
U32 unescape_html(const U32& s) {
  if (s.find(U'&') == U32::npos) return s;
  U32 out;
  out.reserve(s.size());
  std::string name;
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    if (s[i] != U'&') {
      out += s[i++];
      continue;
    }
    std::size_t k = i + 1;
    if (k < n && s[k] == U'#') ++k;
    std::size_t m = k;
    while (m < n && m - k <= 24 && is_ascii_alnum(s[m])) ++m;
    const std::size_t run = m - k;
    if (run < 1 || run > 24 || m >= n || s[m] != U';') {
      out += s[i++];
      continue;
    }
    const std::size_t end = m + 1;
    const U32 text = s.substr(i, end - i);
    ascii_name(text.data() + 1, text.data() + text.size(), name);
    const Entity* e = nullptr;
    if (text[1] != U'#') {
      e = find_entity(kHtml5, name);
      if (!e) e = find_entity(kFtfyUpperEntities, name);
    }
    if (e) {
      append(out, e->value);
    } else if (text[1] == U'#') {
      const U32 unescaped = html_unescape_u32(text);
      out += unescaped.find(U';') != U32::npos ? text : unescaped;
    } else {
      out += text;
    }
    i = end;
  }
  return out;
}

// fixes.remove_terminal_escapes: \033\[((?:\d|;)*)([a-zA-Z]) removed.
U32 remove_terminal_escapes(const U32& s) {
  if (s.find(U'\x1b') == U32::npos) return s;
  U32 out;
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    if (s[i] == U'\x1b' && i + 1 < n && s[i + 1] == U'[') {
      std::size_t k = i + 2;
      while (k < n && (s[k] == U';' || is_decimal(s[k]))) ++k;
      if (k < n && is_ascii_alpha(s[k])) {
        i = k + 1;
        continue;
      }
    }
    out += s[i++];
  }
  return out;
}

// sloppy-windows-1252 (kCharmaps[1]) of a C1 control character (fixes.fix_c1_controls).
char32_t c1_to_windows_1252(char32_t c) { return kCharmaps[1][c - 0x80]; }

U32 fix_c1_controls(const U32& s) {
  U32 out = s;
  for (char32_t& c : out)
    if (c >= 0x80 && c <= 0x9F) c = c1_to_windows_1252(c);
  return out;
}

U32 fix_latin_ligatures(const U32& s) {
  U32 out;
  out.reserve(s.size());
  for (const char32_t c : s) {
    switch (c) {
      case 0x0132: out += U"IJ"; break;
      case 0x0133: out += U"ij"; break;
      case 0x0149: out += U"\u02BCn"; break;
      case 0x01F1: out += U"DZ"; break;
      case 0x01F2: out += U"Dz"; break;
      case 0x01F3: out += U"dz"; break;
      case 0x01C4: out += U"D\u017D"; break;
      case 0x01C5: out += U"D\u017E"; break;
      case 0x01C6: out += U"d\u017E"; break;
      case 0x01C7: out += U"LJ"; break;
      case 0x01C8: out += U"Lj"; break;
      case 0x01C9: out += U"lj"; break;
      case 0x01CA: out += U"NJ"; break;
      case 0x01CB: out += U"Nj"; break;
      case 0x01CC: out += U"nj"; break;
      case 0xFB00: out += U"ff"; break;
      case 0xFB01: out += U"fi"; break;
      case 0xFB02: out += U"fl"; break;
      case 0xFB03: out += U"ffi"; break;
      case 0xFB04: out += U"ffl"; break;
      case 0xFB05: out += U"\u017Ft"; break;
      case 0xFB06: out += U"st"; break;
      default: out += c;
    }
  }
  return out;
}

// chardata.WIDTH_MAP: U+3000 -> ' ', and U+FF01-U+FFEF -> their NFKC form where it differs.
const std::array<U32, 0xFFF0 - 0xFF01>& width_map() {
  static const auto table = [] {
    std::array<U32, 0xFFF0 - 0xFF01> t;
    for (char32_t c = 0xFF01; c < 0xFFF0; ++c) {
      std::string utf8;
      append_utf8(utf8, c);
      utf8proc_uint8_t* out = nullptr;
      const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(utf8.data()),
                                              static_cast<utf8proc_ssize_t>(utf8.size()), &out,
                                              static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT));
      if (n >= 0) {
        U32 mapped = decode_utf8(std::string_view(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n)));
        if (mapped != U32(1, c)) t[c - 0xFF01] = std::move(mapped);
      }
      std::free(out);
    }
    return t;
  }();
  return table;
}

U32 fix_character_width(const U32& s) {
  U32 out;
  out.reserve(s.size());
  for (const char32_t c : s) {
    if (c == 0x3000) out += U' ';
    else if (c >= 0xFF01 && c < 0xFFF0 && !width_map()[c - 0xFF01].empty()) out += width_map()[c - 0xFF01];
    else out += c;
  }
  return out;
}

U32 uncurl_quotes(const U32& s) {
  U32 out = s;
  for (char32_t& c : out) {
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = U'\'';
    else if (c >= 0x201C && c <= 0x201F) c = U'"';
  }
  return out;
}

U32 fix_line_breaks(const U32& s) {
  U32 out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c == U'\r') {
      out += U'\n';
      if (i + 1 < s.size() && s[i + 1] == U'\n') ++i;
    } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
      out += U'\n';
    } else {
      out += c;
    }
  }
  return out;
}

U32 remove_control_chars(const U32& s) {
  U32 out;
  out.reserve(s.size());
  for (const char32_t c : s) {
    const bool control = c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
                         c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
    if (!control) out += c;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// badness.is_bad: BADNESS_RE.search, one alternative per line as in badness.py.

bool is_bad_u32(const U32& t) {
  const std::size_t n = t.size();
  const auto ch = [&](std::size_t i) -> char32_t { return i < n ? t[i] : 0xFFFFFFFF; };
  const auto b = [&](std::size_t i) -> std::uint32_t { return i < n ? bits(t[i]) : 0; };
  constexpr std::uint32_t kAccented = kLowerAccented | kUpperAccented;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t b0 = bits(t[i]);
    const char32_t c0 = t[i];
    const std::uint32_t b1 = b(i + 1);
    const char32_t c1 = ch(i + 1);
    if (b0 & kC1) return true;
    if ((b0 & (kBad | kAccented | kBox | kStart | kEnd | kCurrency | kNumeric | kLaw)) && (b1 & kBad)) return true;
    if (is_ascii_alpha(c0) && (b1 & (kLowerCommon | kUpperCommon)) && (b(i + 2) & kBad)) return true;
    if ((b0 & kBad) && (b1 & (kAccented | kBox | kStart | kEnd | kCurrency | kNumeric | kLaw))) return true;
    if ((b0 & (kLowerAccented | kLowerCommon | kBox | kEnd | kCurrency | kNumeric)) && (b1 & kUpperAccented)) return true;
    if ((b0 & (kBox | kEnd | kCurrency | kNumeric)) && (b1 & kLowerAccented)) return true;
    if ((b0 & (kLowerAccented | kBox | kEnd)) && (b1 & kCurrency)) return true;
    if (is_py_space(c0) && (b1 & kUpperAccented) && (b(i + 2) & kCurrency)) return true;
    if ((b0 & (kUpperAccented | kBox)) && (b1 & (kNumeric | kLaw))) return true;
    if ((b0 & (kAccented | kBox | kCurrency | kEnd)) && (b1 & kStart) && (b(i + 2) & kNumeric)) return true;
    if ((b0 & (kAccented | kCurrency | kNumeric | kBox | kLaw)) && (b1 & kEnd) && (b(i + 2) & kStart)) return true;
    if ((b0 & (kCurrency | kNumeric | kBox)) && (b1 & kStart)) return true;
    if (is_ascii_lower(c0) && (b1 & kUpperAccented) && (b(i + 2) & (kStart | kCurrency))) return true;
    if ((b0 & kBox) && (b1 & kKaomoji)) return true;
    if ((b0 & (kAccented | kCurrency | kNumeric | kStart | kEnd | kLaw)) && (b1 & kBox)) return true;
    if ((b0 & kBox) && (b1 & kEnd)) return true;
    if ((b0 & kAccented) && (b1 & (kStart | kEnd)) && i + 2 < n && is_word(t[i + 2])) return true;
    // The ligature œ when not followed by an unaccented Latin letter
    if ((c0 == U'Œ' || c0 == U'œ') && i + 1 < n && !is_ascii_alpha(c1)) return true;
    // Degree signs after capital letters
    if ((b0 & kUpperAccented) && c1 == U'°') return true;
    // Common Windows-1252 2-character mojibake that isn't covered by the cases above
    if (one_of(c0, U"ÂÃÎÐ") && i + 1 < n &&
        (one_of(c1, U"€œŠš¢£Ÿž\u00A0\u00AD®©°·»–—´") || (b1 & (kStart | kEnd))))
      return true;
    if (c0 == U'×' && (c1 == U'²' || c1 == U'³')) return true;
    // Windows-1252 mojibake of Arabic words
    if (i + 3 < n) {
      const auto arabic_second = [&](std::size_t k) {
        return (bits(t[k]) & (kCommon | kCurrency | kBad | kNumeric | kStart)) || one_of(t[k], U"ŸŠ®°µ»");
      };
      if (one_of(c0, U"ØÙ") && arabic_second(i + 1) && one_of(t[i + 2], U"ØÙ") && arabic_second(i + 3)) return true;
    }
    // Windows-1252 mojibake that starts 3-character sequences for some South Asian alphabets
    if (c0 == U'à' && i + 1 < n && one_of(c1, U"²µ¹¼½¾")) return true;
    // MacRoman mojibake that isn't covered by the cases above
    if (c0 == U'√' && i + 1 < n && one_of(c1, U"±∂†≠®™´≤≥¥µø")) return true;
    if (c0 == U'≈' && (c1 == U'°' || c1 == U'¢')) return true;
    if (c0 == U'‚' && c1 == U'Ä' && i + 2 < n && one_of(t[i + 2], U"ìîïòôúùû†°¢π")) return true;
    if (c0 == U'‚' && (c1 == U'â' || c1 == U'ó') && i + 2 < n && one_of(t[i + 2], U"àä°ê")) return true;
    // Windows-1251 mojibake of characters in the U+2000 range
    if (c0 == U'в' && c1 == U'Ђ') return true;
    // Windows-1251 mojibake of Latin-1 characters and/or the Cyrillic alphabet
    if (one_of(c0, U"ВГРС") && i + 2 < n &&
        ((b1 & (kC1 | kBad | kStart | kEnd | kCurrency)) || c1 == U'°' || c1 == U'µ') && one_of(t[i + 2], U"ВГРС"))
      return true;
    // A distinctive five-character sequence of Cyrillic letters
    if (i + 6 < n && t.compare(i, 5, U"ГўВЂВ") == 0 && t[i + 5] != U'\n' && (is_ascii_alpha(t[i + 6]) || t[i + 6] == U' '))
      return true;
    // Windows-1252 encodings of 'à' and 'á', as well as \xa0 itself
    if (c0 == U'Ã' && (c1 == U'\u00A0' || c1 == U'¡')) return true;
    if (is_ascii_lower(c0) && (((c1 == U'Ã' || c1 == U'Â') && ch(i + 2) == U' ') ||
                               (i + 1 < n && is_py_space(c1) && (ch(i + 2) == U'Ã' || ch(i + 2) == U'Â') && ch(i + 3) == U' ')))
      return true;
    if (i == 0 && (c0 == U'Ã' || c0 == U'Â') && c1 == U' ') return true;
    // Cases where Â precedes a character as an encoding of exactly the same character
    if ((is_ascii_lower(c0) || one_of(c0, U".,?!") || (b0 & kEnd)) && c1 == U'Â' &&
        (ch(i + 2) == U' ' || (b(i + 2) & (kStart | kEnd))))
      return true;
    // Windows-1253 mojibake of characters in the U+2000 range
    if (c0 == U'β' && c1 == U'€' && i + 2 < n && one_of(t[i + 2], U"™\u00A0Ά\u00AD®°")) return true;
    // Windows-1253 mojibake of Latin-1 characters and/or the Greek alphabet
    if (one_of(c0, U"ΒΓΞΟ") && i + 2 < n && ((b1 & (kC1 | kBad | kStart | kEnd | kCurrency)) || c1 == U'°') &&
        one_of(t[i + 2], U"ΒΓΞΟ"))
      return true;
    // Windows-1257 mojibake of characters in the U+2000 range
    if (c0 == U'ā' && c1 == U'€') return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// fix_encoding

constexpr std::size_t kLatin1 = 0, kMacRoman = 8;  // indexes into kCharmaps (kCharmapNames)
constexpr bool is_sloppy(std::size_t e) { return kCharmapNames[e].starts_with("sloppy-"); }
static_assert(kCharmapNames[kLatin1] == "latin-1" && kCharmapNames[kMacRoman] == "macroman" &&
              kCharmapNames[1] == "sloppy-windows-1252" && std::size(kCharmapNames) == std::size(kCharmaps));

// Code point -> byte, per charmap encoding (bytes 0x80-0xFF and 0x1A; ASCII maps to itself).
struct Charmap {
  std::vector<std::pair<char32_t, unsigned char>> high;  // sorted by code point
  bool can_encode(char32_t c) const {
    if (c < 0x80 && c != 0x1A) return true;
    return find(c) >= 0;
  }
  int find(char32_t c) const {
    const auto it = std::lower_bound(high.begin(), high.end(), c, [](const auto& e, char32_t v) { return e.first < v; });
    return it != high.end() && it->first == c ? it->second : -1;
  }
};

const std::vector<Charmap>& charmaps() {
  static const auto maps = [] {
    std::vector<Charmap> out(std::size(kCharmaps));
    for (std::size_t e = 0; e < out.size(); ++e) {
      for (int b = 0; b < 128; ++b) out[e].high.emplace_back(kCharmaps[e][b], static_cast<unsigned char>(0x80 + b));
      out[e].high.emplace_back(kCharmaps[e][128], static_cast<unsigned char>(0x1A));
      std::sort(out[e].high.begin(), out[e].high.end());
    }
    return out;
  }();
  return maps;
}

// chardata.possible_encoding.
bool possible_encoding(const U32& t, std::size_t e) {
  const Charmap& m = charmaps()[e];
  return std::all_of(t.begin(), t.end(), [&](char32_t c) { return m.can_encode(c); });
}

std::string encode_charmap(const U32& t, std::size_t e) {
  const Charmap& m = charmaps()[e];
  std::string out;
  out.reserve(t.size());
  for (const char32_t c : t) {
    const int byte = c < 0x80 && c != 0x1A ? static_cast<int>(c) : m.find(c);
    out += static_cast<char>(byte);
  }
  return out;
}

inline bool in(unsigned char b, unsigned char lo, unsigned char hi) { return b >= lo && b <= hi; }

// chardata.ALTERED_UTF8_RE: the length of the match at s[i], or 0.
std::size_t altered_utf8_at(std::string_view s, std::size_t i) {
  const auto at = [&](std::size_t k) -> int { return k < s.size() ? static_cast<unsigned char>(s[k]) : -1; };
  const auto x = [](int b) { return b >= 0 && (in(b, 0x80, 0x84) || in(b, 0x86, 0x9F) || in(b, 0xA1, 0xBF)); };
  const auto cont = [](int b) { return b >= 0 && in(b, 0x80, 0xBF); };
  const int b0 = at(i), b1 = at(i + 1), b2 = at(i + 2), b3 = at(i + 3);
  if ((b0 == 0xC2 || b0 == 0xC3 || b0 == 0xC5 || b0 == 0xCE || b0 == 0xD0 || b0 == 0xD9) && b1 == ' ') return 2;
  if ((b0 == 0xE2 || b0 == 0xE3) && b1 == ' ' && x(b2)) return 3;
  if (b0 >= 0xE0 && b0 <= 0xE3 && x(b1) && b2 == ' ') return 3;
  if (b0 == 0xF0 && b1 == ' ' && cont(b2) && cont(b3)) return 4;
  if (b0 == 0xF0 && cont(b1) && b2 == ' ' && cont(b3)) return 4;
  if (b0 == 0xF0 && cont(b1) && cont(b2) && b3 == ' ') return 4;
  return 0;
}

bool altered_utf8_search(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i)
    if (altered_utf8_at(s, i)) return true;
  return false;
}

// fixes.restore_byte_a0.
std::string restore_byte_a0(std::string_view s) {
  // A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )" -> b"\xc3\xa0 "
  std::string a;
  a.reserve(s.size() + 8);
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (static_cast<unsigned char>(s[i]) == 0xC3 && i + 1 < s.size() && s[i + 1] == ' ') {
      const std::string_view rest = s.substr(i + 2);
      if (!(rest.starts_with(" ") || rest.starts_with("quele") || rest.starts_with("quela") ||
            rest.starts_with("quilo") || rest.starts_with("s "))) {
        a += "\xC3\xA0 ";
        ++i;
        continue;
      }
    }
    a += s[i];
  }
  std::string out;
  out.reserve(a.size());
  for (std::size_t i = 0; i < a.size();) {
    const std::size_t m = altered_utf8_at(a, i);
    if (m == 0) {
      out += a[i++];
      continue;
    }
    for (std::size_t k = i; k < i + m; ++k) out += a[k] == ' ' ? '\xA0' : a[k];
    i += m;
  }
  return out;
}

// fixes.replace_lossy_sequences: chardata.LOSSY_UTF8_RE -> U+FFFD.
std::string replace_lossy_sequences(std::string_view s) {
  const auto at = [&](std::size_t k) -> int { return k < s.size() ? static_cast<unsigned char>(s[k]) : -1; };
  const auto lost = [](int b) { return b == 0x1A || b == '?'; };                    // [\x1a?]
  const auto cont = [](int b) { return b == 0x1A || (b >= 0x80 && b <= 0xBF); };     // [\x1a\x80-\xbf]
  const auto any = [](int b) { return b == 0x1A || b == '?' || (b >= 0x80 && b <= 0xBF); };
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const int b0 = at(i), b1 = at(i + 1), b2 = at(i + 2), b3 = at(i + 3), b4 = at(i + 4), b5 = at(i + 5);
    std::size_t m = 0;
    if (in(b0, 0xC2, 0xDF) && b1 == 0x1A) m = 2;
    else if (in(b0, 0xC2, 0xC3) && b1 == '?') m = 2;
    else if (b0 == 0xED && b1 >= 0xA0 && b1 <= 0xAF && lost(b2) && b3 == 0xED && b4 >= 0xB0 && b4 <= 0xBF && any(b5)) m = 6;
    else if (b0 == 0xED && b1 >= 0xA0 && b1 <= 0xAF && any(b2) && b3 == 0xED && b4 >= 0xB0 && b4 <= 0xBF && lost(b5)) m = 6;
    else if (in(b0, 0xE0, 0xEF) && lost(b1) && cont(b2)) m = 3;
    else if (in(b0, 0xE0, 0xEF) && cont(b1) && lost(b2)) m = 3;
    else if (in(b0, 0xF0, 0xF4) && lost(b1) && cont(b2) && cont(b3)) m = 4;
    else if (in(b0, 0xF0, 0xF4) && cont(b1) && lost(b2) && cont(b3)) m = 4;
    else if (in(b0, 0xF0, 0xF4) && cont(b1) && cont(b2) && lost(b3)) m = 4;
    else if (b0 == 0x1A) m = 1;
    if (m == 0) {
      out += s[i++];
      continue;
    }
    out += "\xEF\xBF\xBD";
    i += m;
  }
  return out;
}

// bytes.decode("utf-8-variants") (ftfy.bad_codecs.utf8_variants): UTF-8, plus CESU-8 surrogate
// pairs and the Java-style C0 80 for U+0000; nullopt where Python raises UnicodeDecodeError.
std::optional<U32> decode_utf8_variants(std::string_view s) {
  U32 out;
  out.reserve(s.size());
  const auto at = [&](std::size_t k) -> int { return k < s.size() ? static_cast<unsigned char>(s[k]) : -1; };
  std::size_t i = 0;
  while (i < s.size()) {
    const int b0 = at(i);
    if (b0 < 0x80) {
      out += static_cast<char32_t>(b0);
      ++i;
      continue;
    }
    if (b0 == 0xC0 && at(i + 1) == 0x80) {
      out += U'\0';
      i += 2;
      continue;
    }
    if (b0 == 0xED && in(at(i + 1), 0xA0, 0xAF) && in(at(i + 2), 0x80, 0xBF) && at(i + 3) == 0xED &&
        in(at(i + 4), 0xB0, 0xBF) && in(at(i + 5), 0x80, 0xBF)) {
      out += static_cast<char32_t>(((at(i + 1) & 0x0F) << 16) + ((at(i + 2) & 0x3F) << 10) + ((at(i + 4) & 0x0F) << 6) +
                                   (at(i + 5) & 0x3F) + 0x10000);
      i += 6;
      continue;
    }
    std::size_t need;
    int lo = 0x80, hi = 0xBF;
    char32_t c;
    if (b0 >= 0xC2 && b0 <= 0xDF) { need = 2; c = b0 & 0x1F; }
    else if (b0 == 0xE0) { need = 3; lo = 0xA0; c = 0; }
    else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) { need = 3; c = b0 & 0x0F; }
    else if (b0 == 0xED) { need = 3; hi = 0x9F; c = b0 & 0x0F; }
    else if (b0 == 0xF0) { need = 4; lo = 0x90; c = 0; }
    else if (b0 >= 0xF1 && b0 <= 0xF3) { need = 4; c = b0 & 0x07; }
    else if (b0 == 0xF4) { need = 4; hi = 0x8F; c = 4; }
    else return std::nullopt;
    for (std::size_t k = 1; k < need; ++k) {
      const int b = at(i + k);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return std::nullopt;
      c = (c << 6) | static_cast<char32_t>(b & 0x3F);
    }
    out += c;
    i += need;
  }
  return out;
}

U32 fix_encoding_u32(U32 text);

// chardata.UTF8_DETECTOR_RE: the length of the match at t[i] (lookbehind included), or 0.
std::size_t utf8_detector_at(const U32& t, std::size_t i) {
  if (i > 0 && (bits(t[i - 1]) & kContinuationStrict)) return 0;
  const std::size_t n = t.size();
  const auto cont = [&](std::size_t k) { return k < n && (bits(t[k]) & kContinuation); };
  std::size_t p = i;
  while (p < n) {
    const std::uint32_t b = bits(t[p]);
    if ((b & kFirstOf2) && cont(p + 1)) p += 2;
    else if ((b & kFirstOf3) && cont(p + 1) && cont(p + 2)) p += 3;
    else if ((b & kFirstOf4) && cont(p + 1) && cont(p + 2) && cont(p + 3)) p += 4;
    else break;
  }
  return p - i;
}

// fixes.decode_inconsistent_utf8.
U32 decode_inconsistent_utf8(const U32& text) {
  U32 out;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t m = utf8_detector_at(text, i);
    if (m == 0) {
      out += text[i++];
      continue;
    }
    U32 sub = text.substr(i, m);
    if (sub.size() < text.size() && is_bad_u32(sub)) out += fix_encoding_u32(std::move(sub));
    else out += sub;
    i += m;
  }
  return out;
}

bool utf8_detector_search(const U32& t) {
  for (std::size_t i = 0; i < t.size(); ++i)
    if (utf8_detector_at(t, i)) return true;
  return false;
}

// ftfy._fix_encoding_one_step_and_explain (default config), the text only.
U32 fix_encoding_one_step(const U32& text) {
  if (text.empty()) return text;
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x80; }) || !is_bad_u32(text)) return text;
  bool latin1_possible = false;
  for (std::size_t e = 0; e < std::size(kCharmaps); ++e) {
    if (!possible_encoding(text, e)) continue;
    if (e == kLatin1) latin1_possible = true;
    std::string bytes = encode_charmap(text, e);
    if (e != kMacRoman && altered_utf8_search(bytes)) bytes = restore_byte_a0(bytes);
    if (is_sloppy(e)) bytes = replace_lossy_sequences(bytes);
    if (auto fixed = decode_utf8_variants(bytes)) return std::move(*fixed);
  }
  if (utf8_detector_search(text)) {
    U32 fixed = decode_inconsistent_utf8(text);
    if (fixed != text) return fixed;
  }
  if (latin1_possible) {
    // "windows-1252" is never in ftfy's list (it holds "sloppy-windows-1252"), so Latin-1 text is
    // re-decoded as strict windows-1252, which fails on 0x81, 0x8D, 0x8F, 0x90 and 0x9D.
    U32 fixed = text;
    bool ok = true;
    for (char32_t& c : fixed) {
      if (c < 0x80 || c > 0x9F) continue;
      if (c == 0x81 || c == 0x8D || c == 0x8F || c == 0x90 || c == 0x9D) { ok = false; break; }
      c = c1_to_windows_1252(c);
    }
    if (ok && fixed != text) return fixed;
  }
  if (std::any_of(text.begin(), text.end(), [](char32_t c) { return c >= 0x80 && c <= 0x9F; })) return fix_c1_controls(text);
  return text;
}

U32 fix_encoding_u32(U32 text) {
  while (true) {
    U32 next = fix_encoding_one_step(text);
    if (next == text) return text;
    text = std::move(next);
  }
}

// ftfy.fix_and_explain on one segment (explain=False).
U32 fix_segment(U32 text, bool unescape) {
  while (true) {
    const U32 orig = text;
    if (unescape) text = unescape_html(text);
    text = fix_encoding_u32(std::move(text));
    text = fix_c1_controls(text);
    text = fix_latin_ligatures(text);
    text = fix_character_width(text);
    text = uncurl_quotes(text);
    text = fix_line_breaks(text);
    // fix_surrogates: valid UTF-8 holds no surrogates.
    text = remove_terminal_escapes(text);
    text = remove_control_chars(text);
    text = nfc(text);
    if (text == orig) return text;
  }
}

U32 fix_text_u32(const U32& text) {
  constexpr std::size_t kMaxDecodeLength = 1'000'000;
  U32 out;
  out.reserve(text.size());
  bool unescape = true;  // "auto": off from the first segment that holds a '<' on
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find(U'\n', pos);
    std::size_t textbreak = nl == U32::npos ? text.size() : nl + 1;
    if (textbreak - pos > kMaxDecodeLength) textbreak = pos + kMaxDecodeLength;
    U32 segment = text.substr(pos, textbreak - pos);
    if (unescape && segment.find(U'<') != U32::npos) unescape = false;
    out += fix_segment(std::move(segment), unescape);
    pos = textbreak;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Python str methods

U32 strip_u32(const U32& s) {
  std::size_t b = 0, e = s.size();
  while (b < e && is_py_space(s[b])) ++b;
  while (e > b && is_py_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// regex.sub(r'\s+', ' ', s)
U32 collapse_space(const U32& s) {
  U32 out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    if (!is_white_space(s[i])) {
      out += s[i++];
      continue;
    }
    while (i < s.size() && is_white_space(s[i])) ++i;
    out += U' ';
  }
  return out;
}

bool is_cased(char32_t c) { return in_ranges(kCased, c); }
bool is_case_ignorable(char32_t c) { return in_ranges(kCaseIgnorable, c); }

// str.lower(): full lower-case mappings (U+0130 is the only multi-character one) and the
// Final_Sigma rule of CPython's handle_capital_sigma.
U32 lower_u32(const U32& s) {
  U32 out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c < 0x80) {
      out += (c >= 'A' && c <= 'Z') ? c + 32 : c;
    } else if (c == 0x130) {
      out += U"i\u0307";
    } else if (c == 0x3A3) {
      std::size_t j = i;
      while (j > 0 && is_case_ignorable(s[j - 1])) --j;
      bool final_sigma = j > 0 && is_cased(s[j - 1]);
      if (final_sigma) {
        std::size_t k = i + 1;
        while (k < s.size() && is_case_ignorable(s[k])) ++k;
        final_sigma = k == s.size() || !is_cased(s[k]);
      }
      out += final_sigma ? U'\u03C2' : U'\u03C3';
    } else {
      out += static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
    }
  }
  return out;
}

U32 whitespace_clean_u32(const U32& s) { return strip_u32(collapse_space(s)); }

U32 basic_clean_u32(const U32& s) { return strip_u32(html_unescape_u32(html_unescape_u32(fix_text_u32(s)))); }

U32 canonicalize_u32(const U32& s) {
  U32 text;
  text.reserve(s.size());
  static constexpr std::u32string_view kPunctuation = U"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";  // string.punctuation
  for (char32_t c : s) {
    if (c == U'_') c = U' ';
    if (!one_of(c, kPunctuation)) text += c;
  }
  return strip_u32(collapse_space(lower_u32(text)));
}

}  // namespace

std::optional<TextClean> parse_text_clean(std::string_view name) {
  if (name == "none") return TextClean::None;
  if (name == "whitespace") return TextClean::Whitespace;
  if (name == "lower") return TextClean::Lower;
  if (name == "canonicalize") return TextClean::Canonicalize;
  return std::nullopt;
}

std::string clean_text(std::string_view text, TextClean mode) {
  switch (mode) {
    case TextClean::None: {
      decode_utf8(text);  // validates
      return std::string(text);
    }
    case TextClean::Whitespace: return encode_utf8(whitespace_clean_u32(basic_clean_u32(decode_utf8(text))));
    case TextClean::Lower: return encode_utf8(lower_u32(whitespace_clean_u32(basic_clean_u32(decode_utf8(text)))));
    case TextClean::Canonicalize: return encode_utf8(canonicalize_u32(basic_clean_u32(decode_utf8(text))));
  }
  return std::string(text);
}

std::string basic_clean(std::string_view text) { return encode_utf8(basic_clean_u32(decode_utf8(text))); }
std::string whitespace_clean(std::string_view text) { return encode_utf8(whitespace_clean_u32(decode_utf8(text))); }
std::string canonicalize(std::string_view text) { return encode_utf8(canonicalize_u32(decode_utf8(text))); }
std::string ftfy_fix_text(std::string_view text) { return encode_utf8(fix_text_u32(decode_utf8(text))); }
std::string ftfy_fix_encoding(std::string_view text) { return encode_utf8(fix_encoding_u32(decode_utf8(text))); }
bool ftfy_is_bad(std::string_view text) { return is_bad_u32(decode_utf8(text)); }
std::string html_unescape(std::string_view text) { return encode_utf8(html_unescape_u32(decode_utf8(text))); }
std::string python_lower(std::string_view text) { return encode_utf8(lower_u32(decode_utf8(text))); }
std::string python_strip(std::string_view text) { return encode_utf8(strip_u32(decode_utf8(text))); }

}  // namespace diffsynth
