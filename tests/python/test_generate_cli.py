"""`diffsynth generate` as a user meets it: the default tiny model, the PNG's parameters chunk,
seeds, and one-line errors with exit status 2 for bad input."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import one_line_error, run

FAST = ["--steps", "2", "--width", "32", "--height", "32", "-q", "--threads", "2"]


def generate(diffsynth_bin, out, *args, check=True):
    return run([diffsynth_bin, "generate", "-o", out] + FAST + [str(a) for a in args], check=check)


def test_default_model_writes_png_with_parameters(tmp_path, diffsynth_bin):
    out = tmp_path / "a.png"
    # Braces in a prompt are text: the template is filled like str.format, the prompt itself is not.
    prompt = "a cat {wearing a hat}"
    p = run([diffsynth_bin, "generate", "--prompt", prompt, "--seed", "7", "-o", out,
             "--steps", "2", "--width", "48", "--height", "32", "--threads", "2"])
    assert "tiny random-weight Qwen-Image" in p.stderr  # says plainly what it ran
    assert "2/2" in p.stderr  # progress bar
    img = Image.open(out)
    assert img.size == (48, 32) and img.mode == "RGB"
    params = json.loads(img.text["parameters"])
    assert params["prompt"] == prompt
    assert params["seed"] == 7 and params["steps"] == 2 and params["width"] == 48 and params["height"] == 32
    assert {m["model_name"] for m in params["models"]} == {"qwen_image_dit", "qwen_image_text_encoder", "qwen_image_vae"}
    # Not a blank image: random weights still make structured noise.
    assert np.array(img).std() > 1


def test_seed_reproducible_and_random_seed_recorded(tmp_path, diffsynth_bin):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    generate(diffsynth_bin, a, "--prompt", "x", "--seed", "1")
    generate(diffsynth_bin, b, "--prompt", "x", "--seed", "2")
    assert not np.array_equal(np.array(Image.open(a)), np.array(Image.open(b)))
    generate(diffsynth_bin, c, "--prompt", "x")  # no seed: drawn at random, written to the PNG
    seed = json.loads(Image.open(c).text["parameters"])["seed"]
    d = tmp_path / "d.png"
    generate(diffsynth_bin, d, "--prompt", "x", "--seed", seed)
    assert np.array_equal(np.array(Image.open(c)), np.array(Image.open(d)))


def test_size_not_multiple_of_16(tmp_path, diffsynth_bin):
    p = run([diffsynth_bin, "generate", "--width", "100", "--height", "64", "-o", tmp_path / "x.png"], check=False)
    one_line_error(p, "--width 100", "multiple of 16", "96", "112")


def test_missing_model_role(tmp_path, diffsynth_bin):
    tiny = os.path.join(os.path.dirname(diffsynth_bin), "..", "models", "tiny-qwen-image")
    p = run([diffsynth_bin, "generate", "-q", "--model", os.path.join(tiny, "vae"), "--model", os.path.join(tiny, "text_encoder"),
             "--tokenizer", os.path.join(tiny, "tokenizer"), "-o", tmp_path / "x.png"] + FAST[:6], check=False)
    one_line_error(p, "no Qwen-Image DiT (qwen_image_dit)")


@pytest.mark.parametrize("kind", ["missing", "not_png", "truncated"])
def test_unreadable_image(tmp_path, diffsynth_bin, kind):
    path = tmp_path / "in.png"
    if kind == "not_png":
        path.write_text("hello")
    elif kind == "truncated":
        Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 100).save(path)
        path.write_bytes(path.read_bytes()[:60])
    p = generate(diffsynth_bin, tmp_path / "x.png", "--input-image", path, check=False)
    one_line_error(p, "--input-image", str(path))


def test_mask_needs_input_image(tmp_path, diffsynth_bin):
    mask = tmp_path / "m.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(mask)
    p = generate(diffsynth_bin, tmp_path / "x.png", "--mask", mask, check=False)
    one_line_error(p, "--mask needs --input-image")


def test_input_image_resized_and_size_defaults(tmp_path, diffsynth_bin):
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "x.png"
    p = run([diffsynth_bin, "generate", "--input-image", img, "--strength", "0.5", "--steps", "2", "--width", "48",
             "--height", "32", "-o", out, "--seed", "3"])
    assert "resizing --input-image from 50x40 to 48x32" in p.stderr
    assert Image.open(out).size == (48, 32)


@pytest.mark.parametrize("offload", [["--offload", "disk"], ["--offload", "cpu", "--offload-dtype", "bfloat16"],
                                     ["--offload", "disk", "--vram-limit", "0.001"]])
def test_offloaded_generation_equals_resident(tmp_path, diffsynth_bin, offload):
    """VRAM management only moves weights: every pipeline stage onloads / offloads its models as the
    reference's load_models_to_device does, and the image is bit-identical to the resident run."""
    a, b = tmp_path / "resident.png", tmp_path / "offloaded.png"
    generate(diffsynth_bin, a, "--prompt", "a boat", "--seed", "5")
    generate(diffsynth_bin, b, "--prompt", "a boat", "--seed", "5", *offload)
    assert np.array_equal(np.array(Image.open(a)), np.array(Image.open(b)))


