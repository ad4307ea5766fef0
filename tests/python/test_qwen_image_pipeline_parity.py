"""End-to-end parity of `diffsynth generate` with the reference QwenImagePipeline.

Both sides run the tiny random-weight Qwen-Image the build writes (build/models/tiny-qwen-image:
the real DiT, text encoder and VAE architectures at reduced sizes, bf16 files with their config in
the metadata) with the bundled real Qwen tokenizer. The reference builds its own classes at the
same sizes and loads the same files (the text encoder through its state-dict converter). The
ControlNet and the LoRA are written here by the reference side and read by ours.

Same prompt, negative prompt, seed, size and steps; compared:
* fp32 pipeline (models and tensors float32): final latents max abs diff <= 1e-4 x max|latents|,
  final 8-bit images differ by at most 2 levels on any pixel (the issue's bars).
* bf16 pipeline (the reference's default dtype): the same two stacks of bf16 kernels may round
  single elements differently and denoising amplifies that, so the bar is looser: latents within
  4% of their scale, pixels within 8 levels on 99.9% of values (measured: see the assertions'
  messages on failure).
Cases: text-to-image with true CFG, cfg 1 (no negative pass), img2img, inpaint (with a blurred
mask), Blockwise ControlNet (one, two, the inpaint variant), a fused LoRA (PEFT names) and the same LoRA in kohya names.
"""
import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import Qwen2Tokenizer

from diffsynth.models.qwen_image_controlnet import QwenImageBlockWiseControlNet
from diffsynth.models.qwen_image_text_encoder import QwenImageTextEncoder
from diffsynth.models.qwen_image_vae import QwenImageVAE
from diffsynth.pipelines.qwen_image import QwenImageBlockwiseMultiControlNet, QwenImagePipeline
from diffsynth.utils.controlnet import ControlNetInput
from diffsynth.utils.state_dict_converters.qwen_image_text_encoder import QwenImageTextEncoderStateDictConverter
import reference_models
from conftest import run

torch.set_num_threads(2)

# Must match diffsynth_make_example --tiny-qwen-image.
DIT = dict(dim=64, heads=2, head_dim=32, text_dim=128, layers=2)
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
            num_key_value_heads=1, vocab_size=152064)
VISION = dict(depth=1, hidden_size=32, num_heads=1, intermediate_size=64, fullatt_block_indexes=[0])
VAE = dict(base_dim=16, num_res_blocks=1)
W, H, STEPS, SEED = 64, 48, 3, 42
PROMPT = "A red fox sitting in fresh snow, 雪の中の狐, golden hour"
NEGATIVE = "blurry, low quality"


@pytest.fixture(scope="module")
def tiny_dir(diffsynth_bin):
    d = os.path.join(os.path.dirname(diffsynth_bin), "..", "models", "tiny-qwen-image")
    if not os.path.exists(os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors")):
        pytest.fail(f"tiny Qwen-Image folder not built at {d} (target tiny_qwen_image)")
    return os.path.abspath(d)


@pytest.fixture(scope="module")
def reference_models_fp32(tiny_dir):
    dit = reference_models.reduced_dit(DIT["dim"], DIT["heads"], DIT["head_dim"], DIT["text_dim"], DIT["layers"], init=False)
    dit.load_state_dict(load_file(f"{tiny_dir}/transformer/diffusion_pytorch_model.safetensors"))
    with reference_models.reduced_qwen2_5_vl_config(TEXT, VISION):
        te = QwenImageTextEncoder().eval()
    te.load_state_dict(QwenImageTextEncoderStateDictConverter(load_file(f"{tiny_dir}/text_encoder/model.safetensors")))
    vae = QwenImageVAE(**VAE).eval()
    vae.load_state_dict(load_file(f"{tiny_dir}/vae/diffusion_pytorch_model.safetensors"))
    return {"dit": dit.float(), "text_encoder": te.float(), "vae": vae.float()}


def reference_pipe(models, tiny_dir, dtype, controlnet=None):
    # Copies: Module.to() converts in place, and a bf16 round trip would round the text
    # encoder's fp32 inv_freq buffer for the cases that follow.
    pipe = QwenImagePipeline(device="cpu", torch_dtype=dtype)
    pipe.dit = copy.deepcopy(models["dit"]).to(dtype)
    pipe.text_encoder = copy.deepcopy(models["text_encoder"]).to(dtype)
    pipe.vae = copy.deepcopy(models["vae"]).to(dtype)
    pipe.tokenizer = Qwen2Tokenizer.from_pretrained(f"{tiny_dir}/tokenizer")
    if controlnet is not None:
        pipe.blockwise_controlnet = QwenImageBlockwiseMultiControlNet([controlnet.to(dtype)])
    pipe.vram_management_enabled = False
    return pipe


def run_reference(pipe, **kw):
    """The reference's image and the latents its VAE decodes."""
    image, latents = reference_models.run_capturing_latents(pipe, **kw)
    return np.array(image), latents


def run_ours(diffsynth_bin, tmp_path, tiny_dir, dtype, args):
    out, lat = tmp_path / "ours.png", tmp_path / "ours_latents.safetensors"
    run([diffsynth_bin, "generate", "--model-dir", tiny_dir, "--dtype", dtype, "-q", "--threads", "2",
         "-o", out, "--save-latents", lat] + [str(a) for a in args])
    return np.array(Image.open(out)), load_file(str(lat))["latents"]


def random_png(path, seed, w=W, h=H, mask=False):
    rng = np.random.default_rng(seed)
    if mask:  # a soft-edged blob
        yy, xx = np.mgrid[0:h, 0:w]
        a = (255 * np.clip(1.5 - np.hypot((xx - w * 0.6) / (w * 0.3), (yy - h * 0.5) / (h * 0.35)), 0, 1)).astype(np.uint8)
        Image.fromarray(np.stack([a] * 3, -1)).save(path)
    else:
        base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((w, h), Image.BICUBIC).save(path)
    return path


def compare(ours, ref, dtype):
    (img_o, lat_o), (img_r, lat_r) = ours, ref
    assert lat_o.shape == lat_r.shape and img_o.shape == img_r.shape
    scale = lat_r.abs().max().item()
    diff = (lat_o - lat_r).abs().max().item()
    pix = np.abs(img_o.astype(int) - img_r.astype(int))
    if dtype == "float32":
        assert diff <= 1e-4 * scale, f"latents max abs diff {diff} vs scale {scale}"
        assert pix.max() <= 2, f"pixels differ by up to {pix.max()} levels ({(pix > 2).sum()} values > 2)"
    else:
        assert diff <= 0.04 * scale, f"bf16 latents max abs diff {diff} vs scale {scale}"
        assert np.mean(pix > 8) <= 1e-3, f"bf16 pixels: {(pix > 8).sum()} values differ by > 8 levels (max {pix.max()})"


COMMON = ["--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--seed", SEED, "--steps", STEPS,
          "--width", W, "--height", H]
REF_COMMON = dict(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, num_inference_steps=STEPS, width=W, height=H)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_text_to_image(tmp_path, diffsynth_bin, tiny_dir, reference_models_fp32, dtype):
    td = getattr(torch, dtype)
    ref = run_reference(reference_pipe(reference_models_fp32, tiny_dir, td), cfg_scale=4.0, **REF_COMMON)
    ours = run_ours(diffsynth_bin, tmp_path, tiny_dir, dtype, COMMON + ["--cfg-scale", 4])
    compare(ours, ref, dtype)


def test_cfg_one(tmp_path, diffsynth_bin, tiny_dir, reference_models_fp32):
    ref = run_reference(reference_pipe(reference_models_fp32, tiny_dir, torch.float32), cfg_scale=1.0,
                        exponential_shift_mu=0.6, **REF_COMMON)
    ours = run_ours(diffsynth_bin, tmp_path, tiny_dir, "float32", COMMON + ["--cfg-scale", 1, "--exponential-shift-mu", 0.6])
    compare(ours, ref, "float32")


def test_img2img(tmp_path, diffsynth_bin, tiny_dir, reference_models_fp32):
    img = random_png(tmp_path / "in.png", 1)
    ref = run_reference(reference_pipe(reference_models_fp32, tiny_dir, torch.float32), cfg_scale=2.5,
                        input_image=Image.open(img).convert("RGB"), denoising_strength=0.6, **REF_COMMON)
    ours = run_ours(diffsynth_bin, tmp_path, tiny_dir, "float32",
                    COMMON + ["--cfg-scale", 2.5, "--input-image", img, "--strength", 0.6])
    compare(ours, ref, "float32")


@pytest.mark.parametrize("blur", [False, True])
def test_inpaint(tmp_path, diffsynth_bin, tiny_dir, reference_models_fp32, blur):
    img = random_png(tmp_path / "in.png", 2)
    mask = random_png(tmp_path / "mask.png", 3, mask=True)
    kw = dict(inpaint_blur_size=1, inpaint_blur_sigma=0.8) if blur else {}
    ref = run_reference(reference_pipe(reference_models_fp32, tiny_dir, torch.float32), cfg_scale=4.0,
                        input_image=Image.open(img).convert("RGB"), denoising_strength=0.9,
                        inpaint_mask=Image.open(mask), **kw, **REF_COMMON)
    args = ["--blur-size", 1, "--blur-sigma", 0.8] if blur else []
    ours = run_ours(diffsynth_bin, tmp_path, tiny_dir, "float32",
                    COMMON + ["--input-image", img, "--strength", 0.9, "--mask", mask] + args)
    compare(ours, ref, "float32")


def write_controlnet(path, seed, additional_in_dim=0):
    torch.manual_seed(seed)
    cn = QwenImageBlockWiseControlNet(num_layers=DIT["layers"], additional_in_dim=additional_in_dim, dim=DIT["dim"]).eval()
    with torch.no_grad():
        for name, p in cn.named_parameters():
            p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5 if p.dim() > 1 else 1 + 0.1 * torch.randn_like(p))
    meta = {"diffsynth_model_config": '{"model_name": "qwen_image_blockwise_controlnet", "model_class": '
            '"diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet", "extra_kwargs": '
            '{"num_layers": %d, "dim": %d, "additional_in_dim": %d}}' % (DIT["layers"], DIT["dim"], additional_in_dim)}
    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(path), metadata=meta)
    return cn


