"""`diffsynth generate` on Wan2.1 (the tiny folder the build writes): the pipeline is picked from the
identified DiT, the published folder layout and --model files both work, VRAM offload and LoRA
flags work as for Qwen-Image, and every mistake is one line, exit 2, before anything loads.
Numerical parity with the reference is test_wan_video_pipeline_parity.py."""
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import one_line_error, run

SMALL = ["--prompt", "a cat", "--seed", 3, "--width", 32, "--height", 32, "--num-frames", 5, "--steps", 2,
         "--threads", 2, "-q"]


@pytest.fixture(scope="module")
def tiny_dir(diffsynth_bin):
    d = os.path.abspath(os.path.join(os.path.dirname(diffsynth_bin), "..", "models", "tiny-wan"))
    if not os.path.exists(os.path.join(d, "diffusion_pytorch_model.safetensors")):
        pytest.fail(f"tiny Wan folder not built at {d} (target tiny_wan)")
    return d


def generate(diffsynth_bin, tmp_path, args, name="out", check=True):
    lat = tmp_path / f"{name}.safetensors"
    p = run([diffsynth_bin, "generate", "-o", tmp_path / f"{name}.mp4", "--save-latents", lat] + SMALL +
            [str(a) for a in args], check=check)
    return p, (load_file(str(lat))["latents"] if check else None)


def test_model_files_equal_model_dir(tmp_path, diffsynth_bin, tiny_dir):
    _, by_dir = generate(diffsynth_bin, tmp_path, ["--model-dir", tiny_dir], "dir")
    files = ["--model", f"{tiny_dir}/diffusion_pytorch_model.safetensors", "--model",
             f"{tiny_dir}/models_t5_umt5-xxl-enc-bf16.pth", "--model", f"{tiny_dir}/Wan2.1_VAE.pth",
             "--tokenizer", f"{tiny_dir}/google/umt5-xxl"]
    _, by_files = generate(diffsynth_bin, tmp_path, files, "files")
    assert torch.equal(by_dir, by_files)
    # Without --tokenizer, --model files use the bundled UMT5 tokenizer (the same data).
    _, bundled = generate(diffsynth_bin, tmp_path, files[:-2], "bundled")
    assert torch.equal(by_dir, bundled)


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_offloaded_generation_equals_resident(tmp_path, diffsynth_bin, tiny_dir, offload):
    _, resident = generate(diffsynth_bin, tmp_path, ["--model-dir", tiny_dir, "--dtype", "float32"], "resident")
    _, offloaded = generate(diffsynth_bin, tmp_path, ["--model-dir", tiny_dir, "--dtype", "float32", "--offload", offload],
                            "offloaded")
    assert torch.equal(resident, offloaded)


def make_lora(tiny_dir, path, rank=2, seed=5):
    """A PEFT-named LoRA on the DiT's attention projections (lora_A / lora_B)."""
    g = torch.Generator().manual_seed(seed)
    sd = load_file(f"{tiny_dir}/diffusion_pytorch_model.safetensors")
    lora = {}
    for k, v in sd.items():
        if k.endswith(".weight") and (".self_attn." in k or ".cross_attn." in k) and v.dim() == 2:
            base = k[: -len(".weight")]
            lora[f"{base}.lora_A.weight"] = torch.randn(rank, v.shape[1], generator=g) * 0.3
            lora[f"{base}.lora_B.weight"] = torch.randn(v.shape[0], rank, generator=g) * 0.3
    assert lora
    save_file(lora, str(path))
    return path


def test_lora_fused_and_hotloaded_agree_and_change_the_result(tmp_path, diffsynth_bin, tiny_dir):
    lora = make_lora(tiny_dir, tmp_path / "lora.safetensors")
    base = ["--model-dir", tiny_dir, "--dtype", "float32"]
    _, plain = generate(diffsynth_bin, tmp_path, base, "plain")
    _, fused = generate(diffsynth_bin, tmp_path, base + ["--lora", f"{lora}:0.8", "--lora-mode", "fuse"], "fused")
    _, hot = generate(diffsynth_bin, tmp_path, base + ["--lora", f"{lora}:0.8", "--offload", "cpu", "--lora-mode",
                                                       "hotload"], "hot")
    assert not torch.allclose(plain, fused, atol=1e-3)
    scale = fused.abs().max().item()
    assert (fused - hot).abs().max().item() <= 1e-4 * scale


