"""Hostile input to every command, as the hardening issue lists it: each bad value is refused up
front with exit 2 and one line naming the option or file, nothing is written and an existing
output is left intact; outputs are atomic (a full disk, concurrent writers); inputs that are not
regular files never block; a generation whose numbers blow up stops instead of writing black."""
import json
import os
import re
import resource
import shutil
import socket
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import one_line_error, run

PREVIOUS = b"previous output, must survive"


def tiny_dir(diffsynth_bin):
    return os.path.normpath(os.path.join(os.path.dirname(diffsynth_bin), "..", "models", "tiny-qwen-image"))


def base(out):
    """The issue's G: a 64x64, 2-step float32 run of the default tiny model."""
    return ["generate", "-p", "cat", "--width", "64", "--height", "64", "--steps", "2", "--dtype", "float32", "-q",
            "--seed", "1", "--threads", "2", "-o", str(out)]


def merged(cmd, extra):
    """cmd with extra's "--option value" pairs: an option already in cmd gets the new value."""
    cmd, extra = list(cmd), list(extra)
    i = 0
    while i < len(extra):
        opt = extra[i]
        has_value = i + 1 < len(extra) and not (extra[i + 1].startswith("-") and not _number(extra[i + 1]))
        if opt in cmd and has_value:
            cmd[cmd.index(opt) + 1] = extra[i + 1]
        else:
            cmd += extra[i:i + 1 + has_value]
        i += 1 + has_value
    return cmd


def _number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def no_temp_files(folder):
    left = [f for f in os.listdir(folder) if ".tmp-" in f]
    assert not left, left


@pytest.fixture
def files(tmp_path):
    """An input image, a mask and a valid LoRA file (one tensor pair), for the options that need one."""
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(mask)
    lora = tmp_path / "lora.safetensors"
    save_file({"proj_out.lora_A.weight": torch.zeros(2, 4), "proj_out.lora_B.weight": torch.zeros(4, 2)}, str(lora))
    return {"img": str(img), "mask": str(mask), "lora": str(lora)}


# (extra arguments, strings the one error line must contain). {img}, {mask}, {lora} are filled in.
BAD_GENERATE = {
    "cfg_nan": (["--cfg-scale", "nan"], ["--cfg-scale", "finite"]),
    "cfg_inf": (["--cfg-scale", "inf"], ["--cfg-scale", "finite"]),
    "cfg_huge": (["--cfg-scale", "1e308"], ["--cfg-scale", "[-100, 100]"]),
    "lora_nan": (["--lora", "{lora}:nan"], ["--lora", "alpha", "finite"]),
    "lora_inf": (["--lora", "{lora}:inf"], ["--lora", "alpha"]),
    "lora_huge": (["--lora", "{lora}:1e300"], ["--lora", "alpha", "[-100, 100]"]),
    "blur_sigma_zero": (["-i", "{img}", "--mask", "{mask}", "--blur-size", "2", "--blur-sigma", "0"], ["--blur-sigma"]),
    "blur_sigma_nan": (["-i", "{img}", "--mask", "{mask}", "--blur-size", "2", "--blur-sigma", "nan"], ["--blur-sigma"]),
    "blur_sigma_negative": (["-i", "{img}", "--mask", "{mask}", "--blur-size", "2", "--blur-sigma", "-2"], ["--blur-sigma"]),
    "blur_size_negative": (["-i", "{img}", "--mask", "{mask}", "--blur-size", "-5", "--blur-sigma", "1"], ["--blur-size"]),
    "blur_size_too_large": (["-i", "{img}", "--mask", "{mask}", "--blur-size", "8", "--blur-sigma", "1"],
                            ["--blur-size 8", "at most 7"]),
    "blur_without_mask": (["--blur-size", "2", "--blur-sigma", "1"], ["--blur-size", "--mask"]),
    "mu_nan": (["--exponential-shift-mu", "nan"], ["--exponential-shift-mu"]),
    "mu_inf": (["--exponential-shift-mu", "inf"], ["--exponential-shift-mu"]),
    "mu_plus_1000": (["--exponential-shift-mu", "1000"], ["--exponential-shift-mu", "[-15, 15]"]),
    "mu_minus_1000": (["--exponential-shift-mu", "-1000"], ["--exponential-shift-mu"]),
    "strength_nan": (["-i", "{img}", "--strength", "nan"], ["--strength", "finite"]),
    "strength_zero": (["-i", "{img}", "--strength", "0"], ["--strength", "(0, 1]"]),
    "strength_without_image": (["--strength", "0.5"], ["--strength", "--input-image"]),
    "seed_minus_2": (["--seed", "-2"], ["--seed"]),
    "seed_past_2_64": (["--seed", "18446744073709551616"], ["--seed", "18446744073709551615"]),
    "seed_fraction": (["--seed", "1.5"], ["--seed"]),
    "huge_size": (["--width", "99984", "--height", "99984"], ["99984x99984", "needs about", "available"]),
    "huge_size_shift": (["--width", "99984", "--height", "99984", "--exponential-shift-mu", "1"], ["99984x99984", "needs about"]),
    "size_past_model": (["--width", "262144"], ["--width", "131072"]),
    "threads_huge": (["--threads", "100000"], ["--threads", "this machine's CPUs"]),
    "threads_zero": (["--threads", "0"], ["--threads"]),
    "threads_negative": (["--threads", "-3"], ["--threads"]),
    "dtype_fp8": (["--dtype", "float8_e4m3fn"], ["--dtype", "storage dtype", "--offload-dtype"]),
    "dtype_float64": (["--dtype", "float64"], ["--dtype", "not supported for computation"]),
    "steps_one": (["--steps", "1"], ["--steps 1", "--steps 2 or more"]),
    "steps_zero": (["--steps", "0"], ["--steps"]),
    "vram_limit_inf": (["--offload", "cpu", "--vram-limit", "inf"], ["--vram-limit"]),
    "prefetch_negative": (["--offload", "cpu", "--prefetch", "-1"], ["--prefetch"]),
    "control_scale_alone": (["--control-scale", "0.5"], ["--control-scale", "--controlnet"]),
    "control_image_alone": (["--control-image", "{img}"], ["--control-image", "--controlnet"]),
    "output_not_png": (["-o", "{tmp}/x.jpg"], ["-o", "x.jpg", ".png"]),
}


