#!/usr/bin/env bash
# Sets up everything diffsynth.cpp needs on a Debian 12 machine and builds it:
#   1. Debian packages (compiler, CMake, Ninja, ccache, GoogleTest, Google Benchmark,
#      nlohmann-json, CLI11, OpenSSL, libpng, PCRE2, clang for the fuzzers);
#   2. a Python venv with the pinned torch wheel (our libtorch) and the pinned reference
#      (tools/requirements-reference.txt), reused while that file is unchanged;
#   3. a CMake + Ninja build in build/ (-j2, ccache, precompiled headers).
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DIFFSYNTH_VENV:-$HOME/.cache/diffsynth-cpp/venv}"
BUILD="${DIFFSYNTH_BUILD_DIR:-$ROOT/build}"
JOBS="${DIFFSYNTH_JOBS:-2}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

PACKAGES=(build-essential cmake ninja-build ccache git python3 python3-venv python3-pip
          libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev libssl-dev
          libpng-dev libpcre2-dev libutf8proc-dev pkg-config clang libclang-rt-14-dev time
          libavcodec-dev libavformat-dev libavutil-dev libswscale-dev ffmpeg)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

REQ="$ROOT/tools/requirements-reference.txt"
STAMP="$VENV/.diffsynth-requirements"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$STAMP"; then
  echo "setup: creating the Python venv at $VENV (torch wheel + reference; a few GB, first time only)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$REQ"
  cp "$REQ" "$STAMP"
fi

export PATH="/usr/lib/ccache:$PATH"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFSYNTH_PYTHON="$VENV/bin/python" \
      ${DIFFSYNTH_CMAKE_ARGS:-} >/dev/null
ninja -C "$BUILD" -j"$JOBS"
echo "setup: built $BUILD/bin/diffsynth"
