#include "utils/image.h"

#include <png.h>
#include <unistd.h>

#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "core/file_io.h"

namespace diffsynth {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { if (f) std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// libpng reports errors through longjmp; the message is kept to rethrow as an Error once back
// in C++ frames (throwing through libpng's C frames is undefined).
struct PngErrorState {
  std::string message;
};
void png_error_fn(png_structp png, png_const_charp msg) {
  auto* state = static_cast<PngErrorState*>(png_get_error_ptr(png));
  if (state) state->message = msg;
  png_longjmp(png, 1);
}
void png_warning_fn(png_structp, png_const_charp) {}

// Regular files only (a FIFO would block the read forever).
FilePtr open_image(const std::string& path) {
  const int fd = open_regular_file(path, nullptr);
  FilePtr f(::fdopen(fd, "rb"));
  if (!f) {
    ::close(fd);
    fail(path, std::string("cannot open image: ") + std::strerror(errno));
  }
  return f;
}

void check_image(const torch::Tensor& image, const char* what) {
  if (!image.defined() || image.dim() != 3 || image.scalar_type() != torch::kUInt8 || image.size(2) < 1 ||
      image.size(2) > 4)
    throw Error(std::string(what) + ": expected a uint8 [H, W, C] image with 1-4 channels");
}

}  // namespace

torch::Tensor read_png(const std::string& path) {
  FilePtr f = open_image(path);
  unsigned char sig[8] = {};
  if (std::fread(sig, 1, 8, f.get()) != 8 || png_sig_cmp(sig, 0, 8) != 0)
    fail(path, "not a PNG file (only PNG images are supported)");
  PngErrorState err;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail(path, "out of memory reading the PNG");
  }
  torch::Tensor image;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail(path, "corrupt or truncated PNG: " + err.message);
  }
  png_init_io(png, f.get());
  png_set_sig_bytes(png, 8);
  png_set_user_limits(png, 1 << 16, 1 << 16);
  png_read_info(png, info);
  const int color = png_get_color_type(png, info);
  if (png_get_bit_depth(png, info) == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const auto height = static_cast<std::int64_t>(png_get_image_height(png, info));
  const auto width = static_cast<std::int64_t>(png_get_image_width(png, info));
  const auto channels = static_cast<std::int64_t>(png_get_channels(png, info));
  image = torch::empty({height, width, channels}, torch::kUInt8);
  rows.resize(height);
  for (std::int64_t y = 0; y < height; ++y) rows[y] = image.data_ptr<std::uint8_t>() + y * width * channels;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return image;
}

void write_png(const std::string& path, const torch::Tensor& image_in,
               const std::vector<std::pair<std::string, std::string>>& text) {
  check_image(image_in, path.c_str());
  const auto image = image_in.contiguous();
  write_file_atomically(path, [&](std::FILE* f) {
    PngErrorState err;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warning_fn);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!png || !info) {
      png_destroy_write_struct(&png, &info);
      fail(path, "out of memory writing the PNG");
    }
    // Kept alive until png_write_info/png_write_end have copied them.
    std::vector<png_text> chunks(text.size());
    std::vector<png_bytep> rows(image.size(0));
    if (setjmp(png_jmpbuf(png))) {
      const int e = errno;  // libpng's "Write Error" does not say why
      png_destroy_write_struct(&png, &info);
      fail(path, "writing the PNG failed: " + err.message + (e ? std::string(" (") + std::strerror(e) + ")" : "") +
                     "; nothing written, any previous file is unchanged");
    }
    png_init_io(png, f);
    errno = 0;
    static constexpr int kColor[] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                     PNG_COLOR_TYPE_RGB_ALPHA};
    png_set_IHDR(png, info, static_cast<png_uint_32>(image.size(1)), static_cast<png_uint_32>(image.size(0)), 8,
                 kColor[image.size(2)], PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (std::size_t i = 0; i < text.size(); ++i) {
      chunks[i].compression = PNG_TEXT_COMPRESSION_NONE;
      chunks[i].key = const_cast<char*>(text[i].first.c_str());
      chunks[i].text = const_cast<char*>(text[i].second.c_str());
      chunks[i].text_length = text[i].second.size();
    }
    if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
    png_write_info(png, info);
    const auto stride = image.size(1) * image.size(2);
    for (std::int64_t y = 0; y < image.size(0); ++y)
      rows[y] = const_cast<png_bytep>(image.data_ptr<std::uint8_t>() + y * stride);
    png_write_image(png, rows.data());
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
  });
}

