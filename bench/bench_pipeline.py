"""Whole Qwen-Image text-to-image pipeline: `diffsynth generate` vs the reference QwenImagePipeline in
a Python process, side by side in one run (alternating: ours, reference, ours, ...), same thread count.

Configurations:
1. tiny: the build's tiny random-weight folder (build/models/tiny-qwen-image: the real DiT, text encoder
   and VAE architectures at reduced widths), 256x256, 8 steps, cfg 4 (two DiT passes per step), in bf16
   (the reference's default dtype) and fp32.
2. reduced: bigger models of the real architectures with random weights, written here into a temp dir
   (bf16 safetensors with their config in the `diffsynth_model_config` metadata): the DiT with 2 blocks
   at full width (3072, 24 x 128 heads, text dim 3584), the text encoder with 2 layers at full width
   (3584, 28/4 heads, MLP 18944, vocabulary 152064, a small vision tower) and the full-size VAE;
   512x512, 4 steps, cfg 4, in the dtype(s) given by --reduced-dtype (default float32: bf16
   convolutions and matmuls on a CPU without AVX512-BF16 are slow, see BENCHMARKS.md).

Both sides load the same files. Ours: `diffsynth generate`, whose stderr line `diffsynth: timings:`
gives load / encode / denoise / decode seconds. The reference: a Python process that imports
diffsynth, builds each model with the reference's own `load_model` (the classes at the files' sizes,
as the parity tests do), assembles QwenImagePipeline(device="cpu", torch_dtype=...) with the real
Qwen tokenizer and VRAM management off, and calls it with the same prompt / negative prompt / seed /
size / steps / cfg; its stages are timed with a progress_bar_cmd wrapper (first iteration = end of
encoding, loop end = end of denoising) and the call's return (= end of decoding). Both write a PNG.
Whole-process wall time and peak RSS come from GNU time (bench/common.py measure_rusage).

Usage: python bench/bench_pipeline.py BUILD_DIR [--repeats 2] [--threads N] [--configs tiny,reduced]
                                      [--reduced-dtype float32[,bfloat16]]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import OURS_TIMINGS_RE, config_metadata, gib, machine, measure_rusage  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PROMPT = "A red fox sitting in fresh snow, golden hour, highly detailed photograph"
NEGATIVE = "blurry, low quality"
SEED = 42
TE_CONVERTER = "diffsynth.utils.state_dict_converters.qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter"

# Sizes of each configuration, in the reference's terms (the tiny ones must match
# diffsynth_make_example --tiny-qwen-image, as in tests/python/test_qwen_image_pipeline_parity.py).
SIZES = {
    "tiny": dict(dit=dict(dim=64, heads=2, head_dim=32, text_dim=128, layers=2),
                 text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                           num_key_value_heads=1, vocab_size=152064),
                 vision=dict(depth=1, hidden_size=32, num_heads=1, intermediate_size=64, fullatt_block_indexes=[0]),
                 vae=dict(base_dim=16, num_res_blocks=1)),
    "reduced": dict(dit=dict(layers=2),  # QwenImageDiT(num_layers=2): full width
                    text=dict(hidden_size=3584, num_hidden_layers=2),
                    vision=dict(depth=1, hidden_size=64, num_heads=2, intermediate_size=96, fullatt_block_indexes=[0]),
                    vae=dict()),
}

REF_PIPE = r"""
import time
T0 = time.perf_counter()
import json, sys
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["tests_python"])
import torch
from transformers import Qwen2Tokenizer
from diffsynth.core.loader.model import load_model
from diffsynth.models.qwen_image_dit import QwenImageDiT
from diffsynth.models.qwen_image_text_encoder import QwenImageTextEncoder
from diffsynth.models.qwen_image_vae import QwenImageVAE
from diffsynth.pipelines.qwen_image import QwenImagePipeline
from diffsynth.utils.state_dict_converters.qwen_image_text_encoder import QwenImageTextEncoderStateDictConverter
import reference_models
torch.set_grad_enabled(False)
if spec["threads"]:
    torch.set_num_threads(spec["threads"])
dtype = getattr(torch, spec["dtype"])
sz = spec["sizes"]
T_import = time.perf_counter()

d = sz["dit"]
if "dim" in d:  # reduced widths: the reference hard-codes them, so assemble it (as the parity tests do)
    dit_class = lambda: reference_models.reduced_dit(d["dim"], d["heads"], d["head_dim"], d["text_dim"], d["layers"], init=False)
    dit_config = {}
else:
    dit_class, dit_config = QwenImageDiT, {"num_layers": d["layers"]}
dit = load_model(dit_class, spec["dit"], config=dit_config, torch_dtype=dtype, device="cpu")
with reference_models.reduced_qwen2_5_vl_config(sz["text"], sz["vision"]):
    te = load_model(QwenImageTextEncoder, spec["te"], torch_dtype=dtype, device="cpu",
                    state_dict_converter=QwenImageTextEncoderStateDictConverter)
