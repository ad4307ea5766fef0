"""Shared helpers for the parity tests: our binaries (from CTest's environment) and the
reference (the pinned `diffsynth` package installed in the same Python)."""
import os
import subprocess

import pytest


def _bin(var, name):
    path = os.environ.get(var)
    if not path:
        # Running pytest by hand: fall back to the default build folder.
        root = os.environ.get("DIFFSYNTH_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
        path = os.path.join(root, "build", "bin" if name == "diffsynth" else "tests", name)
    if not os.path.exists(path):
        pytest.fail(f"{name} binary not found at {path}: build first (scripts/test.sh)")
    return path


@pytest.fixture(scope="session")
def diffsynth_bin():
    return _bin("DIFFSYNTH_BIN", "diffsynth")


@pytest.fixture(scope="session")
def parity_bin():
    return _bin("DIFFSYNTH_PARITY_BIN", "diffsynth_parity")


def run(cmd, check=True, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def one_line_error(p, *needles):
    """A refused command: exit 2 and one "diffsynth: error: ..." line holding every needle."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("diffsynth: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