std::vector<std::pair<std::string, std::string>> read_png_text(const std::string& path) {
  FilePtr f = open_image(path);
  PngErrorState err;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  png_infop end = png ? png_create_info_struct(png) : nullptr;
  std::vector<std::pair<std::string, std::string>> out;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, &end);
    fail(path, "corrupt or truncated PNG: " + err.message);
  }
  png_init_io(png, f.get());
  png_read_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
  png_textp chunks = nullptr;
  const int n = png_get_text(png, info, &chunks, nullptr);
  for (int i = 0; i < n; ++i) out.emplace_back(chunks[i].key, std::string(chunks[i].text, chunks[i].text_length));
  png_destroy_read_struct(&png, &info, &end);
  return out;
}

torch::Tensor to_rgb(const torch::Tensor& image) {
  check_image(image, "convert to RGB");
  const auto c = image.size(2);
  if (c == 3) return image;
  if (c == 4) return image.slice(2, 0, 3).contiguous();
  return image.slice(2, 0, 1).expand({image.size(0), image.size(1), 3}).contiguous();
}

namespace {

// PIL's filters (libImaging/Resample.c) and their supports.
double bilinear_filter(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}
double bicubic_filter(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}
double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
  return 0.0;
}

constexpr int kPrecisionBits = 32 - 8 - 2;

// Per output pixel: the first input index, the tap count and 22-bit fixed-point weights.
struct Coefficients {
  int ksize = 0;
  std::vector<int> xmin, xcount;
  std::vector<std::int32_t> weights;  // [out, ksize]
};

