"""utils/image against Pillow: PIL Image.resize (every filter, up and down, odd factors, 1-4
channels incl. premultiplied alpha) and PNG decoding (8/16-bit, grey, palette, tRNS, interlaced)
must give exactly Pillow's bytes -- the pipeline's inpaint mask goes through the resize."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import run

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def ours_resize(parity_bin, tmp_path, arr, w, h, resample):
    save_file({"image": torch.from_numpy(arr).contiguous()}, str(tmp_path / "in.safetensors"))
    run([parity_bin, "image_resize", "-", tmp_path / "in.safetensors", tmp_path / "out.safetensors", "float32", "{}",
         '{"width": %d, "height": %d, "resample": "%s"}' % (w, h, resample)])
    return load_file(str(tmp_path / "out.safetensors"))["resized"].numpy().astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("resample", sorted(FILTERS))
def test_resize_matches_pillow(tmp_path, parity_bin, channels, resample):
    rng = np.random.default_rng(channels * 10 + len(resample))
    for (h, w), (oh, ow) in [((48, 64), (6, 8)), ((37, 23), (100, 51)), ((64, 64), (13, 64)), ((50, 30), (50, 7)),
                             ((9, 11), (9, 11)), ((128, 96), (31, 17)),
                             # Pillow 13's vertical pass first (height shrinks by > 2x the width's
                             # pixels): wider and lower, and both sides of the rule's boundary.
                             ((60, 80), (48, 448)), ((100, 200), (19, 160)), ((100, 200), (20, 160))]:
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        if channels in (2, 4):  # alpha with transparent and opaque extremes
            arr[..., -1] = rng.choice([0, 255, 7, 128, 250], size=(h, w))
        img = Image.fromarray(arr[..., 0] if channels == 1 else arr, MODES[channels])
        ref = np.array(img.resize((ow, oh), FILTERS[resample]))
        ours = ours_resize(parity_bin, tmp_path, arr, ow, oh, resample)
        if channels == 1:
            ours = ours[..., 0]
        assert ours.shape == ref.shape
        bad = np.argwhere(ours != ref)
        assert len(bad) == 0, f"{(h, w)}->{(oh, ow)}: {len(bad)} values differ, first at {bad[:3].tolist()}"


def test_default_resize_is_bicubic(tmp_path, parity_bin):
    arr = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    ref = np.array(Image.fromarray(arr).resize((7, 11)))  # what the pipeline calls: the default filter
    assert np.array_equal(ours_resize(parity_bin, tmp_path, arr, 7, 11, "bicubic"), ref)


def png_cases(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    cases = {
        "rgb": (Image.fromarray(rgb), {}),
        "rgba": (Image.fromarray(rng.integers(0, 256, (5, 9, 4), dtype=np.uint8), "RGBA"), {}),
        "grey": (Image.fromarray(rgb[..., 0]), {}),
        "grey_alpha": (Image.fromarray(rng.integers(0, 256, (6, 4, 2), dtype=np.uint8), "LA"), {}),
        "palette": (Image.fromarray(rgb).quantize(16), {}),
        "palette_trns": (Image.fromarray(rgb).quantize(16), {"transparency": 3}),
        "interlaced": (Image.fromarray(rgb), {"interlace": 1}),
        "bilevel": (Image.fromarray(rgb[..., 0] > 128), {}),
    }
    paths = {}
    for name, (img, kw) in cases.items():
        paths[name] = tmp_path / f"{name}.png"
        img.save(paths[name], **kw)
    return paths


def test_read_png_matches_pillow(tmp_path, parity_bin):
    for name, path in png_cases(tmp_path).items():
        run([parity_bin, "read_png", "-", _empty(tmp_path), tmp_path / "out.safetensors", "float32", "{}",
             '{"path": "%s"}' % path])
        ours = load_file(str(tmp_path / "out.safetensors"))["image"].numpy().astype(np.uint8)
        img = Image.open(path)
        # What our reader promises: palettes expanded to RGB(A) (tRNS -> alpha), 1-bit to 0/255.
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "1":
            img = img.convert("L")
        ref = np.array(img)
        if ref.ndim == 2:
            ref = ref[..., None]
        assert np.array_equal(ours, ref), name


def _empty(tmp_path):
    p = tmp_path / "empty.safetensors"
    save_file({"unused": torch.zeros(1)}, str(p))
    return p
