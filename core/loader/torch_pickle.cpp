// torch.save checkpoints without executing anything: see torch_pickle.h for the design.
//
//   file bytes --(our zip reader)--> data.pkl + storage records
//   data.pkl   --(PickleReader: validating pickle VM, allow-listed globals only)--> value graph
//   graph      --(Emitter: canonical protocol-2 pickle, libtorch's dialect)--> bytes
//   bytes      --(torch::jit::Unpickler)--> c10::IValue, tensors viewing the records
#include "core/loader/torch_pickle.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"
#include "core/loader/mapped_file.h"

// Raw-deflate decoder of the miniz copy inside libtorch_cpu (exported, but its header is
// not installed). Only used for compressed zip records, which torch.save never writes.
extern "C" std::size_t tinfl_decompress_mem_to_mem(void* out, std::size_t out_len, const void* src, std::size_t src_len,
                                                   int flags);

namespace diffsynth {

namespace {

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------
constexpr std::size_t kMaxStack = 1u << 20;     // values on the pickle stack
constexpr std::size_t kMaxMarks = 1u << 16;     // open MARKs
constexpr std::size_t kMaxDepth = 256;          // nesting of containers in the result
constexpr std::size_t kMaxDims = 64;            // tensor rank
constexpr std::size_t kMaxNameLen = 256;        // GLOBAL module / name
constexpr std::size_t kMaxKeyLen = 64;          // storage record key
constexpr std::uint64_t kMaxBytes = 1ull << 62; // any byte / element count
constexpr std::size_t kRecordAlign = 16;        // enough for every dtype

std::string printable(const std::string& s, std::size_t max_len = 120) {
  std::string out;
  for (char c : s) {
    if (out.size() >= max_len) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? c : '?';
  }
  return out;
}

std::string first_line(const std::string& s) {
  auto end = s.find('\n');
  std::string line = s.substr(0, end);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

// ---------------------------------------------------------------------------------------
// Allow-listed globals
// ---------------------------------------------------------------------------------------
enum class G : std::uint8_t {
  OrderedDict,
  RebuildTensor,
  RebuildTensorV2,
  RebuildTensorV3,
  RebuildParameter,
  RebuildParameterWithState,
  RebuildFromTypeV2,
  TensorClass,      // torch.Tensor / torch.nn.parameter.Parameter / Buffer (type argument only)
  Device,           // torch.device
  Size,             // torch.Size
  TypedStorage,     // torch.FloatStorage, ... (dtype)
  UntypedStorage,   // torch.storage.UntypedStorage
  DType,            // torch.float32, ... (dtype)
};

struct NamedType {
  const char* name;
  c10::ScalarType type;
};

// `torch.<Name>Storage`: every non-quantized dtype libtorch's unpickler knows as a storage
// (its readGlobal accepts AT_FORALL_SCALAR_TYPES_WITH_COMPLEX_AND_QINTS names).
constexpr NamedType kStorageTypes[] = {
    {"Double", c10::kDouble},
    {"Float", c10::kFloat},
    {"Half", c10::kHalf},
    {"BFloat16", c10::kBFloat16},
    {"Long", c10::kLong},
    {"Int", c10::kInt},
    {"Short", c10::kShort},
    {"Char", c10::kChar},
    {"Byte", c10::kByte},
    {"Bool", c10::kBool},
    {"ComplexDouble", c10::kComplexDouble},
    {"ComplexFloat", c10::kComplexFloat},
    {"ComplexHalf", c10::kComplexHalf},
    {"Float8_e5m2", c10::kFloat8_e5m2},
    {"Float8_e4m3fn", c10::kFloat8_e4m3fn},
    {"Float8_e5m2fnuz", c10::kFloat8_e5m2fnuz},
    {"Float8_e4m3fnuz", c10::kFloat8_e4m3fnuz},
    {"Float8_e8m0fnu", c10::kFloat8_e8m0fnu},
    {"UInt16", c10::ScalarType::UInt16},
    {"UInt32", c10::ScalarType::UInt32},
    {"UInt64", c10::ScalarType::UInt64},
};

// `torch.<dtype>` as pickled by torch.dtype.__reduce__ (canonical names first).
constexpr NamedType kDTypes[] = {
    {"float32", c10::kFloat},
    {"float64", c10::kDouble},
    {"float16", c10::kHalf},
    {"bfloat16", c10::kBFloat16},
    {"int64", c10::kLong},
    {"int32", c10::kInt},
    {"int16", c10::kShort},
    {"int8", c10::kChar},
    {"uint8", c10::kByte},
    {"bool", c10::kBool},
    {"complex128", c10::kComplexDouble},
    {"complex64", c10::kComplexFloat},
    {"complex32", c10::kComplexHalf},
    {"float8_e5m2", c10::kFloat8_e5m2},
    {"float8_e4m3fn", c10::kFloat8_e4m3fn},
    {"float8_e5m2fnuz", c10::kFloat8_e5m2fnuz},
    {"float8_e4m3fnuz", c10::kFloat8_e4m3fnuz},
    {"float8_e8m0fnu", c10::kFloat8_e8m0fnu},
    {"uint16", c10::ScalarType::UInt16},
    {"uint32", c10::ScalarType::UInt32},
    {"uint64", c10::ScalarType::UInt64},
    {"float", c10::kFloat},
    {"double", c10::kDouble},
    {"half", c10::kHalf},
    {"long", c10::kLong},
    {"int", c10::kInt},
    {"short", c10::kShort},
    {"cfloat", c10::kComplexFloat},
    {"cdouble", c10::kComplexDouble},
    {"chalf", c10::kComplexHalf},
};

const char* storage_type_name(c10::ScalarType t) {
  for (const auto& s : kStorageTypes)
    if (s.type == t) return s.name;
  return nullptr;
}

const char* dtype_name(c10::ScalarType t) {
  for (const auto& s : kDTypes)
    if (s.type == t) return s.name;
  return "unknown";
}

struct GlobalRef {
  G id;
  c10::ScalarType dtype = c10::kByte;  // TypedStorage / DType
};

std::optional<GlobalRef> resolve_global(const std::string& module, const std::string& name) {
  if (module == "collections" && name == "OrderedDict") return GlobalRef{G::OrderedDict};
  if (module == "torch._utils") {
    if (name == "_rebuild_tensor") return GlobalRef{G::RebuildTensor};
    if (name == "_rebuild_tensor_v2") return GlobalRef{G::RebuildTensorV2};
    if (name == "_rebuild_tensor_v3") return GlobalRef{G::RebuildTensorV3};
    if (name == "_rebuild_parameter") return GlobalRef{G::RebuildParameter};
    if (name == "_rebuild_parameter_with_state") return GlobalRef{G::RebuildParameterWithState};
    return std::nullopt;
  }
  if (module == "torch._tensor" && name == "_rebuild_from_type_v2") return GlobalRef{G::RebuildFromTypeV2};
  if (module == "torch.nn.parameter" && (name == "Parameter" || name == "Buffer")) return GlobalRef{G::TensorClass};
  if (module == "torch.storage" && name == "UntypedStorage") return GlobalRef{G::UntypedStorage};
  if (module == "torch") {
    if (name == "Tensor") return GlobalRef{G::TensorClass};
    if (name == "device") return GlobalRef{G::Device};
    if (name == "Size") return GlobalRef{G::Size};
    if (name == "UntypedStorage") return GlobalRef{G::UntypedStorage};
    static const std::string suffix = "Storage";
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string base = name.substr(0, name.size() - suffix.size());
      for (const auto& s : kStorageTypes)
        if (base == s.name) return GlobalRef{G::TypedStorage, s.type};
      return std::nullopt;
    }
    for (const auto& d : kDTypes)
      if (name == d.name) return GlobalRef{G::DType, d.type};
  }
  return std::nullopt;
}

std::string global_name(const GlobalRef& g) {
  switch (g.id) {
    case G::OrderedDict: return "collections.OrderedDict";
    case G::RebuildTensor: return "torch._utils._rebuild_tensor";
    case G::RebuildTensorV2: return "torch._utils._rebuild_tensor_v2";
    case G::RebuildTensorV3: return "torch._utils._rebuild_tensor_v3";
    case G::RebuildParameter: return "torch._utils._rebuild_parameter";
    case G::RebuildParameterWithState: return "torch._utils._rebuild_parameter_with_state";
    case G::RebuildFromTypeV2: return "torch._tensor._rebuild_from_type_v2";
    case G::TensorClass: return "torch.Tensor";
    case G::Device: return "torch.device";
    case G::Size: return "torch.Size";
    case G::TypedStorage: return std::string("torch.") + storage_type_name(g.dtype) + "Storage";
    case G::UntypedStorage: return "torch.storage.UntypedStorage";
    case G::DType: return std::string("torch.") + dtype_name(g.dtype);
  }
  return "?";
}

// ---------------------------------------------------------------------------------------
// Value graph
// ---------------------------------------------------------------------------------------
enum class K : std::uint8_t { None, Bool, Int, Float, Global, Str, Tuple, List, Dict, Device, Storage, Tensor };

bool is_heap(K k) { return k >= K::Str; }

const char* kind_name(K k) {
  switch (k) {
    case K::None: return "None";
    case K::Bool: return "bool";
    case K::Int: return "int";
    case K::Float: return "float";
    case K::Global: return "global";
    case K::Str: return "str";
    case K::Tuple: return "tuple";
    case K::List: return "list";
    case K::Dict: return "dict";
    case K::Device: return "torch.device";
    case K::Storage: return "storage";
    case K::Tensor: return "tensor";
  }
  return "?";
}

struct Value {
  K kind = K::None;
  GlobalRef global{G::OrderedDict};  // K::Global
  union {
    std::int64_t i;
    double f;
    std::uint32_t ref;  // index into Graph::objs for heap kinds
  };
  Value() : i(0) {}
};

struct StorageInfo {
  std::string key;
  bool untyped = false;
  c10::ScalarType dtype = c10::kByte;  // typed storages
  std::uint64_t nbytes = 0;            // the most any reference needs
};

struct TensorInfo {
  std::uint32_t storage = 0;  // index into Graph::storages
  c10::ScalarType dtype = c10::kFloat;
  std::int64_t offset = 0;
  std::vector<std::int64_t> sizes, strides;
  bool requires_grad = false;
  bool conj = false, neg = false;
};

struct Obj {
  K kind;
  std::string str;            // Str, Device
  std::vector<Value> items;   // Tuple, List, Dict (key, value, key, value, ...)
  std::uint32_t aux = 0;      // Storage -> storages index, Tensor -> tensors index
};

struct Graph {
  std::vector<Obj> objs;
  std::vector<StorageInfo> storages;
  std::vector<TensorInfo> tensors;
  Value root;
};

// ---------------------------------------------------------------------------------------
// The validating pickle machine
// ---------------------------------------------------------------------------------------
namespace op {
constexpr std::uint8_t MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I',
                       BININT = 'J', BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P',
                       BINPERSID = 'Q', REDUCE = 'R', STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U',
                       UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a', BUILD = 'b', GLOBAL = 'c', DICT = 'd',
                       EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i', LONG_BINGET = 'j',
                       LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
                       SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
                       PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85,
                       TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a,
                       LONG4 = 0x8b, BINBYTES = 'B', SHORT_BINBYTES = 'C', SHORT_BINUNICODE = 0x8c,
                       BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90,
                       FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
                       BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98;
}  // namespace op

class PickleReader {
 public:
  PickleReader(const std::string& path, const std::uint8_t* data, std::size_t size, Graph& g)
      : path_(path), p_(data), n_(size), g_(g) {}