def test_fp8_offload_runs_and_stays_close(tmp_path, diffsynth_bin):
    a, b = tmp_path / "resident.png", tmp_path / "fp8.png"
    generate(diffsynth_bin, a, "--prompt", "a boat", "--seed", "5")
    generate(diffsynth_bin, b, "--prompt", "a boat", "--seed", "5", "--offload", "cpu", "--offload-dtype", "float8_e4m3fn")
    ia, ib = np.array(Image.open(a)).astype(int), np.array(Image.open(b)).astype(int)
    assert ia.shape == ib.shape and not np.array_equal(ia, ib)  # fp8 storage rounds the weights


def tiny_dit_lora(diffsynth_bin, path):
    """A rank-4 LoRA on every Linear of the default tiny model's DiT blocks."""
    import torch
    from safetensors.torch import load_file, save_file
    models = os.path.join(os.path.dirname(diffsynth_bin), "..", "models", "tiny-qwen-image")
    dit = load_file(os.path.join(models, "transformer", "diffusion_pytorch_model.safetensors"))
    g = torch.Generator().manual_seed(3)
    lora = {}
    for key, w in dit.items():
        if key.startswith("transformer_blocks.") and key.endswith(".weight") and w.dim() == 2:
            layer = key[: -len(".weight")]
            lora[f"{layer}.lora_A.weight"] = torch.randn(4, w.shape[1], generator=g) / w.shape[1] ** 0.5
            lora[f"{layer}.lora_B.weight"] = torch.randn(w.shape[0], 4, generator=g) * 0.3
    save_file(lora, str(path))
    return path


def test_lora_hotloads_under_offload_and_equals_fused(tmp_path, diffsynth_bin):
    """With VRAM management on, --lora hot-loads (the reference's default): the base weights stay as
    stored and the image equals the fused one up to float32 rounding."""
    lora = tiny_dit_lora(diffsynth_bin, tmp_path / "lora.safetensors")
    base, fused, hot = tmp_path / "base.png", tmp_path / "fused.png", tmp_path / "hot.png"
    common = ["--prompt", "a boat", "--seed", "5", "--dtype", "float32"]
    generate(diffsynth_bin, base, *common)
    generate(diffsynth_bin, fused, *common, "--lora", f"{lora}:0.8")
    generate(diffsynth_bin, hot, *common, "--lora", f"{lora}:0.8", "--offload", "cpu")
    assert json.loads(Image.open(fused).text["parameters"])["loras"][0]["hotload"] is False
    assert json.loads(Image.open(hot).text["parameters"])["loras"][0]["hotload"] is True
    ib, i_f, ih = (np.array(Image.open(p)).astype(int) for p in (base, fused, hot))
    assert np.abs(ib - i_f).max() > 10  # the LoRA changes the image
    assert np.abs(i_f - ih).max() <= 1


def test_lora_hotload_needs_vram_management(tmp_path, diffsynth_bin):
    lora = tiny_dit_lora(diffsynth_bin, tmp_path / "lora.safetensors")
    p = generate(diffsynth_bin, tmp_path / "x.png", "--lora", lora, "--lora-mode", "hotload", check=False)
    one_line_error(p, "VRAM Management is not enabled. LoRA hotloading is not supported.")