vae = load_model(QwenImageVAE, spec["vae"], config=sz["vae"], torch_dtype=dtype, device="cpu")
pipe = QwenImagePipeline(device="cpu", torch_dtype=dtype)
pipe.dit, pipe.text_encoder, pipe.vae = dit, te, vae
pipe.tokenizer = Qwen2Tokenizer.from_pretrained(spec["tokenizer"])
pipe.vram_management_enabled = False

marks = {}
def bar(iterable):
    marks["loop_start"] = time.perf_counter()
    steps = []
    for x in iterable:
        steps.append(time.perf_counter())
        yield x
    marks["loop_end"] = time.perf_counter()
    marks["steps"] = steps

T_call = time.perf_counter()
image = pipe(prompt=spec["prompt"], negative_prompt=spec["negative"], cfg_scale=spec["cfg"], seed=spec["seed"],
             num_inference_steps=spec["steps"], width=spec["width"], height=spec["height"], progress_bar_cmd=bar)
T_end = time.perf_counter()
image.save(spec["output"])
print("timings " + json.dumps({
    "import": T_import - T0, "load": T_call - T_import, "encode": marks["loop_start"] - T_call,
    "denoise": marks["loop_end"] - marks["loop_start"], "decode": T_end - marks["loop_end"],
    "threads": torch.get_num_threads()}))
"""


def random_weight(name, shape, dtype=torch.bfloat16):
    """Weights on the scale of trained ones, so activations stay O(1) through the stack."""
    if len(shape) > 1:
        fan_in = int(np.prod(shape[1:]))
        return (torch.randn(shape, dtype=torch.float32) / fan_in ** 0.5).to(dtype)
    if "norm" in name or name.endswith("gamma"):
        return torch.ones(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


def write_reduced(d):
    """The reduced configuration's three files, bf16, with our config metadata. Returns their paths."""
    from safetensors.torch import save_file
    from diffsynth.models.qwen_image_dit import QwenImageDiT
    from diffsynth.models.qwen_image_text_encoder import QwenImageTextEncoder
    from diffsynth.models.qwen_image_vae import QwenImageVAE
    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    import reference_models
    sz = SIZES["reduced"]
    torch.manual_seed(0)

    def write(path, module, model_name, model_class, kwargs, converter=None, rename=lambda k: k):
        sd = {}
        for k, v in module.state_dict().items():
            sd[rename(k)] = random_weight(k, tuple(v.shape)).contiguous()
        save_file(sd, path, metadata={"format": "pt", **config_metadata(model_name, model_class, kwargs, converter)})
        n = sum(v.numel() for v in sd.values())
        del sd
        print(f"wrote {path} ({model_name}, {n / 1e6:.0f} M parameters)", file=sys.stderr)
        return path

    with torch.device("meta"):
        dit = QwenImageDiT(num_layers=sz["dit"]["layers"])
        with reference_models.reduced_qwen2_5_vl_config(sz["text"], sz["vision"]):
            te = QwenImageTextEncoder()
        vae = QwenImageVAE()
    v = sz["vision"]
    te_kwargs = {"num_hidden_layers": sz["text"]["num_hidden_layers"], "vision_depth": v["depth"],
                 "vision_hidden_size": v["hidden_size"], "vision_num_heads": v["num_heads"],
                 "vision_intermediate_size": v["intermediate_size"]}
    return {
        "dit": write(f"{d}/dit.safetensors", dit, "qwen_image_dit", "diffsynth.models.qwen_image_dit.QwenImageDiT",
                     {"num_layers": sz["dit"]["layers"]}),
        "te": write(f"{d}/text_encoder.safetensors", te, "qwen_image_text_encoder",
                    "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder", te_kwargs, TE_CONVERTER,
                    reference_models.te_checkpoint_name),
        "vae": write(f"{d}/vae.safetensors", vae, "qwen_image_vae", "diffsynth.models.qwen_image_vae.QwenImageVAE", {}),
    }


def run_pair(name, ours_cmd, ref_cmd, ours_png, ref_png, repeats, log):
    ours, ref = [], []
    for i in range(repeats):
        wall, rss, _, err = measure_rusage(ours_cmd, capture_stderr=True)
        m = OURS_TIMINGS_RE.search(err)
        if not m:
            raise RuntimeError(f"no timings line from diffsynth generate:\n{err[-2000:]}")
        t = dict(load=float(m.group(1)), encode=float(m.group(2)), denoise=float(m.group(3)), decode=float(m.group(6)))
        ours.append((wall, rss, t))
        print(f"  [{name}] ours #{i + 1}: {wall:.1f} s, {gib(rss)}, {t}", file=log, flush=True)
        wall, rss, out = measure_rusage(ref_cmd)
        t = json.loads(out.split("timings ", 1)[1].splitlines()[0])
        ref.append((wall, rss, t))
        print(f"  [{name}] reference #{i + 1}: {wall:.1f} s, {gib(rss)}, {t}", file=log, flush=True)
    from PIL import Image
    a = np.asarray(Image.open(ours_png).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(ref_png).convert("RGB"), dtype=np.int16)
    diff = np.abs(a - b)

    def med(rows, key=None):
        return statistics.median(r[0] if key is None else r[2][key] for r in rows)

    row = {"name": name, "repeats": repeats,
           "ours_wall": med(ours), "ref_wall": med(ref),
           "ours_rss": max(r[1] for r in ours), "ref_rss": max(r[1] for r in ref),
           "pixel_max_diff": int(diff.max()), "pixel_mean_diff": float(diff.mean())}
    for k in ("load", "encode", "denoise", "decode"):
        row[f"ours_{k}"] = med(ours, k)
        row[f"ref_{k}"] = med(ref, k)
    row["ref_import"] = med(ref, "import")
    row["ref_threads"] = ref[0][2]["threads"]
    return row


