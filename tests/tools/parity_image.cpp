// Parity runners for utils/image (no model):
//   image_resize  input "image" (uint8 [H, W, C]); options {"width", "height", "resample":
//                 "nearest" | "bilinear" | "bicubic" | "lanczos"} -> "resized" (PIL Image.resize)
//   read_png      options {"path"} -> "image" (np.array(PIL.Image.open(path)))
#include "core/registry.h"  // DIFFSYNTH_CONCAT
#include "parity_runner.h"
#include "utils/image.h"

namespace diffsynth::parity {

DIFFSYNTH_PARITY_RUNNER("image_resize", "", [](Module&, const StateDict& inputs, c10::ScalarType, const Options& o) {
  static const std::map<std::string, Resample> kResample = {
      {"nearest", Resample::Nearest}, {"bilinear", Resample::Bilinear}, {"bicubic", Resample::Bicubic},
      {"lanczos", Resample::Lanczos}};
  const auto name = o.value("resample", std::string("bicubic"));
  if (!kResample.contains(name)) throw Error("image_resize: unknown resample '" + name + "'");
  if (!inputs.contains("image")) throw Error("image_resize: missing input 'image'");
  return Outputs{{"resized", resize_pil(inputs.at("image"), o.at("width").get<std::int64_t>(),
                                        o.at("height").get<std::int64_t>(), kResample.at(name))}};
});

DIFFSYNTH_PARITY_RUNNER("read_png", "", [](Module&, const StateDict&, c10::ScalarType, const Options& o) {
  return Outputs{{"image", read_png(o.at("path").get<std::string>())}};
});

}  // namespace diffsynth::parity
