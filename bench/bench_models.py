"""Model forward benchmarks (Qwen-Image models issue): the same weights and inputs through our C++
model (the diffsynth_parity tool, which reports its forward time) and the reference module in a
Python process, side by side, same thread count (torch's default on this box for both).

1. DiT model_fn, full-width single block (QwenImageDiT(num_layers=1): 3072 wide, 24 x 128 heads),
   64x64 latents = 1024 image tokens (512x512-equivalent; the 4096-token 1024x1024 case takes minutes
   per run on 2 cores) + 32 text tokens, fp32.
2. VAE decode of a 512x512 image (the real QwenImageVAE, random weights), fp32.
3. Text encoder forward at full width, 2 layers, 256 tokens, fp32.
Whole-process wall time and peak RSS (GNU time) plus the forward time each side reports (ours with
every weight read before the timer starts, as the reference's load_file has done).

Usage: python bench/bench_models.py BUILD_DIR [--repeats 2]
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
from common import gib, machine, measure_rusage  # noqa: E402

REF_DIT = r"""
import sys, time, torch
from safetensors.torch import load_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.models.qwen_image_dit import QwenImageDiT
from diffsynth.pipelines.qwen_image import model_fn_qwen_image
torch.set_grad_enabled(False)
with skip_model_initialization():
    m = QwenImageDiT(num_layers=1)
m.load_state_dict(load_file(sys.argv[1]), assign=True)
x = load_file(sys.argv[2])
t0 = time.perf_counter()
out = model_fn_qwen_image(dit=m, latents=x["latents"], timestep=x["timestep"], prompt_emb=x["prompt_emb"],
                          prompt_emb_mask=x["prompt_emb_mask"], height=x["latents"].shape[2] * 8, width=x["latents"].shape[3] * 8)
print("forward", time.perf_counter() - t0)
"""

REF_VAE = r"""
import sys, time, torch
from safetensors.torch import load_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.models.qwen_image_vae import QwenImageVAE
torch.set_grad_enabled(False)
dtype = getattr(torch, sys.argv[3])
with skip_model_initialization():
    m = QwenImageVAE()
m.load_state_dict(load_file(sys.argv[1]), assign=True)
m = m.to(dtype)
z = load_file(sys.argv[2])["latents"].to(dtype)
t0 = time.perf_counter()
out = m.decode(z)
print("forward", time.perf_counter() - t0)
"""


REF_TE = r"""
import copy, sys, time, torch, transformers
from safetensors.torch import load_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.models.qwen_image_text_encoder import QwenImageTextEncoder
from diffsynth.utils.state_dict_converters.qwen_image_text_encoder import QwenImageTextEncoderStateDictConverter
torch.set_grad_enabled(False)
TEXT = dict(num_hidden_layers=2, vocab_size=16384)
VISION = dict(depth=1, hidden_size=64, num_heads=2, intermediate_size=96, fullatt_block_indexes=[0])
real = transformers.Qwen2_5_VLConfig
def reduced(**kw):
    kw = copy.deepcopy(kw); kw.update(TEXT); kw["text_config"].update(TEXT)
    kw["text_config"]["layer_types"] = ["full_attention"] * TEXT["num_hidden_layers"]
    kw["vision_config"].update(VISION, out_hidden_size=3584)
    return real(**kw)
transformers.Qwen2_5_VLConfig = reduced
if sys.argv[3] == "init":
    torch.manual_seed(0)
    m = QwenImageTextEncoder()
    sd = {}
    for k, v in m.state_dict().items():
        k = "model." + k[len("model.language_model."):] if k.startswith("model.language_model.") else (k[len("model."):] if k.startswith("model.visual.") else k)
        sd[k] = (v * 0.02 if v.dim() > 1 else v).contiguous()
    from safetensors.torch import save_file
    save_file(sd, sys.argv[1]); sys.exit(0)
with skip_model_initialization():
    m = QwenImageTextEncoder()