  void run() {
    if (n_ == 0) fail(path_, "the pickle (data.pkl) is empty");
    while (true) {
      if (pos_ >= n_) {
        op_start_ = pos_;
        bad("the stream ends without a STOP opcode (truncated pickle)");
      }
      op_start_ = pos_;
      opcode_ = p_[pos_++];
      if (opcode_ == op::STOP) {
        if (!marks_.empty()) bad("a MARK is still open at STOP");
        if (stack_.size() != 1) bad("expected exactly one value on the stack at STOP, found " + std::to_string(stack_.size()));
        g_.root = stack_.back();
        return;  // anything after STOP is ignored, as Python does
      }
      step();
    }
  }

 private:
  // -- errors ---------------------------------------------------------------------------
  [[noreturn]] void bad(const std::string& what) const {
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%02x", static_cast<unsigned>(opcode_));
    fail(path_, "malformed pickle in data.pkl at byte " + std::to_string(op_start_) + " (opcode " + buf + "): " + what);
  }
  [[noreturn]] void refuse(const std::string& module, const std::string& name) const {
    fail(path_, "refusing to load: the pickle references '" + printable(module) + "." + printable(name) +
                    "'; only tensor state dicts can be loaded (nothing in the file is executed)");
  }
  [[noreturn]] void unsupported(const std::string& what) const {
    fail(path_, "unsupported pickle content in data.pkl at byte " + std::to_string(op_start_) + ": " + what +
                    " (only tensor state dicts can be loaded)");
  }

  // -- raw reads ------------------------------------------------------------------------
  void need(std::uint64_t k) const {
    if (k > n_ - pos_) bad("truncated argument (needs " + std::to_string(k) + " bytes, " + std::to_string(n_ - pos_) + " left)");
  }
  std::uint64_t le(std::size_t k) {
    need(k);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < k; ++i) v |= static_cast<std::uint64_t>(p_[pos_ + i]) << (8 * i);
    pos_ += k;
    return v;
  }
  std::string bytes(std::uint64_t k) {
    need(k);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<std::size_t>(k));
    pos_ += static_cast<std::size_t>(k);
    return s;
  }
  std::string line(std::size_t max_len) {
    const std::size_t limit = std::min(n_, pos_ + max_len + 1);
    for (std::size_t i = pos_; i < limit; ++i) {
      if (p_[i] == '\n') {
        std::string s(reinterpret_cast<const char*>(p_ + pos_), i - pos_);
        pos_ = i + 1;
        if (!s.empty() && s.back() == '\r') s.pop_back();
        return s;
      }
    }
    if (limit == n_) bad("truncated argument (no newline before the end)");
    bad("text argument longer than " + std::to_string(max_len) + " bytes");
  }

