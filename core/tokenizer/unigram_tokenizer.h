// A Hugging Face `tokenizer.json` Unigram (SentencePiece) tokenizer — google/umt5-xxl, the text
// encoder tokenizer of Wan2.1 — producing exactly the ids of the Python `tokenizers` package for
// the configurations it accepts:
//   normalizer    null | Replace (String or Regex pattern) | Sequence of those
//   pre_tokenizer Metaspace (replacement, prepend_scheme always / first / never or the legacy
//                 add_prefix_space, split) | WhitespaceSplit | Sequence of those
//   model         Unigram (Viterbi over the piece scores; unknown characters get the score
//                 min_score - 10 and consecutive unknowns fuse into one <unk>, as `tokenizers`
//                 does; byte_fallback)
//   post_processor null | TemplateProcessing (the single-sequence template: $A and special tokens)
//   decoder       null | Metaspace
//   added_tokens  special or not, lstrip / rstrip / single_word / normalized
// Anything else (Precompiled / NFKC normalizers, other models, ...) is refused at load with one line
// naming the file and the component.
//
// Two semantics, because transformers does not use tokenizer.json as it stands for every class:
//   Tokenizers    `tokenizers.Tokenizer.from_file(tokenizer.json)`, as the file says.
//   Transformers  `transformers.AutoTokenizer.from_pretrained(dir)` (transformers 5): for
//                 tokenizer_class T5Tokenizer (umt5, the Wan reference) it rebuilds the pipeline
//                 from the file's vocabulary — no normalizer, WhitespaceSplit + Metaspace(always),
//                 the model's unk id hard-coded to 2 (`<s>` in the umt5 vocabulary, where `<unk>`
//                 is 3), `$A </s>` — and takes the added tokens from tokenizer_config.json. Without
//                 a tokenizer_class it is the file as it stands; other classes are refused.
// So "a\tb" is [289, 3, 485, 1] as `tokenizers` reads the file (the tab is unknown) and
// [289, 748, 1] as the Wan reference pipeline sees it; after the reference's whitespace cleaning
// the two differ only on unknown characters (id 3 vs 2) and on text with '▁' (U+2581).
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

enum class TokenizerSemantics { Tokenizers, Transformers };

// transformers' padding argument: False / True ("longest") / "max_length".
enum class Padding { None, Longest, MaxLength };

class UnigramTokenizer {
 public:
  // Reads a tokenizer.json (TokenizerSemantics::Tokenizers). Throws diffsynth::Error (missing
  // file, malformed JSON, unsupported component, inconsistent vocabulary).
  static UnigramTokenizer from_file(const std::string& tokenizer_json);
  // Reads dir/tokenizer.json and, when present, dir/tokenizer_config.json (pad_token,
  // model_max_length, tokenizer_class, added_tokens_decoder). Transformers (the default) is what
  // AutoTokenizer.from_pretrained(dir) builds, see above; Tokenizers is the file as it stands.
  static UnigramTokenizer from_dir(const std::string& dir,
                                   TokenizerSemantics semantics = TokenizerSemantics::Transformers);

  UnigramTokenizer(UnigramTokenizer&&) noexcept;
  UnigramTokenizer& operator=(UnigramTokenizer&&) noexcept;
  ~UnigramTokenizer();

  // `tokenizers.Tokenizer.encode(text, add_special_tokens).ids` (transformers: `tokenizer(text,
  // add_special_tokens=...).input_ids`). Added tokens in the text are always recognised
  // (split_special_tokens=False); add_special_tokens adds the post-processor's tokens (`</s>`).
  // Throws Error when text is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;

  // `tokenizers.Tokenizer.decode(ids, skip_special_tokens)` with the Metaspace decoder ('▁' ->
  // ' ', every '▁' of the first token dropped). transformers' clean_up_tokenization_spaces is
  // not applied. Unlike `tokenizers` (which silently drops them) an id outside the vocabulary
  // throws Error.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // transformers `tokenizer(texts, max_length=N, padding=..., truncation=truncate,
  // add_special_tokens=...)`: truncation keeps the first N ids *including* the post-processor's
  // `</s>` (N - 1 text ids, then `</s>`, as transformers does; max_length absent:
  // model_max_length); padding on the right with pad_token_id(), attention mask 1 on real ids
  // (`</s>` included) and 0 on padding. Padding::MaxLength pads every row to N (rows longer than
  // N, possible only without truncation, stay as they are), Padding::Longest to the longest row.
  // The Wan reference: encode_batch(texts, 512, Padding::MaxLength, true, true).
  Encoding encode_batch(const std::vector<std::string>& texts, std::optional<std::size_t> max_length,
                        Padding padding = Padding::MaxLength, bool truncate = true,
                        bool add_special_tokens = true) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;  // vocabulary or added token
  const std::string& id_to_token(int32_t id) const;                  // throws Error if unknown
  bool is_special(int32_t id) const;                                 // an added token marked special
  std::size_t vocab_size() const;       // ids are in [0, vocab_size()) (the largest id + 1)
  int32_t pad_token_id() const;         // throws Error when the tokenizer has no pad token
  std::optional<int32_t> unk_id() const;  // the id the model gives unknown characters
  std::size_t model_max_length() const;
  TokenizerSemantics semantics() const;
  const std::string& path() const;      // the tokenizer.json it was read from

 private:
  struct Impl;
  explicit UnigramTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffsynth
