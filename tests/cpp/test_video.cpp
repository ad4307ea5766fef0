// utils/video: H.264 files that ffprobe reads as written (codec, pixel format, size, rate, frame
// count, colour tags, faststart, metadata), that decode back close to the source (PSNR), with
// exact colours; every bad input refused before work with an Error naming the file and what is
// wrong, no temporary file left and an existing file unchanged, also when writing fails midway.
// ffprobe / ffmpeg (Debian package ffmpeg, installed by scripts/setup.sh) check the files from
// outside; their absence is a failure, not a skip.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "utils/image.h"
#include "utils/video.h"
#include "test_util.h"

using namespace diffsynth;

namespace {

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct CommandResult {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs a shell command; stdout is returned, stderr kept for failure messages.
CommandResult run_command(const std::string& command, const TempDir& dir) {
  CommandResult r;
  const std::string err_path = dir.path("command.stderr");
  std::FILE* p = ::popen((command + " 2>" + quote(err_path)).c_str(), "r");
  if (!p) return r;
  char buf[1 << 16];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  r.status = ::pclose(p);
  r.err = read_bytes(err_path);
  return r;
}

void require_tool(const char* tool) {
  const int rc = std::system((std::string("command -v ") + tool + " >/dev/null 2>&1").c_str());
  ASSERT_EQ(rc, 0) << tool << " is not on PATH: the video tests need it (Debian package ffmpeg; scripts/setup.sh "
                   << "installs it)";
}

nlohmann::json probe(const std::string& file, const TempDir& dir, const std::string& entries) {
  const auto r = run_command("ffprobe -v error -select_streams v:0 -count_frames -show_entries " + entries +
                                 " -of json " + quote(file),
                             dir);
  EXPECT_EQ(r.status, 0) << "ffprobe failed on " << file << ": " << r.err;
  return r.status == 0 ? nlohmann::json::parse(r.out) : nlohmann::json::object();
}

const char* kStreamEntries =
    "stream=codec_name,pix_fmt,width,height,r_frame_rate,avg_frame_rate,nb_read_frames,color_space,color_range,"
    "color_primaries,color_transfer,sample_aspect_ratio:format=duration";

// Decodes every frame to RGB24 with the ffmpeg tool: [T, H, W, 3] uint8.
torch::Tensor decode(const std::string& file, const TempDir& dir, std::int64_t height, std::int64_t width) {
  const auto r = run_command("ffmpeg -nostdin -v error -i " + quote(file) + " -f rawvideo -pix_fmt rgb24 -", dir);
  EXPECT_EQ(r.status, 0) << "ffmpeg could not decode " << file << ": " << r.err;
  const auto frame_bytes = height * width * 3;
  EXPECT_EQ(static_cast<std::int64_t>(r.out.size()) % frame_bytes, 0);
  const auto t = static_cast<std::int64_t>(r.out.size()) / frame_bytes;
  return torch::from_blob(const_cast<char*>(r.out.data()), {t, height, width, 3}, torch::kUInt8).clone();
}

double psnr(const torch::Tensor& a, const torch::Tensor& b) {
  const double mse = (a.to(torch::kDouble) - b.to(torch::kDouble)).pow(2).mean().item<double>();
  return mse == 0 ? INFINITY : 10 * std::log10(255.0 * 255.0 / mse);
}

// A moving pattern: red and green gradients, a drifting blue wave and a moving saturated red
// square: smooth areas, sharp colour edges and motion. (Sharper colour detail -- one-pixel
// colour stripes -- is beyond 4:2:0 itself: even lossless yuv420p decodes it below 30 dB.)
torch::Tensor pattern(std::int64_t frames, std::int64_t height, std::int64_t width) {
  auto out = torch::empty({frames, height, width, 3}, torch::kUInt8);
  auto a = out.accessor<std::uint8_t, 4>();
  for (std::int64_t t = 0; t < frames; ++t)
    for (std::int64_t y = 0; y < height; ++y)
      for (std::int64_t x = 0; x < width; ++x) {
        int r = static_cast<int>(x * 255 / std::max<std::int64_t>(width - 1, 1));
        int g = static_cast<int>(y * 255 / std::max<std::int64_t>(height - 1, 1));
        int b = static_cast<int>(128 + 100 * std::sin((x + 2.0 * y) / 20.0 + t * 0.4));
        const std::int64_t side = std::min<std::int64_t>({16, width / 2, height / 2});
        const std::int64_t sx = (t * 4) % (width - side), sy = (t * 2) % (height - side);
        if (x >= sx && x < sx + side && y >= sy && y < sy + side) r = 230, g = 30, b = 40;
        a[t][y][x][0] = static_cast<std::uint8_t>(r);
        a[t][y][x][1] = static_cast<std::uint8_t>(g);
        a[t][y][x][2] = static_cast<std::uint8_t>(b);
      }
  return out;
}

// Top-level box types of an ISO-BMFF file, in order.
std::vector<std::string> mp4_boxes(const std::string& bytes) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos + 8 <= bytes.size()) {
    auto u8 = [&](std::size_t i) { return static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])); };
    std::uint64_t size = (u8(pos) << 24) | (u8(pos + 1) << 16) | (u8(pos + 2) << 8) | u8(pos + 3);
    out.push_back(bytes.substr(pos + 4, 4));
    if (size == 1 && pos + 16 <= bytes.size()) {
      size = 0;
      for (int i = 0; i < 8; ++i) size = (size << 8) | u8(pos + 8 + i);
    }
    if (size < 8) break;
    pos += size;
  }
  return out;
}

