// torch.save checkpoints: values, zero-copy views, shared storages and every refusal path.
// Fixtures come from tests/python/make_pickle_fixtures.py (DIFFSYNTH_PICKLE_FIXTURES); the
// expected tensors are recomputed here from the same arange formulas.
#include <gtest/gtest.h>
#include <c10/core/CPUAllocator.h>
#include <torch/torch.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"
#include "core/loader/torch_pickle.h"

using diffsynth::load_torch_file;
using diffsynth::parse_torch_pickle;

namespace {

class TorchPickle : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* d = std::getenv("DIFFSYNTH_PICKLE_FIXTURES");
    ASSERT_TRUE(d && *d) << "DIFFSYNTH_PICKLE_FIXTURES is not set: run tests/python/make_pickle_fixtures.py DIR "
                            "and point it at DIR";
    dir_ = d;
    ASSERT_TRUE(std::filesystem::exists(dir_ + "/plain.pth")) << "fixtures missing in " << dir_;
  }
  std::string fx(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

// The message of the diffsynth::Error that loading `path` throws ("" + a failure if none).
std::string load_error(const std::string& path) {
  try {
    load_torch_file(path);
  } catch (const diffsynth::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << path << ": threw a non-diffsynth exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << path << ": loaded without an error";
  return "";
}

void expect_one_line_error(const std::string& msg, const std::string& path, const std::string& needle) {
  EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_NE(msg.find(needle), std::string::npos) << "'" << needle << "' not in: " << msg;
}

c10::IValue get(const c10::IValue& dict, const std::string& key) {
  auto d = dict.toGenericDict();
  auto it = d.find(c10::IValue(key));
  if (it == d.end()) {
    ADD_FAILURE() << "missing key " << key;
    return c10::IValue();
  }
  return it->value();
}

torch::Tensor tensor(const c10::IValue& dict, const std::string& key) {
  auto v = get(dict, key);
  if (!v.isTensor()) {
    ADD_FAILURE() << key << " is a " << v.tagKind() << ", not a tensor";
    return torch::Tensor();
  }
  return v.toTensor();
}

torch::Tensor arange(int64_t n) { return torch::arange(n, torch::kFloat64); }

void expect_equal(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  EXPECT_EQ(got.scalar_type(), want.scalar_type()) << what;
  EXPECT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(got.device().is_cpu()) << what;
  if (got.scalar_type() == want.scalar_type() && got.sizes() == want.sizes()) {
    EXPECT_TRUE(torch::equal(got.to(torch::kFloat64), want.to(torch::kFloat64))) << what << "\n" << got << "\n" << want;
  }
}

// Whether [p, p+n) lies inside a mapping of `file` (from /proc/self/maps).
bool inside_mapping_of(const void* p, std::size_t n, const std::string& file) {
  const std::string canon = std::filesystem::canonical(file).string();
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  while (std::getline(maps, line)) {
    std::istringstream ls(line);
    std::string range, perms, offset, dev, inode, name;
    ls >> range >> perms >> offset >> dev >> inode;
    std::getline(ls >> std::ws, name);
    if (name != canon) continue;
    const auto dash = range.find('-');
    const auto lo = std::stoull(range.substr(0, dash), nullptr, 16);
    const auto hi = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (addr >= lo && addr + n <= hi) return true;
  }
  return false;
}

// plain.pth / protocol4.pth hold the same dict (see plain_state_dict() in the script).
void check_plain(const c10::IValue& root, const std::string& file, bool zero_copy) {
  ASSERT_TRUE(root.isGenericDict()) << root.tagKind();
  // Insertion order is kept.
  std::vector<std::string> keys;
  for (const auto& item : root.toGenericDict()) keys.push_back(item.key().toStringRef());
  ASSERT_GE(keys.size(), 3u);
  EXPECT_EQ(keys[0], "f32");
  EXPECT_EQ(keys[1], "f16");
  EXPECT_EQ(keys.back(), "device");

  expect_equal(tensor(root, "f32"), (torch::arange(12, torch::kFloat32).reshape({3, 4}) * 0.5 - 1.0), "f32");
  expect_equal(tensor(root, "f16"), (arange(6) * 0.25).to(torch::kHalf), "f16");
  expect_equal(tensor(root, "bf16"), (arange(8).to(torch::kBFloat16).reshape({2, 4}) - 3.0), "bf16");
  expect_equal(tensor(root, "i64"), torch::arange(5, torch::kInt64) * 1000000007 - 2, "i64");
  expect_equal(tensor(root, "bool"), torch::tensor({true, false, true, true}), "bool");
  auto f8 = tensor(root, "f8");
  EXPECT_EQ(f8.scalar_type(), torch::kFloat8_e4m3fn);
  expect_equal(f8.to(torch::kFloat32), (arange(8) * 0.5).to(torch::kFloat32), "f8");
  auto u16 = tensor(root, "u16");
  ASSERT_EQ(u16.scalar_type(), c10::ScalarType::UInt16);
  ASSERT_EQ(u16.numel(), 3);
  const auto* u = static_cast<const std::uint16_t*>(u16.const_data_ptr());
  EXPECT_EQ(u[0], 60000);
  EXPECT_EQ(u[1], 60001);
  EXPECT_EQ(u[2], 60002);
  expect_equal(tensor(root, "f64"), arange(3) / 3.0, "f64");
  auto scalar = tensor(root, "scalar");
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.item<float>(), 7.5f);

  // Storage sharing: base, its slice and its transpose view one storage.
  auto base = tensor(root, "base"), view = tensor(root, "view"), tr = tensor(root, "transposed");
  auto want_base = torch::arange(20, torch::kFloat32).reshape({4, 5});
  expect_equal(base, want_base, "base");
  expect_equal(view, want_base.slice(0, 1, 3).slice(1, 2), "view");
  expect_equal(tr, want_base.t(), "transposed");
  EXPECT_EQ(view.storage_offset(), 7);
  EXPECT_EQ(view.strides(), c10::IntArrayRef({5, 1}));
  EXPECT_EQ(tr.strides(), c10::IntArrayRef({1, 5}));
  EXPECT_TRUE(view.storage().is_alias_of(base.storage()));
  EXPECT_TRUE(tr.storage().is_alias_of(base.storage()));
  EXPECT_EQ(view.storage().data(), base.storage().data());
  EXPECT_EQ(tr.storage().data(), base.storage().data());

  expect_equal(tensor(root, "gewicht_\xc3\xa4_\xe9\x87\x8d\xe3\x81\xbf"), torch::ones({2}), "non-ASCII key");
  auto param = tensor(root, "param");
  expect_equal(param.detach(), torch::arange(4, torch::kFloat32), "param");
  EXPECT_TRUE(param.requires_grad());
  EXPECT_FALSE(tensor(root, "f32").requires_grad());
  auto empty = tensor(root, "empty");
  EXPECT_EQ(empty.sizes(), c10::IntArrayRef({0, 3}));

  EXPECT_EQ(get(root, "step").toInt(), 42);
  EXPECT_EQ(get(root, "big").toInt(), (int64_t(1) << 40) + 3);
  EXPECT_EQ(get(root, "neg").toInt(), -123456789012LL);
  EXPECT_EQ(get(root, "lr").toDouble(), 0.125);
  EXPECT_EQ(get(root, "name").toStringRef(), "unet");
  EXPECT_TRUE(get(root, "flag").toBool());
  EXPECT_TRUE(get(root, "nothing").isNone());
  auto dims = get(root, "dims");
  ASSERT_TRUE(dims.isTuple());
  ASSERT_EQ(dims.toTupleRef().elements().size(), 3u);
  EXPECT_EQ(dims.toTupleRef().elements()[2].toInt(), 3);
  auto list = get(root, "list");
  ASSERT_TRUE(list.isList());
  ASSERT_EQ(list.toListRef().size(), 3u);
  EXPECT_EQ(list.toListRef()[0].toInt(), 1);
  EXPECT_EQ(list.toListRef()[1].toStringRef(), "two");
  EXPECT_EQ(list.toListRef()[2].toDouble(), 3.0);
  auto nested = get(root, "nested");
  expect_equal(tensor(get(nested, "inner"), "w"), torch::full({2, 2}, 3.0f), "nested");
  EXPECT_EQ(get(nested, "k").toInt(), 1);
  EXPECT_EQ(get(root, "dtype").toStringRef(), "torch.bfloat16");
  auto dev = get(root, "device");
  ASSERT_TRUE(dev.isDevice());
  EXPECT_EQ(dev.toDevice().str(), "cuda:1");

  // Zero-copy: every non-empty tensor views the file mapping.
  for (const auto& item : root.toGenericDict()) {
    if (!item.value().isTensor()) continue;
    const auto& t = item.value().toTensor();
    if (t.numel() == 0) continue;
    EXPECT_EQ(inside_mapping_of(t.storage().data(), t.storage().nbytes(), file), zero_copy)
        << item.key().toStringRef();
  }
}

TEST_F(TorchPickle, PlainStateDict) { check_plain(load_torch_file(fx("plain.pth")), fx("plain.pth"), true); }

TEST_F(TorchPickle, Protocol4) { check_plain(load_torch_file(fx("protocol4.pth")), fx("protocol4.pth"), true); }

TEST_F(TorchPickle, Protocol1) { check_plain(load_torch_file(fx("protocol1.pth")), fx("protocol1.pth"), true); }

TEST_F(TorchPickle, TensorsOutliveTheLoaderAndAreWritable) {
  torch::Tensor t;
  {
    auto root = load_torch_file(fx("plain.pth"));
    t = tensor(root, "base");
  }
  // The mapping is private: writing changes this tensor, never the file.
  t.add_(1.0);
  expect_equal(t, torch::arange(20, torch::kFloat32).reshape({4, 5}) + 1, "base after add_");
  auto again = load_torch_file(fx("plain.pth"));
  expect_equal(tensor(again, "base"), torch::arange(20, torch::kFloat32).reshape({4, 5}), "file unchanged");
}

TEST_F(TorchPickle, ModuleStateDictDropsMetadata) {
  auto root = load_torch_file(fx("module_state_dict.pth"));
  ASSERT_TRUE(root.isGenericDict());
  EXPECT_EQ(root.toGenericDict().size(), 2u);
  expect_equal(tensor(root, "weight"), torch::arange(12, torch::kFloat32).reshape({3, 4}), "weight");
  expect_equal(tensor(root, "bias"), torch::tensor({-1.0f, 0.0f, 1.0f}), "bias");
}

TEST_F(TorchPickle, WrappedStateDict) {
  auto root = load_torch_file(fx("wrapped.pth"));
  EXPECT_EQ(get(root, "epoch").toInt(), 3);
  auto sd = get(root, "state_dict");
  expect_equal(tensor(sd, "a.weight"), torch::arange(6, torch::kFloat32).reshape({2, 3}), "a.weight");
}

TEST_F(TorchPickle, DeflatedRecordsAreDecompressed) {
  auto root = load_torch_file(fx("deflated.pth"));
  auto w = tensor(get(root, "state_dict"), "a.weight");
  expect_equal(w, torch::arange(6, torch::kFloat32).reshape({2, 3}), "a.weight");
  EXPECT_FALSE(inside_mapping_of(w.storage().data(), w.storage().nbytes(), fx("deflated.pth")));
}

TEST_F(TorchPickle, UnalignedRecordsAndOtherArchiveNames) {
  auto root = load_torch_file(fx("unaligned.pth"));
  auto w = tensor(get(root, "state_dict"), "a.weight");
  expect_equal(w, torch::arange(6, torch::kFloat32).reshape({2, 3}), "a.weight");
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(w.storage().data()) % 16, 0u);
}

