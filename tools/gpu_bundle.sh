#!/usr/bin/env bash
# Builds the CUDA-linked CLI here and packs what a GPU machine needs into build-cuda/bundle (carry
# it with the device tool: carry ["build-cuda/bundle"]):
#   bin/   diffsynth-full, diffsynth, diffsynth_make_example (libtorch_cuda linked: -DDIFFSYNTH_CUDA=ON)
#   lib/   the Debian libraries they use that a CUDA image may lack (PCRE2, utf8proc, libpng, ...)
#   wheels/ the pinned reference (diffsynth) and the pure-Python packages it imports that the
#          image lacks, for `pip install --no-deps --target`
# libtorch itself comes from the GPU machine's own torch 2.11.0 (the same version as our pin).
# Usage: bash tools/gpu_bundle.sh   (then bench/gpu_prefetch_check.sh runs there)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${DIFFSYNTH_VENV:-$HOME/.cache/diffsynth-cpp/venv}"
BUILD="$ROOT/build-cuda"
BUNDLE="$BUILD/bundle"
export PATH="/usr/lib/ccache:$PATH"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFSYNTH_PYTHON="$VENV/bin/python" \
      -DDIFFSYNTH_CUDA=ON -DDIFFSYNTH_TESTS=OFF -DDIFFSYNTH_BENCH=OFF >/dev/null
ninja -C "$BUILD" -j"${JOBS:-2}" diffsynth-full diffsynth diffsynth_make_example
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib" "$BUNDLE/wheels"
cp "$BUILD/bin/diffsynth-full" "$BUILD/bin/diffsynth" "$BUNDLE/bin/"
cp "$(find "$BUILD" -name diffsynth_make_example -type f -perm -u+x | head -1)" "$BUNDLE/bin/"
strip --strip-unneeded "$BUNDLE"/bin/*
# Shared libraries outside libtorch and glibc / the C++ runtime.
for bin in "$BUNDLE"/bin/*; do
  ldd "$bin" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    *) [[ "$lib" == *site-packages* ]] || cp -L "$lib" "$BUNDLE/lib/" ;;
  esac
done
"$VENV/bin/pip" download -q --no-deps -d "$BUNDLE/wheels" \
  "diffsynth==$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("diffsynth"))')" modelscope ftfy wcwidth
cp -r "$ROOT/data" "$BUNDLE/" 2>/dev/null || true
du -sh "$BUNDLE"
