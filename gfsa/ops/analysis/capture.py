"""Capturing attention matrices and layer outputs: hooks on a model's attention modules (the effective
attention ``H``, recomputed from the queries and keys the model uses) and on its blocks (the tokens)."""

from __future__ import annotations

import re

import torch
from torch import nn

from gfsa.nn.attention import GFSACoefficients
from gfsa.nn.functional import attention_probs, gfsa_filter
from gfsa.nn.patching import UnsupportedModelError
from gfsa.ops.analysis.measures import LayerStats

SUPPORTED = "timm ViT/DeiT (timm.layers.Attention) and transformers BERT, RoBERTa, ALBERT, GPT-2"
HF_TYPES = ("bert", "roberta", "albert", "gpt2")
_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")  # the numbered block that holds an attention module


def _effective_attention(module: nn.Module, attn: torch.Tensor, mask=None, is_causal=False, active=True):
    """``H`` as the module applies it: GFSA's filter and/or AttnScale's rescaling of ``A``."""
    g = getattr(module, "gfsa", None)
    if isinstance(g, GFSACoefficients) and active:
        attn = gfsa_filter(attn, g.w0, g.w1, g.wK, g.settings.K)
    scale = getattr(module, "attnscale", None)
    if scale is not None:
        from gfsa.zoo.methods.attnscale import mean_over_keys

        n = attn.shape[-1]
        uniform = mean_over_keys(torch.eye(n, dtype=attn.dtype, device=attn.device), mask, is_causal)
        w = scale.omega.to(attn.dtype).view(-1, 1, 1)
        attn = (1 + w) * attn - w * uniform
    return attn


def _hf_capture_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kw):
    """The ``gfsa_analysis`` attention implementation: record ``H``, then attend as ``gfsa`` does."""
    from gfsa.nn.adapters.hf import gfsa_attention_forward

    capture: Capture | None = getattr(module, "_gfsa_capture", None)
    if capture is not None and capture.recording:
        g = getattr(module, "gfsa", None)
        active = g is not None and (g.shared_layers is None or g.calls in g.shared_layers)
        causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
        causal = bool(causal and attention_mask is None and query.shape[2] > 1)
        attn = attention_probs(query.float(), key.float(), attention_mask, causal, scaling)
        capture.attention(module, _effective_attention(module, attn, attention_mask, causal, active))
    return gfsa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kw
    )


def _timm_pre_hook(module, args, kwargs):
    capture: Capture | None = getattr(module, "_gfsa_capture", None)
    if capture is None or not capture.recording:
        return
    x = args[0] if args else kwargs["x"]
    B, N, _ = x.shape
    q, k, _ = module.qkv(x).reshape(B, N, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    mask = kwargs.get("attn_mask") if kwargs else None
    capture.attention(
        module, _effective_attention(module, attention_probs(q.float(), k.float(), mask, False, module.scale))
    )


def _block_hook(module, args, output):
    capture: Capture | None = getattr(module, "_gfsa_capture", None)
    if capture is not None and capture.recording:
        capture.tokens(output[0] if isinstance(output, tuple) else output)


class Capture:
    """Hooks on a model's attention modules and blocks that feed :class:`~gfsa.ops.analysis.measures.LayerStats` while ``recording``.

    ``model`` is what :func:`gfsa.patch` receives (``gfsa.zoo.backbones.patch_target``). Use as a context
    manager, or :meth:`attach`/:meth:`detach`; call :meth:`batch` with each batch before its forward.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.family = family(model)
        from gfsa.nn.patching import find_adapter

        layers = find_adapter(model).attention_layers(model)
        self.attn_modules = [m for layer in layers for m, cross in layer.modules if not cross]
        names = {id(m): n for n, m in model.named_modules()}
        blocks: dict[str, nn.Module] = {}
        for m in self.attn_modules:
            match = _BLOCK.match(names[id(m)])
            if match is None:
                raise UnsupportedModelError(
                    f"gfsa analyze cannot find the block of {names[id(m)]}; supported: {SUPPORTED}"
                )
            blocks.setdefault(match.group(1), model.get_submodule(match.group(1)))
        self.blocks = list(blocks.values())
        self.stats = LayerStats()
        self.recording = False
        self._valid: torch.Tensor | None = None
        self._handles: list = []
        self._attn_impl: str | None = None
        self._n_attn = self._n_block = 0

    def attach(self) -> Capture:
        for m in self.attn_modules + self.blocks:
            m._gfsa_capture = self
        for b in self.blocks:
            self._handles.append(b.register_forward_hook(_block_hook))
        if self.family == "timm":
            for m in self.attn_modules:
                self._handles.append(m.register_forward_pre_hook(_timm_pre_hook, with_kwargs=True))
        else:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

            AttentionInterface.register("gfsa_analysis", _hf_capture_forward)
            AttentionMaskInterface.register("gfsa_analysis", sdpa_mask)
            self._attn_impl = self.model.config._attn_implementation
            self.model.set_attn_implementation("gfsa_analysis")
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self.attn_modules + self.blocks:
            m.__dict__.pop("_gfsa_capture", None)
        if self._attn_impl is not None:
            self.model.set_attn_implementation(self._attn_impl)
            self._attn_impl = None
        self.recording = False

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def batch(self, batch: dict | None, record: bool = True) -> None:
        """Announce the next forward's batch (its ``attention_mask`` marks the real tokens)."""
        self.recording = record
        self._n_attn = self._n_block = 0
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        self._valid = None if mask is None or bool(mask.all()) else mask.reshape(-1, mask.shape[-1]).bool()

    def attention(self, module: nn.Module, h: torch.Tensor) -> None:
        self.stats.add_attention(self._n_attn, h.detach(), self._valid)
        self._n_attn += 1

    def tokens(self, x: torch.Tensor) -> None:
        self.stats.add_tokens(self._n_block, x.detach(), self._valid)
        self._n_block += 1

    def summary(self) -> dict:
        return self.stats.summary()


def family(model: nn.Module) -> str:
    """``timm`` or ``hf`` for models the analysis supports; a one-line error otherwise."""
    mods = [cls.__module__ for cls in type(model).__mro__]
    if any(m.startswith("timm.") for m in mods):
        from timm.layers import Attention
        from timm.models.vision_transformer import VisionTransformer

        if isinstance(model, VisionTransformer) and all(isinstance(b.attn, Attention) for b in model.blocks):
            return "timm"
    if any(m.startswith("transformers.") for m in mods) and getattr(model.config, "model_type", None) in HF_TYPES:
        return "hf"
    raise UnsupportedModelError(f"gfsa analyze supports {SUPPORTED}, not {type(model).__name__}")


def coefficients(model: nn.Module) -> dict:
    """Learned per-head coefficients by module: GFSA's ``w0, w1, wK`` and AttnScale's ``ω``."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, GFSACoefficients):
            out[name] = {c: getattr(m, c).detach().cpu().tolist() for c in ("w0", "w1", "wK")}
        omega = getattr(getattr(m, "attnscale", None), "omega", None)
        if omega is not None:
            out[f"{name}.attnscale"] = {"omega": omega.detach().cpu().tolist()}
    return out
