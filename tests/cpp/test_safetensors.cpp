// safetensors reader/writer: round trips, zero-copy views, one-copy conversion, and every
// malformed-file case failing with one clear line that names the file.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "core/loader/file.h"
#include "core/loader/safetensors.h"
#include "test_util.h"

using namespace diffsynth;

namespace {

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return s;
}

// A file made of a raw header string and `data_size` zero bytes.
std::string make_file(const TempDir& dir, const std::string& header, std::size_t data_size) {
  const auto p = dir.path("t.safetensors");
  write_bytes(p, le64(header.size()) + header + std::string(data_size, '\0'));
  return p;
}

// Expects read_safetensors_header(path) to fail with a one-line message naming the file and
// containing `needle`.
void expect_bad(const std::string& path, const std::string& needle) {
  try {
    read_safetensors_header(path);
    FAIL() << "accepted a bad file; expected: " << needle;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "multi-line: " << msg;
  }
}

}  // namespace

TEST(Safetensors, RoundTripEveryDtype) {
  TempDir dir;
  const auto p = dir.path("all.safetensors");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  const std::vector<c10::ScalarType> dtypes = {c10::kDouble, c10::kFloat, c10::kHalf, c10::kBFloat16,
                                               c10::kFloat8_e4m3fn, c10::kFloat8_e5m2, c10::kLong, c10::kInt,
                                               c10::kShort, c10::kChar, c10::kByte, c10::kBool};
  for (auto t : dtypes) tensors.emplace_back(safetensors_dtype_name(t), (torch::arange(12) % 5).reshape({3, 4}).to(t));
  tensors.emplace_back("scalar", torch::tensor(3.5));
  tensors.emplace_back("empty", torch::zeros({0, 7}));
  save_safetensors(p, tensors, {{"format", "pt"}});
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->header().metadata.at("format"), "pt");
  ASSERT_EQ(f->header().tensors.size(), tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& info = f->header().tensors[i];
    EXPECT_EQ(info.name, tensors[i].first);
    auto t = f->get_tensor(info);
    EXPECT_EQ(t.scalar_type(), tensors[i].second.scalar_type());
    EXPECT_EQ(t.sizes(), tensors[i].second.sizes());
    EXPECT_TRUE(torch::equal(t.to(torch::kDouble), tensors[i].second.to(torch::kDouble))) << info.name;
  }
}

TEST(Safetensors, LoadIsZeroCopyWhenDtypeMatches) {
  TempDir dir;
  const auto p = dir.path("w.safetensors");
  save_safetensors(p, {{"w", torch::randn({64, 64}).to(torch::kBFloat16)}});
  const auto file_size = std::filesystem::file_size(p);
  StateDict sd = load_state_dict({p}, c10::kBFloat16);
  auto header = read_safetensors_header(p);
  // The tensor's bytes are the file's bytes, in a mapping: no allocation of our own.
  auto t = sd.at("w");
  auto base = static_cast<const std::uint8_t*>(t.data_ptr());
  EXPECT_TRUE(MappedFile::is_mapped(base, 64 * 64 * 2));
  EXPECT_EQ(read_bytes(p).substr(header.data_offset(), 16),
            std::string(reinterpret_cast<const char*>(base), 16));
  EXPECT_LT(header.data_offset(), file_size);
  // A converting load gives a new tensor with the converted values.
  StateDict f32 = load_state_dict({p}, c10::kFloat);
  EXPECT_EQ(f32.at("w").scalar_type(), c10::kFloat);
  EXPECT_TRUE(torch::equal(f32.at("w"), sd.at("w").to(torch::kFloat)));
  EXPECT_FALSE(MappedFile::is_mapped(f32.at("w").data_ptr(), 64 * 64 * 4));
}

TEST(Safetensors, ViewsKeepTheMappingAlive) {
  TempDir dir;
  const auto p = dir.path("w.safetensors");
  auto ref = torch::arange(100, torch::kFloat);
  save_safetensors(p, {{"w", ref}});
  torch::Tensor t;
  {
    auto f = SafetensorsFile::open(p);
    t = f->get_tensor(f->header().tensors[0]);
  }
  std::filesystem::remove(p);  // the mapping outlives the name
  EXPECT_TRUE(torch::equal(t, ref));
  t.mul_(2);  // private mapping: writable, never written back
  EXPECT_TRUE(torch::equal(t, ref * 2));
}

