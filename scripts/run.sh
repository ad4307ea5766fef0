#!/usr/bin/env bash
# The main job, for now: set up, generate a real-layout checkpoint (the Qwen-Image Blockwise
# ControlNet Inpaint: 1.13 B parameters, 2.27 GB bf16, random weights), then identify it,
# inspect it and load it the way DiffSynth-Studio's ModelPool does.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${DIFFSYNTH_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
CKPT="$BUILD/example/qwen_image_blockwise_controlnet_inpaint.safetensors"
if [ ! -f "$CKPT" ]; then
  mkdir -p "$(dirname "$CKPT")"
  "$BUILD/bin/diffsynth_make_example" "$CKPT"
fi
set -x
"$BUILD/bin/diffsynth" hash "$CKPT"
"$BUILD/bin/diffsynth" inspect "$CKPT"
"$BUILD/bin/diffsynth" load "$CKPT" --dtype bfloat16