@pytest.mark.parametrize("case", ["single", "two", "inpaint"])
def test_blockwise_controlnet(tmp_path, diffsynth_bin, tiny_dir, reference_models_fp32, case):
    """One ControlNet with a scale; two ControlNets (one control image each, as controlnet_id 0
    and 1); the inpaint variant (4 mask channels), which takes the inpaint mask too."""
    n = 2 if case == "two" else 1
    extra = 4 if case == "inpaint" else 0
    cns = [write_controlnet(tmp_path / f"cn{i}.safetensors", 5 + i, extra) for i in range(n)]
    controls = [random_png(tmp_path / f"control{i}.png", 4 + i) for i in range(n)]
    scales = [0.7, 1.3][:n]
    ref_inputs = [ControlNetInput(controlnet_id=i, image=Image.open(c).convert("RGB"), scale=s)
                  for i, (c, s) in enumerate(zip(controls, scales))]
    kw, args = {}, []
    if case == "inpaint":
        img, mask = random_png(tmp_path / "in.png", 8), random_png(tmp_path / "mask.png", 9, mask=True)
        ref_inputs[0].inpaint_mask = Image.open(mask)
        kw = dict(input_image=Image.open(img).convert("RGB"), inpaint_mask=Image.open(mask), denoising_strength=0.9)
        args = ["--input-image", img, "--mask", mask, "--strength", 0.9]
    pipe = reference_pipe(reference_models_fp32, tiny_dir, torch.float32)
    pipe.blockwise_controlnet = QwenImageBlockwiseMultiControlNet(cns)
    ref = run_reference(pipe, cfg_scale=4.0, blockwise_controlnet_inputs=ref_inputs, **kw, **REF_COMMON)
    for i in range(n):
        args += ["--controlnet", tmp_path / f"cn{i}.safetensors", "--control-image", controls[i], "--control-scale", scales[i]]
    ours = run_ours(diffsynth_bin, tmp_path, tiny_dir, "float32", COMMON + args)
    compare(ours, ref, "float32")


def make_lora(dit, rank=4, seed=6):
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, m in dit.named_modules():
        if isinstance(m, torch.nn.Linear) and name.startswith("transformer_blocks.") and ("attn" in name or "mlp" in name):
            lora[f"{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g) / m.in_features ** 0.5
            lora[f"{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.1
    return lora


def kohya_name(key):
    layer, _, rest = key.partition(".lora_")
    updown = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[rest]
    return "lora_unet_" + layer.replace(".", "_") + "." + updown


@pytest.mark.parametrize("form", ["peft", "kohya"])
def test_lora_fused(tmp_path, diffsynth_bin, tiny_dir, reference_models_fp32, form):
    lora = make_lora(reference_models_fp32["dit"])
    save_file(lora, str(tmp_path / "lora_peft.safetensors"))
    file = tmp_path / f"lora_{form}.safetensors"
    if form == "kohya":
        save_file({kohya_name(k): v for k, v in lora.items()}, str(file))
    pipe = reference_pipe(reference_models_fp32, tiny_dir, torch.float32)
    pipe.load_lora(pipe.dit, str(tmp_path / "lora_peft.safetensors"), alpha=0.8)
    ref = run_reference(pipe, cfg_scale=4.0, **REF_COMMON)
    ours = run_ours(diffsynth_bin, tmp_path, tiny_dir, "float32", COMMON + ["--lora", f"{file}:0.8"])
    compare(ours, ref, "float32")
