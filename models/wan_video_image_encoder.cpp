#include "models/wan_video_image_encoder.h"

#include <cmath>

#include "core/error.h"
#include "core/registry.h"

namespace diffsynth {

namespace {
const char* kClass = "WanImageEncoder";

std::string sizes_str(c10::IntArrayRef s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// CLIP's normalisation (the reference's transforms[-1], torchvision Normalize).
constexpr double kMean[3] = {0.48145466, 0.4578275, 0.40821073};
constexpr double kStd[3] = {0.26862954, 0.26130258, 0.27577711};

// torch.as_tensor(list_of_python_floats, dtype=dtype): the doubles as they are for fp64, else each
// rounded to float first (the tensor constructor's store for fp32, and for fp16 / bf16 through
// their float constructors), then to the dtype.
torch::Tensor channel_constants(const double (&v)[3], const torch::TensorOptions& opts) {
  const auto dtype = opts.dtype().toScalarType();
  torch::Tensor t = dtype == torch::kFloat64
                        ? torch::tensor({v[0], v[1], v[2]}, torch::TensorOptions().dtype(torch::kFloat64))
                        : torch::tensor({static_cast<float>(v[0]), static_cast<float>(v[1]), static_cast<float>(v[2])},
                                        torch::TensorOptions().dtype(torch::kFloat32));
  return t.to(opts.device(), dtype).view({-1, 1, 1});
}
}  // namespace

void WanImageEncoderConfig::validate() const {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw Error(std::string(kClass) + "(): " + what);
  };
  for (auto [name, v] : std::initializer_list<std::pair<const char*, std::int64_t>>{{"embed_dim", embed_dim},
                                                                                   {"image_size", image_size},
                                                                                   {"patch_size", patch_size},
                                                                                   {"vision_dim", vision_dim},
                                                                                   {"vision_heads", vision_heads}})
    need(v > 0, std::string(name) + " must be positive, got " + std::to_string(v));
  need(vision_layers >= 0, "vision_layers must not be negative, got " + std::to_string(vision_layers));
  need(vision_dim % vision_heads == 0, "vision_dim " + std::to_string(vision_dim) +
                                           " is not divisible by vision_heads " + std::to_string(vision_heads));
  need(image_size % patch_size == 0, "image_size " + std::to_string(image_size) +
                                         " is not divisible by patch_size " + std::to_string(patch_size));
  need(vision_mlp_ratio > 0 && mlp_dim() > 0, "vision_mlp_ratio must give a positive mlp width");
  need(norm_eps > 0, "norm_eps must be positive");
}

WanImageEncoderConfig WanImageEncoderConfig::from_kwargs(const nlohmann::ordered_json& kwargs) {
  Kwargs k(kClass, kwargs);
  WanImageEncoderConfig c;
  c.embed_dim = k.get_int("embed_dim", c.embed_dim);
  c.image_size = k.get_int("image_size", c.image_size);
  c.patch_size = k.get_int("patch_size", c.patch_size);
  c.vision_dim = k.get_int("vision_dim", c.vision_dim);
  c.vision_mlp_ratio = k.get_float("vision_mlp_ratio", c.vision_mlp_ratio);
  c.vision_heads = k.get_int("vision_heads", c.vision_heads);
  c.vision_layers = k.get_int("vision_layers", c.vision_layers);
  c.norm_eps = k.get_float("norm_eps", c.norm_eps);
  k.finish();
  c.validate();
  return c;
}

namespace wan_clip {

PatchEmbeddingImpl::PatchEmbeddingImpl(std::int64_t dim, std::int64_t p) : patch_size(p) {
  set_reference_classes({"torch.nn.Conv2d"});
  meta_parameter("weight", {dim, 3, p, p});
}

torch::Tensor PatchEmbeddingImpl::forward(const torch::Tensor& x) {
  return torch::conv2d(x, compute_param("weight"), {}, {patch_size, patch_size});
}

SelfAttentionImpl::SelfAttentionImpl(std::int64_t d, std::int64_t nh) : dim(d), num_heads(nh), head_dim(d / nh) {
  set_reference_classes({"diffsynth.models.wan_video_image_encoder.SelfAttention"});
  to_qkv = register_module("to_qkv", Linear(d, 3 * d));
  proj = register_module("proj", Linear(d, d));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x) {
  const auto b = x.size(0), s = x.size(1);
  // to_qkv(x).chunk(3, -1), each "b s (n d) -> b n s d": views with the reference's strides.
  auto qkv = to_qkv(x).view({b, s, 3, num_heads, head_dim}).permute({2, 0, 3, 1, 4});
  auto out = at::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]);
  return proj(out.permute({0, 2, 1, 3}).reshape({b, s, dim}));
}

MLPImpl::MLPImpl(std::int64_t dim, std::int64_t mid) {
  fc1 = register_module("0", Linear(dim, mid));
  fc2 = register_module("2", Linear(mid, dim));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) { return fc2(torch::gelu(fc1(x))); }

AttentionBlockImpl::AttentionBlockImpl(std::int64_t dim, std::int64_t mlp_dim, std::int64_t num_heads, double eps) {
  set_reference_classes({"diffsynth.models.wan_video_image_encoder.AttentionBlock"});
  norm1 = register_module("norm1", LayerNorm(dim, eps));
  attn = register_module("attn", SelfAttention(dim, num_heads));
  norm2 = register_module("norm2", LayerNorm(dim, eps));
  mlp = register_module("mlp", MLP(dim, mlp_dim));
}

torch::Tensor AttentionBlockImpl::forward(const torch::Tensor& x) {
  auto h = x + attn(norm1(x));
  return h + mlp(norm2(h));
}

VisionTransformerImpl::VisionTransformerImpl(const WanImageEncoderConfig& c) : config(c) {
  set_reference_classes({"diffsynth.models.wan_video_image_encoder.VisionTransformer"});
  const auto dim = c.vision_dim;
  patch_embedding = register_module("patch_embedding", PatchEmbedding(dim, c.patch_size));
  meta_parameter("cls_embedding", {1, 1, dim});
  meta_parameter("pos_embedding", {1, c.num_patches() + 1, dim});
  pre_norm = register_module("pre_norm", LayerNorm(dim, c.norm_eps));
  transformer = register_module("transformer", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < c.vision_layers; ++i) {
    blocks.emplace_back(dim, c.mlp_dim(), c.vision_heads, c.norm_eps);
    transformer->push_back(blocks.back());
  }
  post_norm = register_module("post_norm", LayerNorm(dim, c.norm_eps));
  meta_parameter("head", {dim, c.embed_dim});
}

torch::TensorOptions VisionTransformerImpl::computation_options() const {
  const auto cls = compute_param("cls_embedding");
  return torch::TensorOptions().dtype(cls.scalar_type()).device(cls.device());
}

torch::Tensor VisionTransformerImpl::forward(const torch::Tensor& input, bool interpolation, bool use_31_block) {
  if (input.dim() != 4 || input.size(1) != 3)
    throw Error(std::string(kClass) + ": the vision tower takes images [B, 3, H, W], got " + sizes_str(input.sizes()));
  if (!input.is_floating_point())
    throw Error(std::string(kClass) + ": images must be floating point, got " + c10::toString(input.scalar_type()));
  const auto p = config.patch_size;
  if (input.size(2) < p || input.size(3) < p)
    throw Error(std::string(kClass) + ": images of " + std::to_string(input.size(2)) + "x" +
                std::to_string(input.size(3)) + " are smaller than one " + std::to_string(p) + "x" +
                std::to_string(p) + " patch");
  const auto opts = computation_options();
  const auto b = input.size(0);
  auto x = patch_embedding(input.to(opts.device(), opts.dtype().toScalarType())).flatten(2).permute({0, 2, 1});
  x = torch::cat({compute_param("cls_embedding").expand({b, -1, -1}).to(x.options()), x}, 1);
  auto e = compute_param("pos_embedding");
  const auto seq = x.size(1), npos = e.size(1);
  if (seq != npos) {
    const auto tokens = std::to_string(seq - 1) + " patches (" + std::to_string(input.size(2) / p) + "x" +
                        std::to_string(input.size(3) / p) + ")";
    if (!interpolation)
      throw Error(std::string(kClass) + ": images of " + std::to_string(input.size(2)) + "x" +
                  std::to_string(input.size(3)) + " give " + tokens + ", the pos embedding holds " +
                  std::to_string(npos - 1) + " (image_size " + std::to_string(config.image_size) +
                  "); resize them (encode_image does) or pass interpolation");
    // pos_interpolate: the square grid after the leading (cls) positions, bicubic in fp32.
    const auto src = static_cast<std::int64_t>(std::sqrt(static_cast<double>(npos)));
    const auto tar = static_cast<std::int64_t>(std::sqrt(static_cast<double>(seq)));
    const auto n = npos - src * src;
    if (tar * tar + n != seq)
      throw Error(std::string(kClass) + ": interpolation needs a square patch grid, got " + tokens);
    auto grid = e.narrow(1, n, npos - n).to(torch::kFloat32).reshape({1, src, src, -1}).permute({0, 3, 1, 2});
    grid = torch::upsample_bicubic2d(grid, {tar, tar}, /*align_corners=*/false).flatten(2).transpose(1, 2);
    e = torch::cat({e.narrow(1, 0, n), grid}, 1);
  }
  x = pre_norm(x + e.to(x.options()));
  const auto n_blocks = use_31_block && !blocks.empty() ? blocks.size() - 1 : blocks.size();
  for (std::size_t i = 0; i < n_blocks; ++i) x = blocks[i](x);
  return x;
}

