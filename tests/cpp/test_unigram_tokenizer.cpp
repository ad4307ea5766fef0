// UnigramTokenizer on a tiny hand-written tokenizer.json (Viterbi by piece score, unknown
// characters fused into one <unk>, added tokens, the </s> post-processor, truncation that keeps
// </s>, byte_fallback, the transformers T5Tokenizer rebuild, load errors), a few exact encodings
// of the real umt5 tokenizer in data/umt5-tokenizer, and the Wan text cleaning. The real-file ids
// and cleaned strings are checked against the Python reference in
// tests/python/test_umt5_tokenizer_parity.py::test_gtest_constants_match_reference.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tokenizer/text_cleaning.h"
#include "core/tokenizer/unigram_tokenizer.h"
#include "test_util.h"

using diffsynth::Padding;
using diffsynth::TokenizerSemantics;
using diffsynth::UnigramTokenizer;

namespace {

std::string umt5_dir() {
  if (const char* src = std::getenv("DIFFSYNTH_SOURCE_DIR"); src && *src)
    return (std::filesystem::path(src) / "data" / "umt5-tokenizer").string();
  return (std::filesystem::path(__FILE__).parent_path() / ".." / ".." / "data" / "umt5-tokenizer").string();
}

const UnigramTokenizer& umt5() {
  static const UnigramTokenizer tokenizer = UnigramTokenizer::from_dir(umt5_dir());
  return tokenizer;
}

template <class F>
void expect_error(F&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    FAIL() << "no error";
  } catch (const diffsynth::Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const auto& n : needles) EXPECT_NE(message.find(n), std::string::npos) << message << " lacks " << n;
  }
}

// ids:       0      1      2     3       4    5      6    7    8     9     10     11    12    13
// pieces: <pad>  </s>   <s>  <unk>    ▁     a      b   ab   ▁ab   ▁a     d     dé   <0x78> <extra_id_0>
constexpr int kUnk = 3, kSpace = 4, kA = 5, kB = 6, kAB = 7, kSpaceAB = 8, kSpaceA = 9, kD = 10, kDE = 11, kByteX = 12,
              kExtra = 13;

std::string tiny_json(const std::string& model_extra = "", const std::string& normalizer =
                          R"({"type":"Sequence","normalizers":[{"type":"Replace","pattern":{"Regex":" {2,}"},"content":" "}]})") {
  const auto added = [](int id, const std::string& content) {
    return R"({"id":)" + std::to_string(id) + R"(,"content":")" + content +
           R"(","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true})";
  };
  return R"({"version":"1.0","truncation":null,"padding":null,"added_tokens":[)" + added(0, "<pad>") + "," +
         added(1, "</s>") + "," + added(2, "<s>") + "," + added(3, "<unk>") + "," + added(13, "<extra_id_0>") +
         R"(],"normalizer":)" + normalizer + R"(,
  "pre_tokenizer":{"type":"Metaspace","replacement":"\u2581","add_prefix_space":true},
  "post_processor":{"type":"TemplateProcessing","single":[{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"</s>","type_id":0}}],
    "pair":[],"special_tokens":{"</s>":{"id":"</s>","ids":[1],"tokens":["</s>"]}}},
  "decoder":{"type":"Metaspace","replacement":"\u2581","add_prefix_space":true},
  "model":{"type":"Unigram","unk_id":3,)" + model_extra + R"("vocab":[["<pad>",0.0],["</s>",0.0],["<s>",0.0],["<unk>",0.0],
    ["\u2581",-2.0],["a",-3.0],["b",-3.0],["ab",-4.0],["\u2581ab",-5.0],["\u2581a",-4.0],["d",-3.0],["d\u00e9",-25.0],
    ["<0x78>",-6.0],["<extra_id_0>",0.0]]}})";
}

UnigramTokenizer tiny(const TempDir& dir, const std::string& json = tiny_json()) {
  write_bytes(dir.path("tokenizer.json"), json);
  return UnigramTokenizer::from_file(dir.path("tokenizer.json"));
}

}  // namespace