def test_defaults_are_the_references(tmp_path, diffsynth_bin, tiny_dir):
    # No size/frames/steps given: 832x480, 81 frames, 50 steps would take minutes; check the
    # recorded parameters of a run that sets only what makes it fast, and the help text.
    p = run([diffsynth_bin, "generate", "--help"])
    for text in ["--num-frames", "--fps", "--sigma-shift", "--frames-dir", "--quality", "--no-tiled"]:
        assert text in p.stdout, text
    out = tmp_path / "v.mkv"
    run([diffsynth_bin, "generate", "--model-dir", tiny_dir, "-o", out] + SMALL)
    tags = run(["ffprobe", "-v", "error", "-show_entries", "format_tags", "-of", "default=nw=1", out]).stdout
    assert '"cfg_scale":5.0' in tags and '"sigma_shift":5.0' in tags and '"fps":15.0' in tags, tags


def test_errors_are_one_line(tmp_path, diffsynth_bin, tiny_dir):
    d = ["--model-dir", tiny_dir]
    # Options the Wan pipeline cannot take, and video options on a Qwen-Image DiT.
    one_line_error(run([diffsynth_bin, "generate"] + d + ["--mask", tmp_path / "m.png"], check=False),
                   "--mask", "Wan video pipeline")
    one_line_error(run([diffsynth_bin, "generate"] + d + ["--controlnet", f"{tiny_dir}/Wan2.1_VAE.pth"], check=False),
                   "--controlnet")
    one_line_error(run([diffsynth_bin, "generate", "-q", "--num-frames", 9], check=False), "--num-frames", "qwen_image_dit")
    # Output names.
    one_line_error(run([diffsynth_bin, "generate"] + d + ["-o", tmp_path / "x.png"], check=False), ".mp4")
    one_line_error(run([diffsynth_bin, "generate"] + d + ["-o", tmp_path / "nodir" / "x.mp4"], check=False), "-o")
    # Values out of range, before loading.
    one_line_error(run([diffsynth_bin, "generate"] + d + ["--sigma-shift", 0], check=False), "--sigma-shift")
    one_line_error(run([diffsynth_bin, "generate"] + d + ["--quality", 11], check=False), "--quality")
    one_line_error(run([diffsynth_bin, "generate"] + d + ["--fps", "nan"], check=False), "--fps")
    one_line_error(run([diffsynth_bin, "generate"] + d + ["--num-frames", 0], check=False), "--num-frames")


