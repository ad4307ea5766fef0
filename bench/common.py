"""Whole-process benchmark helpers: run a command, measure wall time and peak RSS (GNU time),
repeat, report medians. Both sides are measured in the same run, one after
the other, alternating, so machine noise hits both."""
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from sparse_checkpoint import write_sparse_safetensors  # noqa: E402,F401


def measure_rusage(cmd, env=None, capture_stderr=False):
    """Wall seconds, peak RSS bytes and stdout of one run of cmd. GNU time reports the peak RSS:
    a child forked straight from this (large) Python process would count its pre-exec copy."""
    with tempfile.NamedTemporaryFile("r") as stats, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", stats.name, *[str(c) for c in cmd]],
                           stdout=out, stderr=err, env=env)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise RuntimeError(f"{cmd} failed: {err.read().decode()[-2000:]}")
        peak_kib = int(stats.read().strip().splitlines()[-1])
        if capture_stderr:
            return wall, peak_kib * 1024, out.read().decode(), err.read().decode()
        return wall, peak_kib * 1024, out.read().decode()


def compare(name, ours_cmd, ref_cmd, repeats=3, env=None):
    ours, ref = [], []
    for _ in range(repeats):
        ours.append(measure_rusage(ours_cmd, env))
        ref.append(measure_rusage(ref_cmd, env))
    row = {
        "name": name,
        "ours_wall_s": statistics.median(r[0] for r in ours),
        "ref_wall_s": statistics.median(r[0] for r in ref),
        "ours_peak_rss": max(r[1] for r in ours),
        "ref_peak_rss": max(r[1] for r in ref),
        "ours_out": ours[0][2],
        "ref_out": ref[0][2],
        "repeats": repeats,
    }
    row["speedup"] = row["ref_wall_s"] / row["ours_wall_s"]
    return row


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def bench_args():
    """BUILD_DIR [--out bench/out] [--repeats 3], the output folder created; returns (args, the
    diffsynth launcher, this Python)."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    return args, os.path.join(args.build, "bin", "diffsynth"), sys.executable


def print_rows(rows):
    """The machine line and a Markdown table of compare() rows, as BENCHMARKS.md shows them."""
    print(f"machine: {machine()}")
    print("| benchmark | diffsynth.cpp | reference | speed-up | peak RSS ours | peak RSS reference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['ours_wall_s']:.3f} s | {r['ref_wall_s']:.3f} s | {r['speedup']:.1f}x | "
              f"{gib(r['ours_peak_rss'])} | {gib(r['ref_peak_rss'])} |")


def gib(b):
    return f"{b / 2 ** 30:.2f} GiB"


def config_metadata(model_name, model_class, extra_kwargs, converter=None):
    """safetensors metadata carrying the file's own config entry (for layouts not in the table)."""
    import json
    config = {"model_name": model_name, "model_class": model_class, "extra_kwargs": extra_kwargs}
    if converter:
        config["state_dict_converter"] = converter
    return {"diffsynth_model_config": json.dumps(config)}


def dit_metadata(**extra_kwargs):
    return config_metadata("qwen_image_dit", "diffsynth.models.qwen_image_dit.QwenImageDiT", extra_kwargs)


# The `diffsynth generate` stderr line (apps/diffsynth/generate.cpp print_timings): load, encode,
# denoise, steps, s/step, decode.
OURS_TIMINGS_RE = re.compile(r"diffsynth: timings: load ([0-9.]+) s, encode ([0-9.]+) s, denoise ([0-9.]+) s "
                             r"\((\d+) steps, ([0-9.]+) s/step\), decode ([0-9.]+) s")
