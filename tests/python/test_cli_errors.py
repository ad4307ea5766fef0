"""Bad input through the CLI: every case exits 2 with one line on stderr that names the file
and the problem -- never a crash, an abort or a hang."""
import json
import os
import pickle
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from conftest import run


def st_bytes(header, data=b""):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def f32(shape, begin, end):
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


CASES = {
    "short.safetensors": (b"abc", "too short"),
    "past_eof.safetensors": (struct.pack("<Q", 1000) + b"{}", "past the end"),
    "huge_header.safetensors": (struct.pack("<Q", 200_000_000) + b"{}", "100 MB"),
    "not_utf8.safetensors": (st_bytes(b'{"\xff": 1}'), "not valid UTF-8 JSON"),
    "not_json.safetensors": (st_bytes(b"hello"), "not valid UTF-8 JSON"),
    "not_object.safetensors": (st_bytes(b"[1]"), "not a JSON object"),
    "bad_dtype.safetensors": (st_bytes({"w": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown dtype"),
    "size_mismatch.safetensors": (st_bytes({"w": f32([2, 2], 0, 12)}, b"\0" * 12), "span 12"),
    "past_data.safetensors": (st_bytes({"w": f32([4], 0, 16)}, b"\0" * 8), "past the data"),
    "overlap.safetensors": (st_bytes({"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, b"\0" * 12), "overlaps"),
    "gap.safetensors": (st_bytes({"a": f32([1], 0, 4), "b": f32([1], 8, 12)}, b"\0" * 12), "gap"),
    "duplicate.safetensors": (st_bytes(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                       b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8), "twice"),
    "negative.safetensors": (st_bytes({"a": f32([-1], 0, 0)}), "negative"),
    "overflow.safetensors": (st_bytes({"a": f32([2 ** 40, 2 ** 40], 0, 0)}), "overflows"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("command", ["hash", "inspect", "load"])
def test_bad_safetensors(tmp_path, diffsynth_bin, name, command):
    data, needle = CASES[name]
    p = tmp_path / name
    p.write_bytes(data)
    r = run([diffsynth_bin, command, p], check=False, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(p) in lines[0] and needle in lines[0], lines[0]


def test_directory_without_models_and_missing_file(tmp_path, diffsynth_bin):
    r = run([diffsynth_bin, "hash", tmp_path], check=False)
    assert r.returncode == 2 and str(tmp_path) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run([diffsynth_bin, "hash", tmp_path / "nope.safetensors"], check=False)
    assert r.returncode == 2 and "nope.safetensors" in r.stderr and "cannot open" in r.stderr


def test_index_json_missing_shard(tmp_path, diffsynth_bin):
    save_file({"a": torch.zeros(1)}, str(tmp_path / "m-1.safetensors"))
    idx = tmp_path / "m.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}))
    r = run([diffsynth_bin, "hash", idx], check=False)
    assert r.returncode == 2 and "m-2.safetensors" in r.stderr


def test_truncated_pth(tmp_path, diffsynth_bin):
    p = tmp_path / "w.pth"
    torch.save({"w": torch.randn(64, 64)}, str(p))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    r = run([diffsynth_bin, "hash", p], check=False, timeout=60)
    assert r.returncode == 2 and str(p) in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/diffsynth_pwned",))


def test_pickle_with_forbidden_global_is_refused_not_run(tmp_path, diffsynth_bin):
    p = tmp_path / "evil.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
        z.writestr("evil/version", "3\n")
    if os.path.exists("/tmp/diffsynth_pwned"):
        os.remove("/tmp/diffsynth_pwned")
    r = run([diffsynth_bin, "hash", p], check=False, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "system" in r.stderr and str(p) in r.stderr
    assert not os.path.exists("/tmp/diffsynth_pwned")


def test_legacy_pickle(tmp_path, diffsynth_bin):
    p = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, str(p), _use_new_zipfile_serialization=False)
    r = run([diffsynth_bin, "hash", p], check=False, timeout=60)
    assert r.returncode == 2 and "legacy" in r.stderr and str(p) in r.stderr


def test_bad_options(tmp_path, diffsynth_bin):
    p = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(1)}, str(p))
    for args in (["load", p, "--dtype", "int3"], ["load", p, "--device", "tpu"], ["frobnicate"], ["hash"]):
        r = run([diffsynth_bin, *args], check=False)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert run([diffsynth_bin, "--help"]).returncode == 0
    assert run([diffsynth_bin, "hash", "--help"]).returncode == 0
