// diffsynth_make_example OUT.safetensors [MODEL_HASH]
// Writes a checkpoint in the exact layout of a registered DiffSynth-Studio config entry
// (default: the Qwen-Image Blockwise ControlNet Inpaint, a9e54e48...) with random bf16 weights,
// so the main job and the benchmarks have a real-size, really-identified file to work on.
//
// diffsynth_make_example --tiny-qwen-image DIR
// Writes a tiny Qwen-Image (the real DiT, text encoder and VAE architectures at reduced sizes,
// random weights) as a model folder: DIR/{transformer,text_encoder,vae}/*.safetensors. Each file
// carries its config entry in its metadata (the table has no hash for these sizes), so ModelPool
// loads it like a real checkpoint. The build writes one for the default `diffsynth generate`.
//
// diffsynth_make_example --tiny-wan DIR
// Writes a tiny Wan2.1 text-to-video model in the published Wan2.1-T2V-1.3B folder layout:
// DIR/diffusion_pytorch_model.safetensors (WanModel, float32), DIR/models_t5_umt5-xxl-enc-bf16.pth
// (WanTextEncoder with the real 256,384-token vocabulary, bf16), DIR/Wan2.1_VAE.pth (WanVideoVAE
// in the file's own key layout, float32); each carries its config entry (safetensors metadata, or
// the .pth record diffsynth_model_config). The tokenizer (google/umt5-xxl/) is copied by the build.
//
// diffsynth_make_example --tiny-wan-i2v DIR
// The image-to-video parts of a tiny Wan2.1-I2V folder: DIR/diffusion_pytorch_model.safetensors
// (WanModel with has_image_input, in_dim 36, float32), DIR/flf2v/diffusion_pytorch_model.safetensors
// (the same with has_image_pos_emb: first-last-frame) and
// DIR/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (WanImageEncoder at width 1280 and
// 257 tokens, what img_emb takes, with one block, bf16). The build copies tiny-wan's text
// encoder, VAE and tokenizer next to them.
//
// diffsynth_make_example --qwen-image-dit OUT.safetensors NUM_LAYERS
// Writes the Qwen-Image DiT at full width with NUM_LAYERS blocks, random bf16 weights and its
// config in the metadata: the reduced DiT the VRAM benchmarks run (no Python needed, e.g. on a
// GPU machine without the reference installed).
#include <filesystem>
#include <functional>
#include <iostream>

#include "configs/model_configs.h"
#include "core/error.h"
#include "core/loader/file.h"
#include "core/loader/safetensors.h"
#include "core/loader/torch_pickle.h"
#include "core/registry.h"
#include "models/model_loader.h"

using namespace diffsynth;

namespace {

// Random weights on the scale of trained ones (activations stay O(1) through the layers):
// matrices ~ N(0, 1/fan_in), norm gains 1 + 0.1 N, biases 0.1 N, embeddings N(0, 1).
torch::Tensor tiny_weight(const std::string& name, const torch::Tensor& meta) {
  const auto shape = meta.sizes();
  if (name.find("embed_tokens") != std::string::npos) return torch::randn(shape);
  if (meta.dim() > 1) {
    const double fan_in = static_cast<double>(meta.numel() / shape[0]);
    return torch::randn(shape) / std::sqrt(fan_in);
  }
  if (name.find("norm") != std::string::npos || name.find("gamma") != std::string::npos ||
      name.find("ln_q") != std::string::npos)
    return 1 + 0.1 * torch::randn(shape);
  return 0.1 * torch::randn(shape);
}

// The checkpoint layout of the text encoder (inverse of QwenImageTextEncoderStateDictConverter).
std::string te_checkpoint_name(const std::string& k) {
  const std::string lm = "model.language_model.", vis = "model.visual.";
  if (k.rfind(lm, 0) == 0) return "model." + k.substr(lm.size());
  if (k.rfind(vis, 0) == 0) return k.substr(std::string("model.").size());
  return k;
}

// A model of `model_class` with tiny_weight values in `dtype`, written with its config entry
// (safetensors metadata, or the record diffsynth_model_config of a .pth). `file_name` maps a
// parameter name to its name in the file (the inverse of the entry's converter).
void write_tiny(const std::filesystem::path& file, const std::string& model_name, const std::string& model_class,
                const nlohmann::ordered_json& kwargs, const char* converter,
                const std::function<std::string(const std::string&)>& file_name = {},
                c10::ScalarType dtype = torch::kBFloat16) {
  const auto* factory = Registry::model(model_class);
  if (!factory) throw Error("model class not registered: " + model_class);
  auto model = (*factory)(kwargs);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, meta] : module_state(*model))
    tensors.emplace_back(file_name ? file_name(name) : name, tiny_weight(name, meta).to(dtype));
  nlohmann::ordered_json config;
  config["model_name"] = model_name;
  config["model_class"] = model_class;
  config["extra_kwargs"] = kwargs;
  if (converter) config["state_dict_converter"] = converter;
  std::filesystem::create_directories(file.parent_path());
  if (file.extension() == ".pth")
    save_torch_file(file.string(), tensors, {{kModelConfigMetadataKey, config.dump()}});
  else
    save_safetensors(file.string(), tensors,
                     {{"format", "pt"},
                      {"generator", "diffsynth_make_example (random weights)"},
                      {kModelConfigMetadataKey, config.dump()}});
  std::cout << "wrote " << file.string() << " (" << model_name << ", hash " << hash_model_file({file.string()}) << ")\n";
}

