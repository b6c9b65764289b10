"""What every task provides to the run path: data, metrics with directions, and checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from gfsa.utils.errors import ConfigError


class Task(L.LightningDataModule):
    """A LightningDataModule that also says how runs on it are trained and scored.

    ``recipe`` names the LightningModule that trains on it; ``primary_metric`` and
    ``directions`` (``up``/``down`` per metric name, without the ``val/`` prefix) drive pairing
    and improvement %. ``check()`` raises :class:`ConfigError` for bad input before any run
    directory exists.
    """

    recipe = "classification"
    primary_metric = "acc"
    directions: ClassVar[dict[str, str]] = {"acc": "up", "loss": "down"}

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.batch_size = int(cfg.batch_size)
        self.num_workers = int(cfg["num_workers"])

    @property
    def samples_per_step(self) -> int | None:
        """Samples in each training micro-batch (None where batches vary, e.g. batched by duration)."""
        return self.batch_size

    def check(self) -> None:
        """Validate inputs (paths, formats) cheaply, before training starts."""

    def setup(self, stage: str | None = None) -> None:
        # Lightning calls setup again in fit(); the run path calls it first to fail before training.
        if not getattr(self, "_loaded", False):
            self.load()
            self._loaded = True

    def load(self) -> None:
        """Read the dataset (once); raise ConfigError naming the file for malformed input."""

    def train_batch(self, batch: dict) -> dict:
        """Transform a training batch on the device (e.g. Mixup/CutMix producing soft labels)."""
        return batch

    def loss(self, logits, labels):
        return F.cross_entropy(logits, labels)

    def metric_inputs(self, logits, labels):
        """What the metrics' ``update`` receives."""
        return logits, labels

    def metrics(self):
        """A torchmetrics MetricCollection keyed by metric name (DDP-safe)."""
        raise TypeError(f"{type(self).__name__} must define metrics()")

    def loader(self, dataset, train: bool, batch_size: int | None = None, **kwargs) -> DataLoader:
        """A DataLoader with the task's workers; shuffled for training unless a sampler is given."""
        kwargs.setdefault("shuffle", train and "sampler" not in kwargs)
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def require_data_dir(self, *children: str) -> Path:
        """``task.data_dir`` as a Path that exists and holds ``children``, or a one-line error."""
        d = self.cfg["data_dir"]
        if not d:
            raise ConfigError(f"task.data_dir is not set: pass task.data_dir=<dir with {', '.join(children)}>")
        path = Path(str(d)).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"task.data_dir={path} does not exist: pass task.data_dir=<dir with {', '.join(children)}>"
            )
        missing = [c for c in children if not (path / c).exists()]
        if missing:
            raise ConfigError(f"task.data_dir={path} has no {', '.join(missing)}: expected {', '.join(children)} in it")
        return path


class DictDataset(Dataset):
    """Tensors → dict samples, the batch format recipes expect (``labels`` + model inputs)."""

    def __init__(self, **tensors: torch.Tensor):
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.tensors.items()}


def eval_splits(task) -> list[str]:
    """The task's evaluation splits; one (its validation set) when it names none."""
    return list(getattr(task, "eval_splits", None) or ["val"])


def split_prefixes(splits: list[str]) -> list[str]:
    """``["val", "test"]`` → ``["", "test_"]``; ``["dev-clean", "test-clean"]`` → ``["", "test_clean_"]``."""
    return [""] + [re.sub(r"\W+", "_", s).strip("_") + "_" for s in splits[1:]]


def prefixed_directions(directions: dict[str, str], splits: list[str]) -> dict[str, str]:
    """``{"mae": "down"}`` on every split: ``{"mae": "down", "test_mae": "down"}``."""
    return {p + name: d for p in split_prefixes(splits) for name, d in directions.items()}
