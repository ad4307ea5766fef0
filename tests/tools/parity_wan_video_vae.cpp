// Parity runners of the Wan VAE's video paths (models/wan_video_vae.h):
//   wan_video_vae         WanVideoVAE.encode (input "video" -> "encoded") and .decode (input
//                         "latents" -> "decoded", clamped as the reference); weights usually in
//                         the Wan2.1_VAE.pth layout with {"converter": "...WanVideoVAEStateDictConverter"}.
//   qwen_image_vae_video  QwenImageVAE.encode_video / decode_video (the same network under
//                         diffusers names; not clamped).
// Options (JSON object, all optional):
//   {"tiled": true, "tile_size": [h, w] | n, "tile_stride": [h, w] | n}  (latent pixels; Wan only)
//   {"exact_conv3d": true}  the reference's padded conv3d everywhere
//   {"raw": true}  Wan only, untiled: VideoVAE_.encode / decode with the scale (decode not clamped)
//   {"converter": "<dotted name>"}  read by diffsynth_parity itself
#include "core/registry.h"
#include "models/wan_video_vae.h"
#include "parity_runner.h"

namespace diffsynth::parity {

namespace {
std::pair<std::int64_t, std::int64_t> hw(const Options& o, const char* key, std::int64_t d_h, std::int64_t d_w) {
  if (!o.contains(key)) return {d_h, d_w};
  const auto& v = o.at(key);
  if (v.is_number_integer()) return {v.get<std::int64_t>(), v.get<std::int64_t>()};
  if (v.is_array() && v.size() == 2) return {v[0].get<std::int64_t>(), v[1].get<std::int64_t>()};
  throw Error(std::string("wan_video_vae options: '") + key + "' must be an integer or [h, w], got " + v.dump());
}

void check_options(const Options& options, const char* runner) {
  for (auto it = options.begin(); it != options.end(); ++it)
    if (it.key() != "tiled" && it.key() != "tile_size" && it.key() != "tile_stride" && it.key() != "exact_conv3d" &&
        it.key() != "converter" && it.key() != "raw")
      throw Error(std::string(runner) + " options: unknown key '" + it.key() + "'");
}
}  // namespace

DIFFSYNTH_PARITY_RUNNER("wan_video_vae", "diffsynth.models.wan_video_vae.WanVideoVAE",
                        [](Module& m, const StateDict& inputs, c10::ScalarType dtype, const Options& options) {
                          auto& vae = dynamic_cast<WanVideoVAEImpl&>(m);
                          check_options(options, "wan_video_vae");
                          vae.set_exact_conv3d(options.value("exact_conv3d", false));
                          std::optional<WanVAETiling> tiling;
                          if (options.value("tiled", false)) {
                            const auto d = WanVideoVAEImpl::kDefaultTiling;
                            const auto [th, tw] = hw(options, "tile_size", d.tile_h, d.tile_w);
                            const auto [sh, sw] = hw(options, "tile_stride", d.stride_h, d.stride_w);
                            tiling = WanVAETiling(th, tw, sh, sw);
                          }
                          const bool raw = options.value("raw", false);
                          if (raw && tiling) throw Error("wan_video_vae: 'raw' is untiled");
                          Outputs out;
                          if (inputs.contains("video")) {
                            auto v = input(inputs, "video", dtype);
                            out.emplace_back("encoded", raw ? vae.encode_causal(v) : vae.encode_video(v, tiling));
                          }
                          if (inputs.contains("latents")) {
                            auto z = input(inputs, "latents", dtype);
                            out.emplace_back("decoded", raw ? vae.decode_causal(z) : vae.decode_video(z, tiling));
                          }
                          if (out.empty()) throw Error("wan_video_vae: inputs need 'video' and/or 'latents'");
                          return out;
                        });

DIFFSYNTH_PARITY_RUNNER("qwen_image_vae_video", "diffsynth.models.qwen_image_vae.QwenImageVAE",
                        [](Module& m, const StateDict& inputs, c10::ScalarType dtype, const Options& options) {
                          auto& vae = dynamic_cast<QwenImageVAEImpl&>(m);
                          check_options(options, "qwen_image_vae_video");
                          if (options.contains("tiled") || options.contains("raw"))
                            throw Error("qwen_image_vae_video: no tiled or raw mode");
                          vae.set_exact_conv3d(options.value("exact_conv3d", false));
                          Outputs out;
                          if (inputs.contains("video"))
                            out.emplace_back("encoded", vae.encode_video(input(inputs, "video", dtype)));
                          if (inputs.contains("latents"))
                            out.emplace_back("decoded", vae.decode_video(input(inputs, "latents", dtype)));
                          if (out.empty()) throw Error("qwen_image_vae_video: inputs need 'video' and/or 'latents'");
                          return out;
                        });

}  // namespace diffsynth::parity
