#include "configs/vram_module_maps.h"

#include <map>

namespace diffsynth {

namespace {
constexpr auto AWM = VRAMWrapperKind::AutoWrappedModule;
constexpr auto AWL = VRAMWrapperKind::AutoWrappedLinear;

const std::map<std::string, std::vector<VRAMModuleMapEntry>>& maps() {
  static const std::map<std::string, std::vector<VRAMModuleMapEntry>> m = {
      {"diffsynth.models.qwen_image_dit.QwenImageDiT",
       {{"diffsynth.models.qwen_image_dit.RMSNorm", AWM}, {"torch.nn.Linear", AWL}, {"torch.nn.Embedding", AWM}}},
      // As VERSION_CHECKER_MAPS gives it for transformers >= 5.2.0 (Qwen2RMSNorm renamed
      // Qwen2_5_VLRMSNorm); our text encoder's RMSNorm declares both names.
      {"diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder",
       {{"torch.nn.Linear", AWL},
        {"torch.nn.Embedding", AWM},
        {"transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLRotaryEmbedding", AWM},
        {"transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VisionPatchEmbed", AWM},
        {"transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VisionRotaryEmbedding", AWM},
        {"transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLRMSNorm", AWM}}},
      {"diffsynth.models.qwen_image_vae.QwenImageVAE",
       {{"torch.nn.Linear", AWL},
        {"torch.nn.Conv3d", AWM},
        {"torch.nn.Conv2d", AWM},
        {"diffsynth.models.qwen_image_vae.QwenImageRMS_norm", AWM}}},
      // Upsample, SiLU and Dropout hold no weights (and are no modules here): nothing to wrap.
      {"diffsynth.models.wan_video_vae.WanVideoVAE",
       {{"torch.nn.Linear", AWL},
        {"torch.nn.Conv2d", AWM},
        {"diffsynth.models.wan_video_vae.RMS_norm", AWM},
        {"diffsynth.models.wan_video_vae.CausalConv3d", AWM},
        {"diffsynth.models.wan_video_vae.Upsample", AWM},
        {"torch.nn.SiLU", AWM},
        {"torch.nn.Dropout", AWM}}},
      {"diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet",
       {{"diffsynth.models.qwen_image_dit.RMSNorm", AWM}, {"torch.nn.Linear", AWL}}},
      {"diffsynth.models.qwen_image_image2lora.QwenImageImage2LoRAModel", {{"torch.nn.Linear", AWL}}},
      {"diffsynth.models.wan_video_dit.WanModel",
       {{"diffsynth.models.wan_video_dit.MLP", AWM},
        {"diffsynth.models.wan_video_dit.DiTBlock", VRAMWrapperKind::AutoWrappedNonRecurseModule},
        {"diffsynth.models.wan_video_dit.Head", AWM},
        {"torch.nn.Linear", AWL},
        {"torch.nn.Conv3d", AWM},
        {"torch.nn.LayerNorm", AWM},
        {"diffsynth.models.wan_video_dit.RMSNorm", AWM},
        {"torch.nn.Conv2d", AWM}}},
      {"diffsynth.models.wan_video_text_encoder.WanTextEncoder",
       {{"torch.nn.Linear", AWL},
        {"torch.nn.Embedding", AWM},
        {"diffsynth.models.wan_video_text_encoder.T5RelativeEmbedding", AWM},
        {"diffsynth.models.wan_video_text_encoder.T5LayerNorm", AWM}}},
      // The whole vision tower is one unit (VisionTransformer first); the other entries match
      // nothing outside it (log_scale, a root parameter, is read as no wrapper's).
      {"diffsynth.models.wan_video_image_encoder.WanImageEncoder",
       {{"diffsynth.models.wan_video_image_encoder.VisionTransformer", AWM},
        {"torch.nn.Linear", AWL},
        {"torch.nn.Conv2d", AWM},
        {"torch.nn.LayerNorm", AWM}}},
  };
  return m;
}
}  // namespace

const std::vector<VRAMModuleMapEntry>* vram_module_map(const std::string& model_class) {
  auto it = maps().find(model_class);
  return it == maps().end() ? nullptr : &it->second;
}

std::vector<std::string> vram_module_map_classes() {
  std::vector<std::string> out;
  for (const auto& [k, v] : maps()) out.push_back(k);
  return out;
}

}  // namespace diffsynth