  // -- stack ----------------------------------------------------------------------------
  std::size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(const Value& v) {
    if (stack_.size() >= kMaxStack) bad("stack deeper than " + std::to_string(kMaxStack) + " values");
    stack_.push_back(v);
  }
  Value pop() {
    if (stack_.size() <= fence()) bad(stack_.empty() ? "stack underflow" : "stack underflow (would pop across a MARK)");
    Value v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value& top() {
    if (stack_.size() <= fence()) bad(stack_.empty() ? "stack underflow" : "stack underflow (would read across a MARK)");
    return stack_.back();
  }
  std::vector<Value> pop_mark() {
    if (marks_.empty()) bad("no MARK to pop to");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }

  // -- values ---------------------------------------------------------------------------
  Value new_obj(K kind) {
    Value v;
    v.kind = kind;
    if (g_.objs.size() >= std::numeric_limits<std::uint32_t>::max()) bad("too many objects");
    v.ref = static_cast<std::uint32_t>(g_.objs.size());
    g_.objs.push_back(Obj{kind, {}, {}, 0});
    return v;
  }
  Obj& obj(const Value& v) { return g_.objs[v.ref]; }
  static Value scalar(K kind, std::int64_t i) {
    Value v;
    v.kind = kind;
    v.i = i;
    return v;
  }
  Value str(std::string s) {
    Value v = new_obj(K::Str);
    obj(v).str = std::move(s);
    return v;
  }
  Value container(K kind, std::vector<Value> items) {
    Value v = new_obj(kind);
    obj(v).items = std::move(items);
    return v;
  }
  const std::string& as_str(const Value& v, const char* what) {
    if (v.kind != K::Str) bad(std::string(what) + " must be a str, got " + kind_name(v.kind));
    return obj(v).str;
  }
  std::int64_t as_int(const Value& v, const char* what) {
    if (v.kind != K::Int) bad(std::string(what) + " must be an int, got " + kind_name(v.kind));
    return v.i;
  }
  bool as_bool(const Value& v, const char* what) {
    if (v.kind != K::Bool) bad(std::string(what) + " must be a bool, got " + kind_name(v.kind));
    return v.i != 0;
  }
  const std::vector<Value>& as_tuple(const Value& v, const char* what) {
    if (v.kind != K::Tuple) bad(std::string(what) + " must be a tuple, got " + kind_name(v.kind));
    return obj(v).items;
  }
  void check_key(const Value& k) {
    if (k.kind != K::Str && k.kind != K::Int && k.kind != K::Bool && k.kind != K::Float)
      unsupported(std::string("a dict key of type ") + kind_name(k.kind) + " (keys must be str, int, float or bool)");
  }
  Value& target(K kind, const char* opname) {
    Value& t = top();
    if (t.kind != kind)
      bad(std::string(opname) + " needs a " + kind_name(kind) + " below its arguments, found a " + kind_name(t.kind));
    return t;
  }
  void set_items(Value& dict, const std::vector<Value>& kv) {
    if (kv.size() % 2 != 0) bad("odd number of items for a dict");
    auto& items = obj(dict).items;
    for (std::size_t i = 0; i < kv.size(); i += 2) check_key(kv[i]);
    items.insert(items.end(), kv.begin(), kv.end());
  }
  Value int_from_le(std::uint64_t n) {
    if (n > 8) unsupported("an integer wider than 64 bits");
    if (n == 0) return scalar(K::Int, 0);
    std::uint64_t v = le(static_cast<std::size_t>(n));
    if (n < 8 && (v >> (8 * n - 1)) & 1) v |= ~0ull << (8 * n);  // sign-extend
    return scalar(K::Int, static_cast<std::int64_t>(v));
  }
  Value int_from_text(std::string s, bool is_long) {
    if (is_long && !s.empty() && s.back() == 'L') s.pop_back();
    if (!is_long && s == "00") return scalar(K::Bool, 0);
    if (!is_long && s == "01") return scalar(K::Bool, 1);
    std::int64_t v = 0;
    const char* b = s.data();
    if (!s.empty() && s[0] == '+') ++b;
    auto [ptr, ec] = std::from_chars(b, s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) {
      if (ec == std::errc::result_out_of_range) unsupported("an integer wider than 64 bits");
      bad("bad integer literal '" + printable(s) + "'");
    }
    return scalar(K::Int, v);
  }
  std::uint32_t memo_index_text() {
    const std::string s = line(20);
    std::uint64_t v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v > std::numeric_limits<std::uint32_t>::max())
      bad("bad memo index '" + printable(s) + "'");
    return static_cast<std::uint32_t>(v);
  }
  void memo_put(std::uint32_t idx) { memo_[idx] = top(); }
  void memo_get(std::uint32_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) bad("memo index " + std::to_string(idx) + " was never set");
    push(it->second);
  }

  Value global(const std::string& module, const std::string& name) {
    auto g = resolve_global(module, name);
    if (!g) refuse(module, name);
    Value v;
    v.kind = K::Global;
    v.global = *g;
    return v;
  }

  // -- tensors --------------------------------------------------------------------------
  Value storage_from_pid(const Value& pid_v) {
    const auto& pid = as_tuple(pid_v, "a persistent id");
    if (pid.size() != 5) bad("a storage persistent id must have 5 fields, got " + std::to_string(pid.size()));
    if (as_str(pid[0], "persistent id tag") != "storage")
      unsupported("persistent id '" + printable(obj(pid[0]).str) + "'");
    if (pid[1].kind != K::Global || (pid[1].global.id != G::TypedStorage && pid[1].global.id != G::UntypedStorage))
      bad("the storage type in a persistent id is not a torch storage class");
    const std::string& key = as_str(pid[2], "storage key");
    if (key.empty() || key.size() > kMaxKeyLen) bad("bad storage key length");
    for (char c : key)
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'))
        bad("storage key '" + printable(key) + "' has characters other than [A-Za-z0-9_]");
    as_str(pid[3], "storage location");  // the saving device; everything loads on the CPU
    const std::int64_t numel = as_int(pid[4], "storage size");
    if (numel < 0) bad("negative storage size");
    StorageInfo info;
    info.key = key;
    info.untyped = pid[1].global.id == G::UntypedStorage;
    info.dtype = info.untyped ? c10::kByte : pid[1].global.dtype;
    const std::uint64_t item = c10::elementSize(info.dtype);
    if (static_cast<std::uint64_t>(numel) > kMaxBytes / item) bad("storage size overflows");
    info.nbytes = static_cast<std::uint64_t>(numel) * item;

    auto it = storage_by_key_.find(key);
    std::uint32_t index;
    if (it != storage_by_key_.end()) {
      StorageInfo& prev = g_.storages[it->second];
      if (prev.untyped != info.untyped || prev.dtype != info.dtype)
        bad("storage '" + key + "' is referenced with two different types");
      prev.nbytes = std::max(prev.nbytes, info.nbytes);
      index = it->second;
    } else {
      index = static_cast<std::uint32_t>(g_.storages.size());
      g_.storages.push_back(std::move(info));
      storage_by_key_.emplace(key, index);
    }
    Value v = new_obj(K::Storage);
    obj(v).aux = index;
    return v;
  }

  std::vector<std::int64_t> int_tuple(const Value& v, const char* what) {
    const auto& items = as_tuple(v, what);
    if (items.size() > kMaxDims) unsupported("a tensor with more than " + std::to_string(kMaxDims) + " dimensions");
    std::vector<std::int64_t> out;
    out.reserve(items.size());
    for (const auto& x : items) {
      const std::int64_t i = as_int(x, what);
      if (i < 0) bad(std::string("negative entry in ") + what);
      out.push_back(i);
    }
    return out;
  }

  Value make_tensor(const Value& storage_v, const Value& offset_v, const Value& size_v, const Value& stride_v,
                    bool requires_grad, std::optional<c10::ScalarType> dtype, const Value* metadata) {
    if (storage_v.kind != K::Storage) bad(std::string("a tensor's storage must be a storage, got ") + kind_name(storage_v.kind));
    TensorInfo t;
    t.storage = obj(storage_v).aux;
    const StorageInfo& s = g_.storages[t.storage];
    if (s.untyped) {
      if (!dtype) bad("an untyped storage is used without a dtype");
      t.dtype = *dtype;
    } else {
      if (dtype && *dtype != s.dtype) bad("a tensor's dtype does not match its typed storage");
      t.dtype = s.dtype;
    }
    if (!storage_type_name(t.dtype)) unsupported(std::string("dtype ") + c10::toString(t.dtype));
    t.offset = as_int(offset_v, "storage offset");
    if (t.offset < 0) bad("negative storage offset");
    t.sizes = int_tuple(size_v, "size");
    t.strides = int_tuple(stride_v, "stride");
    if (t.sizes.size() != t.strides.size()) bad("size and stride have different lengths");
    t.requires_grad = requires_grad;

    // Every element must lie inside the storage record.
    const std::uint64_t item = c10::elementSize(t.dtype);
    std::uint64_t numel = 1, last = static_cast<std::uint64_t>(t.offset);
    bool empty = false;
    for (std::size_t d = 0; d < t.sizes.size(); ++d) {
      const auto sz = static_cast<std::uint64_t>(t.sizes[d]);
      if (sz == 0) empty = true;
      if (__builtin_mul_overflow(numel, sz, &numel) || numel > kMaxBytes) bad("tensor size overflows");
    }
    if (!empty) {
      for (std::size_t d = 0; d < t.sizes.size(); ++d) {
        std::uint64_t span = 0;
        if (__builtin_mul_overflow(static_cast<std::uint64_t>(t.sizes[d] - 1), static_cast<std::uint64_t>(t.strides[d]), &span) ||
            __builtin_add_overflow(last, span, &last) || last > kMaxBytes)
          bad("tensor extent overflows");
      }
      std::uint64_t end = 0;
      if (__builtin_mul_overflow(last + 1, item, &end) || end > s.nbytes)
        bad("a tensor (offset " + std::to_string(t.offset) + ", " + std::to_string(numel) + " elements of " +
            c10::toString(t.dtype) + ") reaches past the end of its storage '" + s.key + "' (" +
            std::to_string(s.nbytes) + " bytes)");
    }
    if (metadata && metadata->kind != K::None) {
      if (metadata->kind != K::Dict) bad("tensor metadata must be a dict");
      const auto& kv = obj(*metadata).items;
      for (std::size_t i = 0; i + 1 < kv.size(); i += 2) {
        const std::string& k = as_str(kv[i], "tensor metadata key");
        const bool on = as_bool(kv[i + 1], "tensor metadata value");
        if (!on) continue;
        if (k != "conj" && k != "neg") continue;  // backend metadata of other devices: irrelevant on CPU
        if (!c10::isComplexType(t.dtype)) unsupported("a conj/neg bit on a real tensor");
        (k == "conj" ? t.conj : t.neg) = true;
      }
    }
    Value v = new_obj(K::Tensor);
    obj(v).aux = static_cast<std::uint32_t>(g_.tensors.size());
    g_.tensors.push_back(std::move(t));
    return v;
  }

  static bool is_hooks(const Value& v) { return v.kind == K::Dict || v.kind == K::None; }

  // Applies an allow-listed callable (REDUCE).
  Value call(const Value& fn, const Value& args_v, int nesting = 0) {
    if (fn.kind != K::Global) bad(std::string("REDUCE on a ") + kind_name(fn.kind) + ", not a callable");
    const auto& a = as_tuple(args_v, "REDUCE arguments");
    const G id = fn.global.id;
    auto arity = [&](std::size_t lo, std::size_t hi) {
      if (a.size() < lo || a.size() > hi)
        bad(global_name(fn.global) + " called with " + std::to_string(a.size()) + " arguments");
    };
    switch (id) {
      case G::OrderedDict:
        arity(0, 0);
        return container(K::Dict, {});
      case G::Size: {
        arity(1, 1);
        int_tuple(a[0], "torch.Size");
        return a[0];
      }
      case G::Device: {
        arity(1, 2);
        std::string s = as_str(a[0], "device type");
        if (s.empty() || s.size() > 32) bad("bad device type");
        for (char c : s)
          if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) bad("bad device type '" + printable(s) + "'");
        if (a.size() == 2 && a[1].kind != K::None) {
          const std::int64_t idx = as_int(a[1], "device index");
          if (idx < 0 || idx > std::numeric_limits<c10::DeviceIndex>::max()) bad("bad device index");
          s += ":" + std::to_string(idx);
        }
        Value v = new_obj(K::Device);
        obj(v).str = std::move(s);
        return v;
      }
      case G::RebuildTensor:
        arity(4, 4);
        return make_tensor(a[0], a[1], a[2], a[3], false, std::nullopt, nullptr);
      case G::RebuildTensorV2:
        arity(6, 7);
        if (!is_hooks(a[5])) bad("backward hooks must be a dict");
        return make_tensor(a[0], a[1], a[2], a[3], as_bool(a[4], "requires_grad"), std::nullopt,
                           a.size() == 7 ? &a[6] : nullptr);
      case G::RebuildTensorV3: {
        arity(7, 8);
        if (!is_hooks(a[5])) bad("backward hooks must be a dict");
        if (a[6].kind != K::Global || a[6].global.id != G::DType) bad("_rebuild_tensor_v3 needs a torch dtype");
        return make_tensor(a[0], a[1], a[2], a[3], as_bool(a[4], "requires_grad"), a[6].global.dtype,
                           a.size() == 8 ? &a[7] : nullptr);
      }
      case G::RebuildParameter:
      case G::RebuildParameterWithState: {
        if (id == G::RebuildParameter) arity(3, 3); else arity(4, 4);
        if (a[0].kind != K::Tensor) bad("a parameter's data must be a tensor");
        if (!is_hooks(a[2])) bad("backward hooks must be a dict");
        TensorInfo t = g_.tensors[obj(a[0]).aux];  // Python attributes in `state` are dropped
        t.requires_grad = as_bool(a[1], "requires_grad");
        Value v = new_obj(K::Tensor);
        obj(v).aux = static_cast<std::uint32_t>(g_.tensors.size());
        g_.tensors.push_back(std::move(t));
        return v;
      }
      case G::RebuildFromTypeV2: {
        arity(4, 4);
        if (nesting > 0) bad("nested _rebuild_from_type_v2");
        if (a[0].kind != K::Global) bad("_rebuild_from_type_v2 needs a function");
        const G f = a[0].global.id;
        if (f != G::RebuildTensor && f != G::RebuildTensorV2 && f != G::RebuildTensorV3 && f != G::RebuildParameter &&
            f != G::RebuildParameterWithState)
          unsupported("_rebuild_from_type_v2 with " + global_name(a[0].global));
        if (a[1].kind != K::Global || a[1].global.id != G::TensorClass)
          bad("_rebuild_from_type_v2 needs a tensor class");
        Value t = call(a[0], a[2], nesting + 1);  // the Python state (a[3]) is dropped
        return t;
      }
      case G::TensorClass:
      case G::TypedStorage:
      case G::UntypedStorage:
      case G::DType:
        break;
    }
    bad(global_name(fn.global) + " cannot be called");
  }

  // -- one opcode -----------------------------------------------------------------------
  void step() {
    using namespace op;
    switch (opcode_) {
      case PROTO: {
        const auto v = le(1);
        if (v > 5) bad("unsupported pickle protocol " + std::to_string(v));
        break;
      }
      case FRAME: {
        const auto len = le(8);
        if (len > n_ - pos_) bad("frame longer than the stream");
        break;  // frames only group opcodes
      }
      case MARK:
        if (marks_.size() >= kMaxMarks) bad("too many open MARKs");
        marks_.push_back(stack_.size());
        break;
      case POP: pop(); break;
      case POP_MARK: pop_mark(); break;
      case DUP: push(top()); break;

      case NONE: push(Value()); break;
      case NEWTRUE: push(scalar(K::Bool, 1)); break;
      case NEWFALSE: push(scalar(K::Bool, 0)); break;
      case INT: push(int_from_text(line(64), false)); break;
      case LONG: push(int_from_text(line(64), true)); break;
      case BININT: push(scalar(K::Int, static_cast<std::int32_t>(static_cast<std::uint32_t>(le(4))))); break;
      case BININT1: push(scalar(K::Int, static_cast<std::int64_t>(le(1)))); break;
      case BININT2: push(scalar(K::Int, static_cast<std::int64_t>(le(2)))); break;
      case LONG1: push(int_from_le(le(1))); break;
      case LONG4: {
        const auto n = static_cast<std::int32_t>(static_cast<std::uint32_t>(le(4)));
        if (n < 0) bad("negative LONG4 length");
        push(int_from_le(static_cast<std::uint64_t>(n)));
        break;
      }
      case FLOAT: {
        const std::string s = line(64);
        double d = 0;
        auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
        if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) bad("bad float literal '" + printable(s) + "'");
        Value v;
        v.kind = K::Float;
        v.f = d;
        push(v);
        break;
      }
      case BINFLOAT: {
        need(8);
        std::uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | p_[pos_ + i];  // big-endian
        pos_ += 8;
        Value v;
        v.kind = K::Float;
        std::memcpy(&v.f, &bits, 8);
        push(v);
        break;
      }

      case BINUNICODE: push(str(bytes(le(4)))); break;
      case SHORT_BINUNICODE: push(str(bytes(le(1)))); break;
      case BINUNICODE8: push(str(bytes(le(8)))); break;
      case SHORT_BINSTRING: push(str(bytes(le(1)))); break;
      case BINSTRING: {
        const auto n = static_cast<std::int32_t>(static_cast<std::uint32_t>(le(4)));
        if (n < 0) bad("negative BINSTRING length");
        push(str(bytes(static_cast<std::uint64_t>(n))));
        break;
      }
      case STRING:
      case UNICODE: unsupported("protocol-0 text strings"); 
      case BINBYTES:
      case SHORT_BINBYTES:
      case BINBYTES8:
      case BYTEARRAY8: unsupported("a bytes object");
      case NEXT_BUFFER:
      case READONLY_BUFFER: unsupported("out-of-band buffers");
      case EMPTY_SET:
      case ADDITEMS:
      case FROZENSET: unsupported("a set");
      case EXT1:
      case EXT2:
      case EXT4: unsupported("a copyreg extension code");
      case PERSID: unsupported("a protocol-0 persistent id");

      case EMPTY_TUPLE: push(container(K::Tuple, {})); break;
      case TUPLE1: {
        Value a = pop();
        push(container(K::Tuple, {a}));
        break;
      }
      case TUPLE2: {
        Value b = pop(), a = pop();
        push(container(K::Tuple, {a, b}));
        break;
      }
      case TUPLE3: {
        Value c = pop(), b = pop(), a = pop();
        push(container(K::Tuple, {a, b, c}));
        break;
      }
      case TUPLE: push(container(K::Tuple, pop_mark())); break;
      case EMPTY_LIST: push(container(K::List, {})); break;
      case LIST: push(container(K::List, pop_mark())); break;
      case EMPTY_DICT: push(container(K::Dict, {})); break;
      case DICT: {
        auto kv = pop_mark();
        Value d = container(K::Dict, {});
        set_items(d, kv);
        push(d);
        break;
      }
      case APPEND: {
        Value v = pop();
        Value& l = target(K::List, "APPEND");
        obj(l).items.push_back(v);
        break;
      }
      case APPENDS: {
        auto items = pop_mark();
        Value& l = target(K::List, "APPENDS");
        auto& dst = obj(l).items;
        dst.insert(dst.end(), items.begin(), items.end());
        break;
      }
      case SETITEM: {
        Value v = pop(), k = pop();
        Value& d = target(K::Dict, "SETITEM");
        set_items(d, {k, v});
        break;
      }
      case SETITEMS: {
        auto kv = pop_mark();
        Value& d = target(K::Dict, "SETITEMS");
        set_items(d, kv);
        break;
      }

      case PUT: memo_put(memo_index_text()); break;
      case BINPUT: memo_put(static_cast<std::uint32_t>(le(1))); break;
      case LONG_BINPUT: memo_put(static_cast<std::uint32_t>(le(4))); break;
      case MEMOIZE:
        if (memo_.size() >= std::numeric_limits<std::uint32_t>::max()) bad("memo full");
        memo_put(static_cast<std::uint32_t>(memo_.size()));
        break;
      case GET: memo_get(memo_index_text()); break;
      case BINGET: memo_get(static_cast<std::uint32_t>(le(1))); break;
      case LONG_BINGET: memo_get(static_cast<std::uint32_t>(le(4))); break;

      case GLOBAL: {
        const std::string module = line(kMaxNameLen);
        const std::string name = line(kMaxNameLen);
        push(global(module, name));
        break;
      }
      case STACK_GLOBAL: {
        Value name = pop(), module = pop();
        if (module.kind != K::Str || name.kind != K::Str) bad("STACK_GLOBAL needs two strings");
        push(global(obj(module).str, obj(name).str));
        break;
      }
      case INST: {
        const std::string module = line(kMaxNameLen);
        const std::string name = line(kMaxNameLen);
        refuse(module, name);
      }
      case OBJ: {
        auto items = pop_mark();
        if (!items.empty() && items[0].kind == K::Global) unsupported("OBJ of " + global_name(items[0].global));
        bad("OBJ without a class");
      }
      case NEWOBJ:
      case NEWOBJ_EX: {
        pop();
        Value cls = pop();
        if (cls.kind == K::Global) unsupported("an instance of " + global_name(cls.global));
        bad("NEWOBJ without a class");
      }
      case REDUCE: {
        Value args = pop();
        Value fn = pop();
        push(call(fn, args));
        break;
      }
      case BUILD: {
        Value state = pop();
        Value& o = top();
        // `module.state_dict()` is an OrderedDict with a `_metadata` attribute: dropped.
        if (o.kind != K::Dict) bad(std::string("BUILD on a ") + kind_name(o.kind) + " is not supported");
        if (state.kind != K::Dict && state.kind != K::None && state.kind != K::Tuple)
          bad("bad BUILD state for a dict");
        break;
      }
      case BINPERSID: push(storage_from_pid(pop())); break;

      default: {
        bad("unknown opcode");
      }
    }
  }

  const std::string& path_;
  const std::uint8_t* p_;
  std::size_t n_;
  std::size_t pos_ = 0;
  std::size_t op_start_ = 0;
  std::uint8_t opcode_ = 0;
  Graph& g_;
  std::vector<Value> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint32_t, Value> memo_;
  std::unordered_map<std::string, std::uint32_t> storage_by_key_;
};

