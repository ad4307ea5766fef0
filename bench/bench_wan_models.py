"""Wan2.1 model forward benchmarks: the same weights and inputs through our C++ model (the
diffsynth_parity tool, which reports its forward time) and the reference module in a Python
process, side by side, alternating, same thread count (torch's default on this box for both).

1. WanModel through model_fn_wan_video: ONE full-width block of the Wan2.1-T2V-1.3B config (dim 1536,
   FFN 8960, 12 heads, text 4096, freq 256, patch 1x2x2), latents 1x16x6x32x32 = 6*16*16 = 1536 video
   tokens, 512 context tokens; fp32 and bf16.
2. WanTextEncoder (UMT5-XXL encoder) at full width (4096, 64 heads, FFN 10240, vocab 256,384, 32
   buckets, own position bias per block), 2 layers, 512 tokens (unmasked), fp32 and bf16.
3. WanVideoVAE (the real Wan2.1 VAE, dim 96) decode of latents 1x16x3x32x32 -> 9 frames 256x256,
   untiled (fp32 and bf16) and the pipeline's tiled (30,52)/(15,26) (2 tiles here; bf16 only by
   default, --tiled-dtypes), the same choice on both sides.
Weights: random (seeded, activations O(1): the parity tests' init schemes), one fp32 safetensors
file per model read by both sides (bf16: each side converts on load, as DiffSynth's loader does).
Whole-process wall time and peak RSS (GNU time) plus the forward time each side reports (ours with
every weight read before its timer starts, as the reference's load_file has done), and each
forward's CPU time (the reference's time.process_time(); ours: process user+sys minus a baseline
run on a minimal input), steadier than wall time on a shared box. The first repeat of each case
also checks that both sides' outputs agree.

Only one process runs at a time (the text encoder's file is 5.7 GB, its vocabulary alone 4.2 GB).

4. WanImageEncoder (--only clip): the full ViT-H/14 vision tower, encode_image of one 832x480 image.

Usage: python bench/bench_wan_models.py BUILD_DIR [--repeats 2] [--only dit,te,vae,vae_tiled,clip]
       [--dtypes float32,bfloat16] [--tiled-dtypes bfloat16] [--keep DIR]
"""
import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from common import gib, machine  # noqa: E402

DIT_KW = dict(dim=1536, in_dim=16, ffn_dim=8960, out_dim=16, text_dim=4096, freq_dim=256, eps=1e-6,
              patch_size=[1, 2, 2], num_heads=12, num_layers=1, has_image_input=False)
TE_KW = dict(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=2,
             num_buckets=32, shared_pos=False)
VAE_CONVERTER = "diffsynth.utils.state_dict_converters.wan_video_vae.WanVideoVAEStateDictConverter"
PIPELINE_TILING = dict(tile_size=[30, 52], tile_stride=[15, 26])

# Reference sides: argv = weights, inputs, dtype, output file ("-": none) [, kwargs / options JSON].
REF_DIT = r"""
import json, sys, time, torch
from safetensors.torch import load_file, save_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.models.wan_video_dit import WanModel
from diffsynth.pipelines.wan_video import model_fn_wan_video
torch.set_grad_enabled(False)
dtype = getattr(torch, sys.argv[3])
with skip_model_initialization():
    m = WanModel(**json.loads(sys.argv[5]))
m.load_state_dict(load_file(sys.argv[1]), assign=True)
m = m.to(dtype).eval()
x = load_file(sys.argv[2])
t0, c0 = time.perf_counter(), time.process_time()
out = model_fn_wan_video(dit=m, latents=x["latents"].to(dtype), timestep=x["timestep"].to(dtype),
                         context=x["context"].to(dtype))
print("forward", time.perf_counter() - t0, "cpu", time.process_time() - c0)
if sys.argv[4] != "-":
    save_file({"out": out.float().contiguous()}, sys.argv[4])
"""

REF_TE = r"""
import json, sys, time, torch
from safetensors.torch import load_file, save_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.models.wan_video_text_encoder import WanTextEncoder
torch.set_grad_enabled(False)
dtype = getattr(torch, sys.argv[3])
with skip_model_initialization():
    m = WanTextEncoder(**json.loads(sys.argv[5]))
m.load_state_dict(load_file(sys.argv[1]), assign=True)
m = m.to(dtype).eval()
ids = load_file(sys.argv[2])["ids"]
t0, c0 = time.perf_counter(), time.process_time()
out = m(ids, None)
print("forward", time.perf_counter() - t0, "cpu", time.process_time() - c0)
if sys.argv[4] != "-":
    save_file({"out": out.float().contiguous()}, sys.argv[4])
"""