TEST(UnigramTokenizer, ViterbiPicksTheBestScoringSegmentation) {
  TempDir dir;
  const UnigramTokenizer t = tiny(dir);
  // "▁ab": ▁ab (-5) beats ▁ + ab (-6), ▁a + b (-7) and ▁ + a + b (-8).
  EXPECT_EQ(t.encode("ab", false), (std::vector<int32_t>{kSpaceAB}));
  // "▁abab": ▁ab + ab (-9) beats ▁a + b + ab, ...; a space starts a new word.
  EXPECT_EQ(t.encode("abab", false), (std::vector<int32_t>{kSpaceAB, kAB}));
  EXPECT_EQ(t.encode("ab b", false), (std::vector<int32_t>{kSpaceAB, kSpace, kB}));
  // A piece covering an otherwise unknown character always beats the <unk> (scored min - 10).
  EXPECT_EQ(t.encode("d\u00e9", false), (std::vector<int32_t>{kSpace, kDE}));
  EXPECT_EQ(t.encode("\u00e9d", false), (std::vector<int32_t>{kSpace, kUnk, kD}));
  // The post-processor appends </s>; the empty text is just </s>.
  EXPECT_EQ(t.encode("a"), (std::vector<int32_t>{kSpaceA, 1}));
  EXPECT_EQ(t.encode(""), (std::vector<int32_t>{1}));
  EXPECT_EQ(t.encode("", false), (std::vector<int32_t>{}));
}

TEST(UnigramTokenizer, ConsecutiveUnknownsFuseIntoOneUnk) {
  TempDir dir;
  const UnigramTokenizer t = tiny(dir);
  EXPECT_EQ(t.encode("axyzb", false), (std::vector<int32_t>{kSpaceA, kUnk, kB}));
  EXPECT_EQ(t.encode("xyz", false), (std::vector<int32_t>{kSpace, kUnk}));
  EXPECT_EQ(t.encode("x\u00e9\u4e2d", false), (std::vector<int32_t>{kSpace, kUnk}));
  // Runs of spaces collapse (the Replace normalizer); each space starts a word.
  EXPECT_EQ(t.encode("a   b", false), (std::vector<int32_t>{kSpaceA, kSpace, kB}));
  // A tab is no space for Metaspace: unknown, fused with its neighbours.
  EXPECT_EQ(t.encode("a\t\tb", false), (std::vector<int32_t>{kSpaceA, kUnk, kB}));
  EXPECT_THROW(t.encode("\xff"), diffsynth::Error);
}

TEST(UnigramTokenizer, ByteFallbackReplacesAnUnknownRunByItsBytes) {
  TempDir dir;
  const UnigramTokenizer t = tiny(dir, tiny_json(R"("byte_fallback":true,)"));
  EXPECT_EQ(t.encode("axb", false), (std::vector<int32_t>{kSpaceA, kByteX, kB}));
  // Not every byte has a <0x..> piece: the run stays one <unk>.
  EXPECT_EQ(t.encode("axyb", false), (std::vector<int32_t>{kSpaceA, kUnk, kB}));
}

TEST(UnigramTokenizer, AddedTokensAreCutOutFirst) {
  TempDir dir;
  const UnigramTokenizer t = tiny(dir);
  EXPECT_EQ(t.encode("a<extra_id_0>b", false), (std::vector<int32_t>{kSpaceA, kExtra, kSpace, kB}));
  EXPECT_EQ(t.encode("<extra_id_0></s><pad>"), (std::vector<int32_t>{kExtra, 1, 0, 1}));
  EXPECT_EQ(t.encode("<extr_i", false), (std::vector<int32_t>{kSpace, kUnk}));  // a partial token is text
  EXPECT_EQ(*t.token_to_id("<extra_id_0>"), kExtra);
  EXPECT_TRUE(t.is_special(kExtra));
  EXPECT_FALSE(t.is_special(kA));
  EXPECT_EQ(t.vocab_size(), 14u);
}

TEST(UnigramTokenizer, DecodeUsesTheMetaspaceDecoder) {
  TempDir dir;
  const UnigramTokenizer t = tiny(dir);
  EXPECT_EQ(t.decode(t.encode("ab ab")), "ab ab</s>");
  EXPECT_EQ(t.decode(t.encode("ab ab"), true), "ab ab");
  EXPECT_EQ(t.decode(std::vector<int32_t>{kSpace, kSpace, kSpaceA}), "  a");  // the first token's ▁ goes
  expect_error([&] { t.decode(std::vector<int32_t>{99}); }, {"token id 99 is not in the vocabulary"});
}

