#include "utils/video.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <sstream>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/cpu.h>
#include <libavutil/dict.h>
#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libavutil/rational.h>
#include <libswscale/swscale.h>
}

#include "core/dtype.h"
#include "core/error.h"
#include "core/file_io.h"
#include "utils/image.h"

// FFmpeg 7 (libavformat 61) made the AVIO write callback's buffer const.
#if LIBAVFORMAT_VERSION_MAJOR >= 61
#define DIFFSYNTH_AVIO_WRITE_CONST const
#else
#define DIFFSYNTH_AVIO_WRITE_CONST
#endif

namespace diffsynth {
namespace {

constexpr std::int64_t kMaxSide = 16384;
constexpr int kAvioBufferSize = 1 << 16;

// ---- FFmpeg's messages ---------------------------------------------------------------------
// While a thread is inside write_video, FFmpeg's errors on it are collected for the Error's
// message instead of printed, its warnings are printed, and its chatter (libx264's statistics
// at "info") is dropped. Every other FFmpeg use keeps the default logger.
thread_local std::string* tls_capture = nullptr;

void log_callback(void* avcl, int level, const char* fmt, std::va_list vl) {
  if (!tls_capture) return av_log_default_callback(avcl, level, fmt, vl);
  if (level > AV_LOG_WARNING) return;
  if (level > AV_LOG_ERROR) return av_log_default_callback(avcl, level, fmt, vl);
  char line[1024];
  int print_prefix = 0;  // "[libx264 @ 0x5581...]" would put an address in the message
  av_log_format_line2(avcl, level, fmt, vl, line, sizeof line, &print_prefix);
  std::string text(line);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  if (text.empty()) return;
  const AVClass* cls = avcl ? *static_cast<const AVClass* const*>(avcl) : nullptr;
  if (cls && cls->item_name) text = std::string(cls->item_name(avcl)) + ": " + text;
  std::string& out = *tls_capture;
  if (out.size() > 2000 || out.find(text) != std::string::npos) return;
  out += (out.empty() ? "" : "; ") + text;
}

class LogCapture {
 public:
  LogCapture() : previous_(tls_capture) {
    static std::once_flag installed;
    std::call_once(installed, [] { av_log_set_callback(log_callback); });
    tls_capture = &text_;
  }
  ~LogCapture() { tls_capture = previous_; }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::string* previous_;
};

std::string av_error_text(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(err, buf, sizeof buf);
  return buf;
}

// ---- RAII for the FFmpeg objects -------------------------------------------------------------
struct FormatDeleter {
  void operator()(AVFormatContext* p) const { avformat_free_context(p); }
};
struct CodecDeleter {
  void operator()(AVCodecContext* p) const { avcodec_free_context(&p); }
};
struct FrameDeleter {
  void operator()(AVFrame* p) const { av_frame_free(&p); }
};
struct PacketDeleter {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsDeleter {
  void operator()(SwsContext* p) const { sws_freeContext(p); }
};
// AVIO may replace its buffer: free the current one, then the context.
void free_avio(AVIOContext* p) {
  if (!p) return;
  av_freep(&p->buffer);
  avio_context_free(&p);
}
struct AvioDeleter {
  void operator()(AVIOContext* p) const { free_avio(p); }
};
class Dict {
 public:
  Dict() = default;
  ~Dict() { av_dict_free(&d_); }
  Dict(const Dict&) = delete;
  Dict& operator=(const Dict&) = delete;
  AVDictionary** ptr() { return &d_; }
  AVDictionary* get() const { return d_; }

