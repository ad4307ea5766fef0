"""LoRA fusing parity: our utils/lora/general.cpp against the reference's pipe.load_lora (fuse branch:
GeneralLoRALoader.convert_state_dict + fuse_lora_to_base_model) on a reduced QwenImageDiT (built as
by tests/python/reference_models.py, as in the DiT parity test), then the reference's model_fn_qwen_image.

Fused weights must equal the reference's bit for bit (float32 and bfloat16: the same torch.mm and
adds in the same dtype). The model_fn output: float32 within 1e-5 x max|output|, bfloat16 within
the DiT parity test's bound (4 bf16 ulps of the output scale). Key formats the reference does not
read (kohya underscore names, `transformer.` / `base_model.model.` prefixes) must give exactly the
same result as the equivalent reference-readable file. A key that fits no module fails with exit 2
and names the key.

Hot-load: with VRAM management on the DiT (the reference's enable_vram_management with its
QwenImageDiT module map), pipe.load_lora attaches the pairs to the AutoWrappedLinear layers; two
LoRAs stack; pipe.clear_lora removes them. Our hot-loaded output must match the reference's
hot-loaded output (same bounds as above), the base weights must be the file's, and after
clear_lora the output must equal the reference's plain model_fn (same bounds).
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsynth.configs.vram_management_module_maps import VRAM_MANAGEMENT_MODULE_MAPS
from diffsynth.core.vram.layers import enable_vram_management
from diffsynth.models.model_loader import ModelPool
from diffsynth.pipelines.qwen_image import QwenImagePipeline, model_fn_qwen_image
import reference_models
from conftest import run

DIM, HEADS, HEAD_DIM, TEXT_DIM, BLOCKS = 64, 2, 32, 48, 2
KWARGS = json.dumps({"num_layers": BLOCKS, "dim": DIM, "num_attention_heads": HEADS, "attention_head_dim": HEAD_DIM,
                     "joint_attention_dim": TEXT_DIM})
RANK = 4
LAYERS = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_add_out",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.0.img_mlp.net.0.proj",
    "transformer_blocks.1.img_mod.1",
    "transformer_blocks.1.txt_mlp.net.2",
    "transformer_blocks.1.attn.add_k_proj",
    "img_in",
    "proj_out",
    "norm_out.linear",
    "time_text_embed.timestep_embedder.linear_1",
]
# Per layer: (A [r, in], B [out, r], alpha or None). Alphas only on some layers.
ALPHAS = {1: 8.0, 4: 6.0, 8: 2.0}


def lora_weights(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    out = {}
    for i, name in enumerate(LAYERS):
        o, n = params[name + ".weight"].shape
        out[name] = (torch.randn(RANK, n, generator=g) / n ** 0.5, torch.randn(o, RANK, generator=g) * 0.2,
                     ALPHAS.get(i))
    return out


def write(layers, fmt):
    """A LoRA state dict in one key format. fmt "mixed" cycles through the reference's formats."""
    sd = {}
    formats = ["peft", "adapter", "down_up", "comfy"]
    for i, (name, (a, b, alpha)) in enumerate(layers.items()):
        f = formats[i % len(formats)] if fmt == "mixed" else fmt
        if f == "peft":  # DiffSynth / PEFT
            ka, kb, kalpha = f"{name}.lora_A.weight", f"{name}.lora_B.weight", f"{name}.alpha"
        elif f == "adapter":  # PEFT with the adapter name
            ka, kb, kalpha = f"{name}.lora_A.default.weight", f"{name}.lora_B.default.weight", f"{name}.alpha"
        elif f == "down_up":
            ka, kb, kalpha = f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"
        elif f == "comfy":  # ComfyUI
            ka, kb, kalpha = (f"diffusion_model.{name}.lora_down.weight", f"diffusion_model.{name}.lora_up.weight",
                              f"diffusion_model.{name}.alpha")
        elif f == "kohya":  # not read by the reference
            k = "lora_unet_" + name.replace(".", "_")
            ka, kb, kalpha = f"{k}.lora_down.weight", f"{k}.lora_up.weight", f"{k}.alpha"
        elif f == "diffusers":  # not read by the reference
            ka, kb, kalpha = (f"transformer.{name}.lora_A.weight", f"transformer.{name}.lora_B.weight",
                              f"transformer.{name}.alpha")
        elif f == "peft_model":  # not read by the reference
            ka, kb = f"base_model.model.{name}.lora_A.default.weight", f"base_model.model.{name}.lora_B.default.weight"
            kalpha = f"base_model.model.{name}.alpha"
        else:
            raise ValueError(fmt)
        sd[ka], sd[kb] = a.contiguous(), b.contiguous()
        if alpha is not None:
            sd[kalpha] = torch.tensor(alpha)
    return sd


