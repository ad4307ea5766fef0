// Parity runner: WanModel through model_fn (model_fn_wan_video, the pipeline's model function).
// Inputs: latents, timestep, context; optional clip_feature, y, reference_latents,
// control_camera_latents_input. Options: {"fuse_vae_embedding_in_latents": bool}.
#include "core/registry.h"
#include "models/wan_video_dit.h"
#include "parity_runner.h"

namespace diffsynth::parity {

DIFFSYNTH_PARITY_RUNNER(
    "wan_video_dit", "diffsynth.models.wan_video_dit.WanModel",
    [](Module& m, const StateDict& inputs, c10::ScalarType dtype, const Options& options) {
      auto& dit = dynamic_cast<WanModelImpl&>(m);
      WanDiTInputs in;
      in.latents = input(inputs, "latents", dtype);
      in.timestep = input(inputs, "timestep", dtype);
      in.context = input(inputs, "context", dtype);
      for (auto [name, slot] : {std::pair{"clip_feature", &in.clip_feature}, std::pair{"y", &in.y},
                                std::pair{"reference_latents", &in.reference_latents},
                                std::pair{"control_camera_latents_input", &in.control_camera_latents_input}})
        if (inputs.contains(name)) *slot = input(inputs, name, dtype);
      in.fuse_vae_embedding_in_latents = options.value("fuse_vae_embedding_in_latents", false);
      return Outputs{{"out", dit.model_fn(in)}};
    });

}  // namespace diffsynth::parity
