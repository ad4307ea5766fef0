"""Header parsing at scale (hardening issue): a valid safetensors file with 200,000 tensors (a
~13 MB header) and a sharded checkpoint whose index.json lists 200,000 entries over 4 shards,
`diffsynth hash` and `diffsynth inspect` vs a Python process calling the reference's
hash_model_file, whole processes, same files, alternating.

Usage: python bench/bench_headers.py BUILD_DIR [--out bench/out] [--repeats 3]
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import bench_args, compare, print_rows  # noqa: E402

N = 200_000


def write_many_tensors(path, names):
    """One F32 [2] tensor per name, in the given (unsorted) order."""
    header = {name: {"dtype": "F32", "shape": [2], "data_offsets": [8 * i, 8 * i + 8]} for i, name in enumerate(names)}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + 8 * len(names))
    return len(h)


def main():
    args, exe, py = bench_args()
    names = [f"blocks.{(i * 7919) % N}.attn.to_q.weight" for i in range(N)]
    rows = []
    ref_hash = [py, "-c", "import sys; from diffsynth.core.loader.file import hash_model_file; print(hash_model_file(sys.argv[1:]))"]

    one = os.path.join(args.out, "many_tensors.safetensors")
    header_bytes = write_many_tensors(one, names)
    label = f"200,000 tensors in one file ({header_bytes / 2 ** 20:.1f} MB header)"
    row = compare(f"hash, {label}", [exe, "hash", one], ref_hash + [one], args.repeats)
    assert row["ours_out"].strip() == row["ref_out"].strip(), row
    rows.append(row)
    rows.append(compare(f"inspect (ours) vs hash (reference), {label}", [exe, "inspect", one], ref_hash + [one], args.repeats))

    shard_dir = os.path.join(args.out, "many_shards")
    os.makedirs(shard_dir, exist_ok=True)
    weight_map = {}
    for s in range(4):
        shard = f"model-{s + 1:05d}-of-00004.safetensors"
        part = names[s::4]
        write_many_tensors(os.path.join(shard_dir, shard), part)
        weight_map.update({n: shard for n in part})
    index = os.path.join(shard_dir, "model.safetensors.index.json")
    with open(index, "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    shards = sorted(os.path.join(shard_dir, v) for v in set(weight_map.values()))
    label = "index.json of 200,000 entries over 4 shards"
    row = compare(f"hash, {label}", [exe, "hash", index], ref_hash + shards, args.repeats)
    assert row["ours_out"].strip() == row["ref_out"].strip(), row
    rows.append(row)
    rows.append(compare(f"inspect (ours) vs hash (reference), {label}", [exe, "inspect", index], ref_hash + shards,
                        args.repeats))

    print_rows(rows)
    os.remove(one)
    for p in shards + [index]:
        os.remove(p)


if __name__ == "__main__":
    main()