void make_tiny_wan(const std::filesystem::path& dir) {
  torch::manual_seed(0);
  // The text encoder keeps the real vocabulary (the real tokenizer's ids must fit); its width
  // is the DiT's text_dim. The DiT's head dim (32) splits into the 3-D RoPE's 12 + 10 + 10.
  write_tiny(dir / "diffusion_pytorch_model.safetensors", "wan_video_dit", "diffsynth.models.wan_video_dit.WanModel",
             {{"has_image_input", false}, {"patch_size", {1, 2, 2}}, {"in_dim", 16}, {"dim", 64}, {"ffn_dim", 128},
              {"freq_dim", 32}, {"text_dim", 32}, {"out_dim", 16}, {"num_heads", 2}, {"num_layers", 2}, {"eps", 1e-6}},
             nullptr, {}, torch::kFloat32);
  write_tiny(dir / "models_t5_umt5-xxl-enc-bf16.pth", "wan_video_text_encoder",
             "diffsynth.models.wan_video_text_encoder.WanTextEncoder",
             {{"vocab", 256384}, {"dim", 32}, {"dim_attn", 32}, {"dim_ffn", 64}, {"num_heads", 2}, {"num_layers", 2},
              {"num_buckets", 32}, {"shared_pos", false}},
             nullptr);
  // Wan2.1_VAE.pth names its tensors without the "model." WanVideoVAEStateDictConverter adds.
  write_tiny(dir / "Wan2.1_VAE.pth", "wan_video_vae", "diffsynth.models.wan_video_vae.WanVideoVAE",
             {{"dim", 16}, {"num_res_blocks", 1}},
             "diffsynth.utils.state_dict_converters.wan_video_vae.WanVideoVAEStateDictConverter",
             [](const std::string& k) { return k.rfind("model.", 0) == 0 ? k.substr(6) : k; }, torch::kFloat32);
}

void make_tiny_wan_i2v(const std::filesystem::path& dir) {
  torch::manual_seed(1);
  nlohmann::ordered_json dit = {{"has_image_input", true}, {"patch_size", {1, 2, 2}}, {"in_dim", 36}, {"dim", 64},
                                {"ffn_dim", 128}, {"freq_dim", 32}, {"text_dim", 32}, {"out_dim", 16}, {"num_heads", 2},
                                {"num_layers", 2}, {"eps", 1e-6}};
  const char* dit_class = "diffsynth.models.wan_video_dit.WanModel";
  write_tiny(dir / "diffusion_pytorch_model.safetensors", "wan_video_dit", dit_class, dit, nullptr, {}, torch::kFloat32);
  dit["has_image_pos_emb"] = true;
  write_tiny(dir / "flf2v" / "diffusion_pytorch_model.safetensors", "wan_video_dit", dit_class, dit, nullptr, {},
             torch::kFloat32);
  // The file names the CLIP's tensors without the "model." the converter adds. Width and token
  // count are the real ones (the DiT's img_emb takes 257 x 1280): 112 / 7 = 16 patches a side;
  // a thin MLP and one block (vision_layers - 1 run) keep it small.
  write_tiny(dir / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "wan_video_image_encoder",
             "diffsynth.models.wan_video_image_encoder.WanImageEncoder",
             {{"embed_dim", 32}, {"image_size", 112}, {"patch_size", 7}, {"vision_dim", 1280}, {"vision_mlp_ratio", 0.25},
              {"vision_heads", 10}, {"vision_layers", 2}},
             "diffsynth.utils.state_dict_converters.wan_video_image_encoder.WanImageEncoderStateDictConverter",
             [](const std::string& k) { return k.rfind("model.", 0) == 0 ? k.substr(6) : k; });
}

