"""Disk-offload acceptance run (not in CTest: minutes of CPU): writes the full-size Qwen-Image DiT
layout (num_layers=60, 20.4 B parameters, 40.9 GB bf16; hash 0319a1cb19835fb510907dd3367c95ff) as
a sparse file (zeros, no disk space), then runs one `diffsynth forward --offload disk` on it and
prints the CLI's report (wall time, peak RSS).

    python tools/disk_offload_acceptance.py BUILD/bin/diffsynth [/tmp/qwen_image_dit_full.safetensors]
"""
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from sparse_checkpoint import write_sparse_safetensors  # noqa: E402


def main():
    binary = sys.argv[1]
    path = sys.argv[2] if len(sys.argv) > 2 else "/tmp/qwen_image_dit_full.safetensors"
    from diffsynth.models.qwen_image_dit import QwenImageDiT
    with torch.device("meta"):
        m = QwenImageDiT(num_layers=60)
    layout = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    del m
    print("wrote", path, write_sparse_safetensors(path, layout), "bytes", flush=True)
    subprocess.run([binary, "hash", path], check=True)
    subprocess.run([binary, "forward", path, "--latents", "1x16x16x16", "--text-tokens", "8", "--offload", "disk"],
                   check=True)


if __name__ == "__main__":
    main()