class Video : public ::testing::Test {
 protected:
  void SetUp() override {
    require_tool("ffprobe");
    require_tool("ffmpeg");
  }
  TempDir dir;
};

}  // namespace

TEST_F(Video, QualityMapsToCrfAsImageio) {
  // imageio-ffmpeg: crf = int((1 - quality / 10) * 51)
  const int expected[] = {45, 40, 35, 30, 25, 20, 15, 10, 5, 0};
  for (int q = 1; q <= 10; ++q) EXPECT_EQ(video_quality_to_crf(q), expected[q - 1]) << q;
  for (int q = 1; q <= 10; ++q) EXPECT_EQ(video_quality_to_crf(q), static_cast<int>((1 - q / 10.0) * 51)) << q;
  EXPECT_EQ(kDefaultVideoQuality, 9);
  EXPECT_NE(error_of([] { video_quality_to_crf(0); }).find("quality 0"), std::string::npos);
  EXPECT_NE(error_of([] { video_quality_to_crf(11); }).find("quality 11"), std::string::npos);
}

TEST_F(Video, Mp4IsH264Yuv420pWithSizeRateAndFrameCount) {
  const auto frames = pattern(17, 64, 96);
  const std::string out = dir.path("out.mp4");
  write_video(out, frames, 15);
  const auto j = probe(out, dir, kStreamEntries);
  ASSERT_EQ(j["streams"].size(), 1u) << j.dump();
  const auto& s = j["streams"][0];
  EXPECT_EQ(s["codec_name"], "h264");
  EXPECT_EQ(s["pix_fmt"], "yuv420p");
  EXPECT_EQ(s["width"], 96);
  EXPECT_EQ(s["height"], 64);
  EXPECT_EQ(s["r_frame_rate"], "15/1");
  EXPECT_EQ(s["avg_frame_rate"], "15/1");
  EXPECT_EQ(s["nb_read_frames"], "17");
  EXPECT_EQ(s["sample_aspect_ratio"], "1:1");
  EXPECT_EQ(s["color_space"], "bt709");
  EXPECT_EQ(s["color_range"], "tv");
  EXPECT_EQ(s["color_primaries"], "bt709");
  EXPECT_EQ(s["color_transfer"], "bt709");
  // Every frame lasts 1/fps, the last one included: 17 / 15 s.
  EXPECT_NEAR(std::stod(j["format"]["duration"].get<std::string>()), 17.0 / 15, 1e-3) << j.dump();
  // faststart: the index comes before the data.
  const auto boxes = mp4_boxes(read_bytes(out));
  const auto moov = std::find(boxes.begin(), boxes.end(), "moov"), mdat = std::find(boxes.begin(), boxes.end(), "mdat");
  ASSERT_NE(moov, boxes.end());
  ASSERT_NE(mdat, boxes.end());
  EXPECT_LT(moov - boxes.begin(), mdat - boxes.begin()) << "moov after mdat: no faststart";
  EXPECT_TRUE(temp_files(dir.str()).empty());
}