// ---------------------------------------------------------------------------------------
// Canonical protocol-2 writer (the dialect libtorch's Unpickler reads)
// ---------------------------------------------------------------------------------------
class Emitter {
 public:
  Emitter(const std::string& path, const Graph& g)
      : path_(path), g_(g), refs_(g.objs.size(), 0), height_(g.objs.size(), 0), state_(g.objs.size(), 0) {}

  std::string run() {
    count(g_.root, 0);
    out_.push_back(static_cast<char>(op::PROTO));
    out_.push_back(2);
    emit(g_.root);
    out_.push_back(static_cast<char>(op::STOP));
    return std::move(out_);
  }

  // (storage index, dtype) pairs the stream references, with the bytes each needs.
  const std::map<std::pair<std::uint32_t, c10::ScalarType>, std::uint64_t>& views() const { return views_; }

 private:
  [[noreturn]] void unsupported(const std::string& what) const {
    fail(path_, "unsupported pickle content in data.pkl: " + what + " (only tensor state dicts can be loaded)");
  }

  // Counts references, rejects cycles and deep nesting (libtorch and IValue destructors
  // recurse over nesting, so it must stay small).
  // Returns the height of `v` (longest chain of containers below it, shared ones included:
  // that is what destructors and recursive consumers walk).
  std::size_t count(const Value& v, std::size_t depth) {
    if (v.kind == K::Global) {
      if (v.global.id == G::DType) return 0;
      unsupported("a bare reference to " + global_name(v.global));
    }
    if (!is_heap(v.kind)) return 0;
    if (v.kind == K::Storage) unsupported("a bare storage object (not inside a tensor)");
    const std::uint32_t r = v.ref;
    ++refs_[r];
    if (state_[r] == 2) return height_[r];
    if (state_[r] == 1) unsupported("a recursive (self-containing) container");
    if (depth >= kMaxDepth) unsupported("containers nested deeper than " + std::to_string(kMaxDepth) + " levels");
    state_[r] = 1;
    std::size_t h = 0;
    for (const auto& c : g_.objs[r].items) h = std::max(h, count(c, depth + 1));
    if (++h > kMaxDepth) unsupported("containers nested deeper than " + std::to_string(kMaxDepth) + " levels");
    height_[r] = static_cast<std::uint32_t>(h);
    state_[r] = 2;
    return h;
  }

