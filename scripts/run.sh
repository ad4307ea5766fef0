#!/usr/bin/env bash
# The main job: set up, then `diffsynth generate` text-to-image on the default model -- the tiny
# random-weight Qwen-Image the build writes (real DiT / text encoder / VAE architectures at reduced
# sizes, with the real Qwen tokenizer): random weights draw structured noise, not a picture.
# For real images: diffsynth generate --model-dir /path/to/Qwen-Image --prompt "..." -o out.png
# (a folder with transformer/, text_encoder/, vae/, tokenizer/ as published on Hugging Face).
# float32: on CPUs without AVX512-BF16 libtorch's bf16 kernels (the reference's default dtype) are
# several times slower (here: 130 s vs 17 s for this run).
# Then text-to-video: `diffsynth generate` on the tiny random-weight Wan2.1 folder the build writes
# (build/models/tiny-wan, the published Wan2.1-T2V-1.3B layout: diffusion_pytorch_model.safetensors,
# models_t5_umt5-xxl-enc-bf16.pth, Wan2.1_VAE.pth, google/umt5-xxl/), 17 frames of 160x96 as an
# H.264 mp4 (a few seconds here). For real videos: --model-dir /path/to/Wan2.1-T2V-1.3B.
# Then the identification demo: a checkpoint in the exact layout of the Qwen-Image Blockwise
# ControlNet Inpaint (1.13 B parameters, 2.27 GB bf16, random weights) is hashed, inspected and
# loaded the way DiffSynth-Studio's ModelPool does.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${DIFFSYNTH_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
set -x
"$BUILD/bin/diffsynth" generate --prompt "A lighthouse on a cliff at sunset, oil painting" \
  --negative-prompt "blurry" --seed 42 --steps 20 --width 512 --height 512 --dtype float32 \
  -o "$BUILD/output.png"
"$BUILD/bin/diffsynth" generate --model-dir "$BUILD/models/tiny-wan" \
  --prompt "A corgi running on a beach at sunset" --negative-prompt "blurry, static" --seed 42 \
  --width 160 --height 96 --num-frames 17 --steps 10 --dtype float32 --fps 15 -o "$BUILD/output.mp4"
{ set +x; } 2>/dev/null
CKPT="$BUILD/example/qwen_image_blockwise_controlnet_inpaint.safetensors"
if [ ! -f "$CKPT" ]; then
  mkdir -p "$(dirname "$CKPT")"
  "$BUILD/bin/diffsynth_make_example" "$CKPT"
fi
set -x
"$BUILD/bin/diffsynth" hash "$CKPT"
"$BUILD/bin/diffsynth" inspect "$CKPT"
"$BUILD/bin/diffsynth" load "$CKPT" --dtype bfloat16