def test_folder_missing_role_or_unreadable_file(tmp_path, diffsynth_bin, tiny_dir):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(f"{tiny_dir}/diffusion_pytorch_model.safetensors", partial)
    shutil.copy(f"{tiny_dir}/Wan2.1_VAE.pth", partial)
    one_line_error(run([diffsynth_bin, "generate", "--model-dir", partial], check=False), "no text encoder",
                   "models_t5_umt5-xxl-enc-bf16.pth")
    # A truncated .pth.
    with open(f"{tiny_dir}/models_t5_umt5-xxl-enc-bf16.pth", "rb") as f:
        data = f.read()
    (partial / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(data[: len(data) // 2])
    one_line_error(run([diffsynth_bin, "generate", "--model-dir", partial] + SMALL, check=False),
                   "models_t5_umt5-xxl-enc-bf16.pth")
    # --model files without a text encoder.
    one_line_error(run([diffsynth_bin, "generate", "--model", f"{tiny_dir}/diffusion_pytorch_model.safetensors",
                        "--model", f"{tiny_dir}/Wan2.1_VAE.pth", "-o", tmp_path / "o.mp4"] + SMALL, check=False),
                   "no Wan text encoder")


def test_image_inputs_the_model_cannot_take(tmp_path, diffsynth_bin, tiny_dir):
    # Image-to-video inputs: a model that cannot take them, or one that needs them, is one line
    # after loading; a missing first frame or an unreadable PNG before it.
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 40, 90)).save(tmp_path / "first.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    i2v = tiny_dir + "-i2v"
    one_line_error(run([diffsynth_bin, "generate", "--model-dir", tiny_dir, "-i", tmp_path / "first.png",
                        "-o", tmp_path / "o.mp4"] + SMALL, check=False), "text-to-video model (in_dim 16)", "--input-image")
    one_line_error(run([diffsynth_bin, "generate", "--model-dir", i2v, "-o", tmp_path / "o.mp4"] + SMALL, check=False),
                   "image-to-video model (in_dim 36)", "--input-image")
    one_line_error(run([diffsynth_bin, "generate", "--model-dir", i2v, "--end-image", tmp_path / "first.png"] + SMALL,
                       check=False), "--end-image needs --input-image")
    one_line_error(run([diffsynth_bin, "generate", "--model-dir", i2v, "-i", tmp_path / "broken.png"] + SMALL,
                       check=False), "--input-image", "broken.png")
    # The I2V DiT without the CLIP file: the reference would run without its image conditioning.
    no_clip = ["--model", f"{i2v}/diffusion_pytorch_model.safetensors", "--model", f"{i2v}/models_t5_umt5-xxl-enc-bf16.pth",
               "--model", f"{i2v}/Wan2.1_VAE.pth", "--tokenizer", f"{i2v}/google/umt5-xxl"]
    one_line_error(run([diffsynth_bin, "generate"] + no_clip + ["-i", tmp_path / "first.png", "-o", tmp_path / "o.mp4"] +
                       SMALL, check=False), "image encoder", "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    # And it runs with --input-image, recording the image in the video's parameters.
    p, lat = generate(diffsynth_bin, tmp_path, ["--model-dir", i2v, "-i", tmp_path / "first.png"], "i2v")
    assert lat.shape[1] == 16
    tags = run(["ffprobe", "-v", "error", "-show_entries", "format_tags=comment", "-of", "default=nw=1:nk=1",
                tmp_path / "i2v.mp4"]).stdout
    assert "first.png" in tags, tags


def test_switch_boundary_without_a_second_expert_warns(tmp_path, diffsynth_bin, tiny_dir):
    p = run([diffsynth_bin, "generate", "--model-dir", tiny_dir, "-o", tmp_path / "o.mp4", "--switch-boundary", 0.5] +
            [a for a in map(str, SMALL) if a != "-q"])
    assert "diffsynth: warning: --switch-boundary has no effect with one DiT" in p.stderr, p.stderr
    one_line_error(run([diffsynth_bin, "generate", "-q", "--switch-boundary", 0.5], check=False), "--switch-boundary",
                   "qwen_image_dit")
    one_line_error(run([diffsynth_bin, "generate", "--model-dir", tiny_dir, "--switch-boundary", 1.5], check=False),
                   "--switch-boundary")


def test_inspect_names_the_config_a_file_carries(diffsynth_bin, tiny_dir):
    # The tiny files' hashes are not in the table; each carries its entry (a .pth as a zip record).
    for name, model in [("Wan2.1_VAE.pth", "wan_video_vae  class WanVideoVAE"),
                        ("models_t5_umt5-xxl-enc-bf16.pth", "wan_video_text_encoder  class WanTextEncoder"),
                        ("diffusion_pytorch_model.safetensors", "wan_video_dit  class WanModel")]:
        out = run([diffsynth_bin, "inspect", f"{tiny_dir}/{name}"]).stdout
        assert f"identified model: {model}" in out and "the config stored in the file" in out, out[-600:]
        assert "Closest known model" not in out
    import json
    j = json.loads(run([diffsynth_bin, "inspect", "--json", f"{tiny_dir}/Wan2.1_VAE.pth"]).stdout)
    assert j["models"] == [{"model_name": "wan_video_vae", "model_class": "diffsynth.models.wan_video_vae.WanVideoVAE",
                            "extra_kwargs": {"dim": 16, "num_res_blocks": 1}, "implemented": True,
                            "config": "stored in the file"}], j["models"]
