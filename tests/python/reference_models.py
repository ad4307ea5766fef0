"""Reduced-size reference models (the installed diffsynth's own classes and building blocks) for
the parity tests, at the sizes our C++ classes take as config fields."""
import contextlib
import copy

import torch
import transformers

from diffsynth.models.general_modules import AdaLayerNorm, RMSNorm, TimestepEmbeddings
from diffsynth.models.qwen_image_dit import (QwenEmbedLayer3DRope, QwenEmbedRope, QwenImageDiT,
                                             QwenImageTransformerBlock)


def reduced_dit(dim, heads, head_dim, text_dim, layers, layered=False, init=True):
    """QwenImageDiT assembled at small widths. The reference hard-codes 3072 / 24 x 128 / 3584; the
    RoPE axes split the head dim as [16, 56, 56] does 128: frame = head_dim / 8, h = w = the rest / 2."""
    m = QwenImageDiT.__new__(QwenImageDiT)
    torch.nn.Module.__init__(m)
    rope = QwenEmbedLayer3DRope if layered else QwenEmbedRope
    frame = head_dim // 8
    m.pos_embed = rope(theta=10000, axes_dim=[frame, (head_dim - frame) // 2, (head_dim - frame) // 2], scale_rope=True)
    m.time_text_embed = TimestepEmbeddings(256, dim, diffusers_compatible_format=True, scale=1000,
                                           align_dtype_to_timestep=False, use_additional_t_cond=layered)
    m.txt_norm = RMSNorm(text_dim, eps=1e-6)
    m.img_in = torch.nn.Linear(64, dim)
    m.txt_in = torch.nn.Linear(text_dim, dim)
    m.transformer_blocks = torch.nn.ModuleList(
        [QwenImageTransformerBlock(dim=dim, num_attention_heads=heads, attention_head_dim=head_dim) for _ in range(layers)])
    m.norm_out = AdaLayerNorm(dim, single=True)
    m.proj_out = torch.nn.Linear(dim, 64)
    if init:
        with torch.no_grad():  # weights on the scale of trained ones: activations stay O(1)
            for name, p in m.named_parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
                elif "norm" in name:
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
    return m.eval()


@contextlib.contextmanager
def reduced_qwen2_5_vl_config(text, vision):
    """While active, QwenImageTextEncoder() builds a Qwen2.5-VL of the given text / vision sizes
    (its __init__ does `from transformers import Qwen2_5_VLConfig`)."""
    real = transformers.Qwen2_5_VLConfig

    def reduced(**kw):
        kw = copy.deepcopy(kw)
        kw.update(text)
        kw["text_config"].update(text)
        kw["text_config"]["layer_types"] = ["full_attention"] * text["num_hidden_layers"]
        kw["vision_config"].update(vision, out_hidden_size=text["hidden_size"])
        return real(**kw)

    transformers.Qwen2_5_VLConfig = reduced
    try:
        yield
    finally:
        transformers.Qwen2_5_VLConfig = real


def te_checkpoint_name(k):
    """Inverse of QwenImageTextEncoderStateDictConverter: model names -> checkpoint names."""
    if k.startswith("model.language_model."):
        return "model." + k[len("model.language_model."):]
    if k.startswith("model.visual."):
        return k[len("model."):]
    return k


def reduced_wan_text_encoder(vocab=1000, dim=64, dim_attn=64, dim_ffn=160, num_heads=4, num_layers=3,
                             num_buckets=32, shared_pos=False, seed=0):
    """The reference WanTextEncoder (UMT5 encoder) by its own constructor at reduced sizes, in eval
    mode (dropout off, as the loader leaves it), with random weights on the scale of trained ones:
    q / k / v / gate / fc1 ~ N(0, 1/dim) so that the unscaled T5 attention logits are O(1) and
    relative position biases ~ N(0, 1) matter (the reference's init_weights makes both tiny).
    Returns (model, kwargs): kwargs are the extra_kwargs our class takes for the same model."""
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    kwargs = dict(vocab=vocab, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=num_heads,
                  num_layers=num_layers, num_buckets=num_buckets, shared_pos=shared_pos)
    m = WanTextEncoder(**kwargs).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.1 * r)
            elif "token_embedding" in name or "pos_embedding" in name:
                p.copy_(r)
            else:
                p.copy_(r * p.shape[-1] ** -0.5)
    return m, kwargs


@contextlib.contextmanager
def reduced_clip(**kw):
    """While active, WanImageEncoder() builds its CLIP with these keyword arguments (its __init__
    calls clip_xlm_roberta_vit_h_14 with the real sizes)."""
    import diffsynth.models.wan_video_image_encoder as wie
    real = wie.clip_xlm_roberta_vit_h_14
    wie.clip_xlm_roberta_vit_h_14 = lambda **a: real(**a, **kw)
    try:
        yield
    finally:
        wie.clip_xlm_roberta_vit_h_14 = real


@contextlib.contextmanager
def _reduced_video_vae(**kw):
    """While active, WanVideoVAE() builds its VideoVAE_ with these keyword arguments (its
    __init__ hard-codes VideoVAE_(z_dim=z_dim), dim 96)."""
    import diffsynth.models.wan_video_vae as wan_vae
    real = wan_vae.VideoVAE_
    wan_vae.VideoVAE_ = lambda z_dim=16: real(z_dim=z_dim, **kw)
    try:
        yield
    finally:
        wan_vae.VideoVAE_ = real


def reduced_wan_video_vae(dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=1, attn_scales=(),
                          temperal_downsample=(False, True, True), seed=0, receptive_field="full"):
    """The reference WanVideoVAE (its own __init__: mean, std, scale) around a VideoVAE_ of
    reduced width, in eval mode, with unit-gain random weights (activations O(1) at every depth):
    gammas 1 + 0.1 N(0, 1), biases 0.05 N(0, 1), weights N(0, 1 / fan_in).
    receptive_field "pointwise": only the centre tap of each 3x3 (spatial) kernel and no attention
    output; "local": off-centre spatial taps x0.1 and no attention output.
    Returns (model, kwargs): kwargs are the extra_kwargs our WanVideoVAE takes for the same model.
    wan_vae_file_state_dict(model) gives the Wan2.1_VAE.pth layout (names without "model.")."""
    from diffsynth.models.wan_video_vae import WanVideoVAE
    kw = dict(dim=dim, dim_mult=list(dim_mult), num_res_blocks=num_res_blocks, attn_scales=list(attn_scales),
              temperal_downsample=list(temperal_downsample))
    with _reduced_video_vae(**kw):
        m = WanVideoVAE().eval()
    off_centre = {"full": 1.0, "local": 0.1, "pointwise": 0.0}[receptive_field]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * r)
            elif name.endswith("bias"):
                p.copy_(0.05 * r)
            else:
                p.copy_(r / p[0].numel() ** 0.5)
            if receptive_field != "full":
                if p.dim() >= 4 and p.shape[-1] == 3:
                    centre = p[..., 1, 1].clone()
                    p.mul_(off_centre)
                    p[..., 1, 1] = centre
                if ".proj." in name and name.endswith("weight"):
                    p.zero_()
    return m, kw


def wan_vae_file_state_dict(model):
    """A WanVideoVAE's weights under the names Wan2.1_VAE.pth uses (the inverse of
    WanVideoVAEStateDictConverter: "model." dropped)."""
    return {k[len("model."):]: v.contiguous() for k, v in model.state_dict().items()}


def run_capturing_latents(pipe, **kw):
    """pipe(**kw) without a progress bar, and the final latents its VAE's decode was given (float32
    copy): (the pipeline's output, latents)."""
    seen = {}
    decode = pipe.vae.decode

    def spy(latents, *a, **k):
        seen["latents"] = latents.float().clone()
        return decode(latents, *a, **k)

    pipe.vae.decode = spy
    try:
        out = pipe(progress_bar_cmd=lambda x: x, **kw)
    finally:
        pipe.vae.decode = decode
    return out, seen["latents"]