TEST_F(TorchPickle, Zip64Archive) {
  auto root = load_torch_file(fx("zip64.pth"));
  auto w = tensor(get(root, "state_dict"), "a.weight");
  expect_equal(w, torch::arange(6, torch::kFloat32).reshape({2, 3}), "a.weight");
}

TEST_F(TorchPickle, TorchScriptArchiveIsNotAStateDict) {
  const auto p = fx("torchscript.pt");
  expect_one_line_error(load_error(p), p, "TorchScript archive (torch.jit.save)");
}

TEST_F(TorchPickle, LegacyFormat) {
  const auto p = fx("legacy.pth");
  expect_one_line_error(load_error(p), p,
                        "legacy (pre-1.6, non-zip) torch pickle format is not supported; re-save it with "
                        "torch.save(...) from a current PyTorch or convert it to safetensors");
}

TEST_F(TorchPickle, ForbiddenGlobals) {
  auto p = fx("forbidden_os_system.pth");
  auto msg = load_error(p);
  expect_one_line_error(msg, p, "refusing to load: the pickle references 'posix.system'");
  EXPECT_NE(msg.find("nothing in the file is executed"), std::string::npos) << msg;
  p = fx("forbidden_main_class.pth");
  expect_one_line_error(load_error(p), p, "refusing to load: the pickle references '__main__.Foo'");
}

