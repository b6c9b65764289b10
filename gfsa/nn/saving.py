"""Saving and restoring GFSA models with their trained coefficients.

transformers: ``gfsa.patch`` records its settings in ``model.config.gfsa``, which ``save_pretrained``
writes to config.json; the coefficients (``….gfsa.w0/w1/wK``) are ordinary weights. A stock
``from_pretrained`` would drop them as unexpected keys and come back unpatched, so
:func:`from_pretrained` builds a subclass of the model class whose ``__init__`` patches the model
before transformers loads the weights: the coefficients are then expected keys and load.

timm: ``timm.create_model(name, checkpoint_path=…)`` loads strictly before anyone could patch, and
fails on the coefficient keys. :func:`save_timm` writes the weights and, beside them,
``<checkpoint>.gfsa.json`` (model name, its ``create_model`` arguments, the GFSA settings);
:func:`create_model` builds, patches as that file says, then loads strictly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from gfsa.nn.attention import GFSACoefficients
from gfsa.nn.patching import patch
from gfsa.nn.settings import GFSASettings

SIDE_CAR = ".gfsa.json"  # beside a timm checkpoint file: <checkpoint>.gfsa.json


class SettingsMismatchError(ValueError):
    """Explicit GFSA settings that disagree with the ones a checkpoint was trained with."""


def _settings(value: GFSASettings | dict | None) -> GFSASettings | None:
    if value is None or isinstance(value, GFSASettings):
        return value
    return GFSASettings.from_mapping({**GFSASettings().to_config(), **value})


def _check_agree(source: str, saved: GFSASettings, asked: GFSASettings | None) -> None:
    if asked is not None and asked != saved:
        differ = {k: (v, getattr(asked, k)) for k, v in saved.to_config().items() if asked.to_config()[k] != v}
        what = ", ".join(f"{k}={theirs!r} (asked {ours!r})" for k, (theirs, ours) in differ.items())
        raise SettingsMismatchError(
            f"{source} was trained with GFSA {what}: drop the explicit settings to load it as trained"
        )


# -- transformers ----------------------------------------------------------------------------------
_GFSA_CLASSES: dict[type, type] = {}


def gfsa_model_class(cls: type) -> type:
    """``cls`` whose ``__init__`` applies ``config.gfsa`` (one subclass per class, kept).

    The same ``__name__`` as ``cls``: transformers derives ``config.architectures`` (on save) and the loss
    type (``…ForCausalLM``) from it. Coefficients a checkpoint lacks (a stock checkpoint) get their initial
    values in ``initialize_weights``: transformers creates missing keys uninitialised and initialises only
    what the models' ``_init_weights`` know (for ``…ForCausalLM``, the inner model's)."""
    if cls in _GFSA_CLASSES:
        return _GFSA_CLASSES[cls]
    from transformers import initialization as hf_init

    class GFSAModel(cls):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            settings = dict(getattr(config, "gfsa", None) or {})
            if settings:  # "module": a part of this model was patched (e.g. a speech model's encoder)
                module = settings.pop("module", "")
                patch(self.get_submodule(module) if module else self, settings=GFSASettings.from_mapping(settings))

        @torch.no_grad()
        def initialize_weights(self):
            super().initialize_weights()
            for module in self.modules():
                if isinstance(module, GFSACoefficients):  # constant_ skips tensors the checkpoint filled
                    for name in ("w0", "w1", "wK"):
                        hf_init.constant_(getattr(module, name), getattr(module.settings, name))

    GFSAModel.__name__, GFSAModel.__qualname__ = cls.__name__, cls.__qualname__
    _GFSA_CLASSES[cls] = GFSAModel
    return GFSAModel


def from_pretrained(
    path_or_hub_id: str | Path, model_class=None, settings: GFSASettings | dict | None = None, **kwargs
):
    """A model saved with ``save_pretrained`` after ``gfsa.patch``, patched and with its trained
    coefficients. ``model_class``: an Auto class (default ``AutoModel``) or a concrete one; ``kwargs`` go
    to transformers' ``from_pretrained``. A checkpoint without GFSA (a stock one) loads and is patched
    with ``settings`` if given; explicit ``settings`` that disagree with a GFSA checkpoint's are an error."""
    from transformers import AutoConfig, AutoModel

    import gfsa.nn.adapters.hf  # noqa: F401 - registers the "gfsa" attention implementation

    model_class = model_class or AutoModel
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path_or_hub_id)
    mapping = getattr(model_class, "_model_mapping", None)
    cls = mapping[type(config)] if mapping is not None else model_class
    asked = _settings(settings)
    saved = getattr(config, "gfsa", None)
    if not saved:
        model = cls.from_pretrained(path_or_hub_id, config=config, **kwargs)
        return patch(model, settings=asked) if asked is not None else model
    _check_agree(
        str(path_or_hub_id), GFSASettings.from_mapping({k: v for k, v in saved.items() if k != "module"}), asked
    )
    kwargs.setdefault("attn_implementation", "gfsa")
    return gfsa_model_class(cls).from_pretrained(path_or_hub_id, config=config, **kwargs)


# -- timm ------------------------------------------------------------------------------------------
def save_timm(model: nn.Module, checkpoint: str | Path, model_name: str, **model_kwargs) -> Path:
    """The weights (safetensors) and ``<checkpoint>.gfsa.json``: the timm model name, its
    ``create_model`` arguments and the GFSA settings ``gfsa.patch`` was given."""
    from safetensors.torch import save_file

    settings = getattr(model, "gfsa_settings", None)
    if settings is None:
        raise ValueError("save_timm saves a model patched by gfsa.patch; this one is not")
    checkpoint = Path(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    meta = {"model_name": model_name, "model_kwargs": model_kwargs, "gfsa": settings.to_config()}
    Path(str(checkpoint) + SIDE_CAR).write_text(json.dumps(meta, indent=2) + "\n")
    return checkpoint


def create_model(
    model_name: str,
    checkpoint_path: str | Path | None = None,
    settings: GFSASettings | dict | None = None,
    **timm_kwargs,
) -> nn.Module:
    """``timm.create_model`` for GFSA checkpoints: built, patched as ``<checkpoint>.gfsa.json`` says, then
    loaded strictly (trained coefficients included). Without that file: plain timm, patched with
    ``settings`` if given."""
    import timm
    from timm.models import load_checkpoint

    asked = _settings(settings)
    side = Path(str(checkpoint_path) + SIDE_CAR) if checkpoint_path else None
    if side is None or not side.is_file():
        model = timm.create_model(model_name, checkpoint_path=str(checkpoint_path or ""), **timm_kwargs)
        return patch(model, settings=asked) if asked is not None else model
    meta = json.loads(side.read_text())
    saved = GFSASettings.from_mapping(meta["gfsa"])
    _check_agree(str(checkpoint_path), saved, asked)
    model = timm.create_model(model_name, **{**meta.get("model_kwargs", {}), **timm_kwargs})
    patch(model, settings=saved)
    load_checkpoint(model, str(checkpoint_path), strict=True)
    return model
