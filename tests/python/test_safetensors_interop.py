"""Our safetensors reader and writer against the Python `safetensors` package, both ways:
Python writes every dtype, diffsynth_parity reads it (zero-copy) and writes it back with our
writer, Python reads that and compares bytes, dtypes, shapes and metadata."""
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
          torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


def test_round_trip_every_dtype(tmp_path, parity_bin):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dt in enumerate(DTYPES):
        x = torch.randn(3, 5, 7, generator=g) * 10
        tensors[f"t{i}.{str(dt)[6:]}"] = x.to(dt) if dt != torch.bool else x > 0
    tensors["scalar"] = torch.tensor(1.25)
    tensors["empty"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    tensors["odd.非ASCII"] = torch.arange(7, dtype=torch.int16)
    src, dst = tmp_path / "py.safetensors", tmp_path / "cpp.safetensors"
    save_file(tensors, str(src), metadata={"format": "pt", "note": "ünïcode"})
    run([parity_bin, "roundtrip", src, "-", dst])
    back = load_file(str(dst))
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype, k
        assert back[k].shape == v.shape, k
        assert back[k].view(-1).view(torch.uint8).tolist() == v.view(-1).view(torch.uint8).tolist() if v.numel() else True
    with safe_open(str(dst), "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "ünïcode"}