TEST_F(TorchPickle, BrokenArchives) {
  struct Case {
    const char* file;
    const char* needle;
  } cases[] = {
      {"truncated.pth", "corrupt zip archive"},
      {"missing_data_pkl.pth", "no '<archive>/data.pkl' record"},
      {"missing_record.pth", "storage record 'wrapped/data/0' referenced by the pickle is missing"},
      {"short_record.pth", "has 8 bytes but the tensors need 24"},
      {"out_of_bounds.pth", "reaches past the end of its storage '0' (24 bytes)"},
      {"not_a_zip.bin", "not a torch.save checkpoint (no zip signature)"},
      {"tiny.bin", "too small"},
      {"empty.bin", "too small"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.file);
    expect_one_line_error(load_error(fx(c.file)), fx(c.file), c.needle);
  }
  const std::string dir = fx("");
  expect_one_line_error(load_error(dir), dir, "is a folder");
  expect_one_line_error(load_error(fx("does_not_exist.pth")), fx("does_not_exist.pth"), "cannot open");
}

// ---- hand-made pickle streams -------------------------------------------------------

c10::Storage zeros_loader(const std::string&, std::size_t nbytes) {
  c10::Storage s(c10::Storage::use_byte_size_t(), nbytes, c10::GetCPUAllocator(), false);
  std::memset(s.mutable_data(), 0, nbytes);
  return s;
}

