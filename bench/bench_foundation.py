"""Foundation benchmarks (issue: model files, identification, ModelPool), whole processes:

1. identify: a 9-shard checkpoint in the Qwen-Image DiT layout (bf16, ~40.9 GB, written sparse),
   `diffsynth hash` vs a Python process calling the reference's hash_model_file.
2. load: a 2.27 GB bf16 real-layout Blockwise ControlNet Inpaint checkpoint (random weights) into
   a ready model, `diffsynth load` vs the reference's ModelPool.auto_load_model (which hashes and
   calls load_model the same way), bf16 on CPU. Also with every weight read once (--touch / a sum
   in Python) and with a bf16 -> fp32 conversion.

Usage: python bench/bench_foundation.py BUILD_DIR [--out bench/out] [--repeats 3]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import bench_args, compare, gib, print_rows, write_sparse_safetensors  # noqa: E402


def dit_layout():
    import torch
    from diffsynth.core.vram.initialization import skip_model_initialization
    from diffsynth.models.qwen_image_dit import QwenImageDiT
    with skip_model_initialization():
        m = QwenImageDiT()
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def main():
    args, exe, py = bench_args()
    rows = []

    # 1. identification of a 9-shard DiT checkpoint
    layout = dit_layout()
    shards = [layout[i::9] for i in range(9)]
    paths, total = [], 0
    for i, part in enumerate(shards):
        p = os.path.join(args.out, f"diffusion_pytorch_model-{i + 1:05d}-of-00009.safetensors")
        total += write_sparse_safetensors(p, part)
        paths.append(p)
    ref = [py, "-c", "import sys; from diffsynth.core.loader.file import hash_model_file; print(hash_model_file(sys.argv[1:]))", *paths]
    row = compare(f"identify 9-shard Qwen-Image DiT ({gib(total)} sparse)", [exe, "hash", *paths], ref, args.repeats)
    assert row["ours_out"].strip() == row["ref_out"].strip() == "0319a1cb19835fb510907dd3367c95ff", row
    rows.append(row)

    # 2. load a >= 2 GB bf16 checkpoint
    ckpt = os.path.join(args.build, "example", "qwen_image_blockwise_controlnet_inpaint.safetensors")
    if not os.path.exists(ckpt):
        os.makedirs(os.path.dirname(ckpt), exist_ok=True)
        os.system(f"{os.path.join(args.build, 'bin', 'diffsynth_make_example')} {ckpt}")
    size = os.path.getsize(ckpt)
    ref_load = ("import sys, torch; from diffsynth.models.model_loader import ModelPool; p = ModelPool(); "
                "p.auto_load_model(sys.argv[1], vram_config={**p.default_vram_config(), 'computation_dtype': getattr(torch, sys.argv[2])}); "
                "touch = sys.argv[3] == '1'; s = sum(float(t.float().sum()) for t in p.model[0].parameters()) if touch else 0; print('ok', s)")
    for dtype, touch, label in [("bfloat16", "0", "load bf16 (ready model)"),
                                ("bfloat16", "1", "load bf16 + read every weight"),
                                ("float32", "0", "load bf16 file as fp32")]:
        ours = [exe, "load", ckpt, "--dtype", dtype] + (["--touch"] if touch == "1" else [])
        rows.append(compare(f"{label}, {gib(size)} file", ours, [py, "-c", ref_load, ckpt, dtype, touch], args.repeats))
        rows[-1]["file_size"] = size

    print_rows(rows)
    for p in paths:
        os.remove(p)


if __name__ == "__main__":
    main()
