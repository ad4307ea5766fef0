// BPETokenizer: load errors, the word cache, batch padding/truncation and a few exact encodings
// (the same strings and ids are checked against the Python `tokenizers` package in
// tests/python/test_tokenizer_parity.py::test_gtest_constants_match_reference).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tokenizer/bpe_tokenizer.h"
#include "test_util.h"

using diffsynth::BPETokenizer;

namespace {

std::string qwen_dir() {
  if (const char* src = std::getenv("DIFFSYNTH_SOURCE_DIR"); src && *src)
    return (std::filesystem::path(src) / "data" / "qwen-tokenizer").string();
  return (std::filesystem::path(__FILE__).parent_path() / ".." / ".." / "data" / "qwen-tokenizer").string();
}

const BPETokenizer& qwen() {
  static const BPETokenizer tokenizer = BPETokenizer::from_dir(qwen_dir());
  return tokenizer;
}

// Expects fn to throw diffsynth::Error whose message contains every needle.
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

// A minimal valid byte-level tokenizer.json: the 256 byte tokens, one merge.
std::string tiny_tokenizer_json(const std::string& model_type = "BPE") {
  std::string vocab;
  int id = 0;
  int next = 256;  // bytes_to_unicode: printable Latin-1 maps to itself, the rest to U+0100 onwards
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const int cp = printable ? b : next++;
    std::string ch;
    if (cp < 0x80) ch += static_cast<char>(cp);
    else {
      ch += static_cast<char>(0xC0 | (cp >> 6));
      ch += static_cast<char>(0x80 | (cp & 0x3F));
    }
    if (ch == "\"" || ch == "\\") ch = "\\" + ch;
    vocab += (vocab.empty() ? "" : ",") + std::string("\"") + ch + "\":" + std::to_string(id++);
  }
  vocab += ",\"ab\":" + std::to_string(id++);
  return R"({"version":"1.0","added_tokens":[{"id":)" + std::to_string(id) +
         R"(,"content":"<|end|>","special":true,"lstrip":false,"rstrip":false,"normalized":false,"single_word":false}],
  "normalizer":{"type":"NFC"},
  "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
  "post_processor":null,"decoder":{"type":"ByteLevel"},
  "model":{"type":")" + model_type + R"(","vocab":{)" + vocab + R"(},"merges":[["a","b"]]}})";
}

}  // namespace

TEST(Tokenizer, ExactQwenEncodings) {
  const BPETokenizer& t = qwen();
  EXPECT_EQ(t.encode("hello world <|im_start|>x"), (std::vector<int32_t>{14990, 1879, 220, 151644, 87}));
  EXPECT_EQ(t.encode(""), std::vector<int32_t>{});
  EXPECT_EQ(t.encode("a"), std::vector<int32_t>{64});
  EXPECT_EQ(t.encode("<|endoftext|>"), std::vector<int32_t>{151643});
  EXPECT_EQ(t.token_to_id("<|im_end|>"), 151645);
  EXPECT_EQ(t.id_to_token(151644), "<|im_start|>");
  EXPECT_TRUE(t.is_special(151644));
  EXPECT_FALSE(t.is_special(151657));  // <tool_call> is added but not special
  EXPECT_EQ(t.pad_token_id(), 151643);
  EXPECT_EQ(t.model_max_length(), 131072u);
  EXPECT_EQ(t.vocab_size(), 151669u);
}

TEST(Tokenizer, DecodeRoundTripAndSkipSpecial) {
  const BPETokenizer& t = qwen();
  const std::string text = "<|im_start|>user\n一只猫 🐱 café e\u0301<|im_end|>";
  const auto ids = t.encode(text);
  // NFC composes "e\u0301" to "é".
  EXPECT_EQ(t.decode(ids), "<|im_start|>user\n一只猫 🐱 café \u00e9<|im_end|>");
  EXPECT_EQ(t.decode(ids, /*skip_special_tokens=*/true), "user\n一只猫 🐱 café \u00e9");
  // A lone continuation byte decodes to U+FFFD, as from_utf8_lossy.
  const auto byte_0x80 = t.token_to_id("\xc3\x84");  // 'Ä' is byte 0x80 in the byte-level alphabet
  ASSERT_TRUE(byte_0x80.has_value());
  EXPECT_EQ(t.decode(std::vector<int32_t>{64, *byte_0x80}), "a\xef\xbf\xbd");
  expect_error([&] { t.decode(std::vector<int32_t>{1, 999999}); }, {"token id 999999", "not in the vocabulary"});
  expect_error([&] { t.decode(std::vector<int32_t>{-1}); }, {"token id -1"});
}

TEST(Tokenizer, InvalidUtf8IsRefused) {
  expect_error([&] { qwen().encode("ab\xff"); }, {"not valid UTF-8"});
  expect_error([&] { qwen().encode("\xed\xa0\x80"); }, {"not valid UTF-8"});  // a surrogate
}