 private:
  AVDictionary* d_ = nullptr;
};

// ---- I/O into write_file_atomically's FILE* --------------------------------------------------
// The temporary file is a seekable regular file: the mp4 muxer seeks back to patch sizes. For
// "+faststart" it also re-opens its output for reading (through AVFormatContext::io_open) to
// move the index in front of the data; that reader reads the same file by pread on the FILE*'s
// descriptor (mkstemp's, opened read-write) after flushing the FILE*'s buffer.
struct Sink {
  std::FILE* f = nullptr;
  std::string url;   // the path given to the muxer; the only one io_open opens
  int last_errno = 0;
};

int64_t file_size(std::FILE* f) {
  if (std::fflush(f) != 0) return AVERROR(errno ? errno : EIO);
  struct stat st {};
  if (::fstat(::fileno(f), &st) != 0) return AVERROR(errno);
  return static_cast<int64_t>(st.st_size);
}

int sink_write(void* opaque, DIFFSYNTH_AVIO_WRITE_CONST uint8_t* buf, int size) {
  auto* sink = static_cast<Sink*>(opaque);
  errno = 0;
  if (std::fwrite(buf, 1, static_cast<std::size_t>(size), sink->f) != static_cast<std::size_t>(size)) {
    sink->last_errno = errno ? errno : EIO;
    return AVERROR(sink->last_errno);
  }
  return size;
}

int64_t sink_seek(void* opaque, int64_t offset, int whence) {
  auto* sink = static_cast<Sink*>(opaque);
  whence &= ~AVSEEK_FORCE;
  if (whence == AVSEEK_SIZE) return file_size(sink->f);
  if (::fseeko(sink->f, static_cast<off_t>(offset), whence) != 0) {
    sink->last_errno = errno ? errno : EIO;
    return AVERROR(sink->last_errno);
  }
  return static_cast<int64_t>(::ftello(sink->f));
}

struct Source {
  std::FILE* f = nullptr;
  int64_t pos = 0;
};

int source_read(void* opaque, uint8_t* buf, int size) {
  auto* src = static_cast<Source*>(opaque);
  if (std::fflush(src->f) != 0) return AVERROR(errno ? errno : EIO);
  ssize_t n;
  do n = ::pread(::fileno(src->f), buf, static_cast<std::size_t>(size), static_cast<off_t>(src->pos));
  while (n < 0 && errno == EINTR);
  if (n < 0) return AVERROR(errno);
  if (n == 0) return AVERROR_EOF;
  src->pos += n;
  return static_cast<int>(n);
}

int64_t source_seek(void* opaque, int64_t offset, int whence) {
  auto* src = static_cast<Source*>(opaque);
  whence &= ~AVSEEK_FORCE;
  const int64_t size = (whence == AVSEEK_SIZE || whence == SEEK_END) ? file_size(src->f) : 0;
  if (size < 0) return size;
  if (whence == AVSEEK_SIZE) return size;
  int64_t pos = whence == SEEK_SET ? offset : whence == SEEK_CUR ? src->pos + offset : size + offset;
  if (whence != SEEK_SET && whence != SEEK_CUR && whence != SEEK_END) return AVERROR(EINVAL);
  if (pos < 0) return AVERROR(EINVAL);
  return src->pos = pos;
}

bool readable(std::FILE* f) {
  const int flags = ::fcntl(::fileno(f), F_GETFL);
  return flags >= 0 && (flags & O_ACCMODE) == O_RDWR;
}

int open_for_faststart(AVFormatContext* s, AVIOContext** pb, const char* url, int flags, AVDictionary**) {
  const auto* sink = static_cast<const Sink*>(s->opaque);
  if (!sink || !url || sink->url != url || flags != AVIO_FLAG_READ) return AVERROR(EPERM);
  auto* src = new Source{sink->f, 0};
  auto* buffer = static_cast<unsigned char*>(av_malloc(kAvioBufferSize));
  AVIOContext* ctx = buffer ? avio_alloc_context(buffer, kAvioBufferSize, 0, src, source_read, nullptr, source_seek) : nullptr;
  if (!ctx) {
    av_free(buffer);
    delete src;
    return AVERROR(ENOMEM);
  }
  *pb = ctx;
  return 0;
}

int close_faststart_reader(AVFormatContext*, AVIOContext* pb) {
  if (pb) delete static_cast<Source*>(pb->opaque);
  free_avio(pb);
  return 0;
}

// ---- checks --------------------------------------------------------------------------------
std::string shape_of(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// frames: uint8 [T, H, W, C] on the CPU with C in [min_c, max_c]; sides 1..kMaxSide.
void check_frames(const std::string& path, const torch::Tensor& frames, const char* expected, std::int64_t min_c,
                  std::int64_t max_c) {
  const std::string want = std::string("frames: expected ") + expected;
  if (!frames.defined()) fail(path, want + ", got an undefined tensor");
  if (frames.dim() != 4 || frames.size(3) < min_c || frames.size(3) > max_c)
    fail(path, want + ", got shape " + shape_of(frames));
  if (frames.scalar_type() != torch::kUInt8)
    fail(path, want + ", got dtype " + dtype_name(frames.scalar_type()) +
                   " (convert first, e.g. (x.clamp(0, 1) * 255).round().to(torch::kUInt8))");
  if (!frames.device().is_cpu()) fail(path, want + ", got a tensor on " + frames.device().str() + "; move it to the CPU");
  if (frames.size(0) < 1) fail(path, "frames: no frames to write (shape " + shape_of(frames) + ")");
  const auto h = frames.size(1), w = frames.size(2);
  if (h < 1 || w < 1 || h > kMaxSide || w > kMaxSide)
    fail(path, "frames: a frame of " + std::to_string(w) + "x" + std::to_string(h) + " (width x height) is outside 1.." +
                   std::to_string(kMaxSide) + " pixels a side");
}

std::string lower_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

// The muxer for the extension, or nullptr.
const char* muxer_for(const std::string& ext) {
  if (ext == ".mp4") return "mp4";
  if (ext == ".mov") return "mov";
  if (ext == ".mkv") return "matroska";
  return nullptr;
}

}  // namespace

int video_quality_to_crf(int quality) {
  if (quality < 1 || quality > 10)
    throw Error("video quality " + std::to_string(quality) + ": expected 1 (smallest file) .. 10 (lossless)");
  return 51 * (10 - quality) / 10;  // imageio-ffmpeg: int((1 - quality / 10) * 51)
}

void write_video(const std::string& path, const torch::Tensor& frames, double fps, int quality,
                 const std::vector<std::pair<std::string, std::string>>& metadata) {
  // Everything that can be checked is checked before the temporary file exists.
  const std::string ext = lower_extension(path);
  const char* muxer = muxer_for(ext);
  if (!muxer)
    fail(path, "unknown video format " + (ext.empty() ? std::string("(no extension)") : "'" + ext + "'") +
                   "; the extension chooses the container: .mp4, .mov or .mkv");
  check_frames(path, frames, "a uint8 [T, H, W, 3] RGB tensor", 3, 3);
  const auto count = frames.size(0), height = frames.size(1), width = frames.size(2);
  if (height % 2 != 0 || width % 2 != 0)
    fail(path, "frames: " + std::to_string(width) + "x" + std::to_string(height) +
                   " (width x height) has an odd side; H.264 yuv420p needs an even width and height (crop or pad "
                   "the frames, or write PNG frames to keep the exact size)");
  char fps_text[32];
  std::snprintf(fps_text, sizeof fps_text, "%g", fps);
  // Below 0.01 (a frame per 100 s) the mp4 durations overflow their 32-bit fields.
  if (!std::isfinite(fps) || fps < 0.01 || fps > 1000)
    fail(path, std::string("fps ") + fps_text + ": expected a frame rate from 0.01 to 1000");
  const AVRational rate = av_d2q(fps, 1001000);
  int crf = 0;
  try {
    crf = video_quality_to_crf(quality);
  } catch (const Error& e) {
    fail(path, e.what());
  }
  for (const auto& [key, value] : metadata)
    if (key.empty() || key.find('\0') != std::string::npos || value.find('\0') != std::string::npos)
      fail(path, "metadata: keys must be non-empty and keys and values free of NUL bytes");
  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (!codec) fail(path, "this FFmpeg has no libx264 encoder (H.264); install a libavcodec built with libx264");
  check_output_path(path, "video output");

  write_file_atomically(path, [&](std::FILE* f) {
    LogCapture log;
    auto check = [&](int r, const char* what) {
      if (r >= 0) return;
      fail(path, std::string(what) + ": " + av_error_text(r) + (log.text().empty() ? "" : " (" + log.text() + ")") +
                     "; nothing written, any previous file is unchanged");
    };

    Sink sink;
    sink.f = f;
    sink.url = path;
    AVFormatContext* raw_fmt = nullptr;
    check(avformat_alloc_output_context2(&raw_fmt, nullptr, muxer, path.c_str()), "cannot set up the muxer");
    std::unique_ptr<AVFormatContext, FormatDeleter> fmt(raw_fmt);
    std::unique_ptr<AVIOContext, AvioDeleter> pb;
    {
      auto* buffer = static_cast<unsigned char*>(av_malloc(kAvioBufferSize));
      if (buffer) pb.reset(avio_alloc_context(buffer, kAvioBufferSize, 1, &sink, nullptr, sink_write, sink_seek));
      if (!pb) {
        av_free(buffer);
        check(AVERROR(ENOMEM), "cannot set up the output");
      }
    }
    fmt->pb = pb.get();
    fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
    fmt->opaque = &sink;
    fmt->io_open = open_for_faststart;
    fmt->io_close2 = close_faststart_reader;

    std::unique_ptr<AVCodecContext, CodecDeleter> enc(avcodec_alloc_context3(codec));
    if (!enc) check(AVERROR(ENOMEM), "cannot set up the encoder");
    enc->width = static_cast<int>(width);
    enc->height = static_cast<int>(height);
    enc->pix_fmt = AV_PIX_FMT_YUV420P;
    enc->time_base = av_inv_q(rate);
    enc->framerate = rate;
    enc->sample_aspect_ratio = AVRational{1, 1};
    enc->color_range = AVCOL_RANGE_MPEG;
    enc->colorspace = AVCOL_SPC_BT709;
    enc->color_primaries = AVCOL_PRI_BT709;
    enc->color_trc = AVCOL_TRC_BT709;
    if (fmt->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    {
      Dict opts;
      av_dict_set(opts.ptr(), "preset", "medium", 0);
      av_dict_set(opts.ptr(), "crf", std::to_string(crf).c_str(), 0);
      // libx264's AVX-512 routines (0.164, Debian 12) read uninitialised memory: the same frames
      // gave different bitstreams from run to run, varying with MALLOC_PERTURB_ (the ffmpeg tool's
      // output too; valgrind cannot run AVX-512, so it does not see it). Capped at AVX2 the file
      // depends on the frames alone, for about 10% more encoder CPU time.
      if (av_get_cpu_flags() & AV_CPU_FLAG_AVX512) av_dict_set(opts.ptr(), "x264-params", "asm=AVX2", 0);
      check(avcodec_open2(enc.get(), codec, opts.ptr()), "cannot open the H.264 encoder (libx264)");
    }

    AVStream* stream = avformat_new_stream(fmt.get(), nullptr);
    if (!stream) check(AVERROR(ENOMEM), "cannot add the video stream");
    check(avcodec_parameters_from_context(stream->codecpar, enc.get()), "cannot set up the video stream");
    stream->time_base = enc->time_base;  // a hint; the muxer picks its own in write_header
    stream->avg_frame_rate = rate;
    stream->sample_aspect_ratio = enc->sample_aspect_ratio;
    for (const auto& [key, value] : metadata) av_dict_set(&fmt->metadata, key.c_str(), value.c_str(), 0);

    {
      Dict opts;
      if (std::strcmp(muxer, "matroska") != 0) {
        // faststart needs to read the file back; the descriptor is read-write in practice.
        std::string flags = readable(f) ? "+faststart" : "";
        if (!metadata.empty()) flags += "+use_metadata_tags";
        if (!flags.empty()) av_dict_set(opts.ptr(), "movflags", flags.c_str(), 0);
      }
      check(avformat_write_header(fmt.get(), opts.ptr()), "cannot write the header");
    }

    std::unique_ptr<AVFrame, FrameDeleter> frame(av_frame_alloc());
    std::unique_ptr<AVPacket, PacketDeleter> packet(av_packet_alloc());
    if (!frame || !packet) check(AVERROR(ENOMEM), "cannot allocate a frame");
    frame->format = enc->pix_fmt;
    frame->width = enc->width;
    frame->height = enc->height;
    frame->color_range = enc->color_range;
    frame->colorspace = enc->colorspace;
    frame->color_primaries = enc->color_primaries;
    frame->color_trc = enc->color_trc;
    check(av_frame_get_buffer(frame.get(), 0), "cannot allocate a frame");

    // RGB24 -> YUV420P at the same size: BT.709 limited range; chroma computed at full resolution
    // and box-averaged 2x2 (SWS_FULL_CHR_H_INP + SWS_AREA), accurate rounding (which also keeps
    // swscale off its BT.601-only rgb24->yv12 shortcut). Of bicubic / bilinear / lanczos / area,
    // with and without full-resolution chroma, this decodes closest to the source (a gradient
    // with a saturated moving square at CRF 5: 39.0 dB vs 38.5 for ffmpeg's default bicubic and
    // 38.0 for bicubic with full-resolution chroma, which rings at colour edges).
    // SWS_FULL_CHR_H_INT only affects RGB output and is not needed here.
    std::unique_ptr<SwsContext, SwsDeleter> sws(sws_getContext(
        enc->width, enc->height, AV_PIX_FMT_RGB24, enc->width, enc->height, AV_PIX_FMT_YUV420P,
        SWS_AREA | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, nullptr, nullptr, nullptr));
    if (!sws) check(AVERROR(ENOMEM), "cannot set up the RGB to YUV conversion");
    const int* bt709 = sws_getCoefficients(SWS_CS_ITU709);
    check(sws_setColorspaceDetails(sws.get(), bt709, 1, bt709, 0, 0, 1 << 16, 1 << 16),
          "cannot set the BT.709 conversion");

    auto drain = [&] {
      for (;;) {
        const int r = avcodec_receive_packet(enc.get(), packet.get());
        if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return;
        check(r, "encoding failed");
        if (packet->duration <= 0) packet->duration = 1;  // one frame, in the encoder's time base
        av_packet_rescale_ts(packet.get(), enc->time_base, stream->time_base);
        packet->stream_index = stream->index;
        check(av_interleaved_write_frame(fmt.get(), packet.get()), "writing a frame failed");
      }
    };

    // swscale's SIMD input readers load 16 bytes at a time and run past the end of the last row
    // (valgrind: 4 bytes beyond a [T, H, W, 3] tensor's storage), which would fault where the
    // storage ends at a page boundary. Each frame is therefore copied into a padded staging
    // buffer (64-byte aligned rows plus 64 bytes of slack, FFmpeg's input padding), which also
    // takes any strides.
    const std::int64_t staging_stride = (3 * width + 63) / 64 * 64;
    std::unique_ptr<uint8_t, decltype(&av_free)> staging(
        static_cast<uint8_t*>(av_mallocz(static_cast<std::size_t>(staging_stride * height + 64))), &av_free);
    if (!staging) check(AVERROR(ENOMEM), "cannot allocate a frame");
    const auto staging_view = torch::from_blob(staging.get(), {height, width, 3}, {staging_stride, 3, 1}, torch::kUInt8);
    for (std::int64_t t = 0; t < count; ++t) {
      staging_view.copy_(frames[t]);
      const uint8_t* src[4] = {staging.get(), nullptr, nullptr, nullptr};
      const int src_stride[4] = {static_cast<int>(staging_stride), 0, 0, 0};
      check(av_frame_make_writable(frame.get()), "cannot allocate a frame");
      if (sws_scale(sws.get(), src, src_stride, 0, enc->height, frame->data, frame->linesize) != enc->height)
        check(AVERROR_EXTERNAL, "the RGB to YUV conversion failed");
      frame->pts = t;
      check(avcodec_send_frame(enc.get(), frame.get()), "encoding failed");
      drain();
    }
    check(avcodec_send_frame(enc.get(), nullptr), "encoding failed");
    drain();
    check(av_write_trailer(fmt.get()), "cannot finish the file");
    avio_flush(pb.get());
    if (pb->error < 0) check(pb->error, "writing failed");
    if (sink.last_errno) check(AVERROR(sink.last_errno), "writing failed");
  });
}

void write_frames_dir(const std::string& dir, const torch::Tensor& frames,
                      const std::vector<std::pair<std::string, std::string>>& text) {
  check_frames(dir, frames, "a uint8 [T, H, W, C] tensor with C = 1..4 channels", 1, 4);
  if (dir.empty()) throw Error("frames folder: the path is empty");
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) fail(dir, "is " + describe_file_type(dir) + ", not a folder for the frames");
  } else if (errno != ENOENT) {
    fail(dir, std::string("cannot use the frames folder: ") + std::strerror(errno));
  } else if (::mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST) {
    const int e = errno;
    const std::string parent = std::filesystem::path(dir).parent_path().string();
    if (e == ENOENT) fail(dir, "cannot create the frames folder: its parent " + parent + " does not exist");
    fail(dir, std::string("cannot create the frames folder: ") + std::strerror(e));
  }
  const std::int64_t count = frames.size(0);
  int digits = 5;
  for (std::int64_t n = count - 1; n >= 100000; n /= 10) ++digits;
  for (std::int64_t t = 0; t < count; ++t) {
    std::string number = std::to_string(t);
    number.insert(0, static_cast<std::size_t>(std::max<int>(0, digits - static_cast<int>(number.size()))), '0');
    write_png((std::filesystem::path(dir) / ("frame_" + number + ".png")).string(), frames[t], text);
  }
}

}  // namespace diffsynth