REF_VAE = r"""
import json, sys, time, torch
from safetensors.torch import load_file, save_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.models.wan_video_vae import WanVideoVAE
from diffsynth.utils.state_dict_converters.wan_video_vae import WanVideoVAEStateDictConverter
torch.set_grad_enabled(False)
dtype = getattr(torch, sys.argv[3])
with skip_model_initialization():
    m = WanVideoVAE()
m.load_state_dict(WanVideoVAEStateDictConverter(load_file(sys.argv[1])), assign=True)
m = m.to(dtype).eval()
z = load_file(sys.argv[2])["latents"]
opts = json.loads(sys.argv[5])
tiling = dict(tiled=True, tile_size=tuple(opts["tile_size"]), tile_stride=tuple(opts["tile_stride"])) if opts.get("tiled") else {}
t0, c0 = time.perf_counter(), time.process_time()
out = m.decode(z.to(dtype), device="cpu", **tiling)
print("forward", time.perf_counter() - t0, "cpu", time.process_time() - c0)
if sys.argv[4] != "-":
    save_file({"decoded": out.float().contiguous()}, sys.argv[4])
"""


def write_streaming(path, layout, make):
    """An fp32 safetensors file written one tensor at a time (the text encoder's 5.7 GB never all in
    memory): layout [(name, shape)], make(name, shape) -> the tensor, or a list of row blocks."""
    header, off = {}, 0
    for name, shape in layout:
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name, shape in layout:
            t = make(name, shape)
            blocks = t if isinstance(t, list) else [t]
            assert sum(b.shape[0] for b in blocks) == shape[0] and all(list(b.shape[1:]) == shape[1:] for b in blocks), name
            for b in blocks:
                f.write(memoryview(b.to(torch.float32).contiguous().numpy()).cast("B"))
            del t, blocks


def layout_of(build):
    from diffsynth.core.vram.initialization import skip_model_initialization
    with skip_model_initialization():
        m = build()
    return [(k, list(v.shape)) for k, v in m.state_dict().items()]


