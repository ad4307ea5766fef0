// libFuzzer target: the Wan text path on arbitrary bytes — the reference's three cleaning modes
// (ftfy.fix_text with mojibake repair, HTML unescaping, whitespace / lower / canonicalize), then
// the real umt5 tokenizer (data/umt5-tokenizer, loaded once, both semantics): encode, the padded
// 512 batch, decode. Invalid UTF-8 must be refused with diffsynth::Error; anything else (crash,
// other exception, sanitizer report, a broken invariant) is a bug.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/error.h"
#include "core/tokenizer/text_cleaning.h"
#include "core/tokenizer/unigram_tokenizer.h"

namespace {

// $DIFFSYNTH_UMT5_TOKENIZER, else data/umt5-tokenizer next to this source file or below the
// current folder.
std::string data_dir() {
  if (const char* d = std::getenv("DIFFSYNTH_UMT5_TOKENIZER"); d && *d) return d;
  const std::filesystem::path here = std::filesystem::path(__FILE__).parent_path() / ".." / "data" / "umt5-tokenizer";
  std::error_code ec;
  if (std::filesystem::is_directory(here, ec)) return here.string();
  return (std::filesystem::current_path() / "data" / "umt5-tokenizer").string();
}

const diffsynth::UnigramTokenizer& transformers_tokenizer() {
  static const auto t = diffsynth::UnigramTokenizer::from_dir(data_dir());
  return t;
}

const diffsynth::UnigramTokenizer& tokenizers_tokenizer() {
  static const auto t = diffsynth::UnigramTokenizer::from_dir(data_dir(), diffsynth::TokenizerSemantics::Tokenizers);
  return t;
}

bool valid_utf8(std::string_view s) {
  try {
    diffsynth::python_strip(s);
    return true;
  } catch (const diffsynth::Error&) {
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  transformers_tokenizer();
  tokenizers_tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 4096) return 0;  // ftfy's repeat-until-stable loop is quadratic-ish; keep runs fast
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (!valid_utf8(text)) {
    try {
      transformers_tokenizer().encode(text);
      __builtin_trap();  // invalid UTF-8 must be refused
    } catch (const diffsynth::Error&) {
    }
    return 0;
  }
  const auto& t5 = transformers_tokenizer();
  const auto& raw = tokenizers_tokenizer();
  for (const auto mode : {diffsynth::TextClean::Whitespace, diffsynth::TextClean::Lower, diffsynth::TextClean::Canonicalize}) {
    const std::string cleaned = diffsynth::clean_text(text, mode);
    if (!valid_utf8(cleaned)) __builtin_trap();
    // whitespace_clean output is stripped and has no space runs: cleaning it again keeps it.
    if (mode == diffsynth::TextClean::Whitespace && diffsynth::whitespace_clean(cleaned) != cleaned) __builtin_trap();
    const std::vector<int32_t> ids = t5.encode(cleaned);
    if (ids.empty() || ids.back() != 1) __builtin_trap();  // </s> last
    for (const int32_t id : ids)
      if (id < 0 || static_cast<std::size_t>(id) >= t5.vocab_size()) __builtin_trap();
    const std::string decoded = t5.decode(ids, true);
    if (!valid_utf8(decoded)) __builtin_trap();
    const diffsynth::Encoding batch = t5.encode_batch({cleaned}, 512, diffsynth::Padding::MaxLength);
    if (batch.input_ids[0].size() != 512 || batch.attention_mask[0].size() != 512) __builtin_trap();
    std::size_t real = 0;
    while (real < 512 && batch.attention_mask[0][real] == 1) ++real;
    if (real == 0 || batch.input_ids[0][real - 1] != 1) __builtin_trap();  // </s> ends the real ids
    if (real != std::min<std::size_t>(ids.size(), 512)) __builtin_trap();
  }
  const std::vector<int32_t> ids = raw.encode(text, false);
  raw.decode(ids, false);
  diffsynth::ftfy_fix_encoding(text);
  diffsynth::html_unescape(text);
  return 0;
}
