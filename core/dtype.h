// Names of dtypes and devices as users and the reference write them.
#pragma once
#include <torch/torch.h>

#include <string>

namespace diffsynth {

// Accepts "bfloat16"/"bf16"/"torch.bfloat16", "float32"/"fp32"/"float", "float16"/"fp16"/"half",
// "float8_e4m3fn"/"fp8", "float8_e5m2", "float64"; throws a clear Error otherwise.
c10::ScalarType parse_dtype(const std::string& name);
// A dtype models compute in: bfloat16, float32 or float16 (their aliases as above). fp8 and
// float64 are refused with a message saying why (fp8 is a storage dtype: --offload-dtype).
c10::ScalarType parse_computation_dtype(const std::string& name);
// "torch.bfloat16" style, as the reference prints dtypes.
std::string dtype_name(c10::ScalarType t);
// "cpu", "cuda", "cuda:1"; throws a clear Error for unknown or unavailable devices.
torch::Device parse_device(const std::string& name);

}  // namespace diffsynth
