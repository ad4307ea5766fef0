// hash_model_file: the spec's test vectors and the hashing rules (nested dicts, 0-dim, order).
#include <gtest/gtest.h>

#include "core/loader/file.h"
#include "core/loader/safetensors.h"
#include "test_util.h"

using namespace diffsynth;

namespace {
KeysDict keys(std::initializer_list<std::pair<std::string, std::vector<std::int64_t>>> items) {
  KeysDict d;
  for (const auto& [k, s] : items) d.set(KeysEntry{k, s, nullptr});
  return d;
}
}  // namespace

TEST(Hash, SpecVectorFlat) {
  auto d = keys({{"a.weight", {2, 3}}, {"a.bias", {2}}, {"scale", {}}});
  const auto s = convert_keys_dict_to_single_str(d);
  EXPECT_EQ(s, "a.bias,a.bias:2,a.weight,a.weight:2_3,scale,scale:");
  EXPECT_EQ(md5_hex(s), "cdf0726fd23f31be0c8f82e838646a79");
}

TEST(Hash, SpecVectorNested) {
  KeysDict d;
  KeysEntry state{"state", {}, std::make_shared<KeysDict>(keys({{"x", {1}}, {"y", {2, 2}}}))};
  d.set(state);
  d.set(KeysEntry{"z", {3}, nullptr});
  const auto s = convert_keys_dict_to_single_str(d);
  EXPECT_EQ(s, "state|x,x:1,y,y:2_2,z,z:3");
  EXPECT_EQ(md5_hex(s), "3a9bd07e9dee03541159a9d586a5658b");
}

TEST(Hash, WithoutShapeListsBareKeysOnly) {
  auto d = keys({{"b", {4}}, {"a", {1, 2}}});
  EXPECT_EQ(convert_keys_dict_to_single_str(d, false), "a,b");
}

TEST(Hash, SortIsByCodePointNotLocale) {
  // 'é' (U+00E9) sorts after 'z', and U+1F600 after U+FFFD, as Python's str sort does.
  auto d = keys({{"\xc3\xa9", {1}}, {"z", {1}}, {"\xf0\x9f\x98\x80", {1}}, {"\xef\xbf\xbd", {1}}});
  EXPECT_EQ(convert_keys_dict_to_single_str(d, false), "z,\xc3\xa9,\xef\xbf\xbd,\xf0\x9f\x98\x80");
}

TEST(Hash, ShardsMergeLaterWins) {
  TempDir dir;
  const auto a = dir.path("a.safetensors"), b = dir.path("b.safetensors");
  save_safetensors(a, {{"x", torch::zeros({2})}, {"y", torch::zeros({3})}});
  save_safetensors(b, {{"y", torch::zeros({5})}, {"z", torch::zeros({})}});
  EXPECT_EQ(convert_keys_dict_to_single_str(load_keys_dict({a, b})), "x,x:2,y,y:5,z,z:");
  EXPECT_EQ(hash_model_file({a, b}), md5_hex("x,x:2,y,y:5,z,z:"));
}