TEST(Tokenizer, BatchPadsAndTruncatesOnTheRight) {
  const BPETokenizer& t = qwen();
  const auto batch = t.encode_batch({"hello world <|im_start|>x", "a"}, 4, /*pad=*/true, /*truncate=*/true);
  EXPECT_EQ(batch.input_ids, (std::vector<std::vector<int64_t>>{{14990, 1879, 220, 151644}, {64, 151643, 151643, 151643}}));
  EXPECT_EQ(batch.attention_mask, (std::vector<std::vector<int64_t>>{{1, 1, 1, 1}, {1, 0, 0, 0}}));
  const auto longest = t.encode_batch({"hello world <|im_start|>x", "a"}, 40, true, true);
  EXPECT_EQ(longest.input_ids[0].size(), 5u);  // padding=True pads to the longest, not to max_length
  EXPECT_EQ(longest.input_ids[1], (std::vector<int64_t>{64, 151643, 151643, 151643, 151643}));
  const auto unpadded = t.encode_batch({"hello world", "a"}, std::nullopt, false, false);
  EXPECT_EQ(unpadded.input_ids[1], std::vector<int64_t>{64});
  EXPECT_EQ(unpadded.attention_mask[0], (std::vector<int64_t>{1, 1}));
}

TEST(Tokenizer, WordCacheIsBoundedAndTransparent) {
  const BPETokenizer& t = qwen();
  t.clear_cache();
  EXPECT_EQ(t.cache_size(), 0u);
  const std::string text = "The quick brown fox jumps over the lazy dog";
  const auto first = t.encode(text);
  const std::size_t cached = t.cache_size();
  EXPECT_GT(cached, 0u);
  EXPECT_EQ(t.encode(text), first);  // served from the cache, same ids
  EXPECT_EQ(t.cache_size(), cached);
  // Distinct words beyond the capacity: the cache stops growing, results stay right.
  std::string many;
  for (int i = 0; i < 12'000; ++i) many += " w" + std::to_string(i) + "x";
  const auto ids = t.encode(many);
  EXPECT_LE(t.cache_size(), BPETokenizer::cache_capacity());
  t.clear_cache();
  EXPECT_EQ(t.encode(many), ids);
  // Words over 256 bytes are not cached.
  t.clear_cache();
  t.encode(std::string(300, 'z'));
  EXPECT_EQ(t.cache_size(), 0u);
}

TEST(Tokenizer, TinyFileLoadsAndMerges) {
  TempDir dir;
  write_bytes(dir.path("tokenizer.json"), tiny_tokenizer_json());
  const BPETokenizer t = BPETokenizer::from_dir(dir.str());
  const int32_t ab = *t.token_to_id("ab");
  EXPECT_EQ(t.encode("ab<|end|>"), (std::vector<int32_t>{ab, ab + 1}));
  EXPECT_EQ(t.decode(t.encode("abc ab")), "abc ab");
  expect_error([&] { t.pad_token_id(); }, {"no pad token"});
}

TEST(Tokenizer, LoadErrorsNameTheFileAndTheProblem) {
  TempDir dir;
  expect_error([&] { BPETokenizer::from_file(dir.path("missing.json")); }, {dir.path("missing.json"), "cannot open"});
  expect_error([&] { BPETokenizer::from_dir(dir.path("nowhere")); }, {"nowhere", "no such folder"});
  expect_error([&] { BPETokenizer::from_dir(dir.str()); }, {"no tokenizer.json"});

  const std::string good = tiny_tokenizer_json();
  write_bytes(dir.path("truncated.json"), good.substr(0, good.size() / 2));
  expect_error([&] { BPETokenizer::from_file(dir.path("truncated.json")); }, {dir.path("truncated.json"), "malformed tokenizer JSON"});

  write_bytes(dir.path("wordpiece.json"), tiny_tokenizer_json("WordPiece"));
  expect_error([&] { BPETokenizer::from_file(dir.path("wordpiece.json")); }, {"wordpiece.json", "unsupported model type WordPiece"});

  std::string other_normalizer = good;
  other_normalizer.replace(other_normalizer.find(R"({"type":"NFC"})"), 14, R"({"type":"Lowercase"})");
  write_bytes(dir.path("lower.json"), other_normalizer);
  expect_error([&] { BPETokenizer::from_file(dir.path("lower.json")); }, {"unsupported normalizer Lowercase"});

  std::string bad_merge = good;
  bad_merge.replace(bad_merge.find(R"([["a","b"]])"), 11, R"([["a","zz"]])");
  write_bytes(dir.path("merge.json"), bad_merge);
  expect_error([&] { BPETokenizer::from_file(dir.path("merge.json")); }, {"model.merges entry 0", "missing from model.vocab"});

  std::string no_byte_level = good;
  no_byte_level.replace(no_byte_level.find(R"("type":"ByteLevel","add_prefix_space")"), 18, R"("type":"Whitespace")");
  write_bytes(dir.path("whitespace.json"), no_byte_level);
  expect_error([&] { BPETokenizer::from_file(dir.path("whitespace.json")); }, {"unsupported pre_tokenizer Whitespace"});
}
