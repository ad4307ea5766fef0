// Video out: the frames a video pipeline produces (uint8 [T, H, W, 3] RGB on the CPU) as an H.264
// file, or as a folder of PNG frames. Through FFmpeg's libraries (libavformat, libavcodec with
// libx264, libswscale); no ffmpeg process is run.
//
// Format choices:
// - Container by extension (case-insensitive): .mp4 (ISO MP4), .mov (QuickTime), .mkv
//   (Matroska). Anything else is refused before any work.
// - Video: H.264 (High profile) through libx264, preset "medium", constant quality (CRF),
//   8-bit yuv420p, square pixels, constant frame rate: what the reference's save_video
//   (imageio-ffmpeg) writes. Reproducible: the same frames and settings give the same bytes
//   (on CPUs with AVX-512, x264 is held to AVX2 code, whose output does not depend on
//   uninitialised memory; see video.cpp).
// - Colour: RGB -> YCbCr with the BT.709 matrix, limited (TV) range, the stream tagged BT.709
//   (matrix, primaries, transfer) and limited range, so players and decoders do not have to
//   guess (imageio leaves the stream untagged, with the BT.601 matrix, which players read as
//   BT.709 at HD sizes: a hue shift). Conversion by libswscale with chroma computed at full
//   resolution and averaged over each 2x2 block, with accurate rounding (SWS_AREA |
//   SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP): measured closer to the source than ffmpeg's
//   default bicubic, which rings at colour edges.
// - Size: yuv420p stores chroma at half resolution, so H.264 4:2:0 cannot represent an odd width
//   or height (its cropping is in 2-pixel units as well). Odd sizes are REFUSED with an error
//   naming the size, never silently changed: imageio instead resizes every frame up to a
//   multiple of 16 (distorting it), and padding would change the picture size. Pipelines make
//   multiples of 16 anyway; for exact odd-sized frames use write_frames_dir. Sizes need not be
//   multiples of 16 (the encoder crops in the bitstream). Each side is 2..16384 pixels.
// - Rate: `fps` is any value from 0.01 to 1000, stored as the nearest rational with terms up
//   to 1001000 (av_d2q): 15 -> 15/1, 24000.0 / 1001 -> 24000/1001, 12.5 -> 25/2. Each frame
//   lasts 1/fps, the last one included.
// - quality: imageio's scale, 1 (smallest) .. 10 (best), mapped as imageio-ffmpeg maps it for
//   libx264: CRF = floor(51 * (10 - quality) / 10), i.e.
//       quality 10 9  8  7  6  5  4  3  2  1
//       CRF      0 5 10 15 20 25 30 35 40 45
//   The default, 9 (CRF 5), is the reference's save_video default: visually lossless and large.
//   Quality 10 (CRF 0) is lossless in YCbCr, which H.264 allows only in the High 4:4:4
//   Predictive profile: many hardware decoders and browsers refuse such streams.
// - mp4/mov: the index (moov) is moved to the front ("+faststart": the muxer reads the
//   temporary file back through a read callback on the same descriptor) so playback starts
//   before the whole file has arrived; `metadata` pairs are written as mdta keys ("+use_metadata_tags",
//   read back by ffprobe -show_entries format_tags). Matroska stores them as tags.
//
// Files: written atomically (core/file_io's write_file_atomically: a temporary file next to the
// target, renamed into place once complete). On any failure -- bad frames, an FFmpeg error, a
// full disk -- an Error naming the file and the problem is thrown, no temporary file is left and
// an existing file at `path` is unchanged. Everything is checked before any encoding starts.
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace diffsynth {

constexpr int kDefaultVideoQuality = 9;  // the reference's save_video(quality=9): CRF 5

// The CRF of `quality` (1..10, see above); an Error outside 1..10.
int video_quality_to_crf(int quality);

// Writes `frames` (uint8 [T, H, W, 3] RGB on the CPU, any strides, T >= 1, H and W even and
// 2..16384) as an H.264 video at `fps` frames per second. The container follows the extension
// of `path` (.mp4, .mov, .mkv).
void write_video(const std::string& path, const torch::Tensor& frames, double fps, int quality = kDefaultVideoQuality,
                 const std::vector<std::pair<std::string, std::string>>& metadata = {});

// Writes `frames` (uint8 [T, H, W, C], C = 1..4; any size up to 16384 a side, odd included) as
// PNG files dir/frame_00000.png, frame_00001.png, ... (five digits, more when T > 100000 so
// the names always sort in order), each atomically through write_png with `text` as its text
// chunks. `dir` is created when missing (its parent must exist); a path that exists and is not
// a folder is refused. Files of the same names are replaced; other files in `dir` are left
// alone (stale frames of a longer earlier run included).
void write_frames_dir(const std::string& dir, const torch::Tensor& frames,
                      const std::vector<std::pair<std::string, std::string>>& text = {});

}  // namespace diffsynth
