"""String-keyed registries of tasks, backbones and recipes, resolved lazily.

Values are ``"module:attribute"`` strings so that listing or validating names never imports
timm, transformers or torch_geometric. A conf file names its builder with ``type:``.
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


def resolve(kind: str, name: str) -> Any:
    table = _KINDS[kind]
    if name not in table:
        raise ConfigError(f"unknown {kind} type '{name}'; known: {', '.join(sorted(table))}")
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)
