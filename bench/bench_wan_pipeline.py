"""Whole Wan2.1 text-to-video pipeline: `diffsynth generate` vs the reference WanVideoPipeline in a
Python process, side by side in one run (alternating: ours, reference, ours, ...), same thread count.

Both run the build's tiny random-weight Wan2.1 folder (build/models/tiny-wan: the real WanModel,
UMT5 encoder and video VAE architectures at reduced widths, the published folder layout, the real
umt5-xxl tokenizer) with the same prompt / negative prompt / seed / size / frames / steps / cfg /
shift and the pipeline's default tiled VAE decode, and each writes an mp4 the way it writes one:
ours through libavcodec, the reference through its save_video (imageio-ffmpeg, quality 9). The
reference process builds its models at the files' sizes as tests/python/test_wan_video_pipeline_parity.py
does (VRAM management off) and times its stages with a progress_bar_cmd wrapper (first iteration =
end of encoding, loop end = end of denoising, the call's return = end of decoding). Ours reports
its stages on its `diffsynth: timings:` line. Whole-process wall time and peak RSS come from GNU
time (bench/common.py measure_rusage). Latents are not compared here (the parity test does); the
final frames' difference is printed as a sanity check.

Usage: python bench/bench_wan_pipeline.py BUILD_DIR [--repeats 2] [--threads N] [--dtypes float32,bfloat16]
                                          [--width 160 --height 96 --frames 17 --steps 10]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import OURS_TIMINGS_RE, gib, machine, measure_rusage  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PROMPT = "A corgi running on a beach at sunset, waves, slow motion"
NEGATIVE = "blurry, low quality, static"
SEED = 42

REF_PIPE = r"""
import time
T0 = time.perf_counter()
import json, sys
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["tests_python"])
import numpy as np
import torch
from safetensors.torch import load_file
from diffsynth.models.wan_video_dit import WanModel
from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer, WanTextEncoder
from diffsynth.models.wan_video_vae import WanVideoVAE
from diffsynth.pipelines.wan_video import WanVideoPipeline
from diffsynth.utils.data import save_video
from diffsynth.utils.state_dict_converters.wan_video_vae import WanVideoVAEStateDictConverter
import reference_models
torch.set_grad_enabled(False)
if spec["threads"]:
    torch.set_num_threads(spec["threads"])
dtype = getattr(torch, spec["dtype"])
T_import = time.perf_counter()
d = spec["dir"]
dit = WanModel(has_image_input=False, patch_size=(1, 2, 2), in_dim=16, dim=64, ffn_dim=128, freq_dim=32, text_dim=32,
               out_dim=16, num_heads=2, num_layers=2, eps=1e-6)
dit.load_state_dict(load_file(f"{d}/diffusion_pytorch_model.safetensors"))
te = WanTextEncoder(vocab=256384, dim=32, dim_attn=32, dim_ffn=64, num_heads=2, num_layers=2, num_buckets=32,
                    shared_pos=False).eval()
te.load_state_dict(torch.load(f"{d}/models_t5_umt5-xxl-enc-bf16.pth", weights_only=True))
with reference_models._reduced_video_vae(dim=16, num_res_blocks=1):
    vae = WanVideoVAE().eval()
vae.load_state_dict(WanVideoVAEStateDictConverter(torch.load(f"{d}/Wan2.1_VAE.pth", weights_only=True)))
pipe = WanVideoPipeline(device="cpu", torch_dtype=dtype)
pipe.dit, pipe.text_encoder, pipe.vae = dit.to(dtype).eval(), te.to(dtype), vae.to(dtype)
pipe.tokenizer = HuggingfaceTokenizer(name=f"{d}/google/umt5-xxl", seq_len=512, clean="whitespace")
pipe.vram_management_enabled = False

marks = {}
def bar(iterable):
    marks["loop_start"] = time.perf_counter()
    for x in iterable:
        yield x
    marks["loop_end"] = time.perf_counter()

T_call = time.perf_counter()
video = pipe(prompt=spec["prompt"], negative_prompt=spec["negative"], seed=spec["seed"], width=spec["width"],
             height=spec["height"], num_frames=spec["frames"], num_inference_steps=spec["steps"], cfg_scale=5.0,
             sigma_shift=5.0, progress_bar_cmd=bar)
T_decoded = time.perf_counter()
save_video(video, spec["output"], fps=15, quality=9)
np.save(spec["frames_out"], np.stack([np.array(f) for f in video]))
T_end = time.perf_counter()
print("timings " + json.dumps({
    "import": T_import - T0, "load": T_call - T_import, "encode": marks["loop_start"] - T_call,
    "denoise": marks["loop_end"] - marks["loop_start"], "decode": T_decoded - marks["loop_end"],
    "write": T_end - T_decoded, "threads": torch.get_num_threads()}))