TEST(UnigramTokenizer, BatchTruncationKeepsTheEndToken) {
  TempDir dir;
  write_bytes(dir.path("tokenizer.json"), tiny_json());
  write_bytes(dir.path("tokenizer_config.json"), R"({"pad_token":"<pad>","model_max_length":4})");
  const UnigramTokenizer t = UnigramTokenizer::from_dir(dir.str(), TokenizerSemantics::Tokenizers);
  const diffsynth::Encoding e = t.encode_batch({"ab ab ab ab", "a", ""}, 3, Padding::MaxLength);
  ASSERT_EQ(e.input_ids.size(), 3u);
  EXPECT_EQ(e.input_ids[0], (std::vector<int64_t>{kSpaceAB, kSpaceAB, 1}));
  EXPECT_EQ(e.attention_mask[0], (std::vector<int64_t>{1, 1, 1}));
  EXPECT_EQ(e.input_ids[1], (std::vector<int64_t>{kSpaceA, 1, 0}));
  EXPECT_EQ(e.attention_mask[1], (std::vector<int64_t>{1, 1, 0}));
  EXPECT_EQ(e.input_ids[2], (std::vector<int64_t>{1, 0, 0}));
  // max_length 1: no text ids, only </s>.
  EXPECT_EQ(t.encode_batch({"ab"}, 1, Padding::MaxLength).input_ids[0], (std::vector<int64_t>{1}));
  // Longest padding; model_max_length (4) truncates when max_length is absent.
  const diffsynth::Encoding l = t.encode_batch({"ab ab ab ab ab", "a"}, std::nullopt, Padding::Longest);
  EXPECT_EQ(l.input_ids[0].size(), 4u);
  EXPECT_EQ(l.input_ids[1], (std::vector<int64_t>{kSpaceA, 1, 0, 0}));
  // Without special tokens nothing is appended.
  EXPECT_EQ(t.encode_batch({"ab ab"}, 5, Padding::MaxLength, true, false).input_ids[0],
            (std::vector<int64_t>{kSpaceAB, kSpaceAB, 0, 0, 0}));
}

TEST(UnigramTokenizer, TransformersT5SemanticsRebuildThePipeline) {
  TempDir dir;
  write_bytes(dir.path("tokenizer.json"), tiny_json());
  write_bytes(dir.path("tokenizer_config.json"), R"({"tokenizer_class":"T5Tokenizer","pad_token":"<pad>","eos_token":"</s>"})");
  const UnigramTokenizer hf = UnigramTokenizer::from_dir(dir.str());
  const UnigramTokenizer raw = UnigramTokenizer::from_dir(dir.str(), TokenizerSemantics::Tokenizers);
  EXPECT_EQ(hf.semantics(), TokenizerSemantics::Transformers);
  // WhitespaceSplit: tabs separate words; T5Tokenizer's unk id is 2 whatever the file says.
  EXPECT_EQ(hf.encode("a\tb", false), (std::vector<int32_t>{kSpaceA, kSpace, kB}));
  EXPECT_EQ(raw.encode("a\tb", false), (std::vector<int32_t>{kSpaceA, kUnk, kB}));
  EXPECT_EQ(hf.encode("xy"), (std::vector<int32_t>{kSpace, 2, 1}));
  EXPECT_EQ(*hf.unk_id(), 2);
  EXPECT_EQ(*raw.unk_id(), 3);
  EXPECT_EQ(hf.pad_token_id(), 0);

  write_bytes(dir.path("tokenizer_config.json"), R"({"tokenizer_class":"LlamaTokenizer"})");
  expect_error([&] { UnigramTokenizer::from_dir(dir.str()); }, {"tokenizer_config.json", "tokenizer_class LlamaTokenizer", "T5Tokenizer"});
  EXPECT_NO_THROW(UnigramTokenizer::from_dir(dir.str(), TokenizerSemantics::Tokenizers));
}

TEST(UnigramTokenizer, LoadErrorsNameTheFileAndTheProblem) {
  TempDir dir;
  expect_error([&] { UnigramTokenizer::from_file(dir.path("missing.json")); }, {dir.path("missing.json"), "cannot open"});
  expect_error([&] { UnigramTokenizer::from_dir(dir.path("nowhere")); }, {"nowhere", "no such folder"});
  expect_error([&] { UnigramTokenizer::from_dir(dir.str()); }, {"no tokenizer.json"});
  const auto refused = [&](const std::string& json, const std::vector<std::string>& needles) {
    write_bytes(dir.path("t.json"), json);
    expect_error([&] { UnigramTokenizer::from_file(dir.path("t.json")); }, needles);
  };
  const std::string good = tiny_json();
  refused(good.substr(0, good.size() / 2), {"t.json", "malformed tokenizer JSON"});
  refused(tiny_json("", R"({"type":"Precompiled","precompiled_charsmap":"AAAA"})"), {"t.json", "unsupported normalizer Precompiled"});
  refused(tiny_json("", R"({"type":"NFKC"})"), {"unsupported normalizer NFKC"});
  const auto edited = [&](const std::string& from, const std::string& to) {
    std::string json = good;
    const std::size_t at = json.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return at == std::string::npos ? json : json.replace(at, from.size(), to);
  };
  refused(edited(R"("type":"Unigram")", R"("type":"BPE")"), {"unsupported model type BPE (supported: Unigram)"});
  refused(edited(R"(["a",-3.0])", R"(["a"])"), {"model.vocab entries must be [piece, score]"});
  refused(edited(R"(["a",-3.0])", R"(["a","x"])"), {"model.vocab entries must be [piece, score]"});
  refused(edited(R"("unk_id":3)", R"("unk_id":99)"), {"model.unk_id 99 is outside the vocabulary"});
  refused(edited(R"({"type":"Metaspace","replacement":"\u2581","add_prefix_space":true})", R"({"type":"ByteLevel"})"),
          {"unsupported pre_tokenizer ByteLevel"});
  refused(edited(R"("type":"TemplateProcessing")", R"("type":"RobertaProcessing")"),
          {"unsupported post_processor RobertaProcessing"});
  refused(edited(R"("decoder":{"type":"Metaspace")", R"("decoder":{"type":"ByteLevel")"), {"unsupported decoder ByteLevel"});
}

