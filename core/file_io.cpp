#include "core/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "core/error.h"

namespace fs = std::filesystem;

namespace diffsynth {

namespace {

std::string kind_of(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

[[noreturn]] void fail_errno(const std::string& path, const std::string& what, int e) {
  fail(path, what + ": " + std::strerror(e));
}

// The folder a new file at `path` goes into.
std::string parent_folder(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// mkstemp's file is 0600; a written output should look like any created file (0666 & ~umask).
void set_default_mode(int fd) {
  static const mode_t umask_bits = [] {
    const mode_t old = ::umask(0);
    ::umask(old);
    return old;
  }();
  ::fchmod(fd, 0666 & ~umask_bits);
}

// A temporary file next to `path`: "<folder>/.<name>.tmp-XXXXXX".
int make_temp_next_to(const std::string& path, std::string& temp_path) {
  const fs::path p(path);
  temp_path = (fs::path(parent_folder(path)) / ("." + p.filename().string() + ".tmp-XXXXXX")).string();
  return ::mkstemp(temp_path.data());
}

}  // namespace

std::string describe_file_type(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "";
  return kind_of(st.st_mode);
}

int open_regular_file(const std::string& path, std::uint64_t* size_out) {
  // stat first: opening a FIFO for reading blocks until a writer appears, opening a device may
  // have side effects. O_NONBLOCK covers the race where the path is replaced in between.
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail_errno(path, "cannot open", errno);
  if (S_ISDIR(st.st_mode)) fail(path, "is a folder, not a file");
  if (!S_ISREG(st.st_mode)) fail(path, "is " + kind_of(st.st_mode) + ", not a regular file");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail_errno(path, "cannot open", errno);
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail_errno(path, "cannot stat", e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "is " + kind_of(st.st_mode) + ", not a regular file");
  }
  // Regular files ignore O_NONBLOCK; cleared anyway so the fd behaves as a plain open.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  if (size_out) *size_out = static_cast<std::uint64_t>(st.st_size);
  return fd;
}

void read_exact(int fd, const std::string& path, std::uint64_t offset, void* out, std::size_t length) {
  auto* dst = static_cast<std::uint8_t*>(out);
  while (length > 0) {
    ssize_t n = ::pread(fd, dst, length, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno(path, "read error", errno);
    }
    if (n == 0) fail(path, "unexpected end of file");
    dst += n;
    offset += static_cast<std::uint64_t>(n);
    length -= static_cast<std::size_t>(n);
  }
}

std::string read_regular_file(const std::string& path, std::uint64_t max_bytes) {
  std::uint64_t size = 0;
  const int fd = open_regular_file(path, &size);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (size > max_bytes)
    fail(path, "is " + human_bytes(static_cast<double>(size)) + ", over the " + human_bytes(static_cast<double>(max_bytes)) +
                   " this file can be");
  std::string data(size, '\0');
  read_exact(fd, path, 0, data.data(), size);
  return data;
}

void check_folder(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw Error(what + " " + path + ": " + (errno == ENOENT ? "no such folder" : std::strerror(errno)));
  if (!S_ISDIR(st.st_mode)) throw Error(what + " " + path + ": is " + kind_of(st.st_mode) + ", not a folder");
}

void check_output_path(const std::string& path, const std::string& option) {
  const std::string prefix = option + " " + path + ": ";
  if (path.empty()) throw Error(option + ": the output path is empty");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw Error(prefix + "is " + kind_of(st.st_mode) + "; give a file name to write");
  const std::string folder = parent_folder(path);
  if (::stat(folder.c_str(), &st) != 0)
    throw Error(prefix + "folder " + folder + " " + (errno == ENOENT ? "does not exist" : std::strerror(errno)));
  if (!S_ISDIR(st.st_mode)) throw Error(prefix + folder + " is " + kind_of(st.st_mode) + ", not a folder");
  // Permission bits do not say it all (root, read-only mounts, quotas): try it.
  std::string temp;
  const int fd = make_temp_next_to(path, temp);
  if (fd < 0) throw Error(prefix + "cannot create a file in " + folder + ": " + std::strerror(errno));
  ::close(fd);
  ::unlink(temp.c_str());
}

void write_file_atomically(const std::string& path, const std::function<void(std::FILE*)>& write) {
  // Past a file-size limit (ulimit -f) the kernel sends SIGXFSZ, which kills the process before
  // anything can clean up; ignored, the write fails with EFBIG instead and is reported.
  static std::once_flag ignore_sigxfsz;
  std::call_once(ignore_sigxfsz, [] { std::signal(SIGXFSZ, SIG_IGN); });

  std::string temp;
  const int fd = make_temp_next_to(path, temp);
  if (fd < 0) fail_errno(path, "cannot create a temporary file next to it", errno);
  set_default_mode(fd);
  std::FILE* f = ::fdopen(fd, "wb");
  if (!f) {
    const int e = errno;
    ::close(fd);
    ::unlink(temp.c_str());
    fail_errno(path, "cannot write", e);
  }
  auto discard = [&](const std::string& problem) {
    ::unlink(temp.c_str());
    fail(path, problem + " (nothing written; any previous file is unchanged)");
  };
  try {
    write(f);
  } catch (const Error&) {
    std::fclose(f);
    ::unlink(temp.c_str());
    throw;
  } catch (const std::exception& e) {
    std::fclose(f);
    discard(std::string("writing failed: ") + e.what());
  }
  int e = 0;
  if (std::fflush(f) != 0 || std::ferror(f)) e = errno ? errno : EIO;
  if (!e && ::fsync(::fileno(f)) != 0 && errno != EINVAL) e = errno;
  if (std::fclose(f) != 0 && !e) e = errno;
  if (e) discard(std::string("writing failed: ") + std::strerror(e));
  if (::rename(temp.c_str(), path.c_str()) != 0) discard(std::string("cannot rename the finished file into place: ") + std::strerror(errno));
}

std::uint64_t available_cpu_memory_bytes() {
  std::uint64_t available = 0;
  if (std::FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
        available = kb * 1024ull;
        break;
      }
    std::fclose(f);
  }
  // cgroup v2 limit of this process's group, where one is set.
  auto read_u64 = [](const std::string& p, std::uint64_t& out) {
    std::ifstream in(p);
    std::string s;
    if (!(in >> s) || s == "max") return false;
    char* end = nullptr;
    out = std::strtoull(s.c_str(), &end, 10);
    return end && *end == '\0';
  };
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  while (std::getline(cg, line)) {
    if (line.rfind("0::", 0) != 0) continue;
    const std::string dir = "/sys/fs/cgroup" + line.substr(3);
    std::uint64_t max = 0, current = 0;
    if (read_u64(dir + "/memory.max", max) && read_u64(dir + "/memory.current", current)) {
      const std::uint64_t left = max > current ? max - current : 0;
      if (available == 0 || left < available) available = left;
    }
  }
  return available;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) {
    b /= 1024;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

}  // namespace diffsynth