def write_weights(d):
    """The three weight files, the parity tests' init schemes (tests/python/test_wan_video_dit_parity
    make_model, reference_models.reduced_wan_text_encoder and reduced_wan_video_vae)."""
    from diffsynth.models.wan_video_dit import WanModel
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import WanVideoVAE
    g = torch.Generator().manual_seed(0)

    def dit(name, shape):
        r = torch.randn(shape, generator=g)
        if len(shape) >= 2 and "modulation" not in name:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            return r / fan_in ** 0.5
        return r * 0.2 + (1.0 if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") else 0.0)

    def te(name, shape):
        if "token_embedding" in name:  # 4.2 GB: in rows of 16k
            return [torch.randn([min(16384, shape[0] - i), shape[1]], generator=g) for i in range(0, shape[0], 16384)]
        r = torch.randn(shape, generator=g)
        if "norm" in name:
            return 1 + 0.1 * r
        if "pos_embedding" in name:
            return r
        return r * shape[-1] ** -0.5

    def vae(name, shape):
        r = torch.randn(shape, generator=g)
        if name.endswith("gamma"):
            return 1 + 0.1 * r
        if name.endswith("bias"):
            return 0.05 * r
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return r / fan_in ** 0.5

    files = {}
    files["dit"] = f"{d}/dit.safetensors"
    write_streaming(files["dit"], layout_of(lambda: WanModel(**DIT_KW)), dit)
    files["te"] = f"{d}/te.safetensors"
    write_streaming(files["te"], layout_of(lambda: WanTextEncoder(**TE_KW)), te)
    # The VAE in the Wan2.1_VAE.pth layout (names without "model."), loaded through the converter.
    files["vae"] = f"{d}/vae.safetensors"
    write_streaming(files["vae"], [(k[len("model."):], s) for k, s in layout_of(WanVideoVAE)], vae)

    gi = torch.Generator().manual_seed(1)
    files["dit_in"] = f"{d}/dit_in.safetensors"
    save_file({"latents": torch.randn(1, 16, 6, 32, 32, generator=gi), "timestep": torch.tensor([937.25]),
               "context": torch.randn(1, 512, 4096, generator=gi)}, files["dit_in"])
    files["te_in"] = f"{d}/te_in.safetensors"
    save_file({"ids": torch.randint(1, TE_KW["vocab"], (1, 512), generator=gi)}, files["te_in"])
    files["vae_in"] = f"{d}/vae_in.safetensors"
    save_file({"latents": torch.randn(1, 16, 3, 32, 32, generator=gi)}, files["vae_in"])
    return files


def write_minimal_inputs(d):
    """Inputs of our baseline runs: load, read every weight, a forward of next to nothing."""
    gi = torch.Generator().manual_seed(2)
    save_file({"latents": torch.randn(1, 16, 1, 2, 2, generator=gi), "timestep": torch.tensor([937.25]),
               "context": torch.randn(1, 1, 4096, generator=gi)}, f"{d}/dit_min.safetensors")
    save_file({"ids": torch.randint(1, TE_KW["vocab"], (1, 1), generator=gi)}, f"{d}/te_min.safetensors")
    save_file({"latents": torch.randn(1, 16, 1, 1, 1, generator=gi)}, f"{d}/vae_min.safetensors")
    return {k: f"{d}/{k}.safetensors" for k in ("dit_min", "te_min", "vae_min")}


def measure(cmd):
    """(wall s, peak RSS bytes, CPU s = user + sys of the whole process, stdout, stderr) of one run
    (GNU time, as common.measure_rusage, plus the CPU time: the box is shared, CPU time is the
    figure that other processes disturb least)."""
    with tempfile.NamedTemporaryFile("r") as stats, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", stats.name, *[str(c) for c in cmd]],
                           stdout=out, stderr=err)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise RuntimeError(f"{cmd[:2]} failed: {err.read().decode()[-2000:]}")
        rss_kib, user, sys_ = stats.read().strip().splitlines()[-1].split()
        return wall, int(rss_kib) * 1024, float(user) + float(sys_), out.read().decode(), err.read().decode()


def forward_time(text, pattern):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else float("nan")


OURS_FWD = r"ran in ([0-9.e-]+) s"
REF_FWD = r"forward ([0-9.e-]+)"
REF_CPU = r"forward [0-9.e-]+ cpu ([0-9.e-]+)"


def compare(name, ours_cmd, ref_cmd, repeats, key, d, ours_baseline):
    """ours_cmd writes {d}/ours.safetensors; ref_cmd's "OUT" argument is its output file (the first
    repeat writes one, the rest pass '-'). ours_baseline: ours_cmd on a minimal input (loading and
    reading the weights, a forward of next to nothing): its process CPU time, subtracted from ours,
    estimates our forward's CPU time (the reference reports its own, time.process_time)."""
    ours, ref = [], []
    base_cpu = measure(ours_baseline)[2]  # again after the repeats, the lower kept: the first may page the file in
    for i in range(repeats):
        ours.append(measure(ours_cmd))
        out = f"{d}/ref_out.safetensors" if i == 0 else "-"
        ref.append(measure([out if c == "OUT" else c for c in ref_cmd]))
        if i == 0:
            o = load_file(f"{d}/ours.safetensors")[key]
            r = load_file(out)[key]
            assert o.shape == r.shape, (name, o.shape, r.shape)
            rel = ((o - r).abs().max() / r.abs().max()).item()
            print(f"{name}: max abs diff / max|ref| = {rel:.2e}", file=sys.stderr, flush=True)
            os.remove(out)
        print(f"{name}: repeat {i + 1}: ours forward {forward_time(ours[-1][4], OURS_FWD):.2f} s, "
              f"process {ours[-1][0]:.1f} s, CPU {ours[-1][2]:.1f} s (baseline so far {base_cpu:.1f} s); "
              f"ref forward {forward_time(ref[-1][3], REF_FWD):.2f} s (CPU {forward_time(ref[-1][3], REF_CPU):.1f} s), "
              f"process {ref[-1][0]:.1f} s, CPU {ref[-1][2]:.1f} s; load average {os.getloadavg()[0]:.1f}",
              file=sys.stderr, flush=True)
    base_cpu = min(base_cpu, measure(ours_baseline)[2])
    med = statistics.median
    return dict(name=name, ours_fwd=med(forward_time(r[4], OURS_FWD) for r in ours),
                ref_fwd=med(forward_time(r[3], REF_FWD) for r in ref),
                ours_fwd_cpu=med(r[2] for r in ours) - base_cpu,
                ref_fwd_cpu=med(forward_time(r[3], REF_CPU) for r in ref),
                ours_wall=med(r[0] for r in ours), ref_wall=med(r[0] for r in ref),
                ours_cpu=med(r[2] for r in ours), ref_cpu=med(r[2] for r in ref),
                ours_rss=max(r[1] for r in ours), ref_rss=max(r[1] for r in ref), rel_diff=rel)


