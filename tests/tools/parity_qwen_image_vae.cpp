// Parity runner: QwenImageVAE encode (input "image" -> "encoded") and decode (input "latents"
// -> "decoded"); each runs when its input is present. Options (JSON object, all optional):
//   {"tiled": true, "tile_size": 128 | [h, w], "tile_stride": 64 | [h, w]}  (latent pixels)
//   {"exact_conv3d": true}  the reference's padded conv3d instead of the single-frame 2-D path
#include "core/registry.h"
#include "models/wan_video_vae.h"
#include "parity_runner.h"

namespace diffsynth::parity {

namespace {
std::pair<std::int64_t, std::int64_t> hw(const Options& o, const char* key, std::int64_t d) {
  if (!o.contains(key)) return {d, d};
  const auto& v = o.at(key);
  if (v.is_number_integer()) return {v.get<std::int64_t>(), v.get<std::int64_t>()};
  if (v.is_array() && v.size() == 2) return {v[0].get<std::int64_t>(), v[1].get<std::int64_t>()};
  throw Error(std::string("qwen_image_vae options: '") + key + "' must be an integer or [h, w], got " + v.dump());
}
}  // namespace

DIFFSYNTH_PARITY_RUNNER("qwen_image_vae", "diffsynth.models.qwen_image_vae.QwenImageVAE",
                        [](Module& m, const StateDict& inputs, c10::ScalarType dtype, const Options& options) {
                          auto& vae = dynamic_cast<QwenImageVAEImpl&>(m);
                          for (auto it = options.begin(); it != options.end(); ++it)
                            if (it.key() != "tiled" && it.key() != "tile_size" && it.key() != "tile_stride" &&
                                it.key() != "exact_conv3d")
                              throw Error("qwen_image_vae options: unknown key '" + it.key() + "'");
                          const bool tiled = options.value("tiled", false);
                          vae.set_exact_conv3d(options.value("exact_conv3d", false));
                          const auto [th, tw] = hw(options, "tile_size", 128);
                          const auto [sh, sw] = hw(options, "tile_stride", 64);
                          const QwenImageVAETiling tiling(th, tw, sh, sw);
                          Outputs out;
                          if (inputs.contains("image")) {
                            auto x = input(inputs, "image", dtype);
                            out.emplace_back("encoded", tiled ? vae.encode_tiled(x, tiling) : vae.encode(x));
                          }
                          if (inputs.contains("latents")) {
                            auto z = input(inputs, "latents", dtype);
                            out.emplace_back("decoded", tiled ? vae.decode_tiled(z, tiling) : vae.decode(z));
                          }
                          if (out.empty()) throw Error("qwen_image_vae: inputs need 'image' and/or 'latents'");
                          return out;
                        });

}  // namespace diffsynth::parity
