"""Metrics on several evaluation splits in one validation pass (validation + test sets).

Papers on ZINC, Peptides, LibriSpeech, Devign and BigCloneBench report test numbers at the selected
epoch, so those tasks validate on ``task.eval_splits`` together (every recipe scores them; tasks without
``eval_splits`` have one split). The first split keeps plain metric names
(``val/mae``: it drives selection); the others are prefixed with their name (``val/test_mae``,
``val/test_clean_wer``), so a results record holds them side by side at every epoch.
"""

from __future__ import annotations

import re

from torch import nn
from torchmetrics import MetricCollection


def eval_splits(task) -> list[str]:
    """The task's evaluation splits; one (its validation set) when it names none."""
    return list(getattr(task, "eval_splits", None) or ["val"])


def split_prefixes(splits: list[str]) -> list[str]:
    """``["val", "test"]`` → ``["", "test_"]``; ``["dev-clean", "test-clean"]`` → ``["", "test_clean_"]``."""
    return [""] + [re.sub(r"\W+", "_", s).strip("_") + "_" for s in splits[1:]]


def prefixed_directions(directions: dict[str, str], splits: list[str]) -> dict[str, str]:
    """``{"mae": "down"}`` on every split: ``{"mae": "down", "test_mae": "down"}``."""
    return {p + name: d for p in split_prefixes(splits) for name, d in directions.items()}


class SplitMetrics(nn.Module):
    """One clone of ``metrics`` per split, logged as ``<prefix><split prefix><name>`` (``val/test_acc``)."""

    def __init__(self, metrics: MetricCollection, splits: list[str], prefix: str = "val/"):
        super().__init__()
        self.prefixes = split_prefixes(splits)
        self.collections = nn.ModuleList([metrics.clone(prefix=f"{prefix}{p}") for p in self.prefixes])

    def loss_name(self, split: int) -> str:
        return f"val/{self.prefixes[split]}loss"

    def update(self, split: int, *args) -> None:
        self.collections[split].update(*args)

    def compute_and_reset(self) -> dict:
        out = {}
        for c in self.collections:
            out.update(c.compute())
            c.reset()
        return out
