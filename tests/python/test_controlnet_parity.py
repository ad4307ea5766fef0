"""QwenImageBlockWiseControlNet numerical parity: the reference class with random weights at a
reduced size, our C++ class loading the same file; both entry points (conditioning and every
block) compared. Tolerances: fp32 max abs diff <= 1e-5 (the issue's bar); bf16 within two bf16
ulps of the output scale (the same kernels, different op grouping may round differently)."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsynth.models.qwen_image_controlnet import QwenImageBlockWiseControlNet
from conftest import run


@pytest.mark.parametrize("additional_in_dim", [0, 4])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_controlnet_blocks(tmp_path, parity_bin, additional_in_dim, dtype):
    torch.manual_seed(additional_in_dim)
    kwargs = dict(num_layers=3, in_dim=64, additional_in_dim=additional_in_dim, dim=128)
    model = QwenImageBlockWiseControlNet(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    weights = tmp_path / "cn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    inputs = {"conditioning": torch.randn(2, 40, 64 + additional_in_dim), "img": torch.randn(2, 40, 128) * 3}
    save_file(inputs, str(tmp_path / "in.safetensors"))
    tdtype = getattr(torch, dtype)
    run([parity_bin, "qwen_image_controlnet", weights, tmp_path / "in.safetensors", tmp_path / "out.safetensors", dtype,
         '{"num_layers": 3, "additional_in_dim": %d, "dim": 128}' % additional_in_dim])
    ours = load_file(str(tmp_path / "out.safetensors"))
    model = model.to(tdtype)
    with torch.no_grad():
        cond = model.process_controlnet_conditioning(inputs["conditioning"].to(tdtype))
        ref = {"conditioning_out": cond}
        for i in range(3):
            ref[f"block_{i}"] = model.blockwise_forward(inputs["img"].to(tdtype), cond, i)
    for k, r in ref.items():
        r = r.float()
        diff = (ours[k] - r).abs().max().item()
        scale = r.abs().max().item()
        if dtype == "float32":
            assert diff <= 1e-5 * max(1.0, scale), (k, diff, scale)
        else:
            assert diff <= 2 * 2 ** -7 * scale, (k, diff, scale)