TEST_F(Video, SizesThatAreNotMultiplesOf16KeepTheirSize) {
  // imageio would resize these to multiples of 16; the bitstream's cropping keeps them exact.
  for (const auto& [h, w] : std::vector<std::pair<std::int64_t, std::int64_t>>{{2, 2}, {10, 18}, {36, 50}}) {
    const auto frames = h < 16 || w < 16 ? torch::full({3, h, w, 3}, 90, torch::kUInt8) : pattern(3, h, w);
    const std::string out = dir.path("size.mp4");
    write_video(out, frames, 15);
    const auto j = probe(out, dir, kStreamEntries);
    ASSERT_EQ(j["streams"].size(), 1u) << j.dump();
    EXPECT_EQ(j["streams"][0]["width"], w);
    EXPECT_EQ(j["streams"][0]["height"], h);
    EXPECT_EQ(j["streams"][0]["nb_read_frames"], "3");
    EXPECT_GE(psnr(decode(out, dir, h, w), frames), 35.0) << w << "x" << h;
  }
}

TEST_F(Video, NonIntegerAndFractionalRates) {
  const auto frames = pattern(9, 32, 48);
  struct Case {
    double fps;
    const char* rate;
    double duration;
  };
  for (const Case& c : {Case{24000.0 / 1001, "24000/1001", 9 * 1001 / 24000.0}, Case{12.5, "25/2", 9 / 12.5},
                        Case{30, "30/1", 9 / 30.0}, Case{60000.0 / 1001, "60000/1001", 9 * 1001 / 60000.0},
                        Case{1000, "1000/1", 9 / 1000.0}, Case{0.01, "1/100", 900}}) {
    const std::string out = dir.path("rate.mp4");
    write_video(out, frames, c.fps);
    const auto j = probe(out, dir, kStreamEntries);
    ASSERT_EQ(j["streams"].size(), 1u) << j.dump();
    EXPECT_EQ(j["streams"][0]["r_frame_rate"], c.rate) << c.fps;
    EXPECT_EQ(j["streams"][0]["avg_frame_rate"], c.rate) << c.fps;
    EXPECT_EQ(j["streams"][0]["nb_read_frames"], "9") << c.fps;
    EXPECT_NEAR(std::stod(j["format"]["duration"].get<std::string>()), c.duration, 2e-3) << c.fps;
  }
}

TEST_F(Video, DecodesBackCloseToTheSource) {
  const auto frames = pattern(17, 64, 96);
  const std::string out = dir.path("psnr.mp4");
  write_video(out, frames, 15);
  const auto decoded = decode(out, dir, 64, 96);
  ASSERT_EQ(decoded.size(0), 17);
  const double all = psnr(decoded, frames);
  double worst = INFINITY;
  for (int t = 0; t < 17; ++t) worst = std::min(worst, psnr(decoded[t], frames[t]));
  std::printf("default quality %d (CRF %d): PSNR %.2f dB over all frames, worst frame %.2f dB, %zu bytes\n",
              kDefaultVideoQuality, video_quality_to_crf(kDefaultVideoQuality), all, worst, read_bytes(out).size());
  EXPECT_GE(all, 35.0);
  EXPECT_GE(worst, 35.0);

  // Lower quality: smaller and worse, still a fair picture at imageio's own default 5.
  const std::string low = dir.path("low.mp4");
  write_video(low, frames, 15, 5);
  const double low_psnr = psnr(decode(low, dir, 64, 96), frames);
  std::printf("quality 5 (CRF 25): PSNR %.2f dB, %zu bytes\n", low_psnr, read_bytes(low).size());
  EXPECT_LT(read_bytes(low).size(), read_bytes(out).size());
  EXPECT_LT(low_psnr, all);
  EXPECT_GE(low_psnr, 25.0);
}

TEST_F(Video, ColoursSurviveTheBt709RoundTrip) {
  // Flat saturated colours: a matrix that differs between writer and tag (BT.601 vs BT.709) is
  // off by 10+ levels on these; the chroma filter and rounding by at most a level or two.
  const std::vector<std::array<int, 3>> colours = {{255, 0, 0},   {0, 255, 0},     {0, 0, 255},   {255, 255, 0},
                                                   {0, 255, 255}, {255, 0, 255},   {128, 128, 128}, {16, 200, 120}};
  auto frames = torch::empty({static_cast<std::int64_t>(colours.size()), 32, 32, 3}, torch::kUInt8);
  for (std::size_t i = 0; i < colours.size(); ++i)
    for (int c = 0; c < 3; ++c) frames[static_cast<std::int64_t>(i)].select(2, c).fill_(colours[i][c]);
  const std::string out = dir.path("colours.mp4");
  write_video(out, frames, 15);
  const auto decoded = decode(out, dir, 32, 32);
  ASSERT_EQ(decoded.size(0), static_cast<std::int64_t>(colours.size()));
  const auto diff = (decoded.to(torch::kInt) - frames.to(torch::kInt)).abs();
  for (std::size_t i = 0; i < colours.size(); ++i)
    EXPECT_LE(diff[static_cast<std::int64_t>(i)].max().item<int>(), 3)
        << "colour " << colours[i][0] << "," << colours[i][1] << "," << colours[i][2] << " decoded as "
        << decoded[static_cast<std::int64_t>(i)][16][16];
}

