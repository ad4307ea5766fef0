"""VRAM-management step time on a GPU (issue: overlap copies with compute).

A reduced Qwen-Image DiT at full width (BLOCKS blocks, default 8; random bf16 weights written by our
diffsynth_make_example), latents 1x16x128x128 (1024x1024 image: 4096 image tokens) + 32 text tokens,
bf16 on the GPU. One process per setting; each runs REPEAT forwards and reports the median of the
later ones (the first warms kernels and, for us, learns the layer order):
  * ours, resident: every weight on the GPU;
  * ours, --offload cpu --vram-limit 0 --prefetch 0: weights in CPU memory, each layer copied to the
    GPU for its call (the reference's behaviour);
  * ours, --offload cpu --vram-limit 0 (prefetch 2, the CUDA default): the next layers' copies run on
    a side stream during the current layer;
  * the reference at vram_limit 0 (same vram_config: offload/onload bf16 on the CPU, preparing and
    computation bf16 on cuda), if the carried diffsynth wheel imports.
The three runs of ours must print the same output statistics (offloading moves weights only).
Target (issue): prefetch >= 0.8x the resident speed, i.e. step time <= 1.25x resident.

Run on the GPU machine: bash bench/gpu_prefetch_check.sh (which sets the library path). A CPU dry
run of the script itself: DEVICE=cpu BLOCKS=1 LATENT=16 python bench/gpu_prefetch_check.py ...
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

REF = r"""
import sys, time, torch
from safetensors.torch import load_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.core.vram.layers import enable_vram_management
from diffsynth.configs.vram_management_module_maps import VRAM_MANAGEMENT_MODULE_MAPS
from diffsynth.models.model_loader import ModelPool
from diffsynth.models.qwen_image_dit import QwenImageDiT
from diffsynth.pipelines.qwen_image import model_fn_qwen_image
path, layers, device, lat, repeat, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_grad_enabled(False)
with skip_model_initialization():
    m = QwenImageDiT(num_layers=layers)
m.load_state_dict(load_file(path), assign=True)
pool = ModelPool()
cls = "diffsynth.models.qwen_image_dit.QwenImageDiT"
module_map = {pool.import_model_class(k): pool.import_model_class(v) for k, v in VRAM_MANAGEMENT_MODULE_MAPS[cls].items()}
bf = torch.bfloat16
config = {"offload_dtype": bf, "offload_device": "cpu", "onload_dtype": bf, "onload_device": "cpu",
          "preparing_dtype": bf, "preparing_device": device, "computation_dtype": bf, "computation_device": device}
m = enable_vram_management(m, module_map, vram_config=config, vram_limit=None if limit == "none" else float(limit))
for mod in m.modules():
    if hasattr(mod, "onload") and hasattr(mod, "state"):
        mod.onload()
g = torch.Generator().manual_seed(0)
x = {"latents": torch.randn(1, 16, lat, lat, generator=g).to(device, bf),
     "timestep": torch.full((1,), 500.0).to(device, bf),
     "prompt_emb": torch.randn(1, 32, 3584, generator=g).to(device, bf),
     "prompt_emb_mask": torch.ones(1, 32, dtype=torch.long, device=device)}
times = []
for _ in range(repeat):
    t0 = time.perf_counter()
    out = model_fn_qwen_image(dit=m, latents=x["latents"], timestep=x["timestep"], prompt_emb=x["prompt_emb"],
                              prompt_emb_mask=x["prompt_emb_mask"], height=lat * 8, width=lat * 8).float().cpu()
    times.append(time.perf_counter() - t0)
later = sorted(times[1:]) or times
print("reference forwards:", " ".join(f"{t:.3f}" for t in times))
print(f"later forwards: median {later[len(later) // 2]:.3f} s")
"""


def run(cmd, env=None):
    print("$", " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    print(p.stdout[-3000:], p.stderr[-3000:], f"(exit {p.returncode}, {time.perf_counter() - t0:.1f} s)", flush=True)
    return p


def median_of(out):
    m = re.search(r"later forwards: median ([0-9.]+) s", out)
    return float(m.group(1)) if m else None


def stats_of(out):
    m = re.search(r"output shape .*", out)
    return m.group(0) if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="folder with diffsynth-full and diffsynth_make_example")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--latent", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--out", default="/tmp/prefetch_check")
    ap.add_argument("--reference-path", default="", help="PYTHONPATH holding the reference (diffsynth)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"dit_{args.blocks}.safetensors")
    if not os.path.exists(path):
        p = run([os.path.join(args.bin, "diffsynth_make_example"), "--qwen-image-dit", path, args.blocks])
        if p.returncode != 0:
            sys.exit("could not write the DiT")
    base = [os.path.join(args.bin, "diffsynth-full"), "forward", path, "--latents", f"1x16x{args.latent}x{args.latent}",
            "--text-tokens", "32", "--dtype", "bfloat16", "--device", args.device, "--repeat", args.repeat]
    settings = {
        "resident": [],
        "vram_limit 0, no prefetch": ["--offload", "cpu", "--vram-limit", "0", "--prefetch", "0"],
        "vram_limit 0, prefetch 2": ["--offload", "cpu", "--vram-limit", "0", "--prefetch", "2"],
    }
    results, stats = {}, {}
    for name, extra in settings.items():
        p = run(base + extra)
        results[name] = median_of(p.stdout) if p.returncode == 0 else None
        stats[name] = stats_of(p.stdout)
    if args.reference_path:
        env = dict(os.environ, PYTHONPATH=args.reference_path + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # The reference's check_free_vram asks torch.<device>.mem_get_info: CUDA only.
        limit = "0" if args.device.startswith("cuda") else "none"
        p = run([sys.executable, "-c", REF, path, args.blocks, args.device, args.latent, args.repeat, limit], env=env)
        results["reference, vram_limit 0"] = median_of(p.stdout) if p.returncode == 0 else None
    print("\n| setting | step (median of later forwards) | vs resident |")
    print("|---|---|---|")
    res = results.get("resident")
    for name, t in results.items():
        ratio = f"{res / t:.2f}x speed" if t and res else "-"
        print(f"| {name} | {'%.3f s' % t if t else 'failed'} | {ratio} |")
    same = len({s for s in stats.values()}) == 1 and None not in stats.values()
    print("outputs identical across our settings:", same)
    for name, s in stats.items():
        print(f"  {name}: {s}")


if __name__ == "__main__":
    main()
