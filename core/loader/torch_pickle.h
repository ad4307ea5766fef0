// Safe loading of `torch.save` checkpoints (.pth / .pt / .bin / .ckpt zip archives).
//
// Nothing in a file is ever executed. The pickle stream (`<archive>/data.pkl`) is first
// decoded by our own validator into a small value graph: only containers, scalars, strings
// and the handful of globals torch.save uses to rebuild tensors are accepted (see
// kAllowedGlobals in torch_pickle.cpp); anything else (`os.system`, `builtins.eval`, a
// `__main__` class, numpy scalars, ...) is refused with a message naming the global.
// Every tensor is bounds-checked against its storage record. The graph is then written
// back as a canonical protocol-2 pickle that uses only opcodes and globals libtorch's
// `torch::jit::Unpickler` handles, and that unpickler builds the IValues. So libtorch
// never sees bytes from the file's pickle, only a stream we produced.
//
// The canonical form also smooths over things libtorch's unpickler cannot read directly:
// `collections.OrderedDict` (libtorch turns it into None) becomes a plain dict, the
// `_metadata` attribute of `module.state_dict()` is dropped, protocol 3-5 opcodes
// (FRAME, MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE, ...) are accepted, LONG1 of any width
// up to 8 bytes, `_rebuild_tensor_v3` + `torch.storage.UntypedStorage` (float8 / uint16 /
// uint32 / uint64 / complex32 tensors), `_rebuild_parameter[_with_state]`,
// `_rebuild_from_type_v2` (Python attributes dropped) and `torch.Size`.
//
// Value mapping of the result: dict -> c10::GenericDict (insertion order kept), list ->
// GenericList, tuple -> Tuple, str -> String, int (must fit in int64) -> Int, float ->
// Double, bool -> Bool, None -> None, torch.device -> Device, tensor -> at::Tensor (CPU,
// whatever device it was saved from), and a bare torch dtype (e.g. a config value
// `torch.bfloat16`) -> the String "torch.bfloat16". Sets, bytes, and bare storages are
// refused.
#pragma once
#include <ATen/core/ivalue.h>
#include <c10/core/Storage.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace diffsynth {

// Loads the object saved in a torch.save zip file. Tensors are CPU tensors whose storage
// views the memory-mapped file (zero copies): torch writes records uncompressed and
// 64-byte aligned. A record is copied only when it is compressed (deflate, e.g. an archive
// re-zipped by another tool) or not 16-byte aligned. The mapping stays alive as long as
// any tensor uses it. Tensors that shared a storage when saved (a tensor and its slices /
// views) share it again, with their storage offsets and strides.
// Failures (not a zip, legacy pre-1.6 format, TorchScript archive, truncated file, missing
// data.pkl or storage record, record too short, forbidden global, malformed pickle) throw
// diffsynth::Error with one line "<path>: <problem>".
c10::IValue load_torch_file(const std::string& path);

// The bytes of record `<archive>/<name>` of a torch.save zip file (e.g. "byteorder"), or
// nullopt when the archive has none. Errors as load_torch_file's.
std::optional<std::string> read_torch_file_record(const std::string& path, const std::string& name);

// Writes a state dict as torch.save does (libtorch's Python-compatible pickle_save: a zip of
// data.pkl + one 64-byte-aligned storage record per tensor), atomically. `extra_records` are
// added as `<archive>/<name>`: torch.load ignores them (the tiny model folders keep their
// config entry there, as safetensors files keep it in their metadata).
void save_torch_file(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& state_dict,
                     const std::vector<std::pair<std::string, std::string>>& extra_records = {});

// Returns the bytes of storage record `record` (the persistent-id key, e.g. "0", stored
// as "<archive>/data/0"). `nbytes` is the number of bytes the pickle needs from it (the
// largest storage referencing the key); it is never 0 (empty storages are not loaded).
// The returned storage must hold at least `nbytes` bytes (a shorter one is an error) and
// be suitably aligned for any dtype (16 bytes; a misaligned one is copied). It may be shared
// by several tensors. Exceptions it throws propagate unchanged.
using TorchRecordLoader = std::function<c10::Storage(const std::string& record, std::size_t nbytes)>;

// Validates and unpickles one pickle stream (the bytes of data.pkl); `path` is used in
// error messages only. Every storage record the pickle references is requested through
// `load_record` (once per key) after the whole stream has been validated and before any
// tensor is built. Throws diffsynth::Error for any problem in the stream (libtorch's own
// c10::Error is converted, first line only); nothing else escapes unless `load_record`
// throws it. This is also the libFuzzer entry point (fuzz/fuzz_torch_pickle.cpp).
c10::IValue parse_torch_pickle(const std::string& path, const std::uint8_t* data, std::size_t size,
                               const TorchRecordLoader& load_record);

}  // namespace diffsynth