TEST_F(Video, StridedFramesEncodeAsTheirContiguousCopy) {
  // Bit-identical files for identical pictures, whatever the tensor's strides and whatever is
  // in the heap: libx264's AVX-512 code reads uninitialised memory, so write_video keeps x264 at
  // AVX2 where the CPU has AVX-512; the heap is filled with garbage between the two writes.
  const auto frames = pattern(5, 64, 96);
  // [T, 3, H, W] permuted to [T, H, W, 3]: channel stride H*W, not packed.
  const auto planar = frames.permute({0, 3, 1, 2}).contiguous().permute({0, 2, 3, 1});
  ASSERT_FALSE(planar.is_contiguous());
  // A crop: packed pixels, rows longer than the frame.
  const auto crop = pattern(5, 64, 128).slice(2, 16, 112);
  ASSERT_FALSE(crop.is_contiguous());
  write_video(dir.path("a.mp4"), frames, 15);
  {
    std::vector<std::unique_ptr<unsigned char[]>> garbage;
    for (std::size_t n = 16; n <= (1u << 20); n = n * 3 / 2 + 16) {
      garbage.emplace_back(new unsigned char[n]);
      std::memset(garbage.back().get(), static_cast<int>(n % 251), n);
    }
  }
  write_video(dir.path("a2.mp4"), frames.clone(), 15);
  write_video(dir.path("b.mp4"), planar, 15);
  write_video(dir.path("c.mp4"), crop, 15);
  write_video(dir.path("d.mp4"), crop.contiguous(), 15);
  const auto a = read_bytes(dir.path("a.mp4"));
  EXPECT_EQ(a, read_bytes(dir.path("a2.mp4"))) << "the same frames gave different files";
  EXPECT_EQ(a, read_bytes(dir.path("b.mp4"))) << "planar-strided frames";
  EXPECT_EQ(read_bytes(dir.path("c.mp4")), read_bytes(dir.path("d.mp4"))) << "cropped frames";
  EXPECT_GE(psnr(decode(dir.path("c.mp4"), dir, 64, 96), crop), 35.0);
}

TEST_F(Video, MovAndMkvContainersAndMetadata) {
  const auto frames = pattern(7, 32, 48);
  const std::vector<std::pair<std::string, std::string>> meta = {{"parameters", "{\"seed\": 1, \"prompt\": \"a cat\"}"},
                                                                  {"comment", "diffsynth.cpp"}};
  for (const char* name : {"meta.mp4", "meta.mov", "meta.mkv", "UPPER.MP4"}) {
    const std::string out = dir.path(name);
    write_video(out, frames, 15, kDefaultVideoQuality, meta);
    const auto j = probe(out, dir, "stream=codec_name,pix_fmt,nb_read_frames:format=format_name:format_tags");
    ASSERT_EQ(j["streams"].size(), 1u) << name << ": " << j.dump();
    EXPECT_EQ(j["streams"][0]["codec_name"], "h264") << name;
    EXPECT_EQ(j["streams"][0]["pix_fmt"], "yuv420p") << name;
    EXPECT_EQ(j["streams"][0]["nb_read_frames"], "7") << name;
    const auto format = j["format"]["format_name"].get<std::string>();
    EXPECT_NE(format.find(std::string(name).ends_with(".mkv") ? "matroska" : "mp4"), std::string::npos) << format;
    const auto tags = j["format"].value("tags", nlohmann::json::object());
    // Matroska upper-cases its tag names.
    const auto tag = [&](const std::string& k) {
      for (const auto& [key, value] : tags.items()) {
        std::string lower = key;
        std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
        if (lower == k) return value.get<std::string>();
      }
      return std::string();
    };
    EXPECT_EQ(tag("parameters"), meta[0].second) << name << ": " << tags.dump();
    EXPECT_EQ(tag("comment"), meta[1].second) << name << ": " << tags.dump();
  }
  EXPECT_TRUE(temp_files(dir.str()).empty());
}

