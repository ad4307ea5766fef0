"""LoRA on the Qwen-Image DiT, ours against the reference: forward time with a LoRA fused into the
weights and hot-loaded onto VRAM-managed layers (the reference's AutoWrappedLinear lora_forward).

DiT: one full-width block (QwenImageDiT(num_layers=1), random weights, fp32), 64x64 latents (1024 image
tokens) + 32 text tokens, fp32 on the CPU. LoRA: rank 32 on every Linear of the block (the usual
DiffSynth training target). Hot-load runs under VRAM management with every state fp32 on the CPU, so
the weights are not moved and the difference from fused is the LoRA matmuls alone. Each process loads
once and runs REPEAT forwards and reports the fastest of the later ones (ours: `diffsynth forward
--repeat`; the reference: the same loop around model_fn_qwen_image): on this shared VM the same
forward varies by up to 1.6x between runs, and noise only ever adds time. ROUNDS rounds alternate
over all settings; the table gives the median over rounds.

Usage: python bench/bench_lora.py BUILD_DIR [--repeat 3] [--rounds 3]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from common import dit_metadata, machine  # noqa: E402

REF = r"""
import sys, time, torch
from safetensors.torch import load_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.core.vram.layers import enable_vram_management
from diffsynth.configs.vram_management_module_maps import VRAM_MANAGEMENT_MODULE_MAPS
from diffsynth.models.model_loader import ModelPool
from diffsynth.models.qwen_image_dit import QwenImageDiT
from diffsynth.pipelines.qwen_image import QwenImagePipeline, model_fn_qwen_image
dit_path, in_path, lora_path, mode, repeat = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
torch.set_grad_enabled(False)
with skip_model_initialization():
    m = QwenImageDiT(num_layers=1)
m.load_state_dict(load_file(dit_path), assign=True)
pipe = QwenImagePipeline(device="cpu", torch_dtype=torch.float32)
if mode == "hot":
    pool = ModelPool()
    cls = "diffsynth.models.qwen_image_dit.QwenImageDiT"
    mm = {pool.import_model_class(k): pool.import_model_class(v) for k, v in VRAM_MANAGEMENT_MODULE_MAPS[cls].items()}
    cfg = {f"{s}_{f}": (torch.float32 if f == "dtype" else "cpu") for s in ("offload", "onload", "preparing", "computation") for f in ("dtype", "device")}
    m = enable_vram_management(m, mm, vram_config=cfg)
if mode != "none":
    pipe.load_lora(m, lora_path, alpha=1.0)
x = load_file(in_path)
times = []
for _ in range(repeat):
    t0 = time.perf_counter()
    model_fn_qwen_image(dit=m, latents=x["latents"], timestep=x["timestep"], prompt_emb=x["prompt_emb"],
                        prompt_emb_mask=x["prompt_emb_mask"], height=512, width=512)
    times.append(time.perf_counter() - t0)
later = sorted(times[1:]) or times
print(f"later forwards: median {later[len(later) // 2]:.3f} s  min {later[0]:.3f} s")
"""


def min_later(out):
    m = re.search(r"later forwards: median [0-9.]+ s  min ([0-9.]+) s", out)
    if not m:
        raise RuntimeError("no timing in: " + out[-2000:])
    return float(m.group(1))


def run(cmd):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {p.stderr[-2000:]}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    binary = os.path.join(args.build, "bin", "diffsynth")
    with tempfile.TemporaryDirectory() as d:
        from diffsynth.models.qwen_image_dit import QwenImageDiT
        torch.manual_seed(0)
        dit = QwenImageDiT(num_layers=1)
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, f"{d}/dit.safetensors",
                  metadata=dit_metadata(num_layers=1))
        lora = {}
        for name, mod in dit.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.startswith("transformer_blocks."):
                lora[f"{name}.lora_A.weight"] = torch.randn(32, mod.in_features) / mod.in_features ** 0.5
                lora[f"{name}.lora_B.weight"] = torch.randn(mod.out_features, 32) * 0.01
        save_file(lora, f"{d}/lora.safetensors")
        del dit
        # The inputs `diffsynth forward` draws (seed 0) are not these; the timing does not depend on values.
        save_file({"latents": torch.randn(1, 16, 64, 64), "timestep": torch.tensor([500.0]),
                   "prompt_emb": torch.randn(1, 32, 3584), "prompt_emb_mask": torch.ones(1, 32, dtype=torch.long)},
                  f"{d}/in.safetensors")
        ours_base = [binary, "forward", f"{d}/dit.safetensors", "--latents", "1x16x64x64", "--text-tokens", "32",
                     "--dtype", "float32", "--repeat", args.repeat]
        modes = {"no LoRA": ([], "none"),
                 "fused": (["--lora", f"{d}/lora.safetensors"], "fused"),
                 "hot-loaded": (["--offload", "cpu", "--offload-dtype", "float32", "--lora", f"{d}/lora.safetensors"], "hot")}
        times = {name: ([], []) for name in modes}
        for _ in range(args.rounds):  # rounds alternate over every setting: noise hits all alike
            for name, (ours_extra, ref_mode) in modes.items():
                o = min_later(run(ours_base + ours_extra))
                r = min_later(run([sys.executable, "-c", REF, f"{d}/dit.safetensors", f"{d}/in.safetensors",
                                      f"{d}/lora.safetensors", ref_mode, args.repeat]))
                times[name][0].append(o)
                times[name][1].append(r)
                print(f"{name}: ours {o:.2f} s, reference {r:.2f} s", flush=True)
        rows = [(name, statistics.median(o), statistics.median(r)) for name, (o, r) in times.items()]
    print(f"\nmachine: {machine()}; torch threads {torch.get_num_threads()}")
    print("| DiT forward (1 full-width block, 1024+32 tokens, fp32) | ours | reference | ratio ours/ref |")
    print("|---|---|---|---|")
    for name, o, r in rows:
        print(f"| {name} | {o:.2f} s | {r:.2f} s | {o / r:.2f} |")


if __name__ == "__main__":
    main()
