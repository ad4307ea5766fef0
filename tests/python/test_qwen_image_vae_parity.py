"""QwenImageVAE numerical parity: the reference class at a reduced size (base_dim 8/16, fewer
residual blocks) with random weights, our C++ class loading the same file, encode and decode on
a non-square image (48x80, batch 2), untiled and tiled.

Tolerances
* fp32: max abs diff <= 1e-4 * max|reference output| (the issue's bar; we measure ~1e-6).
* bf16: max abs diff <= 8 bf16 ulps of the output scale (ulp = 2**(floor(log2(max|out|)) - 7)).
  Our default path runs each single-frame causal conv as the equivalent 2-D conv (a third of the
  work), so a conv output can round to the neighbouring bf16 value where the reference's padded
  conv3d sums in another order; such 1-ulp flips propagate through the ~25 convolutions. Measured over
  12 random models: <= 4.5 ulp -- the same size as the reference's own bf16-vs-fp32 error (up to
  ~4.5 ulp), so 8 ulps is "within the reference's bf16 rounding noise" with a 2x margin. We also
  assert our bf16 is no less accurate than the reference's: |ours - fp32| <= 1.5 |ref - fp32|
  + 1 ulp. With exact_conv3d (the reference's padded conv3d) both agree bit for bit (asserted
  <= 1e-6 relative in fp32 and <= 1 ulp in bf16; measured 0).
* Tiled: parity with the reference's own tiled mode (tiled=True), same tolerances -- this pins
  tile placement, the linear ramps over the overlap, and the accumulation dtype.
* Tiled vs untiled (our C++ both ways; tiling is approximate by design: a tile's border pixels
  do not see their neighbours). Latents 12x20, tiles 8x10, strides 4x6 (overlap 4 latents =
  32 pixels decoded). (1) A model whose receptive field is one pixel (off-centre conv taps and
  the attention output zeroed) must give tiled == untiled to fp32 rounding (<= 1e-5 relative):
  tiles cover the image, land where they came from, blend weights are normalised. (2) A model
  with a decaying receptive field (off-centre taps x0.1, attention output zeroed -- random
  weights otherwise see the whole image, unlike a trained VAE): max abs diff <= 10% and mean
  abs diff <= 0.5% of the output scale (measured ~4-6% / ~0.2%).
"""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsynth.models.qwen_image_vae import QwenImageVAE
from conftest import run

torch.set_num_threads(2)

CONFIGS = {
    "rgb": dict(base_dim=16, num_res_blocks=1),
    "rgba": dict(base_dim=16, num_res_blocks=1, image_channels=4),
    # Attention in the encoder's down blocks, other temporal flags, another channel schedule.
    "variant": dict(base_dim=8, dim_mult=[1, 2, 2, 4], num_res_blocks=2, attn_scales=[0.5],
                    temperal_downsample=[True, False, True]),
}


def make_vae(kwargs, seed=0, receptive_field="full"):
    """Reference VAE with unit-gain random weights (activations O(1) at every depth).
    receptive_field "pointwise": only the centre tap of each 3x3 kernel and no attention output;
    "local": off-centre taps scaled by 0.1 and no attention output."""
    torch.manual_seed(seed)
    model = QwenImageVAE(**kwargs).eval()
    off_centre = {"full": 1.0, "local": 0.1, "pointwise": 0.0}[receptive_field]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            if receptive_field != "full":
                if p.dim() >= 4 and p.shape[-1] == 3:
                    centre = p[..., 1, 1].clone()
                    p.mul_(off_centre)
                    p[..., 1, 1] = centre
                if ".attentions." in name and ".proj." in name and name.endswith("weight"):
                    p.zero_()
    return model