  void byte(std::uint8_t b) { out_.push_back(static_cast<char>(b)); }
  void le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) byte(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void put_memo(std::uint32_t id) {
    if (id < 256) {
      byte(op::BINPUT);
      byte(static_cast<std::uint8_t>(id));
    } else {
      byte(op::LONG_BINPUT);
      le(id, 4);
    }
  }
  void get_memo(std::uint32_t id) {
    if (id < 256) {
      byte(op::BINGET);
      byte(static_cast<std::uint8_t>(id));
    } else {
      byte(op::LONG_BINGET);
      le(id, 4);
    }
  }
  std::uint32_t new_memo() {
    if (next_memo_ == std::numeric_limits<std::uint32_t>::max()) unsupported("too many shared objects");
    return next_memo_++;
  }
  void emit_int(std::int64_t v) {
    if (v >= 0 && v < 256) {
      byte(op::BININT1);
      byte(static_cast<std::uint8_t>(v));
    } else if (v >= 0 && v < 65536) {
      byte(op::BININT2);
      le(static_cast<std::uint64_t>(v), 2);
    } else if (v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max()) {
      byte(op::BININT);
      le(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)), 4);
    } else {
      byte(op::LONG1);  // libtorch reads LONG1 only with 8 bytes
      byte(8);
      le(static_cast<std::uint64_t>(v), 8);
    }
  }
  void emit_str(const std::string& s) {
    if (s.size() <= std::numeric_limits<std::uint32_t>::max()) {
      byte(op::BINUNICODE);
      le(s.size(), 4);
    } else {
      byte(op::BINUNICODE8);
      le(s.size(), 8);
    }
    out_.append(s);
  }
  void emit_global(const std::string& module, const std::string& name) {
    auto key = module + "\n" + name;
    auto it = global_memo_.find(key);
    if (it != global_memo_.end()) {
      get_memo(it->second);
      return;
    }
    byte(op::GLOBAL);
    out_ += module;
    out_ += '\n';
    out_ += name;
    out_ += '\n';
    const auto id = new_memo();
    put_memo(id);
    global_memo_.emplace(std::move(key), id);
  }
  void emit_tuple_of(const std::vector<std::int64_t>& v) {
    if (v.empty()) {
      byte(op::EMPTY_TUPLE);
      return;
    }
    if (v.size() > 3) byte(op::MARK);
    for (auto x : v) emit_int(x);
    byte(v.size() == 1 ? op::TUPLE1 : v.size() == 2 ? op::TUPLE2 : v.size() == 3 ? op::TUPLE3 : op::TUPLE);
  }
  void emit_storage(std::uint32_t index, c10::ScalarType dtype) {
    const auto key = std::make_pair(index, dtype);
    auto it = storage_memo_.find(key);
    if (it != storage_memo_.end()) {
      get_memo(it->second);
      return;
    }
    const StorageInfo& s = g_.storages[index];
    const std::uint64_t item = c10::elementSize(dtype);
    const std::uint64_t numel = s.nbytes / item;
    views_[key] = numel * item;
    byte(op::MARK);
    emit_str("storage");
    emit_global("torch", std::string(storage_type_name(dtype)) + "Storage");
    emit_str(s.key);
    emit_str("cpu");
    emit_int(static_cast<std::int64_t>(numel));
    byte(op::TUPLE);
    byte(op::BINPERSID);
    const auto id = new_memo();
    put_memo(id);
    storage_memo_.emplace(key, id);
  }
  void emit_tensor(const TensorInfo& t) {
    emit_global("torch._utils", "_rebuild_tensor_v2");
    byte(op::MARK);
    emit_storage(t.storage, t.dtype);
    emit_int(t.offset);
    emit_tuple_of(t.sizes);
    emit_tuple_of(t.strides);
    byte(t.requires_grad ? op::NEWTRUE : op::NEWFALSE);
    byte(op::NONE);  // backward hooks: ignored by libtorch
    if (t.conj || t.neg) {
      byte(op::EMPTY_DICT);
      byte(op::MARK);
      if (t.conj) {
        emit_str("conj");
        byte(op::NEWTRUE);
      }
      if (t.neg) {
        emit_str("neg");
        byte(op::NEWTRUE);
      }
      byte(op::SETITEMS);
    }
    byte(op::TUPLE);
    byte(op::REDUCE);
  }

  void emit(const Value& v) {
    switch (v.kind) {
      case K::None: byte(op::NONE); return;
      case K::Bool: byte(v.i ? op::NEWTRUE : op::NEWFALSE); return;
      case K::Int: emit_int(v.i); return;
      case K::Float: {
        byte(op::BINFLOAT);
        std::uint64_t bits = 0;
        std::memcpy(&bits, &v.f, 8);
        for (int i = 7; i >= 0; --i) byte(static_cast<std::uint8_t>(bits >> (8 * i)));
        return;
      }
      case K::Global:  // only dtypes reach here (count() refused the rest)
        emit_str(std::string("torch.") + dtype_name(v.global.dtype));
        return;
      default: break;
    }
    const std::uint32_t r = v.ref;
    auto it = memo_.find(r);
    if (it != memo_.end()) {
      get_memo(it->second);
      return;
    }
    const Obj& o = g_.objs[r];
    const bool shared = refs_[r] > 1;
    auto remember = [&] {
      if (!shared) return;
      const auto id = new_memo();
      put_memo(id);
      memo_.emplace(r, id);
    };
    switch (o.kind) {
      case K::Str:
        emit_str(o.str);
        remember();
        return;
      case K::Tuple: {
        const auto n = o.items.size();
        if (n == 0) {
          byte(op::EMPTY_TUPLE);
        } else {
          if (n > 3) byte(op::MARK);
          for (const auto& c : o.items) emit(c);
          byte(n == 1 ? op::TUPLE1 : n == 2 ? op::TUPLE2 : n == 3 ? op::TUPLE3 : op::TUPLE);
        }
        remember();
        return;
      }
      case K::List:
        byte(op::EMPTY_LIST);
        remember();
        if (!o.items.empty()) {
          byte(op::MARK);
          for (const auto& c : o.items) emit(c);
          byte(op::APPENDS);
        }
        return;
      case K::Dict:
        byte(op::EMPTY_DICT);
        remember();
        if (!o.items.empty()) {
          byte(op::MARK);
          for (const auto& c : o.items) emit(c);
          byte(op::SETITEMS);
        }
        return;
      case K::Device:
        emit_global("torch", "device");
        emit_str(o.str);
        byte(op::TUPLE1);
        byte(op::REDUCE);
        remember();
        return;
      case K::Tensor:
        emit_tensor(g_.tensors[o.aux]);
        remember();
        return;
      default: unsupported(std::string("a ") + kind_name(o.kind));
    }
  }

  const std::string& path_;
  const Graph& g_;
  std::vector<std::uint32_t> refs_;
  std::vector<std::uint32_t> height_;
  std::vector<std::uint8_t> state_;
  std::string out_;
  std::uint32_t next_memo_ = 0;
  std::unordered_map<std::uint32_t, std::uint32_t> memo_;
  std::unordered_map<std::string, std::uint32_t> global_memo_;
  std::map<std::pair<std::uint32_t, c10::ScalarType>, std::uint32_t> storage_memo_;
  std::map<std::pair<std::uint32_t, c10::ScalarType>, std::uint64_t> views_;
};

