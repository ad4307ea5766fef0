// Reference: diffsynth/utils/state_dict_converters/wan_video_image_encoder.py
// (WanImageEncoderStateDictConverter). models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth is
// the whole open-clip XLM-RoBERTa ViT-H/14 under its own names ("log_scale", "visual.*",
// "textual.*"); WanImageEncoder holds the CLIP as `model` and builds no text tower, so every
// "textual." key is dropped and the others gain the prefix "model.".
// Non-tensor entries are renamed the same way (a strict load then reports them), except under
// "textual.", which the reference drops whatever they hold.
#include "core/registry.h"

namespace diffsynth {

StateDict WanImageEncoderStateDictConverter(const StateDict& state_dict) {
  auto textual = [](const std::string& k) { return k.rfind("textual.", 0) == 0; };
  StateDict out;
  for (const auto& [k, v] : state_dict)
    if (!textual(k)) out.set("model." + k, v);
  for (const auto& k : state_dict.non_tensor_keys)
    if (!textual(k)) out.non_tensor_keys.push_back("model." + k);
  return out;
}

DIFFSYNTH_REGISTER_CONVERTER(
    "diffsynth.utils.state_dict_converters.wan_video_image_encoder.WanImageEncoderStateDictConverter",
    WanImageEncoderStateDictConverter);

}  // namespace diffsynth
