"""ModelPool messages and identification, byte for byte against the reference: a real-layout
Blockwise ControlNet checkpoint (written sparse: header + hole, so nothing is read by us), a
two-shard split of it, and an unknown layout."""
import contextlib
import io
import os
import sys

import pytest
import torch

from diffsynth.models.model_loader import ModelPool
from diffsynth.models.qwen_image_controlnet import QwenImageBlockWiseControlNet
from diffsynth.core.vram.initialization import skip_model_initialization
from conftest import run

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from sparse_checkpoint import write_sparse_safetensors  # noqa: E402


def controlnet_layout(**kwargs):
    with skip_model_initialization():
        m = QwenImageBlockWiseControlNet(**kwargs)
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def reference_stdout(paths):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ModelPool().auto_load_model(paths)
    return buf.getvalue()


@pytest.fixture(scope="module")
def inpaint_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cn")
    p = d / "model.safetensors"
    write_sparse_safetensors(p, controlnet_layout(additional_in_dim=4))
    return str(p)


def test_real_layout_single_file(inpaint_file, diffsynth_bin):
    ours = run([diffsynth_bin, "load", inpaint_file])
    assert ours.stdout == reference_stdout(inpaint_file)
    assert '"additional_in_dim": 4' in ours.stdout


def test_real_layout_two_shards(tmp_path, diffsynth_bin):
    layout = controlnet_layout()
    a, b = str(tmp_path / "model-00001-of-00002.safetensors"), str(tmp_path / "model-00002-of-00002.safetensors")
    write_sparse_safetensors(a, layout[:150])
    write_sparse_safetensors(b, layout[150:])
    ours = run([diffsynth_bin, "load", a, b])
    assert ours.stdout == reference_stdout([a, b])


def test_unknown_layout_message(tmp_path, diffsynth_bin):
    p = str(tmp_path / "odd.safetensors")
    write_sparse_safetensors(p, controlnet_layout(num_layers=2, dim=64))
    with pytest.raises(ValueError) as e:
        with contextlib.redirect_stdout(io.StringIO()):
            ModelPool().auto_load_model(p)
    ours = run([diffsynth_bin, "load", p], check=False)
    assert ours.returncode == 2
    line = ours.stderr.strip()
    assert "\n" not in line
    assert line.startswith("diffsynth: error: " + str(e.value))
    assert "Closest known model: qwen_image_blockwise_controlnet" in line
