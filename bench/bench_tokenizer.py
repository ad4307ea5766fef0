"""Tokenizer benchmark: our C++ byte-level BPE (`diffsynth tokenize --bench N`, in-process timing)
against the Python `tokenizers` package (Rust), both single-threaded, in one run:
load time of data/qwen-tokenizer/tokenizer.json, and encoding throughput (MB/s, tokens/s) on
  - the parity corpus (tests/data/tokenizer_corpus.jsonl: short, very mixed strings), and
  - a large English + Chinese text (~2 MB of prompt-like lines, deterministic).
Both sides encode every text one call at a time, `repeats` passes (word caches warm after the
first pass, on both sides). `tokenizers` runs `Tokenizer.encode` in a loop with
RAYON_NUM_THREADS=1 / TOKENIZERS_PARALLELISM=false.

Usage: python bench/bench_tokenizer.py BUILD_DIR [--repeats 5]
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_tokenizer_corpus as corpus_source  # noqa: E402

TOKENIZER_DIR = os.path.join(ROOT, "data", "qwen-tokenizer")


def large_text():
    rng = random.Random(1)
    words = " ".join(corpus_source.ENGLISH).split()
    han = "".join(corpus_source.CHINESE)
    lines, size = [], 0
    while size < 2_000_000:
        if rng.random() < 0.5:
            line = " ".join(rng.choice(words) for _ in range(rng.randint(10, 60)))
        else:
            line = "".join(rng.choice(han) for _ in range(rng.randint(20, 120)))
        lines.append(line)
        size += len(line.encode())
    return lines


def ours(bin_path, texts, repeats):
    stdin = "".join(json.dumps(t) + "\n" for t in texts)
    runs = []
    for _ in range(3):
        p = subprocess.run([bin_path, "tokenize", "--tokenizer", TOKENIZER_DIR, "--json", "--bench", str(repeats)],
                           input=stdin, capture_output=True, text=True, check=True)
        runs.append(json.loads(p.stdout))
    best = min(runs, key=lambda r: r["encode_s"])
    best["load_s"] = statistics.median(r["load_s"] for r in runs)
    return best


def reference(texts, repeats):
    from tokenizers import Tokenizer
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        tok = Tokenizer.from_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))
        loads.append(time.perf_counter() - t0)
    best = None
    for _ in range(3):
        tok = Tokenizer.from_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))
        tokens = 0
        t0 = time.perf_counter()
        for _ in range(repeats):
            for t in texts:
                tokens += len(tok.encode(t).ids)
        elapsed = time.perf_counter() - t0
        if best is None or elapsed < best["encode_s"]:
            best = {"encode_s": elapsed, "tokens": tokens}
    best["load_s"] = statistics.median(loads)
    best["bytes"] = sum(len(t.encode()) for t in texts) * repeats
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build_dir")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    bin_path = os.path.join(args.build_dir, "bin", "diffsynth")
    with open(os.path.join(ROOT, "tests", "data", "tokenizer_corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f.read().split("\n") if line]
    sets = {"parity corpus": corpus, "English + Chinese text": large_text()}

    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    print(f"machine: {cpu}, {os.cpu_count()} cores; single-threaded; {args.repeats} passes per run, best of 3 runs\n")
    print("| text | MB | ours MB/s | tokenizers MB/s | ours Mtok/s | tokenizers Mtok/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    load = None
    for name, texts in sets.items():
        o = ours(bin_path, texts, args.repeats)
        r = reference(texts, args.repeats)
        assert o["tokens"] == r["tokens"], (name, o["tokens"], r["tokens"])
        mb = o["bytes"] / 1e6
        print(f"| {name} ({len(texts)} strings) | {mb / args.repeats:.2f} | {mb / o['encode_s']:.1f} | "
              f"{mb / r['encode_s']:.1f} | {o['tokens'] / o['encode_s'] / 1e6:.2f} | "
              f"{r['tokens'] / r['encode_s'] / 1e6:.2f} | {r['encode_s'] / o['encode_s']:.2f}x |")
        load = (o["load_s"], r["load_s"])
    print(f"\nload tokenizer.json (11 MB, median of 3): ours {load[0] * 1000:.0f} ms, "
          f"tokenizers {load[1] * 1000:.0f} ms ({load[1] / load[0]:.2f}x)")


if __name__ == "__main__":
    main()