TEST(Safetensors, RejectsShortFile) {
  TempDir dir;
  const auto p = dir.path("short.safetensors");
  write_bytes(p, "abc");
  expect_bad(p, "too short");
}

TEST(Safetensors, RejectsHeaderPastEof) {
  TempDir dir;
  const auto p = dir.path("t.safetensors");
  write_bytes(p, le64(1000) + "{}");
  expect_bad(p, "runs past the end");
}

TEST(Safetensors, RejectsHugeHeader) {
  TempDir dir;
  const auto p = dir.path("t.safetensors");
  write_bytes(p, le64(200'000'000) + "{}");
  expect_bad(p, "100 MB");
}

TEST(Safetensors, RejectsNonUtf8Header) {
  TempDir dir;
  expect_bad(make_file(dir, "{\"a\xff\": 1}", 0), "not valid UTF-8 JSON");
}

TEST(Safetensors, RejectsNonJsonHeader) {
  TempDir dir;
  expect_bad(make_file(dir, "this is not json", 0), "not valid UTF-8 JSON");
}

TEST(Safetensors, RejectsNonObjectHeader) {
  TempDir dir;
  expect_bad(make_file(dir, "[1, 2, 3]", 0), "not a JSON object");
}

TEST(Safetensors, RejectsUnknownDtype) {
  TempDir dir;
  expect_bad(make_file(dir, R"({"w": {"dtype": "F12", "shape": [1], "data_offsets": [0, 4]}})", 4), "unknown dtype 'F12'");
}

TEST(Safetensors, RejectsSizeMismatch) {
  TempDir dir;
  expect_bad(make_file(dir, R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", 12),
             "span 12");
}

TEST(Safetensors, RejectsOffsetsPastData) {
  TempDir dir;
  expect_bad(make_file(dir, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8), "past the data");
}

TEST(Safetensors, RejectsOverlap) {
  TempDir dir;
  expect_bad(make_file(dir,
                       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                       12),
             "overlaps");
}

TEST(Safetensors, RejectsGap) {
  TempDir dir;
  expect_bad(make_file(dir,
                       R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                       12),
             "gap of 4 bytes");
}

TEST(Safetensors, RejectsTrailingData) {
  TempDir dir;
  expect_bad(make_file(dir, R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 8),
             "not described by the header");
}

TEST(Safetensors, RejectsDuplicateKeys) {
  TempDir dir;
  expect_bad(make_file(dir,
                       R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                           "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                       8),
             "lists key 'a' twice");
}

TEST(Safetensors, RejectsNegativeDim) {
  TempDir dir;
  expect_bad(make_file(dir, R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0), "negative");
}

TEST(Safetensors, RejectsOverflowingDims) {
  TempDir dir;
  expect_bad(make_file(dir,
                       R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 0]}})", 0),
             "overflows");
  expect_bad(make_file(dir, R"({"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 0]}})", 0), "");
  expect_bad(make_file(dir, R"({"a": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0),
             "overflows");
}

TEST(Safetensors, RejectsDirectoryAndMissingFile) {
  TempDir dir;
  expect_bad(dir.str(), "is a folder");
  expect_bad(dir.path("nope.safetensors"), "cannot open");
}

TEST(Safetensors, IndexJsonNamesMissingShard) {
  TempDir dir;
  save_safetensors(dir.path("m-1.safetensors"), {{"a", torch::zeros({1})}});
  write_bytes(dir.path("m.safetensors.index.json"),
              R"({"metadata": {}, "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}})");
  try {
    expand_model_paths({dir.path("m.safetensors.index.json")});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("m-2.safetensors"), std::string::npos) << e.what();
  }
  write_bytes(dir.path("m.safetensors.index.json"), R"({"weight_map": {"a": "m-1.safetensors"}})");
  EXPECT_EQ(expand_model_paths({dir.path("m.safetensors.index.json")}), ModelPaths{dir.path("m-1.safetensors")});
  // A folder stands for its shards, sorted.
  save_safetensors(dir.path("m-0.safetensors"), {{"b", torch::zeros({1})}});
  EXPECT_EQ(expand_model_paths({dir.str()}), (ModelPaths{dir.path("m-0.safetensors"), dir.path("m-1.safetensors")}));
}