def save_model(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def run_ours(parity_bin, tmp_path, weights, inputs, dtype, kwargs, options=None, tag="out"):
    save_file(inputs, str(tmp_path / f"{tag}_in.safetensors"))
    cmd = [parity_bin, "qwen_image_vae", weights, tmp_path / f"{tag}_in.safetensors", tmp_path / f"{tag}.safetensors",
           dtype, json.dumps(kwargs)]
    if options is not None:
        cmd.append(json.dumps(options))
    run(cmd)
    return load_file(str(tmp_path / f"{tag}.safetensors"))


def bf16_ulp(scale):
    return 2.0 ** (math.floor(math.log2(scale)) - 7)


def check(name, ours, ref, dtype, ref_fp32=None):
    ref = ref.float()
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    diff = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    if dtype == "float32":
        print(f"{name}: fp32 max abs diff {diff:.3g} (scale {scale:.3g})")
        assert diff <= 1e-4 * scale, (name, diff, scale)
    else:
        ulp = bf16_ulp(scale)
        print(f"{name}: bf16 max abs diff {diff:.3g} = {diff / ulp:.2f} ulp (scale {scale:.3g})")
        assert diff <= 8 * ulp, (name, diff, scale)
        if ref_fp32 is not None:
            ours_err = (ours - ref_fp32.float()).abs().max().item()
            ref_err = (ref - ref_fp32.float()).abs().max().item()
            print(f"{name}: bf16 vs fp32: ours {ours_err / ulp:.2f} ulp, reference {ref_err / ulp:.2f} ulp")
            assert ours_err <= 1.5 * ref_err + ulp, (name, ours_err, ref_err)


def inputs_for(kwargs, h=48, w=80, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = kwargs.get("image_channels", 3)
    return {"image": torch.rand(batch, c, h, w, generator=g) * 2 - 1,
            "latents": torch.randn(batch, 16, h // 8, w // 8, generator=g)}


# bf16 on the rgb model only: the bf16 reference is the slowest part of this file.
ENCODE_DECODE_CASES = [("rgb", "float32"), ("rgb", "bfloat16"), ("rgba", "float32"), ("variant", "float32")]


@pytest.mark.parametrize("config,dtype", ENCODE_DECODE_CASES)
def test_encode_decode(tmp_path, parity_bin, config, dtype):
    """Our default path (single-frame convs as 2-D convs) against the reference."""
    kwargs = CONFIGS[config]
    model = make_vae(kwargs)
    save_model(model, tmp_path / "vae.safetensors")
    inputs = inputs_for(kwargs)
    ours = run_ours(parity_bin, tmp_path, tmp_path / "vae.safetensors", inputs, dtype, kwargs)
    tdtype = getattr(torch, dtype)
    with torch.no_grad():
        ref32 = {"encoded": model.encode(inputs["image"]), "decoded": model.decode(inputs["latents"])}
        if dtype == "float32":
            ref = ref32
        else:
            model = model.to(tdtype)
            ref = {"encoded": model.encode(inputs["image"].to(tdtype)),
                   "decoded": model.decode(inputs["latents"].to(tdtype))}
    assert set(ours) == {"encoded", "decoded"}
    assert ours["encoded"].shape == (2, 16, 6, 10)
    assert ours["decoded"].shape == inputs["image"].shape
    for k in ref:
        check(f"{config}/{k}", ours[k], ref[k], dtype, ref32[k])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_exact_conv3d_path(tmp_path, parity_bin, dtype):
    """With exact_conv3d the causal convs run as the reference runs them (zero-padded conv3d):
    the same kernels in the same order, so the outputs agree to the last bit here (asserted with
    a margin: 1e-6 relative in fp32, 1 ulp in bf16, in case a kernel's threading differs)."""
    kwargs = CONFIGS["rgb"]
    model = make_vae(kwargs, seed=7).to(getattr(torch, dtype))
    save_model(model, tmp_path / "vae.safetensors")
    inputs = {k: v.to(getattr(torch, dtype)).float() for k, v in inputs_for(kwargs, h=32, w=48, batch=1, seed=8).items()}
    ours = run_ours(parity_bin, tmp_path, tmp_path / "vae.safetensors", inputs, dtype, kwargs, {"exact_conv3d": True})
    tdtype = getattr(torch, dtype)
    with torch.no_grad():
        ref = {"encoded": model.encode(inputs["image"].to(tdtype)).float(),
               "decoded": model.decode(inputs["latents"].to(tdtype)).float()}
    for k, r in ref.items():
        diff = (ours[k] - r).abs().max().item()
        scale = r.abs().max().item()
        print(f"exact conv3d {dtype} {k}: max abs diff {diff:.3g} (scale {scale:.3g})")
        assert diff <= (1e-6 * scale if dtype == "float32" else bf16_ulp(scale)), (k, diff, scale)


TILED = dict(base_dim=8, num_res_blocks=1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiled_matches_reference_tiled(tmp_path, parity_bin, dtype):
    """Latents 6x8, tiles 4x6, strides 2x4 -> 2x2 tiles, each overlap ramped."""
    model = make_vae(TILED, seed=3)
    save_model(model, tmp_path / "vae.safetensors")
    inputs = inputs_for(TILED, h=48, w=64, batch=1, seed=4)
    ours = run_ours(parity_bin, tmp_path, tmp_path / "vae.safetensors", inputs, dtype, TILED,
                    dict(tiled=True, tile_size=[4, 6], tile_stride=[2, 4]))
    tdtype = getattr(torch, dtype)
    with torch.no_grad():
        model = model.to(tdtype)
        ref = {"encoded": model.encode(inputs["image"].to(tdtype), tiled=True, tile_size=(4, 6), tile_stride=(2, 4)),
               "decoded": model.decode(inputs["latents"].to(tdtype), tiled=True, tile_size=(4, 6), tile_stride=(2, 4))}
    for k in ref:
        check(f"tiled/{k}", ours[k], ref[k], dtype)


@pytest.mark.parametrize("receptive_field,max_bound,mean_bound", [("pointwise", 1e-5, 1e-5), ("local", 0.10, 0.005)])
def test_tiled_close_to_untiled(tmp_path, parity_bin, receptive_field, max_bound, mean_bound):
    model = make_vae(TILED, seed=5, receptive_field=receptive_field)
    save_model(model, tmp_path / "vae.safetensors")
    inputs = inputs_for(TILED, h=96, w=160, batch=1, seed=6)
    tiled = run_ours(parity_bin, tmp_path, tmp_path / "vae.safetensors", inputs, "float32", TILED,
                     dict(tiled=True, tile_size=[8, 10], tile_stride=[4, 6]), tag="tiled")
    untiled = run_ours(parity_bin, tmp_path, tmp_path / "vae.safetensors", inputs, "float32", TILED, tag="untiled")
    for k in ("encoded", "decoded"):
        d = (tiled[k] - untiled[k]).abs()
        scale = untiled[k].abs().max().item()
        print(f"{receptive_field} tiled vs untiled {k}: max {d.max().item() / scale:.3g}, "
              f"mean {d.mean().item() / scale:.3g} of scale {scale:.3g}")
        assert d.max().item() <= max_bound * scale and d.mean().item() <= mean_bound * scale, (k, d.max(), d.mean())


def test_bad_kwargs_and_options(tmp_path, parity_bin):
    model = make_vae(CONFIGS["rgb"])
    save_model(model, tmp_path / "vae.safetensors")
    save_file({"latents": torch.randn(1, 16, 2, 2)}, str(tmp_path / "in.safetensors"))
    base = [parity_bin, "qwen_image_vae", tmp_path / "vae.safetensors", tmp_path / "in.safetensors",
            tmp_path / "out.safetensors", "float32"]
    p = run(base + ['{"base_dim": 16, "num_res_blocks": 1, "bogus": 1}'], check=False)
    assert p.returncode == 2 and "unexpected keyword argument 'bogus'" in p.stderr, p.stderr
    p = run(base + ['{"base_dim": 16, "num_res_blocks": 1, "dim_mult": [1, "2"]}'], check=False)
    assert p.returncode == 2 and "dim_mult" in p.stderr, p.stderr
    p = run(base + ['{"base_dim": 16, "num_res_blocks": 1}', '{"tiled": true, "tile_size": 4, "tile_stride": 5}'],
            check=False)
    assert p.returncode == 2 and "tile stride" in p.stderr, p.stderr
