#!/usr/bin/env python3
"""Writes the torch.save fixtures tests/cpp/test_torch_pickle.cpp reads.

Usage: make_pickle_fixtures.py OUT_DIR

Every tensor value is deterministic (arange-based) so the C++ test recomputes it instead of
reading a second copy; the formulas are repeated next to each fixture in the C++ test.
"""
import collections
import io
import os
import pickle
import struct
import sys
import zipfile

import torch


def arange(n, dtype):
    return torch.arange(n, dtype=torch.float64).to(dtype)


def plain_state_dict():
    """Several dtypes, a view sharing storage, a 0-dim tensor, non-ASCII keys, scalars."""
    base = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    sd = collections.OrderedDict()
    sd["f32"] = torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 1.0
    sd["f16"] = arange(6, torch.float16) * 0.25
    sd["bf16"] = arange(8, torch.bfloat16).reshape(2, 4) - 3.0
    sd["i64"] = torch.arange(5, dtype=torch.int64) * 1_000_000_007 - 2
    sd["bool"] = torch.tensor([True, False, True, True])
    sd["f8"] = (arange(8, torch.float32) * 0.5).to(torch.float8_e4m3fn)
    sd["u16"] = (torch.arange(3, dtype=torch.int32) + 60000).to(torch.uint16)
    sd["f64"] = arange(3, torch.float64) / 3.0
    sd["scalar"] = torch.tensor(7.5)
    sd["base"] = base
    sd["view"] = base[1:3, 2:]  # storage offset 7, strides (5, 1)
    sd["transposed"] = base.t()  # strides (1, 5)
    sd["gewicht_ä_重み"] = torch.ones(2)
    sd["param"] = torch.nn.Parameter(torch.arange(4, dtype=torch.float32))
    sd["empty"] = torch.zeros(0, 3)
    sd["step"] = 42
    sd["big"] = 2**40 + 3  # LONG1 with 6 bytes
    sd["neg"] = -123456789012
    sd["lr"] = 0.125
    sd["name"] = "unet"
    sd["flag"] = True
    sd["nothing"] = None
    sd["dims"] = (1, 2, 3)
    sd["list"] = [1, "two", 3.0]
    sd["nested"] = {"inner": {"w": torch.full((2, 2), 3.0)}, "k": 1}
    sd["dtype"] = torch.bfloat16
    sd["device"] = torch.device("cuda", 1)
    return sd


def write_zip(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in entries:
            z.writestr(name, data)


def zip_entries(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    p = lambda name: os.path.join(out, name)

    torch.save(plain_state_dict(), p("plain.pth"))
    torch.save({"state_dict": {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, "epoch": 3},
               p("wrapped.pth"))

    # module.state_dict(): an OrderedDict with a `_metadata` attribute (pickle BUILD).
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(3, 4))
        lin.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    torch.save(lin.state_dict(), p("module_state_dict.pth"))

    # The same dict through pickle protocol 4 (FRAME, MEMOIZE, SHORT_BINUNICODE, ...).
    torch.save(plain_state_dict(), p("protocol4.pth"), pickle_protocol=4)
    # ... and protocol 1 (text INT / LONG opcodes, no TUPLE1-3 / NEWTRUE).
    torch.save(plain_state_dict(), p("protocol1.pth"), pickle_protocol=1)

    # Re-zipped with deflate: records must be decompressed (copied).
    write_zip(p("deflated.pth"), zip_entries(p("wrapped.pth")), zipfile.ZIP_DEFLATED)
    # Re-zipped stored but without torch's 64-byte alignment.
    write_zip(p("unaligned.pth"), [("x/" + n.split("/", 1)[1], d) for n, d in zip_entries(p("wrapped.pth"))])

    # Zip64 records everywhere (what torch writes past 4 GiB): sizes and offsets saturated to
    # 0xFFFFFFFF in the central directory, the real values in zip64 extra fields.
    limit = zipfile.ZIP64_LIMIT
    zipfile.ZIP64_LIMIT = 0
    try:
        write_zip(p("zip64.pth"), zip_entries(p("wrapped.pth")))
    finally:
        zipfile.ZIP64_LIMIT = limit
    assert b"\x01\x00" in open(p("zip64.pth"), "rb").read()

    # A TorchScript archive is not a state dict.
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), p("torchscript.pt"))

    # Legacy (non-zip) format.
    torch.save({"w": torch.ones(2)}, p("legacy.pth"), _use_new_zipfile_serialization=False)

    # Truncated archive: the first half of a valid one.
    data = open(p("plain.pth"), "rb").read()
    open(p("truncated.pth"), "wb").write(data[: len(data) // 2])

    # Forbidden globals: os.system through REDUCE, and a __main__ class.
    evil = pickle.dumps(Evil(), protocol=2)
    assert b"system" in evil
    write_zip(p("forbidden_os_system.pth"), [("archive/data.pkl", evil), ("archive/byteorder", b"little")])

    class Foo:
        def __init__(self):
            self.x = 1

    Foo.__module__ = "__main__"
    Foo.__qualname__ = "Foo"
    globals()["Foo"] = Foo
    torch.save({"obj": Foo()}, p("forbidden_main_class.pth"))

    # A zip without data.pkl.
    write_zip(p("missing_data_pkl.pth"),
              [(n, d) for n, d in zip_entries(p("wrapped.pth")) if not n.endswith("data.pkl")])
    # data.pkl references record data/0 that is not there.
    write_zip(p("missing_record.pth"),
              [(n, d) for n, d in zip_entries(p("wrapped.pth")) if not n.endswith("/data/0")])
    # The record is shorter than its storage.
    write_zip(p("short_record.pth"),
              [(n, d[:8] if n.endswith("/data/0") else d) for n, d in zip_entries(p("wrapped.pth"))])

    open(p("not_a_zip.bin"), "wb").write(b"hello, this is not a checkpoint at all\n" * 4)
    open(p("tiny.bin"), "wb").write(b"PK")
    open(p("empty.bin"), "wb").write(b"")

    # A pickle whose tensor reaches past its storage (crafted: 6-element storage, shape (4, 4)).
    tensor_pkl = zip_entries(p("wrapped.pth"))
    pkl = [d for n, d in tensor_pkl if n.endswith("data.pkl")][0]
    # Replace the size tuple (2, 3) by (4, 4): K\x02K\x03\x86 -> K\x04K\x04\x86
    assert pkl.count(b"K\x02K\x03\x86") == 1
    bad_pkl = pkl.replace(b"K\x02K\x03\x86", b"K\x04K\x04\x86")
    write_zip(p("out_of_bounds.pth"), [(n, bad_pkl if n.endswith("data.pkl") else d) for n, d in tensor_pkl])

    print("wrote pickle fixtures to", out)


if __name__ == "__main__":
    main()