TEST_F(Video, Quality10IsLossless) {
  // CRF 0: lossless in YCbCr, so the decoded RGB equals a plain RGB -> yuv420p -> RGB round
  // trip; H.264 allows it only in the High 4:4:4 Predictive profile (the header says so).
  const auto frames = pattern(5, 64, 96);
  const std::string out = dir.path("lossless.mp4");
  write_video(out, frames, 15, 10);
  const auto j = probe(out, dir, "stream=profile,pix_fmt");
  ASSERT_EQ(j["streams"].size(), 1u);
  EXPECT_EQ(j["streams"][0]["profile"], "High 4:4:4 Predictive");
  EXPECT_EQ(j["streams"][0]["pix_fmt"], "yuv420p");
  const double lossless = psnr(decode(out, dir, 64, 96), frames);
  write_video(out, frames, 15);
  EXPECT_GT(lossless, psnr(decode(out, dir, 64, 96), frames));
}

TEST_F(Video, OverwritesAnExistingFile) {
  const std::string out = dir.path("over.mp4");
  write_bytes(out, "previous contents");
  write_video(out, pattern(3, 16, 16), 15);
  const auto j = probe(out, dir, kStreamEntries);
  ASSERT_EQ(j["streams"].size(), 1u);
  EXPECT_EQ(j["streams"][0]["nb_read_frames"], "3");
  EXPECT_TRUE(temp_files(dir.str()).empty());
}

TEST_F(Video, BadInputsAreRefusedNamingTheFileAndTheProblem) {
  const auto good = pattern(3, 16, 16);
  const std::string out = dir.path("bad.mp4");
  struct Case {
    std::string name, path;
    torch::Tensor frames;
    double fps;
    int quality;
    std::vector<std::string> expected;
  };
  std::filesystem::create_directory(dir.path("folder.mp4"));
  const std::vector<Case> cases = {
      {"missing folder", dir.path("missing/out.mp4"), good, 15, 9, {dir.path("missing/out.mp4"), "does not exist"}},
      {"folder as output", dir.path("folder.mp4"), good, 15, 9, {dir.path("folder.mp4"), "is a folder"}},
      {"float frames", out, good.to(torch::kFloat), 15, 9, {out, "frames", "dtype torch.float32"}},
      {"no channel dim", out, good.select(3, 0), 15, 9, {out, "frames", "shape [3, 16, 16]"}},
      {"RGBA", out, torch::zeros({3, 16, 16, 4}, torch::kUInt8), 15, 9, {out, "frames", "shape [3, 16, 16, 4]"}},
      {"planar", out, good.permute({0, 3, 1, 2}), 15, 9, {out, "frames", "shape [3, 3, 16, 16]"}},
      {"no frames", out, torch::zeros({0, 16, 16, 3}, torch::kUInt8), 15, 9, {out, "no frames"}},
      {"odd width", out, torch::zeros({2, 16, 15, 3}, torch::kUInt8), 15, 9, {out, "15x16", "odd", "even"}},
      {"odd height", out, torch::zeros({2, 17, 16, 3}, torch::kUInt8), 15, 9, {out, "16x17", "odd"}},
      {"too wide", out, torch::zeros({1, 2, 16386, 3}, torch::kUInt8).slice(2, 0, 16386), 15, 9,
       {out, "16386x2", "16384"}},
      {"unknown extension", dir.path("out.avi"), good, 15, 9, {dir.path("out.avi"), "unknown video format '.avi'"}},
      {"no extension", dir.path("out"), good, 15, 9, {dir.path("out"), "no extension", ".mp4"}},
      {"zero fps", out, good, 0, 9, {out, "fps 0"}},
      {"negative fps", out, good, -15, 9, {out, "fps -15"}},
      {"nan fps", out, good, NAN, 9, {out, "fps nan"}},
      {"huge fps", out, good, 5000, 9, {out, "fps 5000"}},
      {"tiny fps", out, good, 0.005, 9, {out, "fps 0.005", "0.01 to 1000"}},
      {"quality 0", out, good, 15, 0, {out, "quality 0", "1 (smallest file) .. 10"}},
      {"quality 11", out, good, 15, 11, {out, "quality 11"}},
  };
  for (const auto& c : cases) {
    const std::string message = error_of([&] { write_video(c.path, c.frames, c.fps, c.quality); });
    ASSERT_FALSE(message.empty()) << c.name << ": no error";
    for (const auto& e : c.expected) EXPECT_NE(message.find(e), std::string::npos) << c.name << ": " << message;
    EXPECT_TRUE(temp_files(dir.str()).empty()) << c.name;
    EXPECT_FALSE(std::filesystem::exists(out)) << c.name;
  }
  const auto undefined = error_of([&] { write_video(out, torch::Tensor(), 15); });
  EXPECT_NE(undefined.find("undefined"), std::string::npos) << undefined;
  const auto metadata = error_of([&] { write_video(out, good, 15, 9, {{"", "x"}}); });
  EXPECT_NE(metadata.find("metadata"), std::string::npos) << metadata;
}

