"""The methods the paper compares GFSA with, put into a model through the same adapters as
:func:`gfsa.patch` (``gfsa/patch/*.attention_layers`` gives the attention modules in depth order).

- ``attnscale``: per-head rescaling of the attention matrix's high-frequency part (needs the values:
  it runs inside :func:`gfsa.nn.attention.apply_gfsa`, so the attention modules are routed through it).
- ``featscale``, ``contranorm``: act on each attention module's output, through a forward hook.
  What a module returns depends on the family: timm — after the output projection (as the official
  AttnScale/FeatScale code); BERT/RoBERTa — the attention context before the output projection (the
  ContraNorm GLUE code's position 2); ALBERT — its attention block after the residual LayerNorm.

The method's parameters live on the attention module as a child named after the method, so
state-dict keys of the original model are untouched. AttnScale and FeatScale are identities at init;
ContraNorm is one only with ``scale=0`` (its published form, s > 0, changes outputs from the start).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import nn

from gfsa.nn.attention import add_output_hook
from gfsa.nn.layers import LayerSpecError, select_layers
from gfsa.zoo.methods.attnscale import AttnScale
from gfsa.zoo.methods.contranorm import ContraNorm
from gfsa.zoo.methods.featscale import FeatScale

METHODS = ("attnscale", "featscale", "contranorm")
_OUTPUT_METHODS = ("featscale", "contranorm")
# Each method's module; its keyword arguments after the first (heads or width) are the method's
# hyperparameters, with their Python-API defaults. conf/method/<name>.yaml sets every one of them.
CLASSES = {"attnscale": AttnScale, "featscale": FeatScale, "contranorm": ContraNorm}


def hyperparameters(name: str) -> tuple[str, ...]:
    """The hyperparameters ``apply_method`` takes for ``name`` (the arguments of its module)."""
    return tuple(inspect.signature(CLASSES[name]).parameters)[1:]


def feature_dim(module: nn.Module) -> int:
    """Width of what an attention module returns (for per-channel method parameters)."""
    for owner, attr in (("dense", "out_features"), ("proj", "out_features"), (None, "all_head_size")):
        obj = getattr(module, owner, None) if owner else module
        if isinstance(getattr(obj, attr, None), int):
            return getattr(obj, attr)
    for attr in ("embed_dim", "hidden_size"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    raise TypeError(f"cannot tell the output width of {type(module).__name__} for a per-channel method")


def _output_hook(module: nn.Module, args, output):
    """Apply the module's output method (FeatScale/ContraNorm) to its output (first item of a tuple)."""
    method = next((getattr(module, m) for m in _OUTPUT_METHODS if getattr(module, m, None) is not None), None)
    if method is None:
        return output
    if isinstance(output, tuple):
        return (method(output[0]), *output[1:])
    return method(output)


def _build(name: str, module: nn.Module, num_heads: int, hp: dict) -> nn.Module:
    return CLASSES[name](num_heads if name == "attnscale" else feature_dim(module), **hp)


def apply_method(model: nn.Module, name: str, layers: str | int | Sequence[int] = "all", **hparams) -> int:
    """Add a compared method to ``model``'s selected layers, in place; returns its learnable parameter count.

    Cross-attention modules are left alone. Modules shared by several layers (ALBERT) get one set of
    parameters used at every call, so ``layers`` must select all layers there.
    """
    from gfsa.nn.patching import find_adapter

    if name not in METHODS:
        raise ValueError(f"method.name={name}: choose one of none, {', '.join(METHODS)}")
    unknown = [k for k in hparams if k not in hyperparameters(name)]
    if unknown:
        raise ValueError(
            f"method.{unknown[0]}: {name} has no such option; its options are {', '.join(hyperparameters(name))}"
        )
    adapter = find_adapter(model)
    all_layers = adapter.attention_layers(model)
    try:
        chosen = select_layers(layers, len(all_layers))
    except LayerSpecError as e:  # its message names gfsa.layers: this is the method's option
        raise ValueError(str(e).replace("gfsa.layers", "method.layers", 1)) from None
    if any(layer.shared for layer in all_layers) and len(chosen) != len(all_layers):
        raise ValueError(f"method.layers={layers}: this model shares its attention module across layers; use all")
    added, seen = 0, set()
    for idx in chosen:
        layer = all_layers[idx]
        for module, cross in layer.modules:
            if cross or id(module) in seen:
                continue
            seen.add(id(module))
            if any(hasattr(module, m) for m in METHODS):
                raise ValueError("this model already has a compared method; apply one method to the original model")
            method = _build(name, module, layer.num_heads, hparams)
            ref = next(module.parameters(), None)
            if ref is not None:
                method.to(device=ref.device)
            if name in _OUTPUT_METHODS:
                setattr(module, name, method)
                module.register_forward_hook(_output_hook)
            else:  # AttnScale acts on the attention output inside the attention path (it needs V)
                add_output_hook(module, name, method)
            added += sum(p.numel() for p in method.parameters())
    if name == "attnscale":  # route the chosen modules' attention through apply_gfsa
        adapter.install(model, all_layers, chosen)
    return added


def method_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable parameters of compared methods in ``model``."""
    return [p for m in model.modules() if isinstance(m, (AttnScale, FeatScale, ContraNorm)) for p in m.parameters()]


def apply_from_config(cfg: dict, model: nn.Module) -> int:
    """The run path's hook: apply ``cfg.method`` (``conf/method/``) to ``model``; 0 for ``method=none``.

    A compared method replaces GFSA: combining both needs ``method.with_gfsa=true``.
    """
    from gfsa.utils.errors import ConfigError

    m = cfg.get("method") or {"name": "none"}  # ~method drops the group: no compared method
    name = m["name"]
    if name in (None, "none"):
        return 0
    layers = cfg["gfsa"]["layers"]
    if layers not in (None, "none", []) and not m["with_gfsa"]:
        raise ConfigError(
            f"method={name} replaces GFSA but gfsa.layers={layers}: add gfsa.layers=none "
            "(or method.with_gfsa=true to combine them)"
        )
    hparams = {k: v for k, v in m.items() if k not in ("name", "layers", "with_gfsa")}
    try:
        return apply_method(model, name, m["layers"], **hparams)
    except (ValueError, TypeError) as e:  # layer specs, unsupported models: name the option
        raise ConfigError(str(e)) from None