def configuration(name, build, files, tokenizer, dtype, width, height, steps, cfg, threads, repeats, tmp, log):
    diffsynth = os.path.join(build, "bin", "diffsynth")
    ours_png, ref_png = f"{tmp}/{name}-ours.png", f"{tmp}/{name}-ref.png"
    common = ["--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--seed", SEED, "--steps", steps,
              "--cfg-scale", cfg, "--width", width, "--height", height, "--dtype", dtype, "-o", ours_png]
    if threads:
        common += ["--threads", threads]
    if "model_dir" in files:
        ours_cmd = [diffsynth, "generate", "--model-dir", files["model_dir"], *common]
    else:
        ours_cmd = [diffsynth, "generate", "--model", files["dit"], "--model", files["te"], "--model", files["vae"],
                    "--tokenizer", tokenizer, *common]
    spec = {"tests_python": os.path.join(ROOT, "tests", "python"), "threads": threads, "dtype": dtype,
            "sizes": SIZES[name.split()[0]], "dit": files["dit"], "te": files["te"], "vae": files["vae"],
            "tokenizer": tokenizer, "prompt": PROMPT, "negative": NEGATIVE, "seed": SEED, "cfg": cfg,
            "steps": steps, "width": width, "height": height, "output": ref_png}
    ref_cmd = [sys.executable, "-c", REF_PIPE, json.dumps(spec)]
    row = run_pair(f"{name} {width}x{height}, {steps} steps, cfg {cfg}, {dtype}", ours_cmd, ref_cmd, ours_png, ref_png,
                   repeats, log)
    row["steps"] = steps
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reduced-repeats", type=int, default=None, help="repeats of the reduced configuration (default --repeats)")
    ap.add_argument("--threads", type=int, default=0, help="threads for both sides (default: torch's default on this box)")
    ap.add_argument("--configs", default="tiny,reduced")
    ap.add_argument("--tiny-dtypes", default="bfloat16,float32")
    ap.add_argument("--reduced-dtype", default="float32")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    configs = args.configs.split(",")
    log = sys.stderr
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in configs:
            tiny = os.path.join(build, "models", "tiny-qwen-image")
            files = {"model_dir": tiny, "dit": f"{tiny}/transformer/diffusion_pytorch_model.safetensors",
                     "te": f"{tiny}/text_encoder/model.safetensors", "vae": f"{tiny}/vae/diffusion_pytorch_model.safetensors"}
            for dtype in args.tiny_dtypes.split(","):
                rows.append(configuration("tiny", build, files, f"{tiny}/tokenizer", dtype, 256, 256, 8, 4,
                                          args.threads, args.repeats, tmp, log))
        if "reduced" in configs:
            files = write_reduced(tmp)
            for dtype in args.reduced_dtype.split(","):
                rows.append(configuration("reduced", build, files, os.path.join(ROOT, "data", "qwen-tokenizer"), dtype,
                                          512, 512, 4, 4, args.threads, args.reduced_repeats or args.repeats, tmp, log))
    print(f"machine: {machine()}; torch threads {args.threads or torch.get_num_threads()} (both sides)")
    print()
    print("| pipeline (repeats) | process ours | process reference | ratio ours/ref | per step ours | per step reference | "
          "ratio | peak RSS ours | peak RSS reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        po, pr = r["ours_denoise"] / r["steps"], r["ref_denoise"] / r["steps"]
        print(f"| {r['name']} ({r['repeats']}) | {r['ours_wall']:.2f} s | {r['ref_wall']:.2f} s | "
              f"{r['ours_wall'] / r['ref_wall']:.2f} | {po:.3f} s | {pr:.3f} s | {po / pr:.2f} | "
              f"{gib(r['ours_rss'])} | {gib(r['ref_rss'])} |")
    print()
    print("Stages (median seconds; reference load = building + loading the models and tokenizer, after its imports):")
    print()
    print("| pipeline | load ours | load ref (+ imports) | encode ours | encode ref | denoise ours | denoise ref | "
          "decode ours | decode ref | image vs reference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['ours_load']:.2f} | {r['ref_load']:.2f} (+{r['ref_import']:.2f}) | "
              f"{r['ours_encode']:.2f} | {r['ref_encode']:.2f} | {r['ours_denoise']:.2f} | {r['ref_denoise']:.2f} | "
              f"{r['ours_decode']:.2f} | {r['ref_decode']:.2f} | max {r['pixel_max_diff']}, mean {r['pixel_mean_diff']:.2f} levels |")


if __name__ == "__main__":
    main()
