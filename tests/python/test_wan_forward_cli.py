"""`diffsynth forward` on a Wan video DiT: the files pick the model (5-D latents NxCxFxHxW), disk
and CPU offload give the resident output bit for bit, the output is the reference's
model_fn_wan_video on the same inputs (written by --save-output), LoRA hot-loads as it fuses, and
wrong shapes are one-line errors naming the model."""
import copy
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import one_line_error, run

# A tiny Wan2.1-T2V DiT (the reference class at small widths, the 14B entry's structure).
KWARGS = dict(has_image_input=False, patch_size=[1, 2, 2], in_dim=16, dim=96, ffn_dim=160, freq_dim=32, text_dim=48,
              out_dim=16, num_heads=3, num_layers=2, eps=1e-6)
LATENTS = "1x16x3x4x6"


def metadata(kwargs):
    return {"diffsynth_model_config": json.dumps({"model_name": "wan_video_dit",
                                                  "model_class": "diffsynth.models.wan_video_dit.WanModel",
                                                  "extra_kwargs": kwargs})}


def make_model(kwargs=KWARGS, seed=0):
    from diffsynth.models.wan_video_dit import WanModel
    torch.manual_seed(seed)
    model = WanModel(**kwargs).eval()
    with torch.no_grad():  # every weight counts, activations stay O(1)
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "modulation" not in name:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith(("norm_q.weight", "norm_k.weight")) else 0.0))
    return model


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    d = tmp_path_factory.mktemp("wan")
    model = make_model()
    path = str(d / "dit.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=metadata(KWARGS))
    return model, path


def forward(diffsynth_bin, path, *opts, save=None):
    cmd = [diffsynth_bin, "forward", path, "--text-tokens", "5", *opts]
    if save:
        cmd += ["--save-output", save]
    p = run(cmd)
    stats = re.search(r"output shape (\S+)  mean (\S+)  std (\S+)  min (\S+)  max (\S+)", p.stdout).groups()
    assert re.search(r"load [0-9.]+ s  forward [0-9.]+ s  peak RSS .* \(\d+ bytes\)", p.stdout), p.stdout
    assert "weights held: " in p.stdout
    return stats, p


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_offload_equals_resident_and_reference(diffsynth_bin, tiny_wan, tmp_path, dtype):
    from diffsynth.pipelines.wan_video import model_fn_wan_video
    model, path = tiny_wan
    runs = {}
    for name, opts in {"resident": [], "disk": ["--offload", "disk"], "cpu": ["--offload", "cpu"],
                       "disk_limit0": ["--offload", "disk", "--vram-limit", "0"]}.items():
        out = str(tmp_path / f"{name}.safetensors")
        stats, p = forward(diffsynth_bin, path, "--latents", LATENTS, "--dtype", dtype, "--seed", "7", *opts, save=out)
        assert "Using wan_video_dit from" in p.stdout
        runs[name] = (stats, load_file(out))
    base_stats, base = runs["resident"]
    assert base_stats[0] == "1x16x3x4x6"
    assert base["output"].shape == (1, 16, 3, 4, 6) and base["output"].dtype == torch.float32
    assert base["latents"].shape == (1, 16, 3, 4, 6) and base["context"].shape == (1, 5, 48)
    for name, (stats, t) in runs.items():
        assert stats == base_stats, (name, stats, base_stats)
        assert torch.equal(t["output"], base["output"]), name
    # The reference on the same inputs.
    td = getattr(torch, dtype)
    with torch.no_grad():
        ref = model_fn_wan_video(dit=copy.deepcopy(model).to(td), latents=base["latents"].to(td), timestep=base["timestep"].to(td),
                                 context=base["context"].to(td)).float()
    scale = ref.abs().max().item()
    err = (base["output"] - ref).abs().max().item()
    bar = 1e-4 * scale if dtype == "float32" else 4 * 2 ** -7 * scale
    assert err <= bar, f"{dtype}: max abs diff {err:.3g} > {bar:.3g}"


def test_large_weight_read_in_slices_equals_resident(diffsynth_bin, tmp_path):
    """A weight over 64 MiB (text_embedding.0, 96 x 200000 F32 = 77 MB) is read from the file in
    32 MiB slices under disk offload; the output is still the resident one, bit for bit."""
    kwargs = {**KWARGS, "text_dim": 200000, "num_layers": 1}
    torch.manual_seed(3)
    sd = {k: (torch.randn(v.shape) / (v[0].numel() ** 0.5 if v.dim() >= 2 else 5.0)).contiguous()
          for k, v in make_model_meta(kwargs).items()}
    path = str(tmp_path / "wide.safetensors")
    save_file(sd, path, metadata=metadata(kwargs))
    del sd
    outs = []
    for opts in ([], ["--offload", "disk"]):
        out = str(tmp_path / f"o{len(outs)}.safetensors")
        forward(diffsynth_bin, path, "--latents", "1x16x1x4x4", *opts, save=out)
        outs.append(load_file(out)["output"])
    assert torch.equal(outs[0], outs[1])


def make_model_meta(kwargs):
    from diffsynth.models.wan_video_dit import WanModel
    with torch.device("meta"):
        return WanModel(**kwargs).state_dict()


def test_default_latents_and_seed(diffsynth_bin, tiny_wan):
    _, path = tiny_wan
    a, _ = forward(diffsynth_bin, path)
    assert a[0] == "1x16x3x16x16"
    assert forward(diffsynth_bin, path)[0] == a
    assert forward(diffsynth_bin, path, "--seed", "1")[0] != a


def test_lora_hotload_equals_fused(diffsynth_bin, tiny_wan, tmp_path):
    model, path = tiny_wan
    g = torch.Generator().manual_seed(1)
    lora = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("blocks."):
            lora[f"{name}.lora_A.weight"] = torch.randn(4, mod.in_features, generator=g) / mod.in_features ** 0.5
            lora[f"{name}.lora_B.weight"] = torch.randn(mod.out_features, 4, generator=g) * 0.3
    lora_path = str(tmp_path / "lora.safetensors")
    save_file(lora, lora_path)
    n = len(lora) // 2
    f32 = ["--latents", LATENTS, "--dtype", "float32"]
    base, _ = forward(diffsynth_bin, path, *f32)
    fused, p = forward(diffsynth_bin, path, *f32, "--lora", lora_path)
    assert f"{n} tensors are fused by LoRA." in p.stdout
    assert fused != base
    hot, p = forward(diffsynth_bin, path, *f32, "--offload", "disk", "--lora", lora_path)
    assert f"{n} tensors are patched by LoRA." in p.stdout
    for a, b in zip(hot[1:], fused[1:]):  # mean, std, min, max (6 significant digits)
        assert abs(float(a) - float(b)) <= 1e-4 * max(1.0, abs(float(b))), (hot, fused)


@pytest.mark.parametrize("latents,needles", [
    ("1x16x8x8", ["holds a Wan video DiT (wan_video_dit)", "5-D latents NxCxFxHxW", "1x16x3x16x16"]),
    ("1x8x3x8x8", ["takes 16 latent channels (in_dim), got 8"]),
    ("1x16x3x5x8", ["height 5 is not a multiple of the patch size 2"]),
    ("1x16x3x8x7", ["width 7 is not a multiple of the patch size 2"]),
    ("1x16x3x8x8x2", ["expected NxCxHxW (Qwen-Image) or NxCxFxHxW (Wan)"]),
    ("1x16x0x8x8", ["positive integers"]),
    ("1x16x100000x100000x100", ["--latents 1x16x100000x100000x100", "needs about"]),
])
def test_bad_latents(diffsynth_bin, tiny_wan, latents, needles):
    _, path = tiny_wan
    p = run([diffsynth_bin, "forward", path, "--latents", latents], check=False)
    one_line_error(p, *needles)
    assert "Loading models from" not in p.stdout  # refused before loading


def test_text_tokens_bounded(diffsynth_bin, tiny_wan):
    _, path = tiny_wan
    p = run([diffsynth_bin, "forward", path, "--latents", LATENTS, "--text-tokens", str(10**12)], check=False)
    one_line_error(p, "--text-tokens 1000000000000", "x 48 text embeddings", "needs about")


def test_qwen_image_dit_refuses_5d(diffsynth_bin, tmp_path):
    import reference_models
    with torch.device("meta"):
        m = reference_models.reduced_dit(64, 2, 32, 48, 2, init=False)
    path = str(tmp_path / "qwen.safetensors")
    save_file({k: torch.zeros(v.shape, dtype=torch.bfloat16) for k, v in m.state_dict().items()}, path,
              metadata={"diffsynth_model_config": json.dumps({
                  "model_name": "qwen_image_dit", "model_class": "diffsynth.models.qwen_image_dit.QwenImageDiT",
                  "extra_kwargs": {"dim": 64, "num_attention_heads": 2, "attention_head_dim": 32,
                                   "joint_attention_dim": 48, "num_layers": 2}})})
    p = run([diffsynth_bin, "forward", path, "--latents", "1x16x3x8x8"], check=False)
    one_line_error(p, "holds a Qwen-Image DiT (qwen_image_dit)", "4-D latents NxCxHxW")


def test_save_output_path_checked_first(diffsynth_bin, tiny_wan, tmp_path):
    _, path = tiny_wan
    p = run([diffsynth_bin, "forward", path, "--save-output", str(tmp_path / "no" / "such" / "o.safetensors")],
            check=False)
    one_line_error(p, "--save-output")
    assert "Loading models from" not in p.stdout
