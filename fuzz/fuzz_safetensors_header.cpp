// libFuzzer target: the safetensors header parser. Input = a whole file's bytes; the first 8
// are the header length as in the format, the rest header + data. Any diffsynth::Error is an
// orderly rejection; anything else (crash, other exception, sanitizer report) is a bug.
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "core/loader/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 8) return 0;
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 8) n = size - 8;  // the file-level checks are unit-tested; fuzz the parser
  try {
    auto h = diffsynth::parse_safetensors_header("fuzz.safetensors", reinterpret_cast<const char*>(data + 8),
                                                 static_cast<std::size_t>(n), size - 8 - n);
    // Accepted headers must describe the data exactly.
    std::uint64_t total = 0;
    for (const auto& t : h.tensors) total += t.end - t.begin;
    if (total != size - 8 - n) __builtin_trap();
  } catch (const diffsynth::Error&) {
  }
  return 0;
}
