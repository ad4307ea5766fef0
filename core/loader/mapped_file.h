// A read-only view of a whole file through mmap, shared by every tensor that views it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/file_io.h"  // open_regular_file, read_exact

namespace diffsynth {

class MappedFile {
 public:
  // Maps `path` privately (copy-on-write: a tensor written in place never touches the file).
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  // Drops the resident pages of [offset, offset+length): they are re-read from the file if
  // touched again. Used after a converting copy so the source bytes are not held twice.
  void release(std::size_t offset, std::size_t length) const;
  // The same for any memory: releases the pages only if [ptr, ptr+length) lies inside a live
  // mapping of ours (never heap memory). Returns whether it did.
  static bool release_if_mapped(const void* ptr, std::size_t length);
  // Whether [ptr, ptr+length) lies inside a live mapping of ours (zero-copy checks).
  static bool is_mapped(const void* ptr, std::size_t length);

 private:
  MappedFile() = default;
  std::string path_;
  std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace diffsynth
