"""Real-layout safetensors files without data: the header with the real keys, dtypes and
shapes, then a hole (ftruncate). Identification and zero-copy loading never read the data, so
a 40 GB layout costs nothing on disk; tests and benchmarks share this writer."""
import json
import struct


def write_sparse_safetensors(path, layout, dtype="BF16", itemsize=2):
    """layout: [(key, shape), ...]. Returns the file size."""
    header, off = {}, 0
    for k, shape in layout:
        n = itemsize
        for d in shape:
            n *= d
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + off)
    return 8 + len(h) + off
