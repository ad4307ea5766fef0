// A Hugging Face `tokenizer.json` byte-level BPE tokenizer (GPT-2 / Qwen family), producing
// exactly the ids of the Python `tokenizers` package for the configurations it accepts:
//   normalizer    null | NFC | Sequence of those
//   pre_tokenizer Split (regex or string; Isolated, Removed, MergedWithPrevious, MergedWithNext,
//                 Contiguous; invert) and ByteLevel (add_prefix_space, use_regex), alone or in a
//                 Sequence; ByteLevel is required (byte-level BPE only)
//   model         BPE (merges as "a b" strings or [a, b] pairs, ignore_merges; no dropout,
//                 byte_fallback, continuing_subword_prefix or end_of_word_suffix)
//   decoder       ByteLevel;  post_processor null | ByteLevel (they add no ids)
//   added_tokens  special or not, lstrip / rstrip / single_word / normalized
// Anything else is refused at load with one line naming the file and the component.
//
// Torch-free (part of diffsynth_format): ids are plain integers; the pipeline makes tensors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/tokenizer/encoding.h"  // Encoding

namespace diffsynth {

class BPETokenizer {
 public:
  // Reads a tokenizer.json. Throws diffsynth::Error (missing file, malformed JSON, unsupported
  // component, inconsistent vocabulary).
  static BPETokenizer from_file(const std::string& tokenizer_json);
  // Reads dir/tokenizer.json and, when present, dir/tokenizer_config.json (pad_token,
  // model_max_length), as transformers' AutoTokenizer does.
  static BPETokenizer from_dir(const std::string& dir);

  BPETokenizer(BPETokenizer&&) noexcept;
  BPETokenizer& operator=(BPETokenizer&&) noexcept;
  ~BPETokenizer();

  // `tokenizers.Tokenizer.encode(text, add_special_tokens).ids`. Added tokens in the text are
  // always recognised (split_special_tokens=False); the supported post-processors add nothing,
  // so add_special_tokens changes nothing here. Throws Error when text is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;

  // `tokenizers.Tokenizer.decode(ids, skip_special_tokens)`: byte-level bytes, invalid UTF-8
  // replaced by U+FFFD as Rust's from_utf8_lossy does. Unlike `tokenizers` (which silently
  // drops them) an id outside the vocabulary throws Error.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // transformers `tokenizer(texts, max_length=N, padding=pad, truncation=truncate)`:
  // truncation keeps the first max_length ids (max_length absent: model_max_length); padding pads
  // on the right with pad_token_id() to the longest row of the batch, attention mask 0 there.
  Encoding encode_batch(const std::vector<std::string>& texts, std::optional<std::size_t> max_length,
                        bool pad = true, bool truncate = true) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;  // vocabulary or added token
  const std::string& id_to_token(int32_t id) const;                  // throws Error if unknown
  bool is_special(int32_t id) const;                                 // an added token marked special
  std::size_t vocab_size() const;       // ids are in [0, vocab_size()) (the largest id + 1)
  int32_t pad_token_id() const;         // throws Error when the tokenizer has no pad token
  std::size_t model_max_length() const;
  const std::string& path() const;      // the tokenizer.json it was read from

  // The word cache (word bytes -> ids), as in `tokenizers`: at most cache_capacity() entries,
  // words up to 256 bytes; once full, new words are computed but not stored. It is guarded by
  // a shared mutex taken with try_lock (a busy cache is bypassed, never waited on), so a
  // tokenizer may be shared between threads.
  std::size_t cache_size() const;
  static constexpr std::size_t cache_capacity() { return 10'000; }
  void clear_cache() const;

 private:
  struct Impl;
  explicit BPETokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffsynth
