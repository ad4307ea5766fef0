// Images in and out of the pipelines: PNG files (libpng) and the PIL operations the reference
// applies to PIL images (convert, resize), so that what reaches the models is byte-identical.
// An image is a uint8 CPU tensor [H, W, C] (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), the layout
// of np.array(PIL.Image).
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace diffsynth {

// Reads a PNG (any bit depth / colour type: palettes expand to RGB(A), tRNS to alpha, 16-bit
// keeps the high byte). Errors name the file: missing, not a PNG, truncated or corrupt.
torch::Tensor read_png(const std::string& path);
// Writes [H, W, C] uint8 (C in 1..4) with tEXt chunks (key, value) -- the generation parameters.
void write_png(const std::string& path, const torch::Tensor& image,
               const std::vector<std::pair<std::string, std::string>>& text = {});
// The tEXt chunks of a PNG, in file order.
std::vector<std::pair<std::string, std::string>> read_png_text(const std::string& path);

// PIL Image.convert("RGB"): grey is replicated, alpha dropped (not composited).
torch::Tensor to_rgb(const torch::Tensor& image);

enum class Resample { Nearest, Bilinear, Bicubic, Lanczos };
// PIL Image.resize((width, height), resample) on 8-bit images, bit for bit: separable filters
// whose support widens with the downscale factor, 22-bit fixed-point weights, horizontal pass
// first unless the height shrinks far more than the width (Pillow 13's order). Bicubic is PIL's default for resize. (PIL premultiplies RGBA by alpha for the filtered
// modes; so does this.)
torch::Tensor resize_pil(const torch::Tensor& image, std::int64_t width, std::int64_t height,
                         Resample resample = Resample::Bicubic);

}  // namespace diffsynth
