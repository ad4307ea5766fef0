#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every test: GoogleTest units and the Python parity tests
# against the pinned reference, through CTest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${DIFFSYNTH_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
cd "$BUILD"
ctest --output-on-failure -j"${DIFFSYNTH_JOBS:-2}" "$@"
