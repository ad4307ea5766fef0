// core/file_io: inputs that are not regular files are refused without blocking, outputs are
// checked up front and written atomically, and the safetensors header parser handles a header of
// 200,000 tensors (the case that was quadratic) with every key in header order.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_io.h"
#include "core/loader/file.h"
#include "core/loader/safetensors_header.h"
#include "test_util.h"

using namespace diffsynth;

namespace {

// Runs f on a thread and fails (instead of hanging the suite) if it has not returned in 20 s.
template <typename F>
std::string error_within_deadline(F f) {
  auto fut = std::async(std::launch::async, [f] { return error_of(f); });
  if (fut.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    ADD_FAILURE() << "blocked on a non-regular file";
    std::_Exit(1);  // the thread is stuck in a syscall; nothing else can end it
  }
  return fut.get();
}

}  // namespace

TEST(FileIO, FifoIsRefusedWithoutBlocking) {
  TempDir dir;
  const std::string fifo = dir.path("pipe.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (auto* fn : {+[](const std::string& p) { ::close(open_regular_file(p, nullptr)); },
                   +[](const std::string& p) { read_regular_file(p); },
                   +[](const std::string& p) { read_safetensors_header(p); },
                   +[](const std::string& p) { hash_model_file({p}); }}) {
    const std::string e = error_within_deadline([&] { fn(fifo); });
    EXPECT_NE(e.find(fifo), std::string::npos) << e;
    EXPECT_NE(e.find("FIFO (named pipe)"), std::string::npos) << e;
  }
}

TEST(FileIO, SocketAndDeviceAreRefused) {
  TempDir dir;
  const std::string sock = dir.path("s.sock");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_NE(error_of([&] { read_regular_file(sock); }).find("is a socket"), std::string::npos);
  ::close(fd);
  EXPECT_NE(error_of([&] { read_regular_file("/dev/zero"); }).find("is a character device"), std::string::npos);
  EXPECT_NE(error_of([&] { read_regular_file(dir.str()); }).find("is a folder"), std::string::npos);
  EXPECT_NE(error_of([&] { check_folder(dir.path("missing"), "--tokenizer"); }).find("--tokenizer"), std::string::npos);
  EXPECT_NE(error_of([&] { check_folder("/dev/zero", "--model-dir"); }).find("not a folder"), std::string::npos);
}

TEST(FileIO, ReadRegularFileBoundsItsSize) {
  TempDir dir;
  write_bytes(dir.path("a.json"), std::string(100, 'x'));
  EXPECT_EQ(read_regular_file(dir.path("a.json")).size(), 100u);
  EXPECT_NE(error_of([&] { read_regular_file(dir.path("a.json"), 10); }).find("over the"), std::string::npos);
}

TEST(FileIO, CheckOutputPathBeforeWork) {
  TempDir dir;
  EXPECT_EQ(error_of([&] { check_output_path(dir.path("x.png"), "-o"); }), "");
  EXPECT_FALSE(std::filesystem::exists(dir.path("x.png")));  // the probe leaves nothing behind
  EXPECT_TRUE(temp_files(dir.str()).empty());
  const std::string missing = error_of([&] { check_output_path(dir.path("no/x.png"), "-o"); });
  EXPECT_NE(missing.find("-o " + dir.path("no/x.png")), std::string::npos) << missing;
  EXPECT_NE(missing.find("does not exist"), std::string::npos) << missing;
  EXPECT_NE(error_of([&] { check_output_path(dir.str(), "--save-latents"); }).find("is a folder"), std::string::npos);
  const std::string fifo = dir.path("f.png");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of([&] { check_output_path(fifo, "-o"); }).find("FIFO"), std::string::npos);
  if (::geteuid() != 0) {  // root writes through permission bits
    std::filesystem::create_directory(dir.path("ro"));
    ::chmod(dir.path("ro").c_str(), 0500);
    EXPECT_NE(error_of([&] { check_output_path(dir.path("ro/x.png"), "-o"); }).find("cannot create"), std::string::npos);
  }
}

TEST(FileIO, AtomicWriteReplacesWholeOrNothing) {
  TempDir dir;
  const std::string out = dir.path("out.bin");
  write_file_atomically(out, [](std::FILE* f) { std::fputs("first", f); });
  EXPECT_EQ(read_bytes(out), "first");
  struct stat st {};
  ASSERT_EQ(::stat(out.c_str(), &st), 0);
  const mode_t mask = ::umask(0);
  ::umask(mask);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~mask);  // as a plain create, not mkstemp's 0600
  // A writer that fails half-way: the previous file stays, the temporary is gone.
  const std::string e = error_of([&] {
    write_file_atomically(out, [&](std::FILE* f) {
      std::fputs("partial", f);
      fail(out, "encoder failed");
    });
  });
  EXPECT_NE(e.find("encoder failed"), std::string::npos);
  EXPECT_EQ(read_bytes(out), "first");
  EXPECT_TRUE(temp_files(dir.str()).empty());
  const std::string e2 = error_of([&] {
    write_file_atomically(out, [](std::FILE* f) { throw std::runtime_error("boom"); });
  });
  EXPECT_NE(e2.find(out), std::string::npos);
  EXPECT_NE(e2.find("unchanged"), std::string::npos);
  EXPECT_EQ(read_bytes(out), "first");
  EXPECT_TRUE(temp_files(dir.str()).empty());
  write_file_atomically(out, [](std::FILE* f) { std::fputs("second", f); });
  EXPECT_EQ(read_bytes(out), "second");
}

TEST(FileIO, HeaderOf200000TensorsParsesInOrder) {
  // 200,000 one-element tensors, keys deliberately not sorted, ~13 MB of header: the parse keeps
  // header order and the tiling check sees every tensor.
  const std::int64_t n = 200000;
  std::string json = "{";
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t k = (i * 7919) % n;
    json += (i ? "," : "") + std::string("\"model.layers.") + std::to_string(k) +
            ".self_attn.q_proj.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" + std::to_string(4 * i) + "," +
            std::to_string(4 * i + 4) + "]}";
  }
  json += ",\"__metadata__\":{\"format\":\"pt\"}}";
  const SafetensorsHeader h = parse_safetensors_header("big.safetensors", json.data(), json.size(), 4 * n);
  ASSERT_EQ(static_cast<std::int64_t>(h.tensors.size()), n);
  for (std::int64_t i = 0; i < n; i += 9973)
    EXPECT_EQ(h.tensors[i].name, "model.layers." + std::to_string((i * 7919) % n) + ".self_attn.q_proj.weight");
  EXPECT_EQ(h.metadata.at("format"), "pt");
}

TEST(FileIO, DuplicateFieldInAnEntryIsAnError) {
  const std::string json = R"({"a": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}})";
  const std::string e = error_of([&] { parse_safetensors_header("d.safetensors", json.data(), json.size(), 4); });
  EXPECT_NE(e.find("field 'dtype' of 'a' twice"), std::string::npos) << e;
}
