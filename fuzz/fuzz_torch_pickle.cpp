// libFuzzer target: the validating pickle reader + canonical re-emission + libtorch's
// unpickler, fed arbitrary data.pkl bytes. Only diffsynth::Error may escape
// parse_torch_pickle; any other exception, crash or sanitizer report is a bug.
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/loader/torch_pickle.h"

namespace {

constexpr std::size_t kMaxRecord = 1 << 20;

// Zero-filled records; requests above 1 MiB get a short record, which the parser must
// report as an error instead of reading past it.
c10::Storage zero_record(const std::string&, std::size_t nbytes) {
  const std::size_t n = std::min(nbytes, kMaxRecord);
  c10::Storage s(c10::Storage::use_byte_size_t(), n, c10::GetCPUAllocator(), /*resizable=*/false);
  if (n) std::memset(s.mutable_data(), 0, n);
  return s;
}

// Reads the first and last byte of every tensor through instrumented code, so a view that
// reaches past its storage is an AddressSanitizer report.
void touch(const c10::IValue& v, int depth) {
  if (depth > 1000) __builtin_trap();  // the parser caps nesting far below this
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    if (t.numel() == 0) return;
    std::int64_t last = t.storage_offset();
    for (std::int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    const std::size_t item = t.element_size();
    if (static_cast<std::size_t>(last + 1) * item > t.storage().nbytes()) __builtin_trap();
    const auto* base = static_cast<const volatile std::uint8_t*>(t.storage().data());
    (void)base[static_cast<std::size_t>(t.storage_offset()) * item];
    (void)base[static_cast<std::size_t>(last + 1) * item - 1];
  } else if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) touch(e, depth + 1);
  } else if (v.isList()) {
    for (const auto& e : v.toListRef()) touch(e, depth + 1);
  } else if (v.isGenericDict()) {
    for (const auto& kv : v.toGenericDict()) {
      touch(kv.key(), depth + 1);
      touch(kv.value(), depth + 1);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    c10::IValue v = diffsynth::parse_torch_pickle("fuzz.pkl", data, size, zero_record);
    touch(v, 0);
  } catch (const diffsynth::Error&) {
  }
  return 0;
}