XLMRobertaCLIPImpl::XLMRobertaCLIPImpl(const WanImageEncoderConfig& c) {
  set_reference_classes({"diffsynth.models.wan_video_image_encoder.XLMRobertaCLIP"});
  meta_parameter("log_scale", {});
  visual = register_module("visual", VisionTransformer(c));
}

}  // namespace wan_clip

WanImageEncoderImpl::WanImageEncoderImpl(const WanImageEncoderConfig& c) : config(c) {
  config.validate();
  set_reference_classes({"diffsynth.models.wan_video_image_encoder.WanImageEncoder"});
  model = register_module("model", wan_clip::XLMRobertaCLIP(config));
}

torch::Tensor WanImageEncoderImpl::encode_image(const std::vector<torch::Tensor>& videos) {
  if (videos.empty()) throw Error(std::string(kClass) + ": encode_image needs at least one image tensor");
  const auto opts = model->visual->computation_options();
  const auto size = config.image_size;
  std::vector<torch::Tensor> resized;
  for (std::size_t i = 0; i < videos.size(); ++i) {
    const auto& u = videos[i];
    const auto where = "image tensor " + std::to_string(i) + " of " + std::to_string(videos.size());
    if (!u.defined()) throw Error(std::string(kClass) + ": encode_image: " + where + " is undefined");
    if (u.dim() != 4 || u.size(1) != 3)
      throw Error(std::string(kClass) + ": encode_image takes [B, 3, H, W] images; " + where + " is " +
                  sizes_str(u.sizes()));
    if (u.size(0) == 0 || u.size(2) == 0 || u.size(3) == 0)
      throw Error(std::string(kClass) + ": encode_image: " + where + " is empty, " + sizes_str(u.sizes()));
    if (!u.is_floating_point())
      throw Error(std::string(kClass) + ": encode_image takes floating-point images in [-1, 1]; " + where + " is " +
                  c10::toString(u.scalar_type()));
    resized.push_back(torch::upsample_bicubic2d(u.to(opts.device(), opts.dtype().toScalarType()), {size, size},
                                                /*align_corners=*/false));
  }
  auto x = torch::cat(resized, 0);
  x.mul_(0.5).add_(0.5);
  x = x.sub_(channel_constants(kMean, x.options())).div_(channel_constants(kStd, x.options()));
  return model->visual->forward(x, /*interpolation=*/false, /*use_31_block=*/true);
}

DIFFSYNTH_REGISTER_MODEL("diffsynth.models.wan_video_image_encoder.WanImageEncoder",
                         [](const nlohmann::ordered_json& kwargs) -> std::shared_ptr<Module> {
                           return WanImageEncoder(WanImageEncoderConfig::from_kwargs(kwargs)).ptr();
                         });

}  // namespace diffsynth