Coefficients precompute_coeffs(int in_size, int out_size, double (*filter)(double), double filter_support) {
  Coefficients c;
  double scale = static_cast<double>(in_size) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filter_support * filterscale;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.xmin.resize(out_size);
  c.xcount.resize(out_size);
  c.weights.assign(static_cast<std::size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = filter((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      c.weights[static_cast<std::size_t>(xx) * c.ksize + x] =
          static_cast<std::int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
    }
    c.xmin[xx] = xmin;
    c.xcount[xx] = xmax;
  }
  return c;
}

inline std::uint8_t clip8(std::int64_t v) {
  if (v >= (static_cast<std::int64_t>(1) << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<std::uint8_t>(v >> kPrecisionBits);
}

// One separable pass along `axis` (1 = horizontal, 0 = vertical) of an [H, W, C] image.
torch::Tensor resample_pass(const torch::Tensor& in, int axis, const Coefficients& c, int out_size) {
  const int h = static_cast<int>(in.size(0)), w = static_cast<int>(in.size(1)), ch = static_cast<int>(in.size(2));
  const int oh = axis == 0 ? out_size : h, ow = axis == 1 ? out_size : w;
  auto out = torch::empty({oh, ow, ch}, torch::kUInt8);
  const std::uint8_t* src = in.data_ptr<std::uint8_t>();
  std::uint8_t* dst = out.data_ptr<std::uint8_t>();
  const std::int64_t ss0 = static_cast<std::int64_t>(1) << (kPrecisionBits - 1);
  for (int y = 0; y < oh; ++y)
    for (int x = 0; x < ow; ++x) {
      const int o = axis == 1 ? x : y;
      const std::int32_t* k = &c.weights[static_cast<std::size_t>(o) * c.ksize];
      for (int ci = 0; ci < ch; ++ci) {
        std::int64_t ss = ss0;
        for (int t = 0; t < c.xcount[o]; ++t) {
          const int i = c.xmin[o] + t;
          const std::uint8_t v = axis == 1 ? src[(static_cast<std::size_t>(y) * w + i) * ch + ci]
                                           : src[(static_cast<std::size_t>(i) * w + x) * ch + ci];
          ss += static_cast<std::int64_t>(v) * k[t];
        }
        dst[(static_cast<std::size_t>(y) * ow + x) * ch + ci] = clip8(ss);
      }
    }
  return out;
}

// PIL's affine nearest-neighbour scaling (ImagingScaleAffine): source coordinates accumulate
// in double from the pixel centres.
torch::Tensor resize_nearest(const torch::Tensor& in, int ow, int oh) {
  const int h = static_cast<int>(in.size(0)), w = static_cast<int>(in.size(1));
  const double ax = static_cast<double>(w) / ow, ay = static_cast<double>(h) / oh;
  std::vector<std::int64_t> xs(ow), ys(oh);
  double xo = ax * 0.5;
  for (int x = 0; x < ow; ++x, xo += ax) xs[x] = std::min<std::int64_t>(xo < 0 ? -1 : static_cast<int>(xo), w - 1);
  double yo = ay * 0.5;
  for (int y = 0; y < oh; ++y, yo += ay) ys[y] = std::min<std::int64_t>(yo < 0 ? -1 : static_cast<int>(yo), h - 1);
  return in.index_select(0, torch::tensor(ys)).index_select(1, torch::tensor(xs)).contiguous();
}

// PIL's RGBA -> RGBa (premultiplied) and back, for the filtered modes.
torch::Tensor premultiply(const torch::Tensor& img) {
  auto out = img.clone();
  const auto c = img.size(2);
  auto* p = out.data_ptr<std::uint8_t>();
  for (std::int64_t i = 0; i < img.size(0) * img.size(1); ++i, p += c) {
    const unsigned a = p[c - 1];
    for (std::int64_t j = 0; j + 1 < c; ++j) {
      const unsigned tmp = p[j] * a + 128;
      p[j] = static_cast<std::uint8_t>(((tmp >> 8) + tmp) >> 8);
    }
  }
  return out;
}
torch::Tensor unpremultiply(torch::Tensor img) {
  const auto c = img.size(2);
  auto* p = img.data_ptr<std::uint8_t>();
  for (std::int64_t i = 0; i < img.size(0) * img.size(1); ++i, p += c) {
    const unsigned a = p[c - 1];
    if (a == 0 || a == 255) continue;
    for (std::int64_t j = 0; j + 1 < c; ++j) p[j] = static_cast<std::uint8_t>(std::min(255u, (255u * p[j]) / a));
  }
  return img;
}

}  // namespace

torch::Tensor resize_pil(const torch::Tensor& image_in, std::int64_t width, std::int64_t height, Resample resample) {
  check_image(image_in, "resize");
  if (width < 1 || height < 1 || width > (1 << 16) || height > (1 << 16))
    throw Error("resize: invalid target size " + std::to_string(width) + "x" + std::to_string(height));
  auto image = image_in.contiguous();
  if (image.size(1) == width && image.size(0) == height) return image.clone();
  if (resample == Resample::Nearest) return resize_nearest(image, static_cast<int>(width), static_cast<int>(height));
  double (*filter)(double) = bicubic_filter;
  double support = 2.0;
  if (resample == Resample::Bilinear) filter = bilinear_filter, support = 1.0;
  if (resample == Resample::Lanczos) filter = lanczos_filter, support = 3.0;
  const bool alpha = image.size(2) == 2 || image.size(2) == 4;
  if (alpha) image = premultiply(image);
  const auto in_w = static_cast<int>(image.size(1)), in_h = static_cast<int>(image.size(0));
  const auto cx = precompute_coeffs(in_w, static_cast<int>(width), filter, support);
  auto cy = precompute_coeffs(in_h, static_cast<int>(height), filter, support);
  // Each pass rounds to 8 bits, so the order shows in the result. Pillow 13 runs the vertical
  // pass first when the height shrinks by more than twice as many pixels as the width does
  // (python-pillow/Pillow#9549; measured on 3,750 size pairs: exactly this rule), else the
  // horizontal one.
  const bool vertical_first = height < in_h && (in_h - height) > 2 * (in_w - width);
  if (vertical_first) {
    image = resample_pass(image, 0, cy, static_cast<int>(height));
    if (in_w != width) image = resample_pass(image, 1, cx, static_cast<int>(width));
    return alpha ? unpremultiply(image) : image;
  }
  if (in_w != width) {
    // Only the rows the vertical pass reads are resampled horizontally (as PIL does).
    const int first = cy.xmin.front(), last = cy.xmin.back() + cy.xcount.back();
    for (auto& m : cy.xmin) m -= first;
    image = resample_pass(image.slice(0, first, last).contiguous(), 1, cx, static_cast<int>(width));
  }
  if (in_h != height) image = resample_pass(image, 0, cy, static_cast<int>(height));
  return alpha ? unpremultiply(image) : image;
}

}  // namespace diffsynth
