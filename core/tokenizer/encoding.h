// The batch form every tokenizer returns (transformers' input_ids / attention_mask), torch-free.
#pragma once
#include <cstdint>
#include <vector>

namespace diffsynth {

// A padded / truncated batch, row-major: input_ids[i] and attention_mask[i] have the same length.
struct Encoding {
  std::vector<std::vector<int64_t>> input_ids;
  std::vector<std::vector<int64_t>> attention_mask;
};

}  // namespace diffsynth