def inputs_file(path):
    torch.manual_seed(5)
    h, w, lt = 8, 8, 7
    inputs = {
        "latents": torch.randn(1, 16, h, w),
        "timestep": torch.tensor([937.25]),
        "prompt_emb": torch.randn(1, lt, TEXT_DIM),
        "prompt_emb_mask": torch.ones(1, lt, dtype=torch.long),
    }
    save_file(inputs, str(path))
    return inputs


def ours(tmp_path, parity_bin, lora_path, dtype, alpha, check=True):
    out = tmp_path / f"out_{lora_path.stem}_{dtype}.safetensors"
    p = run([parity_bin, "qwen_image_dit_lora", tmp_path / "dit.safetensors", tmp_path / "in.safetensors", out, dtype,
             KWARGS, json.dumps({"lora": str(lora_path), "alpha": alpha})], check=check)
    return (load_file(str(out)) if p.returncode == 0 else None), p


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    model = reference_models.reduced_dit(DIM, HEADS, HEAD_DIM, TEXT_DIM, BLOCKS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "dit.safetensors"))
    return model, inputs_file(tmp_path / "in.safetensors"), lora_weights(model)


@pytest.mark.parametrize("fmt,alpha", [("peft", 1.0), ("adapter", 1.0), ("down_up", 0.75), ("comfy", 1.0),
                                       ("mixed", 0.5)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fuse_matches_reference(tmp_path, parity_bin, setup, fmt, alpha, dtype):
    model, inputs, layers = setup
    lora_path = tmp_path / f"lora_{fmt}.safetensors"
    save_file(write(layers, fmt), str(lora_path))
    got, p = ours(tmp_path, parity_bin, lora_path, dtype, alpha)
    assert f"{len(LAYERS)} tensors are fused by LoRA. Fused LoRA layers cannot be cleared by `pipe.clear_lora()`." \
        in p.stdout

    td = getattr(torch, dtype)
    model = model.to(td)
    pipe = QwenImagePipeline(device="cpu", torch_dtype=td)
    pipe.load_lora(model, str(lora_path), alpha=alpha)
    ref_sd = model.state_dict()
    for name in LAYERS:
        key = name + ".weight"
        assert torch.equal(got["weight:" + key], ref_sd[key].float()), key
    cast = {k: (v.to(td) if v.is_floating_point() else v) for k, v in inputs.items()}
    with torch.no_grad():
        ref = model_fn_qwen_image(dit=model, latents=cast["latents"], timestep=cast["timestep"],
                                  prompt_emb=cast["prompt_emb"], prompt_emb_mask=cast["prompt_emb_mask"],
                                  height=64, width=64).float()
    scale = ref.abs().max().item()
    diff = (got["out"] - ref).abs().max().item()
    bound = 1e-5 * scale if dtype == "float32" else 4 * 2 ** -7 * scale
    assert diff <= bound, (fmt, dtype, diff, scale)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers", "peft_model"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_other_formats_equal_peft(tmp_path, parity_bin, setup, fmt, dtype):
    """Names only we read give exactly what the same LoRA in the reference's format gives."""
    _, _, layers = setup
    save_file(write(layers, "peft"), str(tmp_path / "peft.safetensors"))
    save_file(write(layers, fmt), str(tmp_path / f"{fmt}.safetensors"))
    a, _ = ours(tmp_path, parity_bin, tmp_path / "peft.safetensors", dtype, 0.8)
    b, _ = ours(tmp_path, parity_bin, tmp_path / f"{fmt}.safetensors", dtype, 0.8)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_unknown_key_fails(tmp_path, parity_bin, setup):
    _, _, layers = setup
    sd = write(layers, "peft")
    sd["transformer_blocks.0.attn.to_nothing.lora_A.weight"] = torch.zeros(RANK, 64)
    sd["transformer_blocks.0.attn.to_nothing.lora_B.weight"] = torch.zeros(64, RANK)
    sd["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(RANK, 8)
    sd["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(8, RANK)
    sd["transformer_blocks.0.attn.to_q.dora_scale"] = torch.zeros(64)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    got, p = ours(tmp_path, parity_bin, path, "float32", 1.0, check=False)
    assert p.returncode == 2, p.stderr
    assert str(path) in p.stderr
    for key in ("transformer_blocks.0.attn.to_nothing.lora_B.weight",
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                "transformer_blocks.0.attn.to_q.dora_scale"):
        assert key in p.stderr, p.stderr


def test_shape_mismatch_fails(tmp_path, parity_bin, setup):
    _, _, layers = setup
    sd = write(layers, "peft")
    sd["transformer_blocks.0.attn.to_q.lora_A.weight"] = torch.zeros(RANK, 48)
    path = tmp_path / "mismatch.safetensors"
    save_file(sd, str(path))
    _, p = ours(tmp_path, parity_bin, path, "float32", 1.0, check=False)
    assert p.returncode == 2, p.stderr
    assert "shape mismatch" in p.stderr and "transformer_blocks.0.attn.to_q" in p.stderr, p.stderr


def reference_model_fn(model, inputs, td):
    cast = {k: (v.to(td) if v.is_floating_point() else v) for k, v in inputs.items()}
    with torch.no_grad():
        return model_fn_qwen_image(dit=model, latents=cast["latents"], timestep=cast["timestep"],
                                   prompt_emb=cast["prompt_emb"], prompt_emb_mask=cast["prompt_emb_mask"],
                                   height=64, width=64).float()


def assert_close(got, ref, dtype, what):
    scale = ref.abs().max().item()
    diff = (got - ref).abs().max().item()
    bound = 1e-5 * scale if dtype == "float32" else 4 * 2 ** -7 * scale
    assert diff <= bound, (what, dtype, diff, scale)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hotload_matches_reference(tmp_path, parity_bin, setup, dtype):
    model, inputs, layers = setup
    second = lora_weights(model, seed=2)
    paths = [tmp_path / "first.safetensors", tmp_path / "second.safetensors"]
    save_file(write(layers, "mixed"), str(paths[0]))
    save_file(write(second, "peft"), str(paths[1]))
    loras = [[str(paths[0]), 0.75], [str(paths[1]), -1.5]]
    out = tmp_path / f"hot_{dtype}.safetensors"
    p = run([parity_bin, "qwen_image_dit_lora_hotload", tmp_path / "dit.safetensors", tmp_path / "in.safetensors",
             out, dtype, KWARGS, json.dumps({"loras": loras})])
    got = load_file(str(out))
    patched = f"{len(LAYERS)} tensors are patched by LoRA. You can use `pipe.clear_lora()` to clear all LoRA layers."
    assert p.stdout.count(patched) == 2, p.stdout
    assert f"{len(LAYERS)} LoRA layers are cleared." in p.stdout, p.stdout

    td = getattr(torch, dtype)
    model = model.to(td)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    plain = reference_model_fn(model, inputs, td)
    pool = ModelPool()
    map_ = VRAM_MANAGEMENT_MODULE_MAPS["diffsynth.models.qwen_image_dit.QwenImageDiT"]
    module_map = {pool.import_model_class(k): pool.import_model_class(v) for k, v in map_.items()}
    config = {f"{s}_{f}": (td if f == "dtype" else "cpu") for s in ("offload", "onload", "preparing", "computation")
              for f in ("dtype", "device")}
    model = enable_vram_management(model, module_map, vram_config=config)
    pipe = QwenImagePipeline(device="cpu", torch_dtype=td)
    pipe.dit = model
    for path, alpha in loras:
        pipe.load_lora(model, path, alpha=alpha)  # hotload: the default under VRAM management
    hot = reference_model_fn(model, inputs, td)
    assert not torch.allclose(hot, plain, rtol=1e-2, atol=1e-2)
    assert_close(got["out"], hot, dtype, "hot-loaded")
    for name in LAYERS:
        key = name + ".weight"
        assert torch.equal(got["weight:" + key], base[key].float()), key
    pipe.clear_lora()
    assert torch.equal(reference_model_fn(model, inputs, td), plain)
    assert_close(got["out_cleared"], plain, dtype, "cleared")