void delete_storage_ctx(void* ctx) { delete static_cast<c10::Storage*>(ctx); }

c10::Storage copy_to_aligned(const void* src, std::size_t nbytes) {
  c10::Storage s(c10::Storage::use_byte_size_t(), nbytes, c10::GetCPUAllocator(), /*resizable=*/false);
  if (nbytes) std::memcpy(s.mutable_data(), src, nbytes);
  return s;
}

}  // namespace

c10::IValue parse_torch_pickle(const std::string& path, const std::uint8_t* data, std::size_t size,
                               const TorchRecordLoader& load_record) {
  Graph graph;
  PickleReader(path, data, size, graph).run();
  Emitter emitter(path, graph);
  const std::string canonical = emitter.run();

  // Load every record the stream references (once per key), checking its size.
  std::unordered_map<std::string, c10::Storage> records;
  std::unordered_map<std::string, std::uint64_t> needed;
  for (const auto& [view, nbytes] : emitter.views()) {
    if (nbytes == 0) continue;
    auto& n = needed[graph.storages[view.first].key];
    n = std::max(n, nbytes);
  }
  for (const auto& [key, nbytes] : needed) {
    c10::Storage s = load_record(key, static_cast<std::size_t>(nbytes));
    if (s.nbytes() < nbytes || !s.data())
      fail(path, "storage record 'data/" + key + "' has " + std::to_string(s.nbytes()) + " bytes but the pickle needs " +
                     std::to_string(nbytes));
    if (reinterpret_cast<std::uintptr_t>(s.data()) % kRecordAlign != 0) s = copy_to_aligned(s.data(), s.nbytes());
    records.emplace(key, std::move(s));
  }

  std::size_t pos = 0;
  auto reader = [&](char* buf, std::size_t n) -> std::size_t {
    const std::size_t k = std::min(n, canonical.size() - pos);
    std::memcpy(buf, canonical.data() + pos, k);
    pos += k;
    return k;
  };
  auto read_record = [&](const std::string& key) -> at::DataPtr {
    auto it = records.find(key);
    TORCH_CHECK(it != records.end(), "storage record ", key, " was not loaded");
    c10::Storage& s = it->second;
    return at::DataPtr(s.mutable_data(), new c10::Storage(s), &delete_storage_ctx, c10::Device(c10::kCPU));
  };
  try {
    torch::jit::Unpickler unpickler(reader, /*type_resolver=*/nullptr, /*obj_loader=*/nullptr, read_record,
                                    c10::Device(c10::kCPU));
    return unpickler.parse_ivalue();
  } catch (const c10::Error& e) {
    fail(path, "libtorch could not rebuild the checkpoint: " + first_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    fail(path, "libtorch could not rebuild the checkpoint: " + first_line(e.what()));
  }
}

// ---------------------------------------------------------------------------------------
// Zip archive (torch.save's container)
// ---------------------------------------------------------------------------------------
namespace {

struct ZipEntry {
  std::string name;
  std::uint64_t local_offset = 0, comp_size = 0, size = 0;
  std::uint16_t method = 0, flags = 0;
};

class ZipArchive {
 public:
  ZipArchive(std::string path, std::shared_ptr<MappedFile> map) : path_(std::move(path)), map_(std::move(map)) {
    parse();
  }

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }

  // A view of a stored record, or a decompressed copy.
  c10::Storage read(const ZipEntry& e) const {
    const std::uint64_t off = data_offset(e);
    const std::uint8_t* src = map_->data() + off;
    if (e.method == 0) {
      if (e.size == 0) return copy_to_aligned(nullptr, 0);
      if (reinterpret_cast<std::uintptr_t>(src) % kRecordAlign != 0) return copy_to_aligned(src, e.size);
      auto* keep = new std::shared_ptr<MappedFile>(map_);
      at::DataPtr ptr(const_cast<std::uint8_t*>(src), keep,
                      [](void* ctx) { delete static_cast<std::shared_ptr<MappedFile>*>(ctx); },
                      c10::Device(c10::kCPU));
      return c10::Storage(c10::Storage::use_byte_size_t(), e.size, std::move(ptr), /*allocator=*/nullptr,
                          /*resizable=*/false);
    }
    // method 8 (deflate): decompress into an aligned buffer of the declared size.
    if (e.size > kMaxBytes) bad("record '" + e.name + "' is too large");
    c10::Storage s(c10::Storage::use_byte_size_t(), e.size, c10::GetCPUAllocator(), /*resizable=*/false);
    if (e.size > 0) {
      const std::size_t got = tinfl_decompress_mem_to_mem(s.mutable_data(), e.size, src, e.comp_size, /*flags=*/0);
      if (got != e.size) bad("record '" + e.name + "' does not decompress to its declared size");
    }
    return s;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const { fail(path_, "corrupt zip archive: " + what); }

  std::uint64_t rd(std::uint64_t off, int n) const {
    if (off > map_->size() || static_cast<std::uint64_t>(n) > map_->size() - off) bad("a structure lies past the end of the file (truncated?)");
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(map_->data()[off + i]) << (8 * i);
    return v;
  }

  void parse() {
    const std::uint64_t size = map_->size();
    if (size < 22) bad("file too small");
    // End of central directory: the last signature within the maximal comment distance.
    std::uint64_t eocd = UINT64_MAX;
    const std::uint64_t lowest = size >= 22 + 65535 ? size - 22 - 65535 : 0;
    for (std::uint64_t p = size - 22 + 1; p-- > lowest;) {
      if (rd(p, 4) == 0x06054b50 && p + 22 + rd(p + 20, 2) <= size) {
        eocd = p;
        break;
      }
    }
    if (eocd == UINT64_MAX) bad("no end-of-central-directory record (the file is truncated or not a zip)");
    if (rd(eocd + 4, 2) != 0 || rd(eocd + 6, 2) != 0) bad("multi-disk archives are not supported");
    std::uint64_t count = rd(eocd + 10, 2);
    std::uint64_t cd_size = rd(eocd + 12, 4);
    std::uint64_t cd_off = rd(eocd + 16, 4);
    // Zip64 (torch always writes the zip64 end records; needed past 4 GiB / 65535 files).
    if (eocd >= 20 && rd(eocd - 20, 4) == 0x07064b50) {
      const std::uint64_t z64 = rd(eocd - 20 + 8, 8);
      if (z64 > eocd - 20 || rd(z64, 4) != 0x06064b50) bad("bad zip64 end-of-central-directory record");
      count = rd(z64 + 32, 8);
      cd_size = rd(z64 + 40, 8);
      cd_off = rd(z64 + 48, 8);
    } else if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_off == 0xFFFFFFFF) {
      bad("zip64 archive without a zip64 end-of-central-directory locator");
    }
    if (cd_off > size || cd_size > size - cd_off) bad("central directory lies past the end of the file (truncated?)");
    if (count > cd_size / 46) bad("central directory entry count does not fit its size");
    entries_.reserve(static_cast<std::size_t>(count));
    std::uint64_t p = cd_off;
    const std::uint64_t cd_end = cd_off + cd_size;
    for (std::uint64_t i = 0; i < count; ++i) {
      if (p + 46 > cd_end || rd(p, 4) != 0x02014b50) bad("bad central directory entry");
      ZipEntry e;
      e.flags = static_cast<std::uint16_t>(rd(p + 8, 2));
      e.method = static_cast<std::uint16_t>(rd(p + 10, 2));
      e.comp_size = rd(p + 20, 4);
      e.size = rd(p + 24, 4);
      const std::uint64_t name_len = rd(p + 28, 2), extra_len = rd(p + 30, 2), comment_len = rd(p + 32, 2);
      e.local_offset = rd(p + 42, 4);
      const std::uint64_t name_at = p + 46, extra_at = name_at + name_len, next = extra_at + extra_len + comment_len;
      if (next > cd_end) bad("central directory entry runs past the directory");
      e.name.assign(reinterpret_cast<const char*>(map_->data() + name_at), static_cast<std::size_t>(name_len));
      // Zip64 extended information: the 64-bit values of the fields saturated above.
      const bool need64 = e.size == 0xFFFFFFFF || e.comp_size == 0xFFFFFFFF || e.local_offset == 0xFFFFFFFF;
      bool found64 = false;
      for (std::uint64_t x = extra_at; x + 4 <= extra_at + extra_len;) {
        const std::uint64_t id = rd(x, 2), len = rd(x + 2, 2);
        if (x + 4 + len > extra_at + extra_len) bad("bad extra field in '" + printable(e.name) + "'");
        if (id == 0x0001) {
          found64 = true;
          std::uint64_t q = x + 4;
          auto take = [&](std::uint64_t& field) {
            if (field != 0xFFFFFFFF) return;
            if (q + 8 > x + 4 + len) bad("short zip64 extra field in '" + printable(e.name) + "'");
            field = rd(q, 8);
            q += 8;
          };
          take(e.size);
          take(e.comp_size);
          take(e.local_offset);
        }
        x += 4 + len;
      }
      if (need64 && !found64) bad("missing zip64 extra field in '" + printable(e.name) + "'");
      if (e.flags & 1) bad("encrypted entry '" + printable(e.name) + "'");
      if (e.method != 0 && e.method != 8)
        bad("entry '" + printable(e.name) + "' uses compression method " + std::to_string(e.method));
      if (e.method == 0 && e.comp_size != e.size) bad("stored entry '" + printable(e.name) + "' has two different sizes");
      if (index_.emplace(e.name, entries_.size()).second) entries_.push_back(std::move(e));
      else bad("entry '" + printable(e.name) + "' appears twice");
      p = next;
    }
  }

  std::uint64_t data_offset(const ZipEntry& e) const {
    const std::uint64_t lh = e.local_offset;
    if (rd(lh, 4) != 0x04034b50) bad("bad local header for '" + printable(e.name) + "'");
    const std::uint64_t off = lh + 30 + rd(lh + 26, 2) + rd(lh + 28, 2);
    if (off > map_->size() || e.comp_size > map_->size() - off)
      bad("record '" + printable(e.name) + "' runs past the end of the file (truncated?)");
    return off;
  }

  std::string path_;
  std::shared_ptr<MappedFile> map_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, std::size_t> index_;
};

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

namespace {

// The zip of a torch.save file, checked, and its "<archive>/" prefix.
std::pair<ZipArchive, std::string> open_torch_zip(const std::string& path) {
  auto map = MappedFile::open(path);
  const std::uint8_t* d = map->data();
  const std::size_t n = map->size();
  if (n < 4) fail(path, "file is too small (" + std::to_string(n) + " bytes) to be a torch.save checkpoint");
  if (d[0] == 0x80 && d[1] <= 5) {
    fail(path,
         "legacy (pre-1.6, non-zip) torch pickle format is not supported; re-save it with torch.save(...) from a "
         "current PyTorch or convert it to safetensors");
  }
  if (n > 262 && std::memcmp(d + 257, "ustar", 5) == 0) {
    fail(path,
         "legacy tar-based torch checkpoint format (PyTorch < 0.4) is not supported; re-save it with torch.save(...) "
         "from a current PyTorch or convert it to safetensors");
  }
  if (!(d[0] == 'P' && d[1] == 'K')) fail(path, "not a torch.save checkpoint (no zip signature)");

  ZipArchive zip(path, map);
  // "<archive>/data.pkl": the top folder's name varies (torch uses the file's stem).
  std::string prefix;
  for (const auto& e : zip.entries()) {
    static const std::string tail = "/data.pkl";
    if (e.name.size() > tail.size() && e.name.compare(e.name.size() - tail.size(), tail.size(), tail) == 0) {
      std::string p = e.name.substr(0, e.name.size() - tail.size() + 1);
      if (p.find('/') != p.size() - 1) continue;  // only one folder level
      if (!prefix.empty() && prefix != p) fail(path, "archive holds two data.pkl records ('" + prefix + "data.pkl' and '" + printable(e.name) + "')");
      prefix = p;
    }
  }
  if (prefix.empty()) fail(path, "zip archive has no '<archive>/data.pkl' record, so it is not a torch.save checkpoint");
  return {std::move(zip), prefix};
}

}  // namespace

std::optional<std::string> read_torch_file_record(const std::string& path, const std::string& name) {
  auto [zip, prefix] = open_torch_zip(path);
  const ZipEntry* e = zip.find(prefix + name);
  if (!e) return std::nullopt;
  c10::Storage s = zip.read(*e);
  return s.nbytes() ? std::string(static_cast<const char*>(s.data()), s.nbytes()) : std::string();
}

void save_torch_file(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& state_dict,
                     const std::vector<std::pair<std::string, std::string>>& extra_records) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  std::vector<at::Tensor> keep;
  for (const auto& [k, v] : state_dict) {
    if (dict.contains(k)) throw Error(path + ": key '" + k + "' appears twice in the state dict");
    keep.push_back(v.contiguous().cpu());
    dict.insert(k, keep.back());
  }
  // libtorch's pickler as torch::pickle_save runs it, but without the TorchScript type tags
  // (torch.jit._pickle.restore_type_tag) that a plain torch.save does not write either.
  std::vector<char> pickle;
  torch::jit::Pickler pickler([&](const char* data, std::size_t n) { pickle.insert(pickle.end(), data, data + n); },
                              nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  write_file_atomically(path, [&](std::FILE* f) {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, std::size_t n) -> std::size_t {
      return n == 0 ? 0 : std::fwrite(data, 1, n, f);
    });
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeRecord("byteorder", "little", 6);
    const auto& tensors = pickler.tensorData();
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const auto data = torch::jit::getWriteableTensorData(tensors[i]);
      writer.writeRecord("data/" + std::to_string(i), data.data(), data.sizeInBytes());
    }
    for (const auto& [name, bytes] : extra_records) writer.writeRecord(name, bytes.data(), bytes.size());
    writer.writeEndOfFile();
    if (std::ferror(f)) throw Error(path + ": write failed");
  });
}

