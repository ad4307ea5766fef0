"""WanModel numerical parity through the pipeline's model function (model_fn_wan_video).

The reference WanModel takes its widths as arguments, so the reduced models are the reference
class itself at small widths, with the structure of the registered layouts: Wan2.1-T2V-1.3B
(9269f8db: 12 heads, 30 layers -> 3 heads, 2 layers) and Wan2.1-T2V-14B (aafcfd96: 40 heads, 40
layers -> 4 heads, 3 layers), plus the conditioning paths model_fn takes as plain tensors (I2V with
CLIP features and image latents, Wan2.2 TI2V's per-token timestep, reference latents, camera
control). Merged CFG (a batch-2 context) is covered too.
Tolerances: fp32 max abs diff <= 1e-4 x max|output|; bf16 <= 4 bf16 ulps (2^-7 relative each) of
the output scale -- the same kernels run, but two stacks of bf16 blocks may round single
elements differently.
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsynth.models.wan_video_dit import WanModel
from diffsynth.pipelines.wan_video import model_fn_wan_video
from conftest import run

BASE = dict(patch_size=[1, 2, 2], in_dim=16, out_dim=16, freq_dim=32, text_dim=48, eps=1e-6, has_image_input=False)
CASES = {
    # name: (kwargs, latent shape [C, F, H, W], text tokens, extra)
    "t2v_1.3b": (dict(dim=96, ffn_dim=160, num_heads=3, num_layers=2), (16, 3, 6, 8), 12, {}),
    "t2v_14b": (dict(dim=128, ffn_dim=192, num_heads=4, num_layers=3), (16, 2, 8, 6), 9, {}),
    "t2v_merged_cfg": (dict(dim=96, ffn_dim=160, num_heads=3, num_layers=2), (16, 2, 4, 4), 7, {"cfg_merge": True}),
    "i2v": (dict(dim=96, ffn_dim=160, num_heads=3, num_layers=2, in_dim=36, has_image_input=True),
            (16, 2, 4, 6), 6, {"y": 20, "clip": True}),
    "flf2v_pos_emb": (dict(dim=96, ffn_dim=160, num_heads=3, num_layers=2, in_dim=36, has_image_input=True, has_image_pos_emb=True),
                      (16, 2, 4, 4), 5, {"y": 20, "clip": True}),
    "ti2v_per_token_t": (dict(dim=96, ffn_dim=160, num_heads=3, num_layers=2, in_dim=48, out_dim=48, seperated_timestep=True,
                              require_clip_embedding=False, require_vae_embedding=False, fuse_vae_embedding_in_latents=True),
                         (48, 3, 4, 4), 5, {"fuse": True}),
    "ref_conv": (dict(dim=96, ffn_dim=160, num_heads=3, num_layers=2, in_dim=32, has_ref_conv=True, require_clip_embedding=False),
                 (16, 2, 4, 4), 5, {"y": 16, "ref": True}),
    "camera_control": (dict(dim=96, ffn_dim=160, num_heads=3, num_layers=2, add_control_adapter=True, in_dim_control_adapter=6),
                       (16, 2, 4, 4), 5, {"camera": 6}),
}


def make_model(kwargs):
    kw = {**BASE, **kwargs}
    model = WanModel(**kw).eval()
    with torch.no_grad():
        # Modulations and position embeddings are random at init (or zeros); make every weight
        # count, at a scale that keeps activations O(1).
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "modulation" not in name:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") else 0.0))
    return model, kw


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_fn(tmp_path, parity_bin, case, dtype):
    kwargs, (c, f, h, w), lt, extra = CASES[case]
    torch.manual_seed(sorted(CASES).index(case))
    model, kw = make_model(kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "dit.safetensors"))
    inputs = {
        "latents": torch.randn(1, c, f, h, w),
        "timestep": torch.tensor([937.25]),
        "context": torch.randn(2 if extra.get("cfg_merge") else 1, lt, BASE["text_dim"]),
    }
    if "y" in extra:
        inputs["y"] = torch.randn(1, extra["y"], f, h, w)
    if extra.get("clip"):
        # has_image_pos_emb (FLF2V): first and last frame's CLIP tokens, 2 x 257
        inputs["clip_feature"] = torch.randn(1, 514 if kw.get("has_image_pos_emb") else 257, 1280)
    if extra.get("ref"):
        inputs["reference_latents"] = torch.randn(1, 16, 1, h, w)
    if "camera" in extra:
        inputs["control_camera_latents_input"] = torch.randn(1, extra["camera"], f, h * 8, w * 8)
    save_file(inputs, str(tmp_path / "in.safetensors"))
    options = {"fuse_vae_embedding_in_latents": bool(extra.get("fuse"))}
    run([parity_bin, "wan_video_dit", tmp_path / "dit.safetensors", tmp_path / "in.safetensors",
         tmp_path / "out.safetensors", dtype, json.dumps(kw), json.dumps(options)])
    ours = load_file(str(tmp_path / "out.safetensors"))["out"]

    td = getattr(torch, dtype)
    model = model.to(td)
    cast = {k: v.to(td) for k, v in inputs.items()}
    with torch.no_grad():
        ref = model_fn_wan_video(dit=model, latents=cast["latents"], timestep=cast["timestep"], context=cast["context"],
                                 clip_feature=cast.get("clip_feature"), y=cast.get("y"),
                                 reference_latents=cast.get("reference_latents"),
                                 control_camera_latents_input=cast.get("control_camera_latents_input"),
                                 fuse_vae_embedding_in_latents=bool(extra.get("fuse"))).float()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    bar = 1e-4 * scale if dtype == "float32" else 4 * 2 ** -7 * scale
    assert err <= bar, f"{case} {dtype}: max abs diff {err:.3g} > {bar:.3g} (output scale {scale:.3g})"


def test_unsupported_inputs_are_clear_errors(tmp_path, parity_bin):
    model, kw = make_model(CASES["t2v_1.3b"][0])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "dit.safetensors"))
    save_file({"latents": torch.randn(1, 16, 2, 5, 4), "timestep": torch.tensor([500.0]),
               "context": torch.randn(1, 4, 48)}, str(tmp_path / "in.safetensors"))
    p = run([parity_bin, "wan_video_dit", tmp_path / "dit.safetensors", tmp_path / "in.safetensors",
             tmp_path / "out.safetensors", "float32", json.dumps(kw)], check=False)
    assert p.returncode != 0 and "not a multiple of the patch size 2" in p.stderr, p.stderr


@pytest.mark.parametrize("layout", ["diffusers", "prefixed"])
def test_checkpoint_layouts_through_converters(tmp_path, parity_bin, layout):
    """The two registered converters: diffusers' names (WanVideoDiTFromDiffusers, renamed by the
    reference's own table, inverted) and an original checkpoint under "model." holding VACE keys
    (WanVideoDiTStateDictConverter). Both load strictly and give the reference's output."""
    from diffsynth.utils.state_dict_converters import wan_video_dit as conv
    kwargs = dict(CASES["i2v"][0])
    torch.manual_seed(7)
    model, kw = make_model(kwargs)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "diffusers":
        # Invert the reference's table: block 0 names, re-indexed per block.
        import inspect, re
        src = inspect.getsource(conv.WanVideoDiTFromDiffusers)
        table = dict(re.findall(r'"([^"]+)":\s*"([^"]+)"', src))
        inverse = {v: k for k, v in table.items()}
        file_sd = {}
        for k, v in sd.items():
            if k in inverse:
                file_sd[inverse[k]] = v
            else:
                parts = k.split(".")
                key0 = ".".join(parts[:1] + ["0"] + parts[2:])
                assert key0 in inverse, k
                p2 = inverse[key0].split(".")
                file_sd[".".join(p2[:1] + [parts[1]] + p2[2:])] = v
        assert conv.WanVideoDiTFromDiffusers(file_sd).keys() == sd.keys()
        name = "diffsynth.utils.state_dict_converters.wan_video_dit.WanVideoDiTFromDiffusers"
    else:
        file_sd = {"model." + k: v for k, v in sd.items()}
        file_sd["vace_blocks.0.weight"] = torch.zeros(3)
        file_sd["face_adapter.x"] = torch.zeros(2)
        assert conv.WanVideoDiTStateDictConverter(file_sd).keys() == sd.keys()
        name = "diffsynth.utils.state_dict_converters.wan_video_dit.WanVideoDiTStateDictConverter"
    save_file(file_sd, str(tmp_path / "dit.safetensors"))
    _, (c, f, h, w), lt, extra = CASES["i2v"]
    inputs = {"latents": torch.randn(1, c, f, h, w), "timestep": torch.tensor([411.0]),
              "context": torch.randn(1, lt, 48), "y": torch.randn(1, 20, f, h, w), "clip_feature": torch.randn(1, 257, 1280)}
    save_file(inputs, str(tmp_path / "in.safetensors"))
    run([parity_bin, "wan_video_dit", tmp_path / "dit.safetensors", tmp_path / "in.safetensors",
         tmp_path / "out.safetensors", "float32", json.dumps(kw), json.dumps({"converter": name})])
    ours = load_file(str(tmp_path / "out.safetensors"))["out"]
    with torch.no_grad():
        ref = model_fn_wan_video(dit=model, **inputs)
    assert (ours - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