TEST(UnigramTokenizer, RealUmt5Encodings) {
  const UnigramTokenizer& t = umt5();
  EXPECT_EQ(t.vocab_size(), 256300u);
  EXPECT_EQ(t.pad_token_id(), 0);
  EXPECT_EQ(t.encode("Hello world"), (std::vector<int32_t>{23231, 3914, 1}));
  EXPECT_EQ(t.encode("a\tb"), (std::vector<int32_t>{289, 748, 1}));
  EXPECT_EQ(t.encode("a\u018d\u0195b"), (std::vector<int32_t>{289, 2, 485, 1}));
  EXPECT_EQ(t.encode("x<extra_id_0>y"), (std::vector<int32_t>{675, 256299, 345, 1}));
  const UnigramTokenizer raw = UnigramTokenizer::from_dir(umt5_dir(), TokenizerSemantics::Tokenizers);
  EXPECT_EQ(raw.encode("a\tb"), (std::vector<int32_t>{289, 3, 485, 1}));
  EXPECT_EQ(raw.encode("a\u018d\u0195b"), (std::vector<int32_t>{289, 3, 485, 1}));
  EXPECT_EQ(t.decode(t.encode("Hello world"), true), "Hello world");
  // The Wan reference: 512 ids and mask, </s> kept at 512 when truncating.
  std::string long_text;
  for (int i = 0; i < 600; ++i) long_text += "hello ";
  const diffsynth::Encoding e = t.encode_batch({long_text, "Hello world"}, 512, Padding::MaxLength);
  ASSERT_EQ(e.input_ids[0].size(), 512u);
  EXPECT_EQ(e.input_ids[0][510], 154424);
  EXPECT_EQ(e.input_ids[0][511], 1);
  EXPECT_EQ(e.input_ids[1][2], 1);
  EXPECT_EQ(e.input_ids[1][3], 0);
  EXPECT_EQ(e.attention_mask[1][2], 1);
  EXPECT_EQ(e.attention_mask[1][3], 0);
}

TEST(TextCleaning, WanReferenceModes) {
  using diffsynth::TextClean;
  const std::string text = "  &amp;lt;b&amp;gt; \xEF\xBC\xA6\xEF\xBD\x95\xEF\xBD\x8C\xEF\xBD\x8C  \xE2\x80\x9Cquoted\xE2\x80\x9D\t\xEF\xAC\x81  ";
  EXPECT_EQ(diffsynth::clean_text(text, TextClean::Whitespace), "<b> Full \"quoted\" fi");
  EXPECT_EQ(diffsynth::clean_text(text, TextClean::Lower), "<b> full \"quoted\" fi");
  EXPECT_EQ(diffsynth::clean_text(text, TextClean::Canonicalize), "b full quoted fi");
  EXPECT_EQ(diffsynth::clean_text("Snake_Case ΣΑΣ", TextClean::Canonicalize), "snake case σας");
  EXPECT_EQ(diffsynth::clean_text(" x ", TextClean::None), " x ");
  EXPECT_EQ(diffsynth::ftfy_fix_text("\xC3\xA2\xC5\x93\xE2\x80\x9D No problems"), "\xE2\x9C\x94 No problems");  // âœ” -> ✔
  EXPECT_EQ(diffsynth::ftfy_fix_text("voil\xC3\x83 le travail"), "voil\xC3\xA0 le travail");                // restore_byte_a0
  EXPECT_EQ(diffsynth::html_unescape("&ampxyz &#128; &#x1F600;"), "&xyz \xE2\x82\xAC \xF0\x9F\x98\x80");
  EXPECT_EQ(diffsynth::python_lower("\xC4\xB0"), "i\xCC\x87");  // İ -> i̇
  EXPECT_EQ(*diffsynth::parse_text_clean("lower"), TextClean::Lower);
  EXPECT_FALSE(diffsynth::parse_text_clean("Lower"));
  EXPECT_THROW(diffsynth::clean_text("\xC3", TextClean::Whitespace), diffsynth::Error);
}
