"""Metrics on several evaluation splits in one validation pass (validation + test sets).

Papers on ZINC, Peptides and LibriSpeech report test numbers at the selected epoch, so the graph
and speech tasks validate on ``task.eval_splits`` together. The first split keeps plain metric names
(``val/mae``: it drives selection); the others are prefixed with their name (``val/test_mae``,
``val/test_clean_wer``), so a results record holds them side by side at every epoch.
"""

from __future__ import annotations

import re

from torch import nn
from torchmetrics import MetricCollection


def split_prefixes(splits: list[str]) -> list[str]:
    """``["val", "test"]`` → ``["", "test_"]``; ``["dev-clean", "test-clean"]`` → ``["", "test_clean_"]``."""
    return [""] + [re.sub(r"\W+", "_", s).strip("_") + "_" for s in splits[1:]]


def prefixed_directions(directions: dict[str, str], splits: list[str]) -> dict[str, str]:
    """``{"mae": "down"}`` on every split: ``{"mae": "down", "test_mae": "down"}``."""
    return {p + name: d for p in split_prefixes(splits) for name, d in directions.items()}


class SplitMetrics(nn.Module):
    """One clone of ``metrics`` per split, logged as ``val/<prefix><name>``."""

    def __init__(self, metrics: MetricCollection, splits: list[str]):
        super().__init__()
        self.prefixes = split_prefixes(splits)
        self.collections = nn.ModuleList([metrics.clone(prefix=f"val/{p}") for p in self.prefixes])

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
