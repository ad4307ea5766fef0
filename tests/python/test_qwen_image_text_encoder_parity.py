"""QwenImageTextEncoder numerical parity: the reference class (diffsynth's QwenImageTextEncoder,
i.e. transformers' Qwen2_5_VLModel + lm_head) built by its own constructor with only the sizes
reduced, random weights, saved in the *checkpoint* layout (the converter's inverse: "model.*",
"visual.*", "lm_head.*") so our loader goes through the registered state-dict converter.

Inputs are what the pipeline gives the encoder: a batch of two token sequences of different
lengths, padded (attention_mask 0) on the right (transformers' default padding side) or on the
left, or not padded. Every hidden state the reference returns is compared (the last one, the
final-norm output, is what the pipeline uses), on the rows where attention_mask is 1: the
pipeline keeps only those (extract_masked_hidden).

Tolerances (measured: 0, bit-exact, in every case): fp32 max abs diff <= 1e-4 * max|ref| (the
issue's bar). bf16: max abs diff <= 2 bf16 ulps of the output scale (2 * 2**-7 * max|ref|) AND
mean abs diff <= 5e-4 * mean|ref|. We call the same libtorch kernels in the same order on the same
bf16 values, so a correct port can differ only by rounding flips of a few elements (an ulp each);
the mean bound is what catches systematic bf16 deviations that stay within 2 ulps per element:
fp32 RoPE frequencies where the reference's model.to(bf16) rounds its inv_freq buffer to bf16
(mean 7e-3 here), or positions derived from the mask on left padding (mean 3e-3)."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsynth.models.qwen_image_text_encoder import QwenImageTextEncoder
from reference_models import reduced_qwen2_5_vl_config, te_checkpoint_name
from conftest import run

CONVERTER = "diffsynth.utils.state_dict_converters.qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter"
# Reduced sizes. The head dim stays 128 (= 2 * sum(mrope_section [16, 24, 24])); 4 heads over 2 kv
# heads exercise GQA.
TEXT = dict(hidden_size=512, intermediate_size=768, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000)
VISION = dict(depth=2, hidden_size=64, num_heads=2, intermediate_size=96, fullatt_block_indexes=[1])
OUR_KWARGS = dict(TEXT, vision_depth=2, vision_hidden_size=64, vision_num_heads=2, vision_intermediate_size=96)
L, SHORT = 40, 25  # sequence lengths: the long one fills the batch, the short one is padded


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference class with its own config, sizes reduced, random weights; and its file."""
    with reduced_qwen2_5_vl_config(TEXT, VISION):
        model = QwenImageTextEncoder().eval()
    assert model.model.language_model.config.hidden_size == TEXT["hidden_size"]
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:  # scaled so that attention logits are O(1): attention and positions matter
                p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
    weights = tmp_path_factory.mktemp("te") / "text_encoder.safetensors"
    save_file({te_checkpoint_name(k): v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return model, weights


def make_inputs(padding):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TEXT["vocab_size"], (2, L), generator=g)
    mask = torch.ones(2, L, dtype=torch.long)
    if padding == "right":
        mask[1, SHORT:] = 0
    elif padding == "left":
        mask[1, :L - SHORT] = 0
    if padding != "none":
        ids[1][mask[1] == 0] = 151643 % TEXT["vocab_size"]  # a pad token id, as the tokenizer writes
    return ids, mask


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_text_encoder_hidden_states(tmp_path, parity_bin, reference, dtype):
    model, weights = reference
    cases = {padding: make_inputs(padding) for padding in ("right", "left", "none")}
    # One run of our binary for all three cases (suffixed names).
    save_file({f"{name}.{padding}": t for padding, (ids, mask) in cases.items()
               for name, t in (("input_ids", ids), ("attention_mask", mask))}, str(tmp_path / "in.safetensors"))
    run([parity_bin, "qwen_image_text_encoder", weights, tmp_path / "in.safetensors", tmp_path / "out.safetensors",
         dtype, json.dumps(OUR_KWARGS), json.dumps({"converter": CONVERTER})])
    ours = load_file(str(tmp_path / "out.safetensors"))
    assert len(ours) == 3 * (TEXT["num_hidden_layers"] + 1)

    ref_model = copy.deepcopy(model).to(dtype=getattr(torch, dtype))  # as DiffSynth's loader does: model.to(dtype)
    for padding, (ids, mask) in cases.items():
        with torch.no_grad():
            ref = ref_model(input_ids=ids, attention_mask=mask)  # outputs.hidden_states
        assert len(ref) == TEXT["num_hidden_layers"] + 1
        keep = mask.bool()
        for i, r in enumerate(ref):
            o = ours[f"hidden_{i}.{padding}"]
            assert o.shape == r.shape
            assert torch.isfinite(o[keep]).all()
            r, o = r.float()[keep], o[keep]
            diff = (o - r).abs().max().item()
            scale = r.abs().max().item()
            mean_rel = (o - r).abs().mean().item() / r.abs().mean().item()
            print(f"{dtype} {padding} hidden_{i}: max abs diff {diff:.3g} (max|ref| {scale:.3g}),"
                  f" mean rel {mean_rel:.3g}")
            if dtype == "float32":
                assert diff <= 1e-4 * scale, (padding, i, diff, scale)
            else:
                assert diff <= 2 * 2 ** -7 * scale, (padding, i, diff, scale)
                assert mean_rel <= 5e-4, (padding, i, mean_rel)
