// Reference: diffsynth/utils/state_dict_converters/qwen_image_text_encoder.py.
// The HF checkpoint names the language model "model.*" and the vision tower "visual.*"; the
// DiffSynth class nests both under a Qwen2_5_VLModel ("model.language_model.*", "model.visual.*").
#include "core/registry.h"

namespace diffsynth {

namespace {
// Python's str.replace: every occurrence, left to right, non-overlapping.
std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  std::size_t pos = 0;
  for (std::size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size())
    out.append(s, pos, hit - pos).append(to);
  return out.append(s, pos, std::string::npos);
}
}  // namespace

StateDict QwenImageTextEncoderStateDictConverter(const StateDict& state_dict) {
  StateDict out;
  for (const auto& [k, v] : state_dict) {
    if (k.rfind("visual.", 0) == 0) out.set("model." + k, v);
    else if (k.rfind("model.", 0) == 0) out.set(replace_all(k, "model.", "model.language_model."), v);
    else out.set(k, v);
  }
  return out;
}

DIFFSYNTH_REGISTER_CONVERTER(
    "diffsynth.utils.state_dict_converters.qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter",
    QwenImageTextEncoderStateDictConverter);

}  // namespace diffsynth
