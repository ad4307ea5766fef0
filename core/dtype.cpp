#include "core/dtype.h"

#include <map>

#include "core/error.h"

namespace diffsynth {

c10::ScalarType parse_dtype(const std::string& raw) {
  std::string name = raw;
  if (name.rfind("torch.", 0) == 0) name = name.substr(6);
  static const std::map<std::string, c10::ScalarType> table = {
      {"bfloat16", c10::kBFloat16}, {"bf16", c10::kBFloat16},        {"float32", c10::kFloat},
      {"fp32", c10::kFloat},        {"float", c10::kFloat},          {"float16", c10::kHalf},
      {"fp16", c10::kHalf},         {"half", c10::kHalf},            {"float8_e4m3fn", c10::kFloat8_e4m3fn},
      {"fp8", c10::kFloat8_e4m3fn}, {"float8_e5m2", c10::kFloat8_e5m2}, {"float64", c10::kDouble},
      {"double", c10::kDouble},
  };
  auto it = table.find(name);
  if (it == table.end())
    throw Error("unknown dtype '" + raw + "' (use bfloat16, float32, float16, float8_e4m3fn or float64)");
  return it->second;
}

c10::ScalarType parse_computation_dtype(const std::string& name) {
  const c10::ScalarType t = parse_dtype(name);
  if (t == c10::kBFloat16 || t == c10::kFloat || t == c10::kHalf) return t;
  if (t == c10::kFloat8_e4m3fn || t == c10::kFloat8_e5m2)
    throw Error("dtype '" + name + "' is a storage dtype, not a computation dtype: compute in bfloat16, float32 or "
                "float16 and store weights in fp8 with --offload cpu --offload-dtype " + name);
  throw Error("dtype '" + name + "' is not supported for computation (use bfloat16, float32 or float16)");
}

std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::kBFloat16: return "torch.bfloat16";
    case c10::kFloat: return "torch.float32";
    case c10::kHalf: return "torch.float16";
    case c10::kDouble: return "torch.float64";
    case c10::kFloat8_e4m3fn: return "torch.float8_e4m3fn";
    case c10::kFloat8_e5m2: return "torch.float8_e5m2";
    case c10::kLong: return "torch.int64";
    case c10::kInt: return "torch.int32";
    case c10::kShort: return "torch.int16";
    case c10::kChar: return "torch.int8";
    case c10::kByte: return "torch.uint8";
    case c10::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

torch::Device parse_device(const std::string& name) {
  try {
    torch::Device d(name);
    if (d.is_cuda() && !torch::cuda::is_available())
      throw Error("device '" + name + "' requested, but no CUDA device is available in this build/machine");
    if (!d.is_cpu() && !d.is_cuda()) throw Error("unsupported device '" + name + "' (use cpu or cuda[:N])");
    return d;
  } catch (const c10::Error&) {
    throw Error("unknown device '" + name + "' (use cpu or cuda[:N])");
  }
}

}  // namespace diffsynth
