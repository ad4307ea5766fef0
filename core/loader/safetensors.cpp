#include "core/loader/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_io.h"

namespace diffsynth {

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto f = std::make_shared<SafetensorsFile>();
  f->header_ = read_safetensors_header(path);
  f->map_ = MappedFile::open(path);
  if (f->map_->size() != f->header_.file_size) fail(path, "file changed while it was being opened");
  return f;
}

torch::Tensor SafetensorsFile::get_tensor(const SafetensorsTensorInfo& info) const {
  auto opts = torch::TensorOptions().dtype(info.dtype).device(torch::kCPU);
  std::uint8_t* ptr = map_->data() + header_.data_offset() + info.begin;
  const auto item = static_cast<std::uintptr_t>(c10::elementSize(info.dtype));
  if (info.end == info.begin) return torch::empty(info.shape, opts);
  if (reinterpret_cast<std::uintptr_t>(ptr) % item != 0) {
    // Unaligned data (a writer that did not pad the header): one aligned copy.
    auto out = torch::empty(info.shape, opts);
    std::memcpy(out.data_ptr(), ptr, info.end - info.begin);
    return out;
  }
  auto keep = map_;
  return torch::from_blob(ptr, info.shape, [keep](void*) {}, opts);
}

torch::Tensor SafetensorsFile::get_tensor_converted(const SafetensorsTensorInfo& info,
                                                    std::optional<c10::ScalarType> dtype,
                                                    const torch::Device& device) const {
  torch::Tensor view = get_tensor(info);
  const c10::ScalarType target = dtype.value_or(info.dtype);
  if (target == info.dtype && device.is_cpu()) return view;
  torch::Tensor out = view.to(device, target, /*non_blocking=*/false, /*copy=*/true);
  view = torch::Tensor();
  map_->release(header_.data_offset() + info.begin, info.end - info.begin);
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> data;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw Error(path + ": '__metadata__' cannot be a tensor name");
    if (header.contains(name)) throw Error(path + ": tensor name '" + name + "' given twice");
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const std::uint64_t nbytes = c.numel() * c.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(c.scalar_type())},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(std::move(c));
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  write_file_atomically(path, [&](std::FILE* f) {
    unsigned char len[8];
    std::uint64_t n = json.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(json.data(), 1, json.size(), f) == json.size();
    for (const auto& c : data) {
      const std::size_t nbytes = c.numel() * c.element_size();
      if (ok && nbytes) ok = std::fwrite(c.data_ptr(), 1, nbytes, f) == nbytes;
    }
    if (!ok) fail(path, std::string("writing failed: ") + std::strerror(errno) + "; nothing written, any previous file is unchanged");
  });
}

}  // namespace diffsynth
