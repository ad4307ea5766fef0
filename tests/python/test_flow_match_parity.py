"""FlowMatchScheduler parity: our diffusion/flow_match.cpp against the installed reference's
diffsynth/diffusion/flow_match.py, computed in this run.

Over a grid of templates x steps {1, 2, 4, 20, 30, 50} x denoising_strength {1.0, 0.7, 0.35} x
template options (dynamic_shift_len from image sizes such as 1328x1328 -> 6889, explicit mu, shift,
...), every sigma and timestep must equal the reference's bit for bit (float32; the issue's bar is
1e-6), and step / add_noise / return_to_timestep / training_target on float32 and bfloat16 latents
too, at probe timesteps given as the pipeline gives them (bf16 [1]) and as float32 values between
grid points. One diffsynth_parity run serves the whole grid.
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsynth.diffusion.flow_match import FlowMatchScheduler
from conftest import run

STEPS = [1, 2, 4, 20, 30, 50]
STRENGTHS = [1.0, 0.7, 0.35]
# dynamic_shift_len = (height // 16) * (width // 16), as the Qwen-Image pipeline computes it.
SIZES = [(1328, 1328), (1024, 1024), (512, 512), (1664, 928), (768, 1344), (256, 256), (2048, 2048)]
SHIFT_LENS = [(h // 16) * (w // 16) for h, w in SIZES]
assert SHIFT_LENS[0] == 6889

OPTIONS = {
    "Qwen-Image": [{}] + [{"dynamic_shift_len": n} for n in SHIFT_LENS]
                  + [{"exponential_shift_mu": 0.5}, {"exponential_shift_mu": 1.1, "dynamic_shift_len": 6889},
                     {"sigmas": [1.0, 0.75, 0.5, 0.25]}],
    "Qwen-Image-Lightning": [{}] + [{"dynamic_shift_len": n} for n in SHIFT_LENS[:3]]
                            + [{"exponential_shift_mu": 0.3}],
    "Wan": [{}, {"shift": 3.0}, {"shift": 8}, {"shift": 1.7}],
    "FLUX.1": [{}, {"shift": 1.0}, {"shift": 2.5}],
    "No-Such-Template": [{}, {"shift": 4.0}],  # falls back to FLUX.1
    "FLUX.2": [{}, {"dynamic_shift_len": 1024}, {"dynamic_shift_len": 6889}],
    "FLUX.3": [{}, {"alpha": 3.0}],
    "Z-Image": [{}, {"shift": 6.0}, {"target_timesteps": [500.0, 875.5]}],
    "LTX-2": [{}, {"dynamic_shift_len": 2048}, {"terminal": 0.2}, {"special_case": "stage2"},
              {"special_case": "distilled_stage1"}],
    "ERNIE-Image": [{}, {"shift": 1.0}, {"shift": 4.5}],
    "MOSS-Image": [{}, {"shift": 3.0, "training_shift": 2.0}],
    "ACE-Step": [{}, {"shift": 1.0}],
    "HiDream-O1-Image": [{}, {"special_case": "dev"}, {"shift": 2.0}],
    "Krea-2": [{}, {"dynamic_shift_len": 4096}, {"mu": 1.0}, {"dynamic_shift_len": 1024, "y1": 0.3, "y2": 1.3}],
    "MiniMax-H3": [{}, {"shift": 3.0}],
    "MiniMax-Music3": [{}],
    "LingBot-Video": [{}, {"t_thresh": 0.5}, {"t_thresh": 0.8, "sigma_tail_steps": 3}],
    "SenseNova-U1": [{}, {"shift": 2.0}],
    "YuE2": [{}],
    "Fibo": [{}, {"dynamic_shift_len": 1024}, {"dynamic_shift_len": 6889}],
}


def same(a, b):
    """Bit-for-bit equal values, NaN matching NaN (the reference's Qwen-Image schedule is NaN for
    one step at full strength: its terminal stretch divides 0 by 0)."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def reference_kwargs(kwargs):
    kw = dict(kwargs)
    if "target_timesteps" in kw:
        kw["target_timesteps"] = torch.tensor(kw["target_timesteps"])
    return kw


def grid():
    cases = [{"template": t, "steps": n, "denoising_strength": d, "kwargs": kw}
             for t, variants in OPTIONS.items() for kw in variants for n in STEPS for d in STRENGTHS]
    # Training weights: the training schedule (1000 steps) and a short one (the empirical branch).
    cases += [{"template": t, "steps": n, "denoising_strength": 1.0, "kwargs": {}, "training": True}
              for t in ("Qwen-Image", "Wan", "FLUX.1") for n in (1000, 30)]
    return cases