c10::IValue load_torch_file(const std::string& path) {
  auto [zip, prefix] = open_torch_zip(path);  for (const auto& e : zip.entries()) {
    if (starts_with(e.name, prefix + "code/") || e.name == prefix + "constants.pkl")
      fail(path,
           "is a TorchScript archive (torch.jit.save), not a state dict; save model.state_dict() with torch.save "
           "instead");
  }
  if (const ZipEntry* bo = zip.find(prefix + "byteorder")) {
    c10::Storage s = zip.read(*bo);
    const std::string order = s.nbytes() ? std::string(static_cast<const char*>(s.data()), s.nbytes()) : std::string();
    if (order != "little") fail(path, "checkpoint was saved with byte order '" + printable(order) + "'; only little-endian is supported");
  }
  const ZipEntry* pkl = zip.find(prefix + "data.pkl");
  c10::Storage pickle = zip.read(*pkl);

  auto load_record = [&](const std::string& key, std::size_t nbytes) -> c10::Storage {
    const std::string name = prefix + "data/" + key;
    const ZipEntry* e = zip.find(name);
    if (!e) fail(path, "storage record '" + name + "' referenced by the pickle is missing from the archive");
    if (e->size < nbytes)
      fail(path, "storage record '" + name + "' has " + std::to_string(e->size) + " bytes but the tensors need " +
                     std::to_string(nbytes) + " (truncated or corrupt archive)");
    return zip.read(*e);
  };
  return parse_torch_pickle(path, static_cast<const std::uint8_t*>(pickle.data()), pickle.nbytes(), load_record);
}

}  // namespace diffsynth
