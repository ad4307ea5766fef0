"""Disk-offload acceptance run for the Wan video DiT (not in CTest: minutes of CPU): writes the
full Wan2.1-T2V-14B DiT in its published layout -- six F32 shards
diffusion_pytorch_model-0000K-of-00006.safetensors plus diffusion_pytorch_model.safetensors.index.json,
as in the Wan-AI/Wan2.1-T2V-14B repository -- sparse (headers with the real keys, dtypes and
shapes, then holes: no disk space), checks that the shard set hashes to the registered
aafcfd9672c3a2456dc46e1cb6e52c70 (ours and the reference's hash_model_file), runs one
`diffsynth forward --offload disk` on it under GNU time, and deletes the shards.

    python tools/wan_disk_offload_acceptance.py BUILD/bin/diffsynth [FOLDER] [--keep] [-- forward options...]

FOLDER defaults to /tmp/wan2.1-t2v-14b-sparse; the default forward options are
--latents 1x16x3x16x16 --text-tokens 16 --offload disk --dtype bfloat16.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from sparse_checkpoint import write_sparse_safetensors  # noqa: E402

WAN_14B_HASH = "aafcfd9672c3a2456dc46e1cb6e52c70"
SHARDS = 6
# save_pretrained's rule: tensors in state-dict order, a new shard when the next would pass 10 GB.
MAX_SHARD_BYTES = 10 * 10**9


def registered_kwargs(model_hash):
    from diffsynth.configs.model_configs import MODEL_CONFIGS
    for entry in MODEL_CONFIGS:
        if entry["model_hash"] == model_hash:
            assert entry["model_class"] == "diffsynth.models.wan_video_dit.WanModel", entry
            return entry["extra_kwargs"]
    raise SystemExit(f"no registered model has hash {model_hash}")


def wan_layout(kwargs):
    from diffsynth.models.wan_video_dit import WanModel
    with torch.device("meta"):
        m = WanModel(**kwargs)
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def split_shards(layout, itemsize=4):
    shards, size = [[]], 0
    for k, shape in layout:
        n = itemsize
        for d in shape:
            n *= d
        if shards[-1] and size + n > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((k, shape))
        size += n
    return shards


def write_sharded(folder, layout):
    """The six F32 shards and the index; returns (shard paths, total data bytes, file bytes)."""
    shards = split_shards(layout)
    assert len(shards) == SHARDS, f"{len(shards)} shards, expected {SHARDS}"
    os.makedirs(folder, exist_ok=True)
    paths, weight_map, file_bytes = [], {}, 0
    for i, shard in enumerate(shards, 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{SHARDS:05d}.safetensors"
        path = os.path.join(folder, name)
        file_bytes += write_sparse_safetensors(path, shard, dtype="F32", itemsize=4)
        paths.append(path)
        for k, _ in shard:
            weight_map[k] = name
    total = sum(4 * int(torch.Size(s).numel()) for _, s in layout)
    with open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    return paths, total, file_bytes


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        extra = args[args.index("--") + 1:]
        args = args[:args.index("--")]
    keep = "--keep" in args
    args = [a for a in args if a != "--keep"]
    binary = args[0]
    folder = args[1] if len(args) > 1 else "/tmp/wan2.1-t2v-14b-sparse"
    kwargs = registered_kwargs(WAN_14B_HASH)
    layout = wan_layout(kwargs)
    params = sum(int(torch.Size(s).numel()) for _, s in layout)
    try:
        paths, total, file_bytes = write_sharded(folder, layout)
        used = sum(os.stat(p).st_blocks * 512 for p in paths)
        print(f"wrote {folder}: {len(paths)} shards, {len(layout)} tensors, {params:,} parameters, "
              f"{total / 1e9:.2f} GB F32 ({file_bytes:,} bytes of files, {used:,} bytes on disk)", flush=True)

        from diffsynth.core.loader.file import hash_model_file
        ref_hash = hash_model_file(paths)
        ours = subprocess.run([binary, "hash", folder], check=True, capture_output=True, text=True).stdout.strip()
        ours_index = subprocess.run([binary, "hash", os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")],
                                    check=True, capture_output=True, text=True).stdout.strip()
        print(f"hash: reference {ref_hash}, ours (folder) {ours}, ours (index.json) {ours_index}, "
              f"registered {WAN_14B_HASH}", flush=True)
        assert ref_hash == ours == ours_index == WAN_14B_HASH

        opts = extra or ["--latents", "1x16x3x16x16", "--text-tokens", "16", "--offload", "disk", "--dtype", "bfloat16"]
        cmd = ["/usr/bin/time", "-v", binary, "forward", folder, *opts]
        print("$", " ".join(cmd), flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        sys.stdout.write(p.stdout)
        stats = {}
        for line in p.stderr.splitlines():
            m = re.match(r"\s*(Elapsed \(wall clock\) time.*|User time.*|System time.*|Maximum resident set size.*): (.*)", line)
            if m:
                stats[m.group(1)] = m.group(2)
            elif not line.startswith("\t"):
                sys.stderr.write(line + "\n")
        for k, v in stats.items():
            print(f"{k}: {v}")
        if p.returncode:
            raise SystemExit(f"forward failed ({p.returncode})")
        rss_kib = int(stats.get("Maximum resident set size (kbytes)", "0"))
        print(f"peak RSS {rss_kib / 2**20:.2f} GiB for {total / 2**30:.2f} GiB of F32 weights "
              f"({'within' if rss_kib * 1024 <= 3e9 else 'OVER'} the 3 GB target)")
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
