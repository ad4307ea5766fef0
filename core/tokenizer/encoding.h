// The batch form every tokenizer returns (transformers' input_ids / attention_mask), torch-free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace diffsynth {

// A padded / truncated batch, row-major: input_ids[i] and attention_mask[i] have the same length.
struct Encoding {
  std::vector<std::vector<int64_t>> input_ids;
  std::vector<std::vector<int64_t>> attention_mask;
};

// Right-pads every row of batch.input_ids shorter than `target` with pad_id and sets the masks:
// 1 on tokens, 0 on padding.
inline void pad_and_mask(Encoding& batch, std::size_t target, int64_t pad_id) {
  batch.attention_mask.clear();
  for (auto& row : batch.input_ids) {
    std::vector<int64_t> mask(row.size(), 1);
    if (row.size() < target) {
      mask.resize(target, 0);
      row.resize(target, pad_id);
    }
    batch.attention_mask.push_back(std::move(mask));
  }
}

}  // namespace diffsynth