c10::IValue parse(const std::string& bytes) {
  return parse_torch_pickle("x.pkl", reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), zeros_loader);
}

std::string parse_error(const std::string& bytes) {
  try {
    parse(bytes);
  } catch (const diffsynth::Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind("x.pkl: ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "non-diffsynth exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no error";
  return "";
}

#define EXPECT_PARSE_ERROR(bytes, needle)                                                   \
  do {                                                                                      \
    const std::string m_ = parse_error(std::string(bytes, sizeof(bytes) - 1));              \
    EXPECT_NE(m_.find(needle), std::string::npos) << "'" << needle << "' not in: " << m_;   \
  } while (0)

TEST(TorchPickleStream, Scalars) {
  EXPECT_TRUE(parse(std::string("\x80\x02N.", 4)).isNone());
  EXPECT_TRUE(parse(std::string("N.garbage after STOP", 20)).isNone());
  EXPECT_EQ(parse(std::string("\x80\x02J\xff\xff\xff\xff.", 8)).toInt(), -1);
  EXPECT_EQ(parse(std::string("\x80\x02\x8a\x01\xff.", 6)).toInt(), -1);
  EXPECT_EQ(parse(std::string("\x80\x02\x8a\x00.", 5)).toInt(), 0);
  EXPECT_EQ(parse(std::string("I12345\n.", 8)).toInt(), 12345);
  EXPECT_EQ(parse(std::string("I01\n.", 5)).toBool(), true);
  EXPECT_EQ(parse(std::string("F0.25\n.", 7)).toDouble(), 0.25);
  EXPECT_EQ(parse(std::string("\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01z\x94.", 17)).toStringRef(), "z");
}

TEST(TorchPickleStream, MalformedStreams) {
  EXPECT_PARSE_ERROR("", "empty");
  EXPECT_PARSE_ERROR("\x80\x02", "without a STOP");
  EXPECT_PARSE_ERROR("\x80\x02N", "without a STOP");
  EXPECT_PARSE_ERROR("\x80\x02.", "exactly one value");
  EXPECT_PARSE_ERROR("\x80\x02NN.", "exactly one value");
  EXPECT_PARSE_ERROR("\x80\x02\xff.", "unknown opcode");
  EXPECT_PARSE_ERROR("\x80\x09N.", "protocol 9");
  EXPECT_PARSE_ERROR("\x80\x02\x85.", "stack underflow");
  EXPECT_PARSE_ERROR("\x80\x02N(\x85.", "across a MARK");
  EXPECT_PARSE_ERROR("\x80\x02t.", "no MARK");
  EXPECT_PARSE_ERROR("\x80\x02(N.", "MARK is still open");
  EXPECT_PARSE_ERROR("\x80\x02h\x05.", "memo index 5 was never set");
  EXPECT_PARSE_ERROR("\x80\x02j\x00\x00\x00\x10.", "never set");
  EXPECT_PARSE_ERROR("\x80\x02X\xff\xff\xff\x7f", "truncated argument");
  EXPECT_PARSE_ERROR("\x80\x02\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09.", "wider than 64 bits");
  EXPECT_PARSE_ERROR("\x80\x02}(N]u.", "dict key of type None");
  EXPECT_PARSE_ERROR("\x80\x02}(K\x01u.", "odd number");
  EXPECT_PARSE_ERROR("\x80\x02NK\x01" "a.", "APPEND needs a list");
  EXPECT_PARSE_ERROR("\x80\x02" "C\x01x.", "bytes object");
  EXPECT_PARSE_ERROR("\x80\x02\x8f.", "a set");
  // A list that contains itself.
  EXPECT_PARSE_ERROR("\x80\x02]q\x00h\x00" "a.", "recursive");
}

TEST(TorchPickleStream, ForbiddenGlobals) {
  EXPECT_PARSE_ERROR("\x80\x02\x63os\nsystem\nX\x02\x00\x00\x00lsR.",
                     "refusing to load: the pickle references 'os.system'; only tensor state dicts can be loaded "
                     "(nothing in the file is executed)");
  EXPECT_PARSE_ERROR("\x80\x02\x63\x62uiltins\neval\n.", "'builtins.eval'");
  EXPECT_PARSE_ERROR("\x80\x02\x63numpy.core.multiarray\nscalar\n.", "'numpy.core.multiarray.scalar'");
  EXPECT_PARSE_ERROR("\x80\x02\x63torch\nload\n.", "'torch.load'");
  EXPECT_PARSE_ERROR("\x80\x02\x63torch._utils\n_rebuild_device_tensor_from_numpy\n.", "refusing to load");
  // STACK_GLOBAL and INST name their target too.
  EXPECT_PARSE_ERROR("\x80\x04\x8c\x02os\x8c\x06system\x93.", "'os.system'");
  EXPECT_PARSE_ERROR("\x80\x02(ios\nsystem\n.", "'os.system'");
  // An allowed global that is not callable, or misused.
  EXPECT_PARSE_ERROR("\x80\x02\x63torch\nFloatStorage\n)R.", "cannot be called");
  EXPECT_PARSE_ERROR("\x80\x02\x63torch\nFloatStorage\n.", "bare reference");
  EXPECT_PARSE_ERROR("\x80\x02\x63\x63ollections\nOrderedDict\n)\x81.", "instance of collections.OrderedDict");
}

TEST(TorchPickleStream, DeepNestingIsRefused) {
  std::string s = "\x80\x02";
  for (int i = 0; i < 1000; ++i) s += "]";
  for (int i = 0; i < 999; ++i) s += "a";
  s += ".";
  EXPECT_NE(parse_error(s).find("nested deeper"), std::string::npos);

  // Deep only through sharing: L[k] = [L[k-1]], and the root lists L[0..299] side by side,
  // so a depth-first walk never goes deeper than 2 but destroying L[299] recurses 300 deep.
  auto u32 = [](std::uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); };
  s = "\x80\x02]r" + u32(0) + "0";
  for (std::uint32_t k = 1; k < 300; ++k) s += "]j" + u32(k - 1) + "ar" + u32(k) + "0";
  s += "](";
  for (std::uint32_t k = 0; k < 300; ++k) s += "j" + u32(k);
  s += "e.";
  EXPECT_NE(parse_error(s).find("nested deeper"), std::string::npos);
  // ... while 200 levels are fine.
  s = "\x80\x02";
  for (int i = 0; i < 200; ++i) s += "]";
  for (int i = 0; i < 199; ++i) s += "a";
  s += ".";
  EXPECT_TRUE(parse(s).isList());

  std::string marks = "\x80\x02";
  marks += std::string(70000, '(');
  EXPECT_NE(parse_error(marks).find("too many open MARKs"), std::string::npos);
}

// A tensor built by hand: _rebuild_tensor_v2 over storage "7" with 6 floats, viewed 2x3.
std::string tensor_pickle(const std::string& size_tuple, int numel = 6) {
  using namespace std::string_literals;
  std::string s = "\x80\x02"s;
  s += "ctorch._utils\n_rebuild_tensor_v2\n"s;
  s += "("s;
  s += "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "7X\x03\x00\x00\x00" "cpuK"s;
  s += static_cast<char>(numel);
  s += "tQ"s;
  s += "K\x00"s;
  s += size_tuple;
  s += "K\x03K\x01\x86"s;  // stride (3, 1)
  s += "\x89N"s;             // requires_grad False, hooks None
  s += "tR."s;
  return s;
}

TEST(TorchPickleStream, HandMadeTensor) {
  std::vector<std::pair<std::string, std::size_t>> calls;
  auto loader = [&](const std::string& key, std::size_t nbytes) {
    calls.emplace_back(key, nbytes);
    c10::Storage s(c10::Storage::use_byte_size_t(), nbytes, c10::GetCPUAllocator(), false);
    auto* f = static_cast<float*>(s.mutable_data());
    for (std::size_t i = 0; i < nbytes / 4; ++i) f[i] = static_cast<float>(i);
    return s;
  };
  const std::string s = tensor_pickle("K\x02K\x03\x86");
  auto v = parse_torch_pickle("x.pkl", reinterpret_cast<const std::uint8_t*>(s.data()), s.size(), loader);
  ASSERT_TRUE(v.isTensor());
  expect_equal(v.toTensor(), torch::arange(6, torch::kFloat32).reshape({2, 3}), "hand-made");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].first, "7");
  EXPECT_EQ(calls[0].second, 24u);

  EXPECT_NE(parse_error(tensor_pickle("K\x03K\x03\x86")).find("reaches past the end"), std::string::npos);
  // A loader that returns too little is caught.
  auto short_loader = [](const std::string&, std::size_t) {
    return c10::Storage(c10::Storage::use_byte_size_t(), 4, c10::GetCPUAllocator(), false);
  };
  const std::string ok = tensor_pickle("K\x02K\x03\x86");
  try {
    parse_torch_pickle("x.pkl", reinterpret_cast<const std::uint8_t*>(ok.data()), ok.size(), short_loader);
    ADD_FAILURE() << "no error";
  } catch (const diffsynth::Error& e) {
    EXPECT_NE(std::string(e.what()).find("has 4 bytes but the pickle needs 24"), std::string::npos) << e.what();
  }
}

}  // namespace