@pytest.mark.parametrize("case", sorted(BAD_GENERATE))
def test_bad_generate_value_refused_up_front(tmp_path, diffsynth_bin, files, case):
    args, needles = BAD_GENERATE[case]
    out = tmp_path / "out.png"
    out.write_bytes(PREVIOUS)
    fill = dict(files, tmp=str(tmp_path))
    args = [a.format(**fill) for a in args]
    p = run([diffsynth_bin, *merged(base(out), args)], check=False, timeout=120)
    one_line_error(p, *needles)
    assert out.read_bytes() == PREVIOUS
    assert not (tmp_path / "x.jpg").exists()
    no_temp_files(tmp_path)


def test_refusals_come_before_any_model_loads(tmp_path, diffsynth_bin):
    """Refused in well under the time a load takes: no model is opened (strace-free check: the
    loading messages never appear without -q)."""
    out = tmp_path / "out.png"
    cmd = [a for a in base(out) if a != "-q"]
    for extra in (["--cfg-scale", "nan"], ["--width", "99984", "--height", "99984"], ["-o", "/nonexistent/x.png"]):
        p = run([diffsynth_bin, *merged(cmd, extra)], check=False)
        assert p.returncode == 2 and "Loading" not in p.stderr and "loaded" not in p.stderr.lower(), p.stderr


@pytest.mark.parametrize("option", ["-o", "--save-latents"])
def test_output_folder_checked_before_loading(tmp_path, diffsynth_bin, option):
    target = "/nonexistent/x.png" if option == "-o" else "/nonexistent/latents.safetensors"
    out = tmp_path / "out.png"
    args = base(out) if option == "--save-latents" else base(out)[:-2]
    p = run([diffsynth_bin, *args, option, target], check=False)
    one_line_error(p, option, target, "does not exist")
    p = run([diffsynth_bin, *base(tmp_path)], check=False)  # -o names a folder
    one_line_error(p, "-o", "is a folder")


def test_vram_config_folder_and_help_ranges(tmp_path, diffsynth_bin):
    p = run([diffsynth_bin, *base(tmp_path / "o.png"), "--vram-config", tmp_path], check=False)
    one_line_error(p, "--vram-config", str(tmp_path), "is a folder")
    h = run([diffsynth_bin, "generate", "--help"]).stdout
    # The help states the ranges the parser enforces.
    assert "1 to 10000 (default: Qwen-Image 30, at least 2 unless img2img" in h
    assert "in [-15, 15]" in h and "in (0, 1]" in h and "in [-100, 100]" in h
    assert re.search(r"--threads.*in \[1, \d+\]", h)
    assert "bfloat16|float32|float16" in h and "float8" not in h.split("--dtype", 1)[1].split("\n")[0]