TEST_F(Video, ExistingFileUntouchedWhenWritingFails) {
  const std::string out = dir.path("keep.mp4");
  write_bytes(out, "the previous video");
  // Refused input: nothing happens at all.
  EXPECT_NE(error_of([&] { write_video(out, torch::zeros({2, 15, 16, 3}, torch::kUInt8), 15); }), "");
  EXPECT_EQ(read_bytes(out), "the previous video");
  // Failing midway: a file-size limit (ulimit -f) makes the encoder's writes fail (EFBIG).
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  struct rlimit low = old;
  low.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  const auto message = error_of([&] { write_video(out, pattern(17, 64, 96), 15); });
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old), 0);
  EXPECT_NE(message.find(out), std::string::npos) << message;
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  EXPECT_NE(message.find("unchanged"), std::string::npos) << message;
  EXPECT_EQ(read_bytes(out), "the previous video");
  EXPECT_TRUE(temp_files(dir.str()).empty());
}

TEST_F(Video, FramesDirWritesNumberedPngs) {
  // Odd sizes are fine here; any channel count 1..4.
  auto frames = pattern(3, 7, 5);
  const std::string folder = dir.path("frames");
  write_frames_dir(folder, frames, {{"parameters", "{}"}});
  for (int t = 0; t < 3; ++t) {
    char name[32];
    std::snprintf(name, sizeof name, "frame_%05d.png", t);
    const std::string file = folder + "/" + name;
    ASSERT_TRUE(std::filesystem::is_regular_file(file)) << file;
    EXPECT_TRUE(torch::equal(read_png(file), frames[t])) << file;
    EXPECT_EQ(read_png_text(file), (std::vector<std::pair<std::string, std::string>>{{"parameters", "{}"}}));
  }
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(folder), std::filesystem::directory_iterator()), 3);
  // Into an existing folder, replacing same-named files; other channel counts.
  write_frames_dir(folder, torch::full({2, 4, 4, 4}, 7, torch::kUInt8));
  EXPECT_EQ(read_png(folder + "/frame_00000.png").size(2), 4);
  EXPECT_EQ(read_png(folder + "/frame_00002.png").size(2), 3);  // left alone
  write_frames_dir(folder, torch::full({1, 4, 4, 1}, 7, torch::kUInt8));
  EXPECT_EQ(read_png(folder + "/frame_00000.png").size(2), 1);
  EXPECT_TRUE(temp_files(folder).empty());
}

TEST_F(Video, FramesDirRefusals) {
  const std::string file = dir.path("a_file");
  write_bytes(file, "x");
  const auto good = pattern(2, 8, 8);
  auto message = error_of([&] { write_frames_dir(file, good); });
  EXPECT_NE(message.find(file), std::string::npos) << message;
  EXPECT_NE(message.find("not a folder"), std::string::npos) << message;
  EXPECT_EQ(read_bytes(file), "x");
  const std::string deep = dir.path("missing/frames");
  message = error_of([&] { write_frames_dir(deep, good); });
  EXPECT_NE(message.find(deep), std::string::npos) << message;
  EXPECT_NE(message.find("does not exist"), std::string::npos) << message;
  const std::string folder = dir.path("frames");
  message = error_of([&] { write_frames_dir(folder, good.to(torch::kFloat)); });
  EXPECT_NE(message.find("dtype torch.float32"), std::string::npos) << message;
  message = error_of([&] { write_frames_dir(folder, torch::zeros({2, 8, 8, 5}, torch::kUInt8)); });
  EXPECT_NE(message.find("shape [2, 8, 8, 5]"), std::string::npos) << message;
  message = error_of([&] { write_frames_dir(folder, torch::zeros({0, 8, 8, 3}, torch::kUInt8)); });
  EXPECT_NE(message.find("no frames"), std::string::npos) << message;
  EXPECT_FALSE(std::filesystem::exists(folder)) << "a refused call created the folder";
}