m.load_state_dict(QwenImageTextEncoderStateDictConverter(load_file(sys.argv[1])), assign=True)
m.eval()
x = load_file(sys.argv[2])
t0 = time.perf_counter()
h = m(input_ids=x["input_ids"], attention_mask=x["attention_mask"])[-1]
print("forward", time.perf_counter() - t0)
"""


def forward_time(text, pattern):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else float("nan")


def compare(name, ours_cmd, ref_cmd, repeats):
    ours, ref = [], []
    for _ in range(repeats):
        ours.append(measure_rusage(ours_cmd, capture_stderr=True))
        ref.append(measure_rusage(ref_cmd))
    o_fwd = statistics.median(forward_time(r[3], r"ran in ([0-9.e-]+) s") for r in ours)
    r_fwd = statistics.median(forward_time(r[2], r"forward ([0-9.e-]+)") for r in ref)
    return (name, o_fwd, r_fwd, statistics.median(r[0] for r in ours), statistics.median(r[0] for r in ref),
            max(r[1] for r in ours), max(r[1] for r in ref))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    # Our parity tool maps the weights zero-copy: without this the first forward would also page
    # the file in, which the reference's load_file did before its timer started.
    os.environ["DIFFSYNTH_PARITY_TOUCH"] = "1"
    parity = os.path.join(args.build, "tests", "diffsynth_parity")
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as d:
        from diffsynth.core.vram.initialization import skip_model_initialization  # noqa: F401
        from diffsynth.models.qwen_image_dit import QwenImageDiT
        from diffsynth.models.qwen_image_vae import QwenImageVAE
        torch.manual_seed(0)
        dit = QwenImageDiT(num_layers=1)
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, f"{d}/dit.safetensors")
        del dit
        save_file({"latents": torch.randn(1, 16, 64, 64), "timestep": torch.tensor([500.0]),
                   "prompt_emb": torch.randn(1, 32, 3584), "prompt_emb_mask": torch.ones(1, 32, dtype=torch.long)},
                  f"{d}/dit_in.safetensors")
        rows.append(compare("DiT model_fn, 1 full-width block, 1024+32 tokens, fp32",
                            [parity, "qwen_image_dit", f"{d}/dit.safetensors", f"{d}/dit_in.safetensors", f"{d}/o.safetensors",
                             "float32", '{"num_layers": 1}'],
                            [py, "-c", REF_DIT, f"{d}/dit.safetensors", f"{d}/dit_in.safetensors"], args.repeats))
        vae = QwenImageVAE()
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, f"{d}/vae.safetensors")
        save_file({"latents": torch.randn(1, 16, 64, 64)}, f"{d}/vae_in.safetensors")
        for dtype in ("float32",):  # bf16 convolutions on this CPU take minutes per decode
            rows.append(compare(f"VAE decode 512x512, {dtype}",
                                [parity, "qwen_image_vae", f"{d}/vae.safetensors", f"{d}/vae_in.safetensors",
                                 f"{d}/o.safetensors", dtype, "{}"],
                                [py, "-c", REF_VAE, f"{d}/vae.safetensors", f"{d}/vae_in.safetensors", dtype], args.repeats))
        # 3. text encoder: full width (3584, 28/4 heads, 18944 MLP), 2 layers, 16k vocab, 256 tokens, fp32.
        import subprocess
        subprocess.run([py, "-c", REF_TE, f"{d}/te.safetensors", "-", "init"], check=True)
        save_file({"input_ids": torch.randint(0, 16384, (1, 256)), "attention_mask": torch.ones(1, 256, dtype=torch.long)},
                  f"{d}/te_in.safetensors")
        te_kwargs = '{"num_hidden_layers": 2, "vocab_size": 16384, "vision_depth": 1, "vision_hidden_size": 64, ' \
                    '"vision_num_heads": 2, "vision_intermediate_size": 96}'
        rows.append(compare("text encoder forward, 2 full-width layers, 256 tokens, fp32",
                            [parity, "qwen_image_text_encoder", f"{d}/te.safetensors", f"{d}/te_in.safetensors",
                             f"{d}/o.safetensors", "float32", te_kwargs,
                             '{"converter": "diffsynth.utils.state_dict_converters.qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter"}'],
                            [py, "-c", REF_TE, f"{d}/te.safetensors", f"{d}/te_in.safetensors", "run"], args.repeats))
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    print("| benchmark | forward ours | forward reference | ratio ours/ref | process ours | process reference | peak RSS ours | peak RSS reference |")
    print("|---|---|---|---|---|---|---|---|")
    for name, of, rf, ow, rw, orss, rrss in rows:
        print(f"| {name} | {of:.2f} s | {rf:.2f} s | {of / rf:.2f} | {ow:.1f} s | {rw:.1f} s | {gib(orss)} | {gib(rrss)} |")


if __name__ == "__main__":
    main()
