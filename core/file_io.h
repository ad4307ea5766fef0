// Files in and out, for every command: inputs are opened only when they are regular files (a
// FIFO, socket or device is refused without blocking), outputs are checked before any work
// starts and written atomically (a temporary file in the same folder, flushed, then renamed), and
// allocations sized by the user are compared with the memory there is. Torch-free: the launcher
// (bin/diffsynth) uses it too.
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace diffsynth {

// Opens `path` read-only. Anything but a regular file is refused with a message saying what it is
// (a folder, a FIFO, a socket, a device) before anything could block on it. Returns the fd;
// `size_out` receives the file size. Errors name the path.
int open_regular_file(const std::string& path, std::uint64_t* size_out);
// Reads exactly `length` bytes at `offset` (pread); fails with a message naming `path`.
void read_exact(int fd, const std::string& path, std::uint64_t offset, void* out, std::size_t length);
// A whole regular file (open_regular_file's checks), refusing files over `max_bytes`.
std::string read_regular_file(const std::string& path, std::uint64_t max_bytes = 1ull << 30);
// An existing folder (following links); otherwise an Error "<what> <path>: ..." saying what it is.
void check_folder(const std::string& path, const std::string& what);
// What a path is, for messages: "a folder", "a FIFO (named pipe)", "a socket", ...; "" when it
// does not exist.
std::string describe_file_type(const std::string& path);

// Checks, before any work, that `path` can be written atomically: its folder exists and takes a
// new file (a temporary file is created there and removed), and `path` is not a folder or
// other non-regular file. Errors start with `option` (e.g. "-o") and name the path.
void check_output_path(const std::string& path, const std::string& option);
// Writes `path` atomically: `write` fills a temporary file in the same folder (mode 0666 less
// the umask, as a plain create), which is flushed, synced and renamed over `path`. If anything
// fails (a full disk, a file-size limit, `write` throwing) the temporary file is removed, `path`
// is left as it was, and an Error naming `path` is thrown. Concurrent writers of one path each
// write their own temporary file: the last rename wins and the file is never partial.
void write_file_atomically(const std::string& path, const std::function<void(std::FILE*)>& write);

// Memory this process may still allocate on the CPU: MemAvailable of /proc/meminfo, capped by
// the cgroup's memory.max less its usage where one is set. 0 when unknown.
std::uint64_t available_cpu_memory_bytes();
// "12.34 GiB"
std::string human_bytes(double bytes);

}  // namespace diffsynth