def test_size_from_input_image_says_so(tmp_path, diffsynth_bin):
    img = tmp_path / "odd.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(img)
    out = tmp_path / "o.png"
    cmd = [a for a in base(out)]
    i = cmd.index("--width")
    del cmd[i:i + 4]  # no --width/--height: the image's size is the output size
    p = run([diffsynth_bin, *cmd, "-i", img], check=False)
    line = one_line_error(p, "--input-image", "its width 50", "pass --width 48 or 64")
    assert "--width 50" not in line


def test_warns_about_options_without_effect(tmp_path, diffsynth_bin):
    out = tmp_path / "o.png"
    cmd = [a for a in base(out) if a != "-q"]
    p = run([diffsynth_bin, *cmd, "--cfg-scale", "1", "--negative-prompt", "blurry", "--lora-mode", "fuse"])
    warnings = [l for l in p.stderr.splitlines() if l.startswith("diffsynth: warning: ")]
    assert any("--negative-prompt" in w for w in warnings), p.stderr
    assert any("--lora-mode" in w for w in warnings), p.stderr
    assert Image.open(out).size == (64, 64)


def test_seed_minus_one_draws_a_seed(tmp_path, diffsynth_bin):
    out = tmp_path / "o.png"
    cmd = base(out)
    cmd[cmd.index("--seed") + 1] = "-1"
    run([diffsynth_bin, *cmd])
    seed = json.loads(Image.open(out).text["parameters"])["seed"]
    assert 0 <= seed < 2 ** 64 and seed != 2 ** 64 - 1
    cmd[cmd.index("--seed") + 1] = "18446744073709551615"  # the largest seed is accepted
    run([diffsynth_bin, *cmd])
    assert json.loads(Image.open(out).text["parameters"])["seed"] == 2 ** 64 - 1


def test_lora_file_with_nan_names_file_and_key(tmp_path, diffsynth_bin):
    dit = load_file(os.path.join(tiny_dir(diffsynth_bin), "transformer", "diffusion_pytorch_model.safetensors"))
    w = dit["proj_out.weight"]
    a, b = torch.zeros(2, w.shape[1]), torch.zeros(w.shape[0], 2)
    b[0, 1] = float("nan")
    lora = tmp_path / "bad_lora.safetensors"
    save_file({"proj_out.lora_A.weight": a, "proj_out.lora_B.weight": b}, str(lora))
    out = tmp_path / "o.png"
    out.write_bytes(PREVIOUS)
    p = run([diffsynth_bin, *base(out), "--lora", lora], check=False)
    one_line_error(p, str(lora), "proj_out.lora_B.weight", "NaN or Inf")
    assert out.read_bytes() == PREVIOUS


def test_non_finite_latents_stop_the_run(tmp_path, diffsynth_bin):
    """A DiT whose output overflows float32 (one weight scaled to 1e38): the run stops at the first
    step with a clear error instead of writing a black image."""
    src = tiny_dir(diffsynth_bin)
    model = tmp_path / "model"
    shutil.copytree(src, model)
    path = model / "transformer" / "diffusion_pytorch_model.safetensors"
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    dit = load_file(str(path))
    dit["proj_out.weight"] = dit["proj_out.weight"] * 1e38
    save_file(dit, str(path), metadata=meta)
    out = tmp_path / "o.png"
    out.write_bytes(PREVIOUS)
    cmd = base(out)
    p = run([diffsynth_bin, *cmd, "--model-dir", model], check=False)
    one_line_error(p, "latents after step 1 of 2", "not finite", "black image")
    assert out.read_bytes() == PREVIOUS
    no_temp_files(tmp_path)


FORWARD_BAD = {
    "latents_huge": (["--latents", "1x16x100000x100000"], ["--latents 1x16x100000x100000", "needs about", "GiB"]),
    "text_tokens_huge": (["--text-tokens", "1000000000"], ["--text-tokens 1000000000", "needs about"]),
    "dtype_fp8": (["--dtype", "float8_e4m3fn"], ["--dtype", "storage dtype"]),
    "repeat_zero": (["--repeat", "0"], ["--repeat"]),
    "seed_negative": (["--seed", "-5"], ["--seed"]),
}


@pytest.mark.parametrize("case", sorted(FORWARD_BAD))
def test_bad_forward_value(diffsynth_bin, case):
    args, needles = FORWARD_BAD[case]
    dit = os.path.join(tiny_dir(diffsynth_bin), "transformer")
    p = run([diffsynth_bin, "forward", dit, *args], check=False, timeout=120)
    one_line_error(p, *needles)


# --- inputs that are not regular files -------------------------------------------------------

