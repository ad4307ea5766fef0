"""hash_model_file parity: 60 random layouts (random keys incl. non-ASCII, ranks 0-4, zero
dims, 1-4 shards, safetensors and torch zip pickles with nested dicts and wrappers), hashed by
`diffsynth hash` and by the reference's diffsynth.core.loader.file.hash_model_file."""
import random

import pytest
import torch
from safetensors.torch import save_file

from diffsynth.core.loader.file import hash_model_file
from conftest import run

SEGMENTS = ["blocks", "attn", "to_q", "weight", "bias", "norm", "0", "1", "12", "ff.net.2", "img_mod.1",
            "权重", "é", "ß", "Ω", "🙂", "a b", "x-y", "ключ", "مفتاح", "\u0301", "日本"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8]


def random_key(rng):
    return ".".join(rng.choice(SEGMENTS) for _ in range(rng.randint(1, 5)))


def random_tensor(rng):
    shape = [rng.choice([0, 1, 2, 3, 5]) for _ in range(rng.randint(0, 4))]
    return torch.zeros(shape, dtype=rng.choice(DTYPES))


def random_dict(rng, n, nested):
    d = {}
    for _ in range(n):
        k = random_key(rng)
        if nested and rng.random() < 0.15:
            d[k] = {random_key(rng): random_tensor(rng) for _ in range(rng.randint(1, 4))}
        else:
            d[k] = random_tensor(rng)
    return d


def make_layout(rng, tmp_path, i):
    fmt = "safetensors" if i % 2 == 0 else "pth"
    shards = rng.randint(1, 4)
    paths = []
    for s in range(shards):
        sd = random_dict(rng, rng.randint(1, 25), nested=(fmt == "pth"))
        path = tmp_path / f"layout{i}-{s}.{fmt}"
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        else:
            wrap = rng.random()
            if wrap < 0.15:
                sd = {"state_dict": sd}
            elif wrap < 0.25:
                sd = {"module": sd}
            elif wrap < 0.3:
                sd = {"model_state": sd}
            torch.save(sd, str(path))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("i", range(60))
def test_random_layout(i, tmp_path, diffsynth_bin):
    rng = random.Random(1000 + i)
    paths = make_layout(rng, tmp_path, i)
    ref = hash_model_file(paths if len(paths) > 1 else paths[0])
    ours = run([diffsynth_bin, "hash", *paths]).stdout.strip()
    assert ours == ref
    if i % 5 == 0:
        ref_ns = hash_model_file(paths if len(paths) > 1 else paths[0], with_shape=False)
        assert run([diffsynth_bin, "hash", "--without-shape", *paths]).stdout.strip() == ref_ns


def test_spec_vectors(tmp_path, diffsynth_bin):
    p = tmp_path / "v1.safetensors"
    save_file({"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "scale": torch.zeros(())}, str(p))
    assert run([diffsynth_bin, "hash", p]).stdout.strip() == "cdf0726fd23f31be0c8f82e838646a79"
    q = tmp_path / "v2.pth"
    torch.save({"state": {"x": torch.zeros(1), "y": torch.zeros(2, 2)}, "z": torch.zeros(3)}, str(q))
    assert run([diffsynth_bin, "hash", q]).stdout.strip() == "3a9bd07e9dee03541159a9d586a5658b"
    assert hash_model_file(str(q)) == "3a9bd07e9dee03541159a9d586a5658b"


def test_index_json_and_folder(tmp_path, diffsynth_bin):
    import json
    a, b = tmp_path / "model-00001-of-00002.safetensors", tmp_path / "model-00002-of-00002.safetensors"
    save_file({"x": torch.zeros(2)}, str(a))
    save_file({"y": torch.zeros(3, 1)}, str(b))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": a.name, "y": b.name}}))
    ref = hash_model_file([str(a), str(b)])
    assert run([diffsynth_bin, "hash", tmp_path / "model.safetensors.index.json"]).stdout.strip() == ref
    assert run([diffsynth_bin, "hash", tmp_path]).stdout.strip() == ref
