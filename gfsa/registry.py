"""String-keyed registries of tasks, backbones and recipes, resolved lazily.

Values are ``"module:attribute"`` strings so that listing or validating names never imports
timm, transformers or torch_geometric. A conf file names its builder with ``type:``.
"""

from __future__ import annotations

import importlib
from typing import Any

from gfsa.utils.errors import ConfigError

TASKS: dict[str, str] = {
    "digits": "gfsa.tasks.digits:DigitsTask",
    "imagefolder": "gfsa.tasks.imagenet:ImageFolderTask",
    "glue": "gfsa.tasks.glue:GlueTask",
    "causal_lm": "gfsa.tasks.lm:CausalLMTask",
    "devign": "gfsa.tasks.code:DefectTask",
    "bigclonebench": "gfsa.tasks.code:CloneTask",
    "zinc": "gfsa.tasks.graph:ZincTask",
    "pcqm": "gfsa.tasks.graph:PCQMTask",
    "peptides": "gfsa.tasks.graph:PeptidesTask",
    "librispeech": "gfsa.tasks.speech:LibriSpeechTask",
    "listops": "gfsa.tasks.listops:ListOpsTask",
}

BACKBONES: dict[str, str] = {
    "timm": "gfsa.backbones.timm_models:build",
    "hf": "gfsa.backbones.hf_models:build",
    "graphormer": "gfsa.backbones.graphormer:build",
    "gps": "gfsa.backbones.gps:build",
    "asr_transformer": "gfsa.backbones.asr:build_transformer",
    "branchformer": "gfsa.backbones.asr:build_branchformer",
    "efficient_attention": "gfsa.backbones.efficient_attention:build",
    "lra_transformer": "gfsa.backbones.efficient_attention:build_softmax",
}

RECIPES: dict[str, str] = {
    "classification": "gfsa.recipes.classification:ClassificationRecipe",
    "lm": "gfsa.recipes.lm:CausalLMRecipe",
    "asr": "gfsa.recipes.asr:ASRRecipe",
}

_KINDS = {"task": TASKS, "backbone": BACKBONES, "recipe": RECIPES}


def resolve(kind: str, name: str) -> Any:
    table = _KINDS[kind]
    if name not in table:
        raise ConfigError(f"unknown {kind} type '{name}'; known: {', '.join(sorted(table))}")
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)
