#include "core/loader/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "core/error.h"
#include "core/file_io.h"

namespace diffsynth {

namespace {
// Live mappings by start address, so release_if_mapped can tell mapped memory from heap.
std::mutex g_maps_mutex;
std::map<const std::uint8_t*, const MappedFile*>& live_maps() {
  static std::map<const std::uint8_t*, const MappedFile*> maps;
  return maps;
}
}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  std::uint64_t size = 0;
  int fd = open_regular_file(path, &size);
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<std::size_t>(size);
  if (size > 0) {
    // MAP_NORESERVE: a private writable mapping would otherwise be charged in full against the
    // commit limit, so a checkpoint larger than RAM could not be mapped at all. Pages are only
    // copied (and charged) if a tensor is written in place. Where the kernel still refuses
    // (strict overcommit), map read-only: nothing here writes to loaded weights.
    void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED && errno == ENOMEM) p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    ::close(fd);
    if (p == MAP_FAILED) fail(path, std::string("cannot mmap: ") + std::strerror(e));
    m->data_ = static_cast<std::uint8_t*>(p);
    std::lock_guard<std::mutex> lock(g_maps_mutex);
    live_maps()[m->data_] = m.get();
  } else {
    ::close(fd);
  }
  return m;
}

MappedFile::~MappedFile() {
  if (!data_) return;
  {
    std::lock_guard<std::mutex> lock(g_maps_mutex);
    live_maps().erase(data_);
  }
  ::munmap(data_, size_);
}

namespace {
// The live mapping holding [p, p+length), or null. Caller holds g_maps_mutex.
const MappedFile* find_mapping(const std::uint8_t* p, std::size_t length) {
  auto& maps = live_maps();
  auto it = maps.upper_bound(p);
  if (it == maps.begin()) return nullptr;
  --it;
  const MappedFile* m = it->second;
  if (p < m->data() || p + length > m->data() + m->size()) return nullptr;
  return m;
}
}  // namespace

bool MappedFile::release_if_mapped(const void* ptr, std::size_t length) {
  const auto* p = static_cast<const std::uint8_t*>(ptr);
  std::lock_guard<std::mutex> lock(g_maps_mutex);
  const MappedFile* m = find_mapping(p, length);
  if (!m) return false;
  m->release(static_cast<std::size_t>(p - m->data_), length);
  return true;
}

bool MappedFile::is_mapped(const void* ptr, std::size_t length) {
  std::lock_guard<std::mutex> lock(g_maps_mutex);
  return find_mapping(static_cast<const std::uint8_t*>(ptr), length) != nullptr;
}

void MappedFile::release(std::size_t offset, std::size_t length) const {
  if (!data_ || length == 0) return;
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  // Only whole pages inside the range: neighbours may still be in use.
  std::size_t begin = (offset + page - 1) / page * page;
  std::size_t end = (offset + length) / page * page;
  if (end > begin) ::madvise(data_ + begin, end - begin, MADV_DONTNEED);
}

}  // namespace diffsynth
