// The text cleaning of DiffSynth-Studio's Wan text encoder (diffsynth/models/wan_video_text_encoder.py,
// HuggingfaceTokenizer(clean=...)), with the Python functions it calls reproduced in C++:
//   whitespace    whitespace_clean(basic_clean(text))
//   lower         whitespace_clean(basic_clean(text)).lower()
//   canonicalize  canonicalize(basic_clean(text))
// where basic_clean = ftfy.fix_text (ftfy 6.3.1, default TextFixerConfig), html.unescape twice,
// str.strip(); whitespace_clean = `regex` \s+ -> ' ', strip; canonicalize = '_' -> ' ', ASCII
// punctuation (string.punctuation) removed, lower(), \s+ -> ' ', strip.
//
// ftfy.fix_text is reproduced fixer for fixer, with its line-by-line segments (at most 1,000,000
// code points each), its "auto" HTML unescaping (off from the first segment holding a '<' on)
// and its repeat-until-unchanged loop: unescape_html, fix_encoding (mojibake detection by
// badness.is_bad and re-decoding through latin-1, sloppy-windows-1252/1251/1250/1253/1254/1257,
// iso-8859-2, macroman and cp437 into UTF-8 or ftfy's utf-8-variants, with restore_byte_a0,
// replace_lossy_sequences, decode_inconsistent_utf8 and the C1 / windows-1252 fallbacks),
// fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks,
// remove_terminal_escapes, remove_control_chars and NFC (utf8proc).
// Not reproduced, or reproduced only approximately:
//   - fix_surrogates: a no-op here, because valid UTF-8 (all this code accepts) cannot hold the
//     lone UTF-16 surrogates it repairs;
//   - Unicode versions: Python 3.11 has Unicode 14, utf8proc (NFC, letters for \w, lower-case
//     mappings) a newer one. The two agree on every single code point (the parity test runs them
//     all), but a run of combining marks assigned after Unicode 14 could be reordered by NFC, and
//     \w (used by one badness rule) sees such letters as letters. str.lower()'s Final_Sigma
//     context uses Python's own Cased / Case_Ignorable tables (text_cleaning.tables.inc).
// Everything else is meant to be exact; tests/python/test_umt5_tokenizer_parity.py compares it
// with the Python functions on a corpus and on every code point.
//
// All functions take and return UTF-8 and throw diffsynth::Error on invalid UTF-8. Torch-free.
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace diffsynth {

enum class TextClean { None, Whitespace, Lower, Canonicalize };

// "whitespace" / "lower" / "canonicalize" / "none"; nullopt for anything else.
std::optional<TextClean> parse_text_clean(std::string_view name);

// HuggingfaceTokenizer._clean(text) for the mode (None: text unchanged).
std::string clean_text(std::string_view text, TextClean mode);

std::string basic_clean(std::string_view text);        // ftfy.fix_text, html.unescape x2, strip
std::string whitespace_clean(std::string_view text);   // regex.sub(r'\s+', ' ', text).strip()
std::string canonicalize(std::string_view text);       // the reference's canonicalize(text)

std::string ftfy_fix_text(std::string_view text);      // ftfy.fix_text(text)
std::string ftfy_fix_encoding(std::string_view text);  // ftfy.fix_encoding(text)
bool ftfy_is_bad(std::string_view text);               // ftfy.badness.is_bad(text)
std::string html_unescape(std::string_view text);      // Python's html.unescape(text)
std::string python_lower(std::string_view text);       // str.lower() (full mappings, Final_Sigma)
std::string python_strip(std::string_view text);       // str.strip() (str.isspace characters)

}  // namespace diffsynth