# 4. WanImageEncoder (added with the CLIP encoder, --only clip): the full ViT-H/14 vision tower
# (1280 wide, 32 blocks, 632 M parameters) on one 832x480 image in [-1, 1], as the Wan I2V pipeline
# hands it to encode_image (which resizes it to 224 and runs 31 blocks on 257 tokens); the weights
# in the published file's names (no "model.", no text tower) through the converter on both sides.
CLIP_CONVERTER = "diffsynth.utils.state_dict_converters.wan_video_image_encoder.WanImageEncoderStateDictConverter"
REF_CLIP = r"""
import sys, time, torch
from safetensors.torch import load_file, save_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.models.wan_video_image_encoder import WanImageEncoder
from diffsynth.utils.state_dict_converters.wan_video_image_encoder import WanImageEncoderStateDictConverter
torch.set_grad_enabled(False)
dtype = getattr(torch, sys.argv[3])
with skip_model_initialization():
    m = WanImageEncoder()
m.load_state_dict(WanImageEncoderStateDictConverter(load_file(sys.argv[1])), assign=True)
m = m.to(dtype).eval()
image = load_file(sys.argv[2])["video.0"]
t0, c0 = time.perf_counter(), time.process_time()
out = m.encode_image([image.to(dtype)])
print("forward", time.perf_counter() - t0, "cpu", time.process_time() - c0)
if sys.argv[4] != "-":
    save_file({"out": out.float().contiguous()}, sys.argv[4])
"""


