"""Disk-offload prefetch on the CPU: `diffsynth forward --offload disk` with the next layers read
from the file on a worker thread (--prefetch 2, the default) against no prefetch (--prefetch 0).

The checkpoint is a reduced Qwen-Image DiT at full width (3072 wide, 24 x 128 heads) with BLOCKS
blocks of random bf16 weights (real data, so reads cost what they cost). Computation in float32
(this AVX2 CPU has no fast bf16 kernels), latents 1x16x32x32 (256 image tokens) + 32 text tokens.
Two cache states per run:
  * cold: the file's pages are dropped from the page cache first (posix_fadvise DONTNEED), so every
    layer is read from the disk;
  * warm: the file is in the page cache; a layer's "read" is the bf16 -> fp32 conversion.
Runs alternate between the two settings. Reported: the forward time the CLI prints and the peak RSS.

Usage: python bench/bench_prefetch.py BUILD_DIR [--blocks 4] [--repeats 2]
"""
import argparse
import os
import re
import statistics
import sys
import tempfile

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from common import dit_metadata, gib, machine, measure_rusage  # noqa: E402


def write_dit(path, blocks):
    from diffsynth.models.qwen_image_dit import QwenImageDiT
    with torch.device("meta"):
        m = QwenImageDiT(num_layers=blocks)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in m.state_dict().items():
        t = torch.randn(v.shape, generator=g) / (v.shape[-1] ** 0.5 if v.dim() > 1 else 10.0)
        sd[k] = t.to(torch.bfloat16)
    # Not a released layout (fewer blocks): the config travels in the file's metadata.
    save_file(sd, path, metadata=dit_metadata(num_layers=blocks))
    return sum(t.numel() * 2 for t in sd.values())


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def forward_seconds(out):
    m = re.search(r"forward ([0-9.]+) s", out)
    if not m:
        raise RuntimeError("no forward time in: " + out)
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    binary = os.path.join(args.build, "bin", "diffsynth")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        path = os.path.join(tmp, "dit.safetensors")
        size = write_dit(path, args.blocks)
        print(f"checkpoint: {args.blocks} full-width blocks, {size / 1e9:.2f} GB bf16", flush=True)
        results = {}
        for cache in ("cold", "warm"):
            for _ in range(args.repeats):
                for prefetch in (0, 2):
                    if cache == "cold":
                        drop_cache(path)
                    else:
                        with open(path, "rb") as f:  # into the page cache
                            while f.read(1 << 24):
                                pass
                    cmd = [binary, "forward", path, "--latents", "1x16x32x32", "--text-tokens", "32",
                           "--dtype", "float32", "--offload", "disk", "--prefetch", str(prefetch)]
                    wall, rss, out = measure_rusage(cmd)
                    fwd = forward_seconds(out)
                    results.setdefault((cache, prefetch), []).append((fwd, rss))
                    print(f"{cache} prefetch={prefetch}: forward {fwd:.2f} s, peak RSS {gib(rss)}", flush=True)
        print()
        print(machine())
        print("| page cache | forward, --prefetch 0 | forward, --prefetch 2 | ratio (2 / 0) | peak RSS 0 / 2 |")
        print("|---|---|---|---|---|")
        for cache in ("cold", "warm"):
            f0 = statistics.median(r[0] for r in results[(cache, 0)])
            f2 = statistics.median(r[0] for r in results[(cache, 2)])
            r0 = max(r[1] for r in results[(cache, 0)])
            r2 = max(r[1] for r in results[(cache, 2)])
            print(f"| {cache} | {f0:.2f} s | {f2:.2f} s | {f2 / f0:.2f} | {gib(r0)} / {gib(r2)} |")


if __name__ == "__main__":
    main()
