// safetensors headers: parsing and validation without libtorch (only c10's dtype enum), so
// identification (`diffsynth hash`) runs without loading libtorch at all.
// Format: u64 little-endian header length N, N bytes of JSON, then the data buffer.
#pragma once
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace diffsynth {

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype_name;             // as written in the file, e.g. "BF16"
  c10::ScalarType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;   // offsets relative to the data buffer
};

struct SafetensorsHeader {
  std::string path;
  std::uint64_t header_size = 0;      // N
  std::uint64_t file_size = 0;
  std::vector<SafetensorsTensorInfo> tensors;  // in header order
  std::map<std::string, std::string> metadata; // "__metadata__"
  std::uint64_t data_offset() const { return 8 + header_size; }
};

// Maps a safetensors dtype name to libtorch; nullopt for names we do not know.
std::optional<c10::ScalarType> safetensors_dtype(const std::string& name);
std::string safetensors_dtype_name(c10::ScalarType t);

// Reads and validates only the header (two preads; the data is never touched).
SafetensorsHeader read_safetensors_header(const std::string& path);
// Validates a header given as bytes (the parser the fuzzer drives). `data_size` is the
// length of the buffer after the header.
SafetensorsHeader parse_safetensors_header(const std::string& path, const char* json, std::size_t json_size,
                                           std::uint64_t data_size);

}  // namespace diffsynth