def write_clip_files(d):
    """clip.safetensors (the parity test's unit-gain init), clip_in (the image) and clip_min (our
    baseline: a 14x14 image through the tower with pos_interpolate, 2 tokens)."""
    from diffsynth.models.wan_video_image_encoder import WanImageEncoder
    g = torch.Generator().manual_seed(0)

    def clip(name, shape):
        r = torch.randn(shape, generator=g)
        if "norm" in name and name.endswith("weight"):
            return 1 + 0.1 * r
        if name.endswith("bias"):
            return 0.05 * r
        if name.endswith("_embedding"):
            return 0.5 * r
        if len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            return r / fan_in ** 0.5
        return r

    files = {"clip": f"{d}/clip.safetensors", "clip_in": f"{d}/clip_in.safetensors", "clip_min": f"{d}/clip_min.safetensors"}
    if not os.path.exists(files["clip"]):  # 2.5 GB at once (write_streaming takes no 0-dim log_scale)
        save_file({k[len("model."):]: clip(k, s) for k, s in layout_of(WanImageEncoder)}, files["clip"])
    gi = torch.Generator().manual_seed(1)
    save_file({"video.0": torch.rand(1, 3, 480, 832, generator=gi) * 2 - 1}, files["clip_in"])
    save_file({"pixels": torch.rand(1, 3, 14, 14, generator=gi) * 2 - 1}, files["clip_min"])
    return files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", default="dit,te,vae", help="comma-separated subset of dit, te, vae, vae_tiled, clip")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--tiled-dtypes", default="bfloat16",
                    help="dtypes of the tiled VAE decode (fp32 tiled: ~7 min a repeat on 2 cores)")
    ap.add_argument("--keep", help="write (or reuse) the weight files in this folder instead of a temporary one")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "vae" in only:
        only.add("vae_tiled")
    dtypes = args.dtypes.split(",")
    # Our parity tool maps the weights zero-copy: without this the first forward would also page
    # the file in, which the reference's load_file did before its timer started.
    os.environ["DIFFSYNTH_PARITY_TOUCH"] = "1"
    parity = os.path.join(args.build, "tests", "diffsynth_parity")
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or tmp
        os.makedirs(d, exist_ok=True)
        if args.keep and os.path.exists(f"{d}/vae_in.safetensors"):
            files = {k: f"{d}/{k}.safetensors" for k in ("dit", "te", "vae", "dit_in", "te_in", "vae_in")}
        elif only != {"clip"}:
            files = write_weights(d)
        else:
            files = {}
        if "clip" in only:
            files.update(write_clip_files(d))
        files.update(write_minimal_inputs(d))
        ours_out = f"{d}/ours.safetensors"
        for dtype in dtypes:
            short = "fp32" if dtype == "float32" else "bf16"
            if "dit" in only:
                kw = json.dumps(DIT_KW)
                rows.append(compare(f"WanModel model_fn, 1 block of 1.3B (1536 wide), 1536+512 tokens, {short}",
                                    [parity, "wan_video_dit", files["dit"], files["dit_in"], ours_out, dtype, kw],
                                    [py, "-c", REF_DIT, files["dit"], files["dit_in"], dtype, "OUT", kw],
                                    args.repeats, "out", d,
                                    [parity, "wan_video_dit", files["dit"], files["dit_min"], ours_out, dtype, kw]))
            if "te" in only:
                kw = json.dumps(TE_KW)
                rows.append(compare(f"WanTextEncoder (UMT5-XXL), 2 full-width layers, 512 tokens, {short}",
                                    [parity, "wan_text_encoder", files["te"], files["te_in"], ours_out, dtype, kw],
                                    [py, "-c", REF_TE, files["te"], files["te_in"], dtype, "OUT", kw],
                                    args.repeats, "out", d,
                                    [parity, "wan_text_encoder", files["te"], files["te_min"], ours_out, dtype, kw]))
            for tiled in (False, True):
                if ("vae_tiled" if tiled else "vae") not in only or (tiled and dtype not in args.tiled_dtypes.split(",")):
                    continue
                opts = dict(tiled=True, **PIPELINE_TILING) if tiled else {}
                ours_opts = json.dumps({**opts, "converter": VAE_CONVERTER})
                label = "tiled (30,52)/(15,26)" if tiled else "untiled"
                rows.append(compare(f"WanVideoVAE decode 3x32x32 -> 9x256x256, {label}, {short}",
                                    [parity, "wan_video_vae", files["vae"], files["vae_in"], ours_out, dtype, "{}", ours_opts],
                                    [py, "-c", REF_VAE, files["vae"], files["vae_in"], dtype, "OUT", json.dumps(opts)],
                                    args.repeats, "decoded", d,
                                    [parity, "wan_video_vae", files["vae"], files["vae_min"], ours_out, dtype, "{}",
                                     json.dumps({"converter": VAE_CONVERTER})]))
            if "clip" in only:
                rows.append(compare(f"WanImageEncoder encode_image (ViT-H/14, 31 blocks), 832x480 -> 224, 257 tokens, {short}",
                                    [parity, "wan_image_encoder", files["clip"], files["clip_in"], ours_out, dtype, "{}",
                                     json.dumps({"converter": CLIP_CONVERTER})],
                                    [py, "-c", REF_CLIP, files["clip"], files["clip_in"], dtype, "OUT"],
                                    args.repeats, "out", d,
                                    [parity, "wan_image_encoder", files["clip"], files["clip_min"], ours_out, dtype, "{}",
                                     json.dumps({"converter": CLIP_CONVERTER, "interpolation": True})]))
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}; {args.repeats} repeats")
    print("| benchmark | forward ours | forward reference | ratio ours/ref | forward CPU ours / ref | process ours "
          "| process reference | peak RSS ours | peak RSS reference | max diff / max abs ref |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['ours_fwd']:.2f} s | {r['ref_fwd']:.2f} s | **{r['ours_fwd'] / r['ref_fwd']:.2f}** | "
              f"{r['ours_fwd_cpu']:.1f} s / {r['ref_fwd_cpu']:.1f} s = {r['ours_fwd_cpu'] / r['ref_fwd_cpu']:.2f} | "
              f"{r['ours_wall']:.1f} s | {r['ref_wall']:.1f} s | {gib(r['ours_rss'])} | {gib(r['ref_rss'])} | "
              f"{r['rel_diff']:.1e} |")

if __name__ == "__main__":
    main()