def fifo_cases(diffsynth_bin, tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    png_fifo = tmp_path / "fifo.png"
    os.mkfifo(png_fifo)
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    tok = tmp_path / "tok"
    tok.mkdir()
    os.mkfifo(tok / "tokenizer.json")
    out = tmp_path / "o.png"
    g = base(out)
    return {
        "hash": ([diffsynth_bin, "hash", fifo], fifo),
        "inspect": ([diffsynth_bin, "inspect", fifo], fifo),
        "load": ([diffsynth_bin, "load", fifo], fifo),
        "hash_pth_name": ([diffsynth_bin, "hash", png_fifo], png_fifo),
        "input_image": ([diffsynth_bin, *g, "-i", png_fifo], png_fifo),
        "mask": ([diffsynth_bin, *g, "-i", img, "--mask", png_fifo], png_fifo),
        "lora": ([diffsynth_bin, *g, "--lora", fifo], fifo),
        "model": ([diffsynth_bin, *g, "--model", fifo], fifo),
        "tokenizer_json": ([diffsynth_bin, *g, "--tokenizer", tok], tok / "tokenizer.json"),
        "tokenizer_folder_is_fifo": ([diffsynth_bin, *g, "--tokenizer", fifo], fifo),
        "tokenize": ([diffsynth_bin, "tokenize", "--tokenizer", tok, "hello"], tok / "tokenizer.json"),
        "vram_config": ([diffsynth_bin, *g, "--offload", "cpu", "--vram-config", fifo], fifo),
    }


CASE_NAMES = ["hash", "inspect", "load", "hash_pth_name", "input_image", "mask", "lora", "model", "tokenizer_json",
              "tokenizer_folder_is_fifo", "tokenize", "vram_config"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_fifo_input_refused_without_blocking(tmp_path, diffsynth_bin, case):
    cmd, named = fifo_cases(diffsynth_bin, tmp_path)[case]
    p = run(cmd, check=False, timeout=60)  # a hang fails here as a timeout
    assert p.returncode == 2, (p.returncode, p.stderr)
    line = p.stderr.strip().splitlines()[-1]
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert str(named) in line and "FIFO" in line, line


def test_socket_and_device_refused(tmp_path, diffsynth_bin):
    sock_path = tmp_path / "s.safetensors"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_path))
    try:
        p = run([diffsynth_bin, "inspect", sock_path], check=False, timeout=60)
        one_line_error(p, str(sock_path), "socket")
    finally:
        s.close()
    p = run([diffsynth_bin, "hash", "/dev/zero"], check=False, timeout=60)
    one_line_error(p, "/dev/zero", "character device")


# --- atomic outputs ----------------------------------------------------------------------------

def test_full_disk_leaves_previous_output(tmp_path, diffsynth_bin):
    """A file-size limit (ulimit -f 4) below the PNG's size: exit 2 naming the file, the previous
    output intact, no temporary file left."""
    out = tmp_path / "out.png"
    out.write_bytes(PREVIOUS)
    limit = 4 * 1024

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = subprocess.run([str(diffsynth_bin), *base(out)], capture_output=True, text=True, preexec_fn=small_files,
                       timeout=300)
    one_line_error(p, str(out), "File too large", "unchanged")
    assert out.read_bytes() == PREVIOUS
    no_temp_files(tmp_path)
    # The same limit on --save-latents (safetensors) and then the PNG: neither is left partial.
    lat = tmp_path / "lat.safetensors"
    cmd = base(out)
    cmd[cmd.index("--width") + 1] = "256"
    cmd[cmd.index("--height") + 1] = "256"
    p = subprocess.run([str(diffsynth_bin), *cmd, "--save-latents", str(lat)], capture_output=True, text=True,
                       preexec_fn=small_files, timeout=300)
    one_line_error(p, str(lat), "File too large")
    assert not lat.exists() and out.read_bytes() == PREVIOUS
    no_temp_files(tmp_path)


def test_concurrent_writers_never_leave_a_broken_file(tmp_path, diffsynth_bin):
    """8 runs writing the same -o at once: every one succeeds, and the file is always one whole
    PNG of one of them."""
    out = tmp_path / "out.png"
    procs = []
    for seed in range(8):
        cmd = base(out)
        cmd[cmd.index("--seed") + 1] = str(seed)
        cmd[cmd.index("--threads") + 1] = "1"
        procs.append(subprocess.Popen([str(diffsynth_bin), *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    seen = set()
    while any(p.poll() is None for p in procs):
        if out.exists():
            with Image.open(out) as im:  # readable whenever it exists
                im.load()
                seen.add(json.loads(im.text["parameters"])["seed"])
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    with Image.open(out) as im:
        im.load()
        assert json.loads(im.text["parameters"])["seed"] in range(8)
    no_temp_files(tmp_path)
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