void make_tiny_qwen_image(const std::filesystem::path& dir) {
  torch::manual_seed(0);
  // Widths are the smallest the architectures allow: the text encoder's head dim is fixed at
  // 128 by M-RoPE, and its vocabulary stays the real one so the real tokenizer's ids fit.
  write_tiny(dir / "transformer" / "diffusion_pytorch_model.safetensors", "qwen_image_dit",
             "diffsynth.models.qwen_image_dit.QwenImageDiT",
             {{"num_layers", 2}, {"dim", 64}, {"num_attention_heads", 2}, {"attention_head_dim", 32},
              {"joint_attention_dim", 128}},
             nullptr);
  write_tiny(dir / "text_encoder" / "model.safetensors", "qwen_image_text_encoder",
             "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder",
             {{"hidden_size", 128}, {"intermediate_size", 256}, {"num_hidden_layers", 2}, {"num_attention_heads", 1},
              {"num_key_value_heads", 1}, {"vision_depth", 1}, {"vision_hidden_size", 32}, {"vision_num_heads", 1},
              {"vision_intermediate_size", 64}},
             "diffsynth.utils.state_dict_converters.qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter",
             te_checkpoint_name);
  write_tiny(dir / "vae" / "diffusion_pytorch_model.safetensors", "qwen_image_vae",
             "diffsynth.models.qwen_image_vae.QwenImageVAE", {{"base_dim", 16}, {"num_res_blocks", 1}}, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--qwen-image-dit") {
    try {
      const int layers = std::stoi(argv[3]);
      if (layers < 1) throw Error("NUM_LAYERS must be >= 1");
      torch::manual_seed(0);
      write_tiny(argv[2], "qwen_image_dit", "diffsynth.models.qwen_image_dit.QwenImageDiT", {{"num_layers", layers}},
                 nullptr);
    } catch (const std::exception& e) {
      std::cerr << "diffsynth_make_example: error: " << e.what() << "\n";
      return 2;
    }
    return 0;
  }
  const std::string mode = argc > 1 ? argv[1] : "";
  if (argc == 3 && (mode == "--tiny-qwen-image" || mode == "--tiny-wan" || mode == "--tiny-wan-i2v")) {
    try {
      if (mode == "--tiny-wan") make_tiny_wan(argv[2]);
      else if (mode == "--tiny-wan-i2v") make_tiny_wan_i2v(argv[2]);
      else make_tiny_qwen_image(argv[2]);
    } catch (const std::exception& e) {
      std::cerr << "diffsynth_make_example: error: " << e.what() << "\n";
      return 2;
    }
    return 0;
  }
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: diffsynth_make_example OUT.safetensors [MODEL_HASH]\n       diffsynth_make_example --tiny-qwen-image DIR\n"
                 "       diffsynth_make_example --tiny-wan DIR\n"
                 "       diffsynth_make_example --tiny-wan-i2v DIR\n"
                 "       diffsynth_make_example --qwen-image-dit OUT.safetensors NUM_LAYERS\n";
    return 2;
  }
  try {
    const std::string hash = argc == 3 ? argv[2] : "a9e54e480a628f0b956a688a81c33bab";
    auto entries = find_model_configs(hash);
    if (entries.empty()) throw Error("no config entry has hash " + hash);
    const auto* factory = Registry::model(entries[0]->model_class);
    if (!factory || entries[0]->state_dict_converter)
      throw Error(entries[0]->model_class + " cannot be generated (not implemented, or its file layout needs a converter)");
    auto model = (*factory)(entries[0]->extra_kwargs);
    torch::manual_seed(0);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& [name, meta] : module_state(*model))
      tensors.emplace_back(name, (torch::randn(meta.sizes()) * 0.02).to(torch::kBFloat16));
    save_safetensors(argv[1], tensors, {{"format", "pt"}, {"generator", "diffsynth_make_example (random weights)"}});
    const std::string got = hash_model_file({argv[1]});
    if (got != hash) throw Error(std::string(argv[1]) + ": wrote hash " + got + ", expected " + hash);
    std::cout << "wrote " << argv[1] << " (" << entries[0]->model_name << ", hash " << got << ")\n";
  } catch (const std::exception& e) {
    std::cerr << "diffsynth_make_example: error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
