"""String-keyed registries of tasks, backbones and recipes, resolved lazily, and ``_target_`` for your own.

Values are ``"module:attribute"`` strings so that listing or validating names never imports
timm, transformers or torch_geometric. A conf file names its builder with ``type:`` (a name here) or
with ``_target_:`` (the dotted path of a class or function in any importable package: a task, backbone
or recipe of your own without editing gfsa; docs/extending.md). ``_target_`` is called exactly as a
registered builder is (a Task class with its config; a backbone builder with its config and the task),
not with Hydra's keyword arguments: the group's keys stay one config the task reads.
"""

from __future__ import annotations

import importlib
from typing import Any

from gfsa.utils.errors import ConfigError

TASKS: dict[str, str] = {
    "digits": "gfsa.zoo.tasks.digits:DigitsTask",
    "imagefolder": "gfsa.zoo.tasks.imagenet:ImageFolderTask",
    "glue": "gfsa.zoo.tasks.glue:GlueTask",
    "causal_lm": "gfsa.zoo.tasks.lm:CausalLMTask",
    "devign": "gfsa.zoo.tasks.code:DefectTask",
    "bigclonebench": "gfsa.zoo.tasks.code:CloneTask",
    "zinc": "gfsa.zoo.tasks.graph:ZincTask",
    "pcqm": "gfsa.zoo.tasks.graph:PCQMTask",
    "peptides": "gfsa.zoo.tasks.graph:PeptidesTask",
    "librispeech": "gfsa.zoo.tasks.speech:LibriSpeechTask",
    "librispeech_lm": "gfsa.zoo.tasks.speech:LibriSpeechLMTask",
    "listops": "gfsa.zoo.tasks.listops:ListOpsTask",
}

BACKBONES: dict[str, str] = {
    "timm": "gfsa.zoo.backbones.timm_models:build",
    "hf": "gfsa.zoo.backbones.hf_models:build",
    "graphormer": "gfsa.zoo.backbones.graphormer:build",
    "gps": "gfsa.zoo.backbones.gps:build",
    "asr_transformer": "gfsa.zoo.backbones.asr:build_transformer",
    "branchformer": "gfsa.zoo.backbones.asr:build_branchformer",
    "transformer_lm": "gfsa.zoo.backbones.asr:build_lm",
    "efficient_attention": "gfsa.zoo.backbones.efficient_attention:build",
    "lra_transformer": "gfsa.zoo.backbones.efficient_attention:build_softmax",
}

RECIPES: dict[str, str] = {
    "classification": "gfsa.zoo.recipes.classification:ClassificationRecipe",
    "graph": "gfsa.zoo.recipes.graph:GraphRecipe",
    "lm": "gfsa.zoo.recipes.lm:CausalLMRecipe",
    "asr": "gfsa.zoo.recipes.asr:ASRRecipe",
}

_KINDS = {"task": TASKS, "backbone": BACKBONES, "recipe": RECIPES}


def _import(kind: str, option: str, path: str) -> Any:
    """``pkg.module.Name`` or ``pkg.module:Name``, or a one-line error naming the option."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ConfigError(f"{option}={path}: expected a dotted path to a class or function, e.g. my_pkg.tasks.MyTask")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{option}={path}: cannot import {module} ({e}); is its package on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{option}={path}: {module} has no {attr}")
        obj = getattr(obj, part)
    return obj


def resolve(kind: str, name: Any) -> Any:
    """The builder a registry name stands for; a dotted path (``my_pkg.recipes.MyRecipe``, e.g. a task's
    ``recipe``) or the object itself are taken as they are."""
    if not isinstance(name, str):
        return name
    table = _KINDS[kind]
    if name in table:
        module, _, attr = table[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    if "." in name or ":" in name:
        return _import(kind, f"{kind} {name}", name)
    raise ConfigError(f"unknown {kind} type '{name}'; known: {', '.join(sorted(table))} (or a _target_ of your own)")


def builder(kind: str, group: dict) -> Any:
    """The builder a task or backbone group names: ``type`` (a registry name) or ``_target_`` (a dotted path)."""
    if "_target_" in group:
        if "type" in group and group["type"] is not None:
            raise ConfigError(
                f"{kind} sets both type={group['type']} and _target_={group['_target_']}: keep one "
                f"(~{kind}.type on the command line drops the preset's type)"
            )
        return _import(kind, f"{kind}._target_", str(group["_target_"]))
    if "type" not in group:
        raise ConfigError(f"{kind} names no builder: set {kind}.type (a registered name) or {kind}._target_")
    return resolve(kind, group["type"])
