// safetensors files as tensors: memory-mapped zero-copy views, one-copy conversion, a writer.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/loader/mapped_file.h"
#include "core/loader/safetensors_header.h"

namespace diffsynth {

class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  const SafetensorsHeader& header() const { return header_; }
  const std::string& path() const { return header_.path; }
  // A tensor that views the mapping (no copy) when the data is aligned for its dtype,
  // else an aligned copy. The mapping stays alive as long as any view does.
  torch::Tensor get_tensor(const SafetensorsTensorInfo& info) const;
  // Loads `info` converted to dtype/device with exactly one copy, then lets the kernel drop
  // the source pages so converted loads never hold the file twice.
  torch::Tensor get_tensor_converted(const SafetensorsTensorInfo& info, std::optional<c10::ScalarType> dtype,
                                     const torch::Device& device) const;

 private:
  SafetensorsHeader header_;
  std::shared_ptr<MappedFile> map_;
};

// Writes tensors (in the given order) and metadata. Python's `safetensors` reads the result.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace diffsynth
