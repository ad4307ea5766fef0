// Reference: diffsynth/utils/state_dict_converters/wan_video_dit.py.
//   WanVideoDiTStateDictConverter: original Wan checkpoints, possibly under "model." and holding
//     VACE / Animate parts that other models load from the same file (dropped here).
//   WanVideoDiTFromDiffusers: diffusers' WanTransformer3DModel names. As in the reference, keys
//     outside the rename table are dropped (a strict load then reports what is missing).
#include <unordered_map>

#include "core/registry.h"

namespace diffsynth {

namespace {

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (std::size_t dot; (dot = s.find('.', start)) != std::string::npos; start = dot + 1) parts.push_back(s.substr(start, dot - start));
  parts.push_back(s.substr(start));
  return parts;
}

std::string join_dots(const std::vector<std::string>& parts) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? "." : "") + parts[i];
  return out;
}

const std::unordered_map<std::string, std::string>& diffusers_names() {
  static const std::unordered_map<std::string, std::string> m = {
      {"blocks.0.attn1.norm_k.weight", "blocks.0.self_attn.norm_k.weight"},
      {"blocks.0.attn1.norm_q.weight", "blocks.0.self_attn.norm_q.weight"},
      {"blocks.0.attn1.to_k.bias", "blocks.0.self_attn.k.bias"},
      {"blocks.0.attn1.to_k.weight", "blocks.0.self_attn.k.weight"},
      {"blocks.0.attn1.to_out.0.bias", "blocks.0.self_attn.o.bias"},
      {"blocks.0.attn1.to_out.0.weight", "blocks.0.self_attn.o.weight"},
      {"blocks.0.attn1.to_q.bias", "blocks.0.self_attn.q.bias"},
      {"blocks.0.attn1.to_q.weight", "blocks.0.self_attn.q.weight"},
      {"blocks.0.attn1.to_v.bias", "blocks.0.self_attn.v.bias"},
      {"blocks.0.attn1.to_v.weight", "blocks.0.self_attn.v.weight"},
      {"blocks.0.attn2.norm_k.weight", "blocks.0.cross_attn.norm_k.weight"},
      {"blocks.0.attn2.norm_q.weight", "blocks.0.cross_attn.norm_q.weight"},
      {"blocks.0.attn2.to_k.bias", "blocks.0.cross_attn.k.bias"},
      {"blocks.0.attn2.to_k.weight", "blocks.0.cross_attn.k.weight"},
      {"blocks.0.attn2.to_out.0.bias", "blocks.0.cross_attn.o.bias"},
      {"blocks.0.attn2.to_out.0.weight", "blocks.0.cross_attn.o.weight"},
      {"blocks.0.attn2.to_q.bias", "blocks.0.cross_attn.q.bias"},
      {"blocks.0.attn2.to_q.weight", "blocks.0.cross_attn.q.weight"},
      {"blocks.0.attn2.to_v.bias", "blocks.0.cross_attn.v.bias"},
      {"blocks.0.attn2.to_v.weight", "blocks.0.cross_attn.v.weight"},
      {"blocks.0.attn2.add_k_proj.bias", "blocks.0.cross_attn.k_img.bias"},
      {"blocks.0.attn2.add_k_proj.weight", "blocks.0.cross_attn.k_img.weight"},
      {"blocks.0.attn2.add_v_proj.bias", "blocks.0.cross_attn.v_img.bias"},
      {"blocks.0.attn2.add_v_proj.weight", "blocks.0.cross_attn.v_img.weight"},
      {"blocks.0.attn2.norm_added_k.weight", "blocks.0.cross_attn.norm_k_img.weight"},
      {"blocks.0.ffn.net.0.proj.bias", "blocks.0.ffn.0.bias"},
      {"blocks.0.ffn.net.0.proj.weight", "blocks.0.ffn.0.weight"},
      {"blocks.0.ffn.net.2.bias", "blocks.0.ffn.2.bias"},
      {"blocks.0.ffn.net.2.weight", "blocks.0.ffn.2.weight"},
      {"blocks.0.norm2.bias", "blocks.0.norm3.bias"},
      {"blocks.0.norm2.weight", "blocks.0.norm3.weight"},
      {"blocks.0.scale_shift_table", "blocks.0.modulation"},
      {"condition_embedder.text_embedder.linear_1.bias", "text_embedding.0.bias"},
      {"condition_embedder.text_embedder.linear_1.weight", "text_embedding.0.weight"},
      {"condition_embedder.text_embedder.linear_2.bias", "text_embedding.2.bias"},
      {"condition_embedder.text_embedder.linear_2.weight", "text_embedding.2.weight"},
      {"condition_embedder.time_embedder.linear_1.bias", "time_embedding.0.bias"},
      {"condition_embedder.time_embedder.linear_1.weight", "time_embedding.0.weight"},
      {"condition_embedder.time_embedder.linear_2.bias", "time_embedding.2.bias"},
      {"condition_embedder.time_embedder.linear_2.weight", "time_embedding.2.weight"},
      {"condition_embedder.time_proj.bias", "time_projection.1.bias"},
      {"condition_embedder.time_proj.weight", "time_projection.1.weight"},
      {"condition_embedder.image_embedder.ff.net.0.proj.bias", "img_emb.proj.1.bias"},
      {"condition_embedder.image_embedder.ff.net.0.proj.weight", "img_emb.proj.1.weight"},
      {"condition_embedder.image_embedder.ff.net.2.bias", "img_emb.proj.3.bias"},
      {"condition_embedder.image_embedder.ff.net.2.weight", "img_emb.proj.3.weight"},
      {"condition_embedder.image_embedder.norm1.bias", "img_emb.proj.0.bias"},
      {"condition_embedder.image_embedder.norm1.weight", "img_emb.proj.0.weight"},
      {"condition_embedder.image_embedder.norm2.bias", "img_emb.proj.4.bias"},
      {"condition_embedder.image_embedder.norm2.weight", "img_emb.proj.4.weight"},
      {"patch_embedding.bias", "patch_embedding.bias"},
      {"patch_embedding.weight", "patch_embedding.weight"},
      {"scale_shift_table", "head.modulation"},
      {"proj_out.bias", "head.head.bias"},
      {"proj_out.weight", "head.head.weight"},
  };
  return m;
}

}  // namespace

