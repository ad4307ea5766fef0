"""WanTextEncoder (UMT5-XXL encoder of Wan2.1) numerical parity: the reference class built by its
own constructor at reduced sizes (reference_models.reduced_wan_text_encoder: vocab 1000, dim 64,
dim_attn 64, 4 heads, dim_ffn 160, 3 layers, 32 buckets, own position bias per block), random
weights, saved as the real file is (torch.save of the state dict, .pth) and as safetensors; our
binary loads them with no converter, as ModelPool does for hash 9c8818c2.

Inputs: what the Wan pipeline gives the encoder (the tokenizer pads on the right to 512 with
mask 0): a batch of two of different lengths at L 40 and at L 512 (relative distances far beyond
max_dist 128, so the clamped log buckets are covered), an unmasked case, and a [B, L, L] mask
(the reference accepts one). Every position is compared (padded query rows too: only keys are
masked, both sides compute them), and the pipeline's WanVideoUnit_PromptEmbedder.encode_prompt
(the reference's own code on a stand-in pipe) against our encode_prompt.

Tolerances. fp32: max abs diff <= 1e-5 * max|ref| (the issue's bar). bf16 / fp16 (fp16: masked
logits at finfo(fp16).min, the reference's fp16_clamp path): our attention is one fused kernel
(fp32 softmax and accumulation, where the reference rounds the logits and the softmax weights to
the activation dtype) and our GELU one pass (the reference rounds each of its seven ops), so in
the half types we are not bit-equal to the reference but closer to the exact value: both are
compared with the same network in float64 on the same (rounded) weights, and ours must be no less
accurate than the reference: max |ours - exact| <= 1.5 max |ref - exact| + 1 ulp of the output
scale, and mean |ours - exact| <= 1.1 mean |ref - exact| (measured: ours 4-8 ulp max, the
reference 4-14; the mean error ours 10-45% smaller). Against the reference itself that is
a mean difference of ~2% in bf16 (the reference's own rounding), 0.3% in fp16.
"""
import copy
import json
import math
import os
import re
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsynth.core.loader.file import hash_model_file
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.models.wan_video_text_encoder import WanTextEncoder
from diffsynth.pipelines.wan_video import WanVideoUnit_PromptEmbedder
from reference_models import reduced_wan_text_encoder
from conftest import run

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from sparse_checkpoint import write_sparse_safetensors  # noqa: E402

HASH = "9c8818c2cbea55eca56c7b447df170da"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model, kwargs = reduced_wan_text_encoder()
    d = tmp_path_factory.mktemp("t5")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    files = {"safetensors": d / "t5.safetensors", "pth": d / "t5.pth", "pth-bf16": d / "t5-bf16.pth"}
    save_file(sd, str(files["safetensors"]))
    torch.save(sd, str(files["pth"]))
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(files["pth-bf16"]))  # as the real file
    return model, kwargs, files


def make_cases(vocab):
    g = torch.Generator().manual_seed(1)
    cases = {}
    for name, (b, L, lens) in {"short": (2, 40, [40, 23]), "long": (2, 512, [300, 150])}.items():
        ids = torch.randint(1, vocab, (b, L), generator=g)
        mask = torch.zeros(b, L, dtype=torch.long)
        for i, n in enumerate(lens):
            mask[i, :n] = 1
            ids[i, n:] = 0  # the UMT5 tokenizer's pad id
        cases[name] = (ids, mask)
    cases["nomask"] = (torch.randint(0, vocab, (1, 17), generator=g), None)
    ids = torch.randint(0, vocab, (2, 24), generator=g)
    mask3 = (torch.rand(2, 24, 24, generator=g) > 0.3).long()
    mask3[:, :, 0] = 1  # every query keeps a key
    cases["mask3d"] = (ids, mask3)
    return cases


def reference_encode_prompt(model, ids, mask):
    """The reference pipeline's own encode_prompt on a stand-in pipe whose tokenizer returns ids, mask."""
    class Pipe:
        device = "cpu"
        text_encoder = model

        @staticmethod
        def tokenizer(prompt, return_mask, add_special_tokens):
            assert return_mask and add_special_tokens
            return ids, mask
    return WanVideoUnit_PromptEmbedder().encode_prompt(Pipe, "a prompt")


@pytest.mark.parametrize("dtype,fmt", [("float32", "safetensors"), ("float32", "pth"),
                                       ("bfloat16", "pth-bf16"), ("bfloat16", "safetensors"),
                                       ("float16", "safetensors")])
