// Parity runner: WanImageEncoder.encode_image (the Wan I2V pipeline's CLIP features) and the
// vision tower's own forward. Inputs (any suffix S, kept in their float dtypes; the model casts):
//   "video<S>.<i>"  the i-th tensor (i = 0, 1, ...) of one encode_image list -> "out<S>"
//   "pixels<S>"     VisionTransformer.forward(pixels, interpolation, use_31_block) -> "visual<S>"
// Options (JSON object, all optional): {"interpolation": bool, "use_31_block": bool} for the
// "pixels" cases (defaults false, as the reference forward's); {"converter": "<dotted name>"} is
// read by diffsynth_parity itself.
#include <map>

#include "core/registry.h"
#include "models/wan_video_image_encoder.h"
#include "parity_runner.h"

namespace diffsynth::parity {

DIFFSYNTH_PARITY_RUNNER("wan_image_encoder", "diffsynth.models.wan_video_image_encoder.WanImageEncoder",
                        [](Module& m, const StateDict& inputs, c10::ScalarType, const Options& options) {
                          auto& enc = dynamic_cast<WanImageEncoderImpl&>(m);
                          for (auto it = options.begin(); it != options.end(); ++it)
                            if (it.key() != "interpolation" && it.key() != "use_31_block" && it.key() != "converter")
                              throw Error("wan_image_encoder options: unknown key '" + it.key() + "'");
                          const bool interpolation = options.value("interpolation", false);
                          const bool use_31_block = options.value("use_31_block", false);
                          std::map<std::string, std::map<int, torch::Tensor>> lists;
                          Outputs out;
                          for (const auto& [name, t] : inputs) {
                            if (name.rfind("video", 0) == 0) {
                              const auto dot = name.rfind('.');
                              if (dot == std::string::npos || dot < 5)
                                throw Error("inputs: '" + name + "' is not video<S>.<index>");
                              lists[name.substr(5, dot - 5)][std::stoi(name.substr(dot + 1))] = t;
                            } else if (name.rfind("pixels", 0) == 0) {
                              out.emplace_back("visual" + name.substr(6),
                                               enc.model->visual->forward(t, interpolation, use_31_block));
                            }
                          }
                          for (const auto& [suffix, list] : lists) {
                            std::vector<torch::Tensor> videos;
                            for (const auto& [i, t] : list) {
                              if (i != static_cast<int>(videos.size()))
                                throw Error("inputs: video" + suffix + " indices must be 0, 1, ...");
                              videos.push_back(t);
                            }
                            out.emplace_back("out" + suffix, enc.encode_image(videos));
                          }
                          if (out.empty()) throw Error("inputs: no 'video<S>.<i>' or 'pixels<S>' tensor");
                          return out;
                        });

}  // namespace diffsynth::parity
