"""Metrics on several evaluation splits in one validation pass (validation + test sets).

Papers on ZINC, Peptides, LibriSpeech, Devign and BigCloneBench report test numbers at the selected
epoch, so those tasks validate on ``task.eval_splits`` together (every recipe scores them; tasks without
``eval_splits`` have one split). The first split keeps plain metric names
(``val/mae``: it drives selection); the others are prefixed with their name (``val/test_mae``,
``val/test_clean_wer``), so a results record holds them side by side at every epoch.
"""

from __future__ import annotations

from torch import nn
from torchmetrics import MetricCollection

from gfsa.zoo.tasks.base import split_prefixes


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