"""


def read_frames(frames_dir):
    from PIL import Image
    files = sorted(f for f in os.listdir(frames_dir) if f.startswith("frame_"))
    return np.stack([np.array(Image.open(os.path.join(frames_dir, f))) for f in files])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    tiny = os.path.join(build, "models", "tiny-wan")
    binary = os.path.join(build, "bin", "diffsynth")
    py = sys.executable
    rows = []
    log = sys.stderr
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            ours_mp4, ref_mp4 = f"{tmp}/ours_{dtype}.mp4", f"{tmp}/ref_{dtype}.mp4"
            ours_frames, ref_frames = f"{tmp}/ours_{dtype}_frames", f"{tmp}/ref_{dtype}.npy"
            ours_cmd = [binary, "generate", "--model-dir", tiny, "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                        "--seed", str(SEED), "--width", str(args.width), "--height", str(args.height),
                        "--num-frames", str(args.frames), "--steps", str(args.steps), "--dtype", dtype,
                        "-o", ours_mp4, "--frames-dir", ours_frames]
            if args.threads:
                ours_cmd += ["--threads", str(args.threads)]
            spec = dict(tests_python=os.path.join(ROOT, "tests", "python"), dir=tiny, dtype=dtype, threads=args.threads,
                        prompt=PROMPT, negative=NEGATIVE, seed=SEED, width=args.width, height=args.height,
                        frames=args.frames, steps=args.steps, output=ref_mp4, frames_out=ref_frames)
            ref_cmd = [py, "-c", REF_PIPE, json.dumps(spec)]
            ours, ref = [], []
            for i in range(args.repeats):
                wall, rss, _, err = measure_rusage(ours_cmd, capture_stderr=True)
                m = OURS_TIMINGS_RE.search(err)
                if not m:
                    raise RuntimeError(f"no timings line from diffsynth generate:\n{err[-2000:]}")
                t = dict(load=float(m.group(1)), encode=float(m.group(2)), denoise=float(m.group(3)),
                         decode=float(m.group(6)))
                ours.append((wall, rss, t))
                print(f"  [{dtype}] ours #{i + 1}: {wall:.1f} s, {gib(rss)}, {t}", file=log, flush=True)
                wall, rss, out = measure_rusage(ref_cmd)
                t = json.loads(out.split("timings ", 1)[1].splitlines()[0])
                ref.append((wall, rss, t))
                print(f"  [{dtype}] reference #{i + 1}: {wall:.1f} s, {gib(rss)}, {t}", file=log, flush=True)
            diff = np.abs(read_frames(ours_frames).astype(np.int16) - np.load(ref_frames).astype(np.int16))

            def med(rows_, key=None):
                return statistics.median(r[0] if key is None else r[2][key] for r in rows_)

            row = dict(name=f"tiny T2V {args.width}x{args.height}, {args.frames} frames, {args.steps} steps, cfg 5, {dtype}",
                       ours_wall=med(ours), ref_wall=med(ref), ours_rss=max(r[1] for r in ours),
                       ref_rss=max(r[1] for r in ref), frame_max_diff=int(diff.max()), frame_mean_diff=float(diff.mean()))
            for k in ("load", "encode", "denoise", "decode"):
                row[f"ours_{k}"], row[f"ref_{k}"] = med(ours, k), med(ref, k)
            rows.append(row)
    print(f"machine: {machine()}; repeats {args.repeats} (median wall, max RSS)")
    print("| benchmark | ours (process) | reference (process) | ratio ours/ref | peak RSS ours | peak RSS reference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['ours_wall']:.2f} s | {r['ref_wall']:.2f} s | {r['ours_wall'] / r['ref_wall']:.2f}x | "
              f"{gib(r['ours_rss'])} | {gib(r['ref_rss'])} |")
    print()
    print("| stage | " + " | ".join(r["name"].split(", ")[-1] + " ours / ref" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in ("load", "encode", "denoise", "decode"):
        print(f"| {k} | " + " | ".join(f"{r[f'ours_{k}']:.2f} s / {r[f'ref_{k}']:.2f} s" for r in rows) + " |")
    for r in rows:
        print(f"{r['name']}: final frames differ by max {r['frame_max_diff']}, mean {r['frame_mean_diff']:.3f} levels")


if __name__ == "__main__":
    main()
