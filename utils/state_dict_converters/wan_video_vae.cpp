// Reference: diffsynth/utils/state_dict_converters/wan_video_vae.py (WanVideoVAEStateDictConverter,
// used by WanVideoVAE and WanVideoVAE38). Wan2.1_VAE.pth names the VideoVAE_ network's own
// parameters ("encoder.conv1.weight", "conv1.bias", ...); WanVideoVAE holds that network as
// `model`, so every key gains the prefix "model.".
// The reference first unwraps {"model_state": {...}}; our loader already does that for a file
// whose only entry is model_state (as the reference's load_state_dict does for state_dict /
// module / model_state), and a nested dict next to other entries is not a tensor here: it stays
// a non-tensor key (renamed like the others) that a strict load reports.
#include "core/registry.h"

namespace diffsynth {

StateDict WanVideoVAEStateDictConverter(const StateDict& state_dict) {
  StateDict out;
  for (const auto& [k, v] : state_dict) out.set("model." + k, v);
  for (const auto& k : state_dict.non_tensor_keys) out.non_tensor_keys.push_back("model." + k);
  return out;
}

DIFFSYNTH_REGISTER_CONVERTER("diffsynth.utils.state_dict_converters.wan_video_vae.WanVideoVAEStateDictConverter",
                             WanVideoVAEStateDictConverter);

}  // namespace diffsynth
