#!/usr/bin/env bash
# The GPU check of VRAM management (run on a lent GPU machine, from the repository root, with
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
