"""QwenImageDiT numerical parity through the pipeline's model function (model_fn_qwen_image).

The reference hard-codes its widths (3072 / 24 x 128 / 3584), so the reduced reference model is
assembled from the reference's own building blocks at small widths (dim 64, 2 heads x 32, text
dim 48, RoPE axes [4, 14, 14] -- the same head_dim split rule as [16, 56, 56] for 128), and run by
the reference's model_fn_qwen_image. Our C++ class is built at the same widths from the same
weights file. Tolerances: fp32 max abs diff <= 1e-4 x max|output| (the issue's bar); bf16 within
bf16 rounding of the reference's bf16 run: 4 bf16 ulps (2^-7 relative each) of the output scale,
since the same kernels run but two stacks of bf16 blocks may round single elements differently.
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsynth.pipelines.qwen_image import model_fn_qwen_image
import reference_models
from conftest import run

DIM, HEADS, HEAD_DIM, TEXT_DIM, LAYERS = 64, 2, 32, 48, 2


def reduced_dit(layered=False):
    return reference_models.reduced_dit(DIM, HEADS, HEAD_DIM, TEXT_DIM, LAYERS, layered)


def kwargs_json(layered):
    return ('{"num_layers": %d, "dim": %d, "num_attention_heads": %d, "attention_head_dim": %d, '
            '"joint_attention_dim": %d, "use_layer3d_rope": %s, "use_additional_t_cond": %s}'
            % (LAYERS, DIM, HEADS, HEAD_DIM, TEXT_DIM, str(layered).lower(), str(layered).lower()))


CASES = {
    # name: (latent h, w, text length, extra)
    "square": (8, 8, 7, {}),
    "non_square": (6, 10, 5, {}),
    "edit": (6, 8, 4, {"edit": [(1, 4, 6), (1, 6, 8)]}),
    "edit_zero_cond_t": (6, 8, 4, {"edit": [(1, 6, 8)], "zero_cond_t": True}),
    "layered": (4, 6, 3, {"layered": 2}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_fn(tmp_path, parity_bin, case, dtype):
    h, w, lt, extra = CASES[case]
    layered = "layered" in extra
    torch.manual_seed(sorted(CASES).index(case))
    model = reduced_dit(layered)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "dit.safetensors"))
    n = extra["layered"] + 1 if layered else 1
    inputs = {
        "latents": torch.randn(n, 16, h, w),
        "timestep": torch.tensor([937.25]),
        "prompt_emb": torch.randn(1, lt, TEXT_DIM),
        "prompt_emb_mask": torch.ones(1, lt, dtype=torch.long),
    }
    for i, (f, eh, ew) in enumerate(extra.get("edit", [])):
        inputs[f"edit_latents_{i}"] = torch.randn(f, 16, eh, ew)
    if layered:
        inputs["layer_input_latents"] = torch.randn(1, 16, h, w)
    save_file(inputs, str(tmp_path / "in.safetensors"))
    options = {}
    if layered:
        options["layer_num"] = extra["layered"]
    if extra.get("zero_cond_t"):
        options["zero_cond_t"] = True
    run([parity_bin, "qwen_image_dit", tmp_path / "dit.safetensors", tmp_path / "in.safetensors",
         tmp_path / "out.safetensors", dtype, kwargs_json(layered), json.dumps(options)])
    ours = load_file(str(tmp_path / "out.safetensors"))["out"]

    td = getattr(torch, dtype)
    model = model.to(td)
    cast = {k: (v.to(td) if v.is_floating_point() else v) for k, v in inputs.items()}
    kw = {}
    if "edit" in extra:
        kw["edit_latents"] = [cast[f"edit_latents_{i}"] for i in range(len(extra["edit"]))]
    if extra.get("zero_cond_t"):
        kw["zero_cond_t"] = True
    if layered:
        kw["layer_num"] = extra["layered"]
        kw["layer_input_latents"] = cast["layer_input_latents"]
    with torch.no_grad():
        ref = model_fn_qwen_image(dit=model, latents=cast["latents"], timestep=cast["timestep"],
                                  prompt_emb=cast["prompt_emb"], prompt_emb_mask=cast["prompt_emb_mask"],
                                  height=h * 8, width=w * 8, **kw).float()
    assert ours.shape == ref.shape
    scale = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    bound = 1e-4 * scale if dtype == "float32" else 4 * 2 ** -7 * scale
    assert diff <= bound, (case, dtype, diff, scale)
