#!/usr/bin/env bash
# The GPU check of VRAM management and of the Wan2.1 video pipeline (run on a lent GPU machine, from the repository root, with
# build-cuda/bundle made here by tools/gpu_bundle.sh and carried):
#   run(command="bash bench/gpu_prefetch_check.sh", carry=["build-cuda/bundle"])
# Uses the machine's own python3 torch 2.11.0 for libtorch; installs the carried reference wheels
# into a private folder; writes its report to $OUT (default: /tmp/prefetch_check) and stdout.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUNDLE="${BUNDLE:-$ROOT/build-cuda/bundle}"
PY="${PYTHON:-python3}"
OUTDIR="${OUT:-/tmp/prefetch_check}"
mkdir -p "$OUTDIR"
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$BUNDLE/lib:$TORCH_LIB:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
REF=""
if ls "$BUNDLE"/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps --target "$OUTDIR/pyref" "$BUNDLE"/wheels/*.whl && REF="$OUTDIR/pyref"
fi
"$PY" "$ROOT/bench/gpu_prefetch_check.py" --bin "$BUNDLE/bin" --device "${DEVICE:-cuda}" --blocks "${BLOCKS:-8}" \
  --latent "${LATENT:-128}" --repeat "${REPEAT:-4}" --out "$OUTDIR" ${REF:+--reference-path "$REF"} \
  2>&1 | tee "$OUTDIR/report.txt"
rm -f "$OUTDIR"/dit_*.safetensors  # not worth bringing back

# Wan2.1 text-to-video on the GPU: the tiny folder written here, fp32 on cuda resident, cuda with
# --offload cpu, and the CPU; latents compared (cuda vs cpu within fp32 kernel noise, offloaded ==
# resident bit for bit) and the stage timings printed.
{
  echo "== Wan2.1 text-to-video (tiny folder) =="
  WAN="$OUTDIR/tiny-wan"
  "$BUNDLE/bin/diffsynth_make_example" --tiny-wan "$WAN" >/dev/null &&
    mkdir -p "$WAN/google" && cp -r "$BUNDLE/data/umt5-tokenizer" "$WAN/google/umt5-xxl"
  WAN_ARGS=(generate --model-dir "$WAN" --prompt "a corgi on a beach" --seed 3 --width 320 --height 192
            --num-frames 17 --steps 8 --dtype float32)
  for run in "cuda resident:--device ${DEVICE:-cuda}" "cuda offload:--device ${DEVICE:-cuda} --offload cpu" "cpu:--device cpu"; do
    name="${run%%:*}"; flags="${run#*:}"
    # shellcheck disable=SC2086
    "$BUNDLE/bin/diffsynth" "${WAN_ARGS[@]}" $flags -o "$OUTDIR/wan_${name// /_}.mp4" \
      --save-latents "$OUTDIR/wan_${name// /_}.safetensors" 2>&1 | grep -E "timings|wrote|error" | sed "s/^/[$name] /"
  done
  "$PY" - "$OUTDIR" <<'PYEOF'
import sys, torch
from safetensors.torch import load_file
d = sys.argv[1]
lat = {n: load_file(f"{d}/wan_{n}.safetensors")["latents"] for n in ("cuda_resident", "cuda_offload", "cpu")}
scale = lat["cpu"].abs().max().item()
print("wan latents: cuda vs cpu max abs diff / scale", (lat["cuda_resident"] - lat["cpu"]).abs().max().item() / scale)
print("wan latents: cuda offload == cuda resident:", torch.equal(lat["cuda_offload"], lat["cuda_resident"]))
PYEOF
  rm -rf "$WAN" "$OUTDIR"/wan_*.safetensors
} 2>&1 | tee -a "$OUTDIR/report.txt"
