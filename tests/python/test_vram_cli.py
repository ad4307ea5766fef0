"""`diffsynth forward` with VRAM management: disk offload keeps the peak RSS far below the
checkpoint's size, offload configs give the resident output, bad options fail clearly."""
import os
import re
import sys

import pytest

from conftest import run

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from sparse_checkpoint import write_sparse_safetensors  # noqa: E402


def dit_layout(dim, heads, head_dim, text_dim, layers):
    import torch
    import reference_models
    with torch.device("meta"):  # no memory: a big parent's RSS would also be inherited by the child
        m = reference_models.reduced_dit(dim, heads, head_dim, text_dim, layers, init=False)
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def metadata_config(dim, heads, head_dim, text_dim, layers):
    import json
    return json.dumps({"model_name": "qwen_image_dit", "model_class": "diffsynth.models.qwen_image_dit.QwenImageDiT",
                       "extra_kwargs": {"dim": dim, "num_attention_heads": heads, "attention_head_dim": head_dim,
                                        "joint_attention_dim": text_dim, "num_layers": layers}})


def forward(diffsynth_bin, path, *opts):
    p = run([diffsynth_bin, "forward", path, "--latents", "1x16x8x8", "--text-tokens", "4", *opts])
    stats = re.search(r"output shape (\S+)  mean (\S+)  std (\S+)  min (\S+)  max (\S+)", p.stdout).groups()
    rss = float(re.search(r"peak RSS .*\((\d+) bytes\)", p.stdout).group(1))
    return stats, rss


def test_disk_offload_bounds_rss(diffsynth_bin, tmp_path):
    # A mid-size DiT (3.2 GiB of bf16 zeros, sparse on disk): dim 1536, 20 layers, text 3584.
    import safetensors.torch  # noqa: F401  (the reference env)
    import json
    import struct
    path = str(tmp_path / "dit.safetensors")
    layout = dit_layout(1536, 12, 128, 3584, 20)
    size = write_sparse_safetensors(path, layout)
    # Add the config as metadata so ModelPool knows the reduced model: rewrite the header.
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header["__metadata__"] = {"diffsynth_model_config": metadata_config(1536, 12, 128, 3584, 20)}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    data_size = size - 8 - n
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + data_size)
    size = os.path.getsize(path)
    assert size > 2e9
    stats, rss = forward(diffsynth_bin, path, "--offload", "disk")
    assert stats[0] == "1x16x8x8"
    assert rss < size / 3, f"peak RSS {rss / 2**20:.0f} MiB for a {size / 2**30:.2f} GiB checkpoint"


def test_offload_configs_match_resident(diffsynth_bin, tmp_path):
    import torch
    from safetensors.torch import save_file
    import reference_models
    torch.manual_seed(0)
    m = reference_models.reduced_dit(64, 2, 32, 48, 2)
    path = str(tmp_path / "dit.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in m.state_dict().items()}, path,
              metadata={"diffsynth_model_config": metadata_config(64, 2, 32, 48, 2)})
    base, _ = forward(diffsynth_bin, path)
    assert forward(diffsynth_bin, path, "--offload", "cpu")[0] == base
    assert forward(diffsynth_bin, path, "--offload", "disk")[0] == base
    assert forward(diffsynth_bin, path, "--offload", "disk", "--vram-limit", "0")[0] == base
    assert forward(diffsynth_bin, path, "--offload", "disk", "--prefetch", "3")[0] == base
    assert forward(diffsynth_bin, path, "--vram-config", '{"offload_dtype": "disk", "offload_device": "disk"}')[0] == base
    assert forward(diffsynth_bin, path, "--offload", "cpu", "--offload-dtype", "fp8")[0] != base


@pytest.mark.parametrize("opts,msg", [
    (["--offload", "gpu"], "--offload must be cpu, disk or none"),
    (["--offload-dtype", "fp8"], "--offload-dtype applies to --offload cpu"),
    (["--offload", "cpu", "--offload-dtype", "int3"], "int3"),
    (["--vram-limit", "4"], "--vram-limit needs --offload"),
    (["--vram-config", '{"offload_dtyp": "disk"}'], "unknown field 'offload_dtyp'"),
    (["--latents", "1x16x8"], "--latents"),
    (["--offload", "disk", "--prefetch", "-1"], "--prefetch: Value -1 not in range 0 to 1000"),
])
def test_bad_options(diffsynth_bin, tmp_path, opts, msg):
    p = run([diffsynth_bin, "forward", str(tmp_path / "missing.safetensors"), *opts], check=False)
    assert p.returncode == 2
    assert msg in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_forward_lora_hotload_equals_fused(diffsynth_bin, tmp_path):
    """`forward --lora`: fused without VRAM management, hot-loaded with it (file views stay file
    views, disk offload included); the output statistics agree to fp32 rounding."""
    import torch
    from safetensors.torch import save_file
    import reference_models
    torch.manual_seed(0)
    m = reference_models.reduced_dit(64, 2, 32, 48, 2)
    path = str(tmp_path / "dit.safetensors")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, path,
              metadata={"diffsynth_model_config": metadata_config(64, 2, 32, 48, 2)})
    g = torch.Generator().manual_seed(1)
    lora = {}
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("transformer_blocks."):
            lora[f"{name}.lora_A.weight"] = torch.randn(4, mod.in_features, generator=g) / mod.in_features ** 0.5
            lora[f"{name}.lora_B.weight"] = torch.randn(mod.out_features, 4, generator=g) * 0.3
    lora_path = str(tmp_path / "lora.safetensors")
    save_file(lora, lora_path)
    n = len(lora) // 2
    f32 = ["--dtype", "float32"]
    base, _ = forward(diffsynth_bin, path, *f32)
    p = run([diffsynth_bin, "forward", path, "--latents", "1x16x8x8", "--text-tokens", "4", *f32, "--lora", lora_path])
    assert f"{n} tensors are fused by LoRA." in p.stdout
    fused, _ = forward(diffsynth_bin, path, *f32, "--lora", lora_path)
    assert fused != base
    for offload in (["--offload", "cpu"], ["--offload", "disk"]):
        p = run([diffsynth_bin, "forward", path, "--latents", "1x16x8x8", "--text-tokens", "4", *f32, *offload,
                 "--lora", lora_path])
        assert f"{n} tensors are patched by LoRA." in p.stdout
        hot, _ = forward(diffsynth_bin, path, *f32, *offload, "--lora", lora_path)
        for a, b in zip(hot[1:], fused[1:]):  # mean, std, min, max (6 significant digits)
            assert abs(float(a) - float(b)) <= 1e-4 * max(1.0, abs(float(b))), (offload, hot, fused)