// save_torch_file: what load_torch_file reads back, extra records, zero-copy alignment, and a
// config entry carried as a record (ModelPool's self-describing .pth files).
TEST(TorchPickleWrite, RoundTripWithExtraRecords) {
  const auto dir = std::filesystem::temp_directory_path() / ("diffsynth_pth_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "model.pth").string();
  torch::manual_seed(1);
  const auto a = torch::randn({3, 5});
  const auto b = torch::randn({4, 2}).to(torch::kBFloat16);
  const auto c = torch::arange(10, torch::kInt64).slice(0, 2, 8, 2);  // a strided view: written contiguous
  const auto scalar = torch::tensor(2.5, torch::kFloat16);
  diffsynth::save_torch_file(path, {{"a", a}, {"blocks.0.b", b}, {"c", c}, {"s", scalar}},
                             {{"diffsynth_model_config", "{\"model_name\": \"x\"}"}});
  const auto v = load_torch_file(path);
  ASSERT_TRUE(v.isGenericDict());
  const auto d = v.toGenericDict();
  ASSERT_EQ(d.size(), 4u);
  std::vector<std::string> keys;
  for (const auto& e : d) keys.push_back(e.key().toStringRef());
  EXPECT_EQ(keys, (std::vector<std::string>{"a", "blocks.0.b", "c", "s"}));  // insertion order
  EXPECT_TRUE(torch::equal(d.at("a").toTensor(), a));
  EXPECT_TRUE(torch::equal(d.at("blocks.0.b").toTensor(), b));
  EXPECT_EQ(d.at("blocks.0.b").toTensor().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(d.at("c").toTensor(), c.contiguous()));
  EXPECT_EQ(d.at("s").toTensor().dim(), 0);
  EXPECT_TRUE(torch::equal(d.at("s").toTensor(), scalar));
  // Records are 64-byte aligned: the loaded tensors view the mapping.
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(d.at("a").toTensor().data_ptr()) % 64, 0u);
  EXPECT_EQ(diffsynth::read_torch_file_record(path, "diffsynth_model_config").value_or(""), "{\"model_name\": \"x\"}");
  EXPECT_EQ(diffsynth::read_torch_file_record(path, "byteorder").value_or(""), "little");
  EXPECT_FALSE(diffsynth::read_torch_file_record(path, "no_such_record").has_value());
  // Written atomically: no temporary file left, an existing file replaced whole.
  diffsynth::save_torch_file(path, {{"a", a}});
  EXPECT_EQ(load_torch_file(path).toGenericDict().size(), 1u);
  for (const auto& e : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  // Duplicate keys are refused, naming the key.
  try {
    diffsynth::save_torch_file(path, {{"a", a}, {"a", a}});
    ADD_FAILURE() << "duplicate key accepted";
  } catch (const diffsynth::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'a' appears twice"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}