def test_text_encoder_output(tmp_path, parity_bin, reference, dtype, fmt):
    model, kwargs, files = reference
    cases = make_cases(kwargs["vocab"])
    inputs = {}
    for name, (ids, mask) in cases.items():
        inputs[f"ids.{name}"] = ids
        if mask is not None:
            inputs[f"mask.{name}"] = mask
    save_file(inputs, str(tmp_path / "in.safetensors"))
    run([parity_bin, "wan_text_encoder", files[fmt], tmp_path / "in.safetensors", tmp_path / "out.safetensors",
         dtype, json.dumps(kwargs)])
    ours = load_file(str(tmp_path / "out.safetensors"))

    ref_model = WanTextEncoder(**kwargs).eval()
    ref_model.load_state_dict(model.state_dict())
    ref_model = ref_model.to(dtype=getattr(torch, dtype))  # as DiffSynth's loader does
    exact_model = copy.deepcopy(ref_model).double()  # the same rounded weights, float64 arithmetic
    for name, (ids, mask) in cases.items():
        with torch.no_grad():
            refs = {"out": ref_model(ids, mask)}
            exact = {"out": exact_model(ids, mask)}
            if mask is not None and mask.dim() == 2:
                refs["prompt_emb"] = reference_encode_prompt(ref_model, ids, mask)
                exact["prompt_emb"] = reference_encode_prompt(exact_model, ids, mask)
        for what, r in refs.items():
            assert r.dtype == getattr(torch, dtype)
            o = ours[f"{what}.{name}"]
            assert o.shape == r.shape
            assert torch.isfinite(o).all()
            r = r.float()
            diff = (o - r).abs().max().item()
            scale = r.abs().max().item()
            mean_rel = (o - r).abs().mean().item() / r.abs().mean().item()
            print(f"{dtype} {fmt} {name} {what}: max abs diff {diff:.3g} (max|ref| {scale:.3g}), mean rel {mean_rel:.3g}")
            if dtype == "float32":
                assert diff <= 1e-5 * scale, (name, what, diff, scale)
            else:  # bf16 has 7 mantissa bits, fp16 10
                ulp = 2.0 ** (math.floor(math.log2(scale)) - (7 if dtype == "bfloat16" else 10))
                ours_dev, ref_dev = (o.double() - exact[what]).abs(), (r.double() - exact[what]).abs()
                ours_err, ref_err = ours_dev.max().item(), ref_dev.max().item()
                print(f"    vs float64: max ours {ours_err / ulp:.2f} ulp, reference {ref_err / ulp:.2f} ulp;"
                      f" mean ours {ours_dev.mean().item():.3g}, reference {ref_dev.mean().item():.3g}")
                assert ours_err <= 1.5 * ref_err + ulp, (name, what, ours_err, ref_err)
                assert ours_dev.mean().item() <= 1.1 * ref_dev.mean().item(), (name, what)
        if "prompt_emb" in refs:  # the zeroing really happened (past the shortest length, every row)
            n = int(mask.sum(1).min())
            assert ours[f"prompt_emb.{name}"][:, n:].abs().max().item() == 0


def real_layout():
    with skip_model_initialization():
        m = WanTextEncoder()
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def test_real_layout_identified_and_loaded_without_copies(tmp_path, diffsynth_bin):
    """The real file's layout, written without data in both formats: a sparse safetensors (header +
    hole) and a torch.save .pth of bf16 stride-0 views of one element (24 KB: the hash reads only
    names and shapes). Both hash to the registered md5 as the reference computes it, and load as
    wan_video_text_encoder zero-copy (bf16 = the files' dtype): 5.68 B parameters in < 1 GiB RSS."""
    layout = real_layout()
    assert len(layout) == 242
    st, pth = tmp_path / "models_t5_umt5-xxl-enc-bf16.safetensors", tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    write_sparse_safetensors(st, layout)
    one = torch.zeros(1, dtype=torch.bfloat16)
    torch.save({k: one.expand(*s) for k, s in layout}, str(pth))
    assert os.path.getsize(pth) < 1 << 20
    for p in (st, pth):
        assert hash_model_file(str(p)) == HASH
        assert run([diffsynth_bin, "hash", p]).stdout.strip() == HASH
        r = run([diffsynth_bin, "load", p])
        out = r.stdout + r.stderr  # the summary line is on stderr
        assert '"model_name": "wan_video_text_encoder"' in out, out
        assert '"model_class": "diffsynth.models.wan_video_text_encoder.WanTextEncoder"' in out, out
        m = re.search(r"loaded 1 model\(s\), (\d+) parameters .* peak RSS ([\d.]+) MiB", out)
        assert m, out
        assert int(m.group(1)) == 5680910336
        assert float(m.group(2)) < 1024, out