def reference_scheduler(case):
    s = FlowMatchScheduler(case["template"])
    s.set_timesteps(case["steps"], denoising_strength=case["denoising_strength"],
                    training=case.get("training", False), **reference_kwargs(case["kwargs"]))
    return s


def probes(timesteps):
    """Timesteps as the pipeline passes them (bf16 [1]) and float32 values between grid points."""
    n = len(timesteps)
    out = [timesteps[0].unsqueeze(0).to(torch.bfloat16), timesteps[n // 2].unsqueeze(0).float(),
           timesteps[-1].unsqueeze(0).to(torch.bfloat16), (timesteps[n // 2] + 0.3).float()]
    return out


def test_grid(tmp_path, parity_bin):
    torch.manual_seed(0)
    shape = (1, 16, 4, 6)
    inputs = {}
    for name in ("model_output", "sample", "noise"):
        x = torch.randn(shape)
        inputs[name + "_f32"] = x
        inputs[name + "_bf16"] = torch.randn(shape).to(torch.bfloat16)
    cases = grid()
    refs = [reference_scheduler(c) for c in cases]
    for c, ref in enumerate(refs):
        for j, t in enumerate(probes(ref.timesteps)):
            inputs[f"c{c}_t{j}"] = t.contiguous()
    save_file(inputs, str(tmp_path / "in.safetensors"))
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    run([parity_bin, "flow_match", "-", tmp_path / "in.safetensors", tmp_path / "out.safetensors", "float32", "{}",
         json.dumps({"cases_file": str(tmp_path / "cases.json")})])
    ours = load_file(str(tmp_path / "out.safetensors"))

    failures = []
    for c, (case, ref) in enumerate(zip(cases, refs)):
        p = f"c{c}_"
        for name, value in (("sigmas", ref.sigmas), ("timesteps", ref.timesteps)):
            assert value.dtype == torch.float32
            if not same(ours[p + name], value):
                diff = (ours[p + name] - value).abs().max().item() if ours[p + name].shape == value.shape else "shape"
                failures.append((case, name, diff))
        if case.get("training"):
            if not same(ours[p + "weights"], ref.linear_timesteps_weights):
                failures.append((case, "weights"))
        for j, t in enumerate(probes(ref.timesteps)):
            q = f"{p}t{j}_"
            for dt in ("f32", "bf16"):
                v, x, noise = inputs["model_output_" + dt], inputs["sample_" + dt], inputs["noise_" + dt]
                expected = {
                    "step": ref.step(v, t, x),
                    "step_final": ref.step(v, t, x, to_final=True),
                    "add_noise": ref.add_noise(x, noise, t),
                    "return": ref.return_to_timestep(t, x, noise),
                    "target": ref.training_target(x, noise, t),
                }
                for name, e in expected.items():
                    assert e.dtype == x.dtype  # latents keep their dtype (0-dim fp32 sigmas)
                    if not same(ours[q + name + "_" + dt], e.float()):
                        failures.append((case, j, name, dt))
            if case.get("training") and not same(ours[q + "weight"], ref.training_weight(t)):
                failures.append((case, j, "weight"))
    assert not failures, f"{len(failures)} mismatches, first: {failures[:5]}"


def test_spec_example():
    """The spec's 1328x1328 Qwen-Image example (mu = 0.8343245967741936, last sigma 0.02)."""
    assert FlowMatchScheduler._calculate_shift_qwen_image(6889) == pytest.approx(0.8343245967741936, abs=1e-15)


@pytest.mark.parametrize("template,kwargs", [("Qwen-Image", {"shift": 3.0}), ("Wan", {"dynamic_shift_len": 4096}),
                                             ("FLUX.1", {"exponential_shift_mu": 0.5})])
def test_option_not_taken(tmp_path, parity_bin, template, kwargs):
    """An option the template does not take fails in both (the reference raises TypeError)."""
    with pytest.raises(TypeError):
        FlowMatchScheduler(template).set_timesteps(10, **kwargs)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "in.safetensors"))
    case = {"template": template, "steps": 10, "kwargs": kwargs}
    p = run([parity_bin, "flow_match", "-", tmp_path / "in.safetensors", tmp_path / "out.safetensors", "float32", "{}",
             json.dumps({"cases": [case]})], check=False)
    assert p.returncode == 2
    assert f"takes no option '{next(iter(kwargs))}'" in p.stderr
