// LoRA files and fusing them into a model's weights (reference: diffsynth/utils/lora/general.py,
// GeneralLoRALoader, and BasePipeline.load_lora's fuse branch).
//
// Key formats: everything the reference's get_name_dict accepts (`<layer>.lora_A/lora_B.weight`,
// an adapter segment `<layer>.lora_A.<adapter>.weight`, `<layer>.lora_down/lora_up.weight`, a
// leading `diffusion_model.`, `<layer>.alpha`) and, beyond it, resolved against the target
// model's module names: the prefixes `transformer.`, `base_model.model.`, `model.`, `unet.` that
// diffusers / PEFT / ComfyUI write, and kohya names (`lora_unet_transformer_blocks_0_attn_to_q`,
// dots written as underscores). Unlike the reference, a key that fits no module is an error,
// not silently skipped.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/loader/state_dict.h"
#include "core/module.h"

namespace diffsynth {

// One LoRA layer resolved against a model: weight += alpha * lora_B @ lora_A.
struct LoRALayer {
  std::string module;                // dotted module path in the target model
  torch::Tensor lora_A;              // down [rank, in] (or [rank, in, 1, 1]), already * alpha/rank if the file had .alpha
  torch::Tensor lora_B;              // up [out, rank] (or [out, rank, 1, 1])
  std::vector<std::string> source_keys;  // the file's keys this layer came from (B, A[, alpha])
};
using LoRAPairs = std::vector<LoRALayer>;  // in the model's module order

// The LoRA file(s) as the pipeline loads them: every tensor cast to `dtype` on `device`.
StateDict load_lora_state_dict(const std::string& path, std::optional<c10::ScalarType> dtype,
                               const torch::Device& device = torch::kCPU);

// The reference's GeneralLoRALoader.convert_state_dict, key for key: canonical
// "<layer>.lora_A.weight" / "<layer>.lora_B.weight" with the reference's layer names (no model).
StateDict convert_lora_state_dict(const StateDict& lora);

// Pairs every LoRA layer of `lora` with a module of `target` that has a weight. Throws one
// diffsynth::Error naming `source_name` (the file) if any key fits no module (up to 10 listed),
// if a layer lacks its A or B half, or if a product B @ A does not have the weight's shape.
LoRAPairs convert_lora(const StateDict& lora, const Module& target, const std::string& source_name);

// fuse_lora_to_base_model: W = W.to(device, dtype) + alpha * mm(B, A) computed in `dtype` on
// `device`, then stored in the parameter's own dtype and device. The new weight replaces the
// parameter (the old one may be a read-only view of the checkpoint file). Returns the number of
// fused layers; prints the reference's message.
std::int64_t fuse_lora(Module& model, const LoRAPairs& lora, double alpha, c10::ScalarType dtype,
                       const torch::Device& device, bool verbose = true);
// load_lora_state_dict + convert_lora + fuse_lora.
std::int64_t fuse_lora(Module& model, const std::string& file, double alpha, c10::ScalarType dtype,
                       const torch::Device& device, bool verbose = true);

// LoRA hot-load (BasePipeline.load_lora with hotload): every pair is attached to the
// AutoWrappedLinear wrapper of its layer as (lora_A * alpha, lora_B); base weights stay as they
// are, several LoRAs stack, clear_lora removes them. Requires VRAM management on `model`
// (otherwise the reference's ValueError text). Unlike the reference, a layer that has no
// wrapped Linear is an error naming `source_name`, not silently skipped. Returns the number
// of patched layers; prints the reference's message.
std::int64_t hotload_lora(Module& model, const LoRAPairs& lora, double alpha, const std::string& source_name,
                          bool verbose = true);
// BasePipeline.load_lora: `hotload` defaults to whether VRAM management is enabled on `model`;
// the file is read in `dtype` on `device` (the pipeline's), then hot-loaded or fused.
std::int64_t load_lora(Module& model, const std::string& file, double alpha, std::optional<bool> hotload,
                       c10::ScalarType dtype, const torch::Device& device, bool verbose = true);
// BasePipeline.clear_lora: drops every hot-loaded pair of the models; returns the number of
// layers that had any and prints "{n} LoRA layers are cleared.".
std::int64_t clear_lora(const std::vector<Module*>& models, bool verbose = true);

}  // namespace diffsynth