StateDict WanVideoDiTFromDiffusers(const StateDict& state_dict) {
  const auto& names = diffusers_names();
  StateDict out;
  for (const auto& [name, value] : state_dict) {
    if (auto it = names.find(name); it != names.end()) {
      out.set(it->second, value);
      continue;
    }
    // Block keys: looked up as block 0, then given their own index back.
    auto parts = split_dots(name);
    if (parts.size() < 2) continue;
    const std::string index = parts[1];
    parts[1] = "0";
    auto it = names.find(join_dots(parts));
    if (it == names.end()) continue;
    auto renamed = split_dots(it->second);
    if (renamed.size() < 2) continue;
    renamed[1] = index;
    out.set(join_dots(renamed), value);
  }
  return out;
}

StateDict WanVideoDiTStateDictConverter(const StateDict& state_dict) {
  StateDict out;
  for (const auto& [name, value] : state_dict) {
    if (name.rfind("vace", 0) == 0) continue;
    const std::string first = name.substr(0, name.find('.'));
    if (first == "pose_patch_embedding" || first == "face_adapter" || first == "face_encoder" || first == "motion_encoder")
      continue;
    out.set(name.rfind("model.", 0) == 0 ? name.substr(6) : name, value);
  }
  return out;
}

DIFFSYNTH_REGISTER_CONVERTER("diffsynth.utils.state_dict_converters.wan_video_dit.WanVideoDiTFromDiffusers",
                             WanVideoDiTFromDiffusers);
DIFFSYNTH_REGISTER_CONVERTER("diffsynth.utils.state_dict_converters.wan_video_dit.WanVideoDiTStateDictConverter",
                             WanVideoDiTStateDictConverter);

}  // namespace diffsynth
