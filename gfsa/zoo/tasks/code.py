"""CodeXGLUE code tasks: defect detection (Devign) and clone detection (BigCloneBench).

Read as CodeT5's fine-tuning code (which the official GFSA code runs) reads them: whitespace in a
function is collapsed (``' '.join(func.split())``), each function is truncated to
``task.max_length`` tokens, clone pairs whose ids are not in ``data.jsonl`` are skipped, and clone
validation uses a 10% sample of the validation pairs (``task.val_fraction``; fixed sample; the test
pairs are always scored in full). Both papers report test numbers at the best validation epoch, so
``task.eval_splits`` (default ``[valid, test]``) are scored together: ``val/acc`` selects the epoch,
``val/test_acc`` is the number to compare.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score, BinaryPrecision, BinaryRecall

from gfsa.utils.errors import ConfigError
from gfsa.zoo.tasks.base import prefixed_directions
from gfsa.zoo.tasks.text import TextTask, TokenizedTexts, read_jsonl

EVAL_SPLITS = ("valid", "test")


def normalize(code: str) -> str:
    return " ".join(str(code).split())


class CodeTask(TextTask):
    """Binary classification of code, scored on every split of ``task.eval_splits`` (the first selects)."""

    num_classes = 2

    def __init__(self, cfg):
        super().__init__(cfg)
        self.eval_splits = [str(s) for s in cfg["eval_splits"]]
        splits = self.eval_splits
        if not splits or any(s not in EVAL_SPLITS for s in splits) or len(set(splits)) != len(splits):
            raise ConfigError(
                f"task.eval_splits={self.eval_splits}: use distinct names from {', '.join(EVAL_SPLITS)}, "
                "the first selects the epoch (e.g. [valid, test])"
            )
        self.directions = prefixed_directions(type(self).directions, self.eval_splits)

    def val_dataloader(self):
        return [self._loader(ds, False) for ds in self.val_sets]


class DefectTask(CodeTask):
    """Devign: ``train.jsonl`` / ``valid.jsonl`` / ``test.jsonl``, one ``{func, target, idx}`` per line."""

    directions: ClassVar[dict[str, str]] = {"acc": "up", "loss": "down"}

    def files(self) -> tuple[str, ...]:
        return "train.jsonl", *(f"{s}.jsonl" for s in self.eval_splits)

    def check(self) -> None:
        self.require_data_dir(*self.files())

    def _read(self, name: str) -> TokenizedTexts:
        path = self.require_data_dir(name) / name
        funcs, labels = [], []
        for n, record in read_jsonl(path, ("func", "target", "idx")):
            target = record["target"]
            if target not in (0, 1):  # also accepts true/false
                raise ConfigError(f"{path} line {n}: target {target!r} is not 0 or 1")
            funcs.append(normalize(record["func"]))
            labels.append(int(target))
        if not funcs:
            raise ConfigError(f"{path} has no examples")
        return TokenizedTexts.encode(self.tokenizer, funcs, None, self.max_length, torch.tensor(labels))

    def read(self) -> None:
        train, *evals = self.files()
        self.train_set, self.val_sets = self._read(train), [self._read(name) for name in evals]

    def metric_inputs(self, logits, labels):
        return logits.argmax(-1), labels

    def metrics(self) -> MetricCollection:
        return MetricCollection({"acc": BinaryAccuracy()})


class PairDataset(Dataset):
    """Pairs of function indices into one tokenized function table; samples hold both sequences."""

    def __init__(self, functions: TokenizedTexts, pairs: torch.Tensor, labels: torch.Tensor):
        self.functions, self.pairs, self.labels = functions, pairs, labels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        a, b = (self.functions.tokens(int(j)) for j in self.pairs[i])
        return {k: (a[k], b[k]) for k in a} | {"labels": self.labels[i]}


class CloneTask(CodeTask):
    """BigCloneBench: ``data.jsonl`` (``{func, idx}``) and ``train.txt`` / ``valid.txt`` / ``test.txt``
    with ``idx1<TAB>idx2<TAB>label`` lines; precision, recall and F1 of the clone class."""

    head = "pair"
    primary_metric = "f1"
    directions: ClassVar[dict[str, str]] = {"f1": "up", "precision": "up", "recall": "up", "loss": "down"}

    def files(self) -> tuple[str, ...]:
        return "data.jsonl", "train.txt", *(f"{s}.txt" for s in self.eval_splits)

    def check(self) -> None:
        self.require_data_dir(*self.files())

    def _pairs(self, path: Path, index: dict[str, int], fraction: float) -> PairDataset:
        rows, skipped = [], 0
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = [p.strip() for p in line.rstrip("\r\n").split("\t")]
                if len(parts) != 3 or parts[2] not in ("0", "1"):
                    raise ConfigError(f"{path} line {n}: expected 'idx1<TAB>idx2<TAB>label' with label 0 or 1")
                if parts[0] not in index or parts[1] not in index:
                    skipped += 1  # as CodeXGLUE's and CodeT5's readers do
                    continue
                rows.append((index[parts[0]], index[parts[1]], int(parts[2])))
        if skipped:
            warnings.warn(f"{path}: skipped {skipped} pairs whose function ids are not in data.jsonl", stacklevel=2)
        if fraction < 1.0:  # a fixed sample: every run is scored on the same pairs
            rows = random.Random(0).sample(rows, max(1, int(len(rows) * fraction))) if rows else rows
        if not rows:
            raise ConfigError(f"{path} has no pairs of functions listed in data.jsonl")
        t = torch.tensor(rows, dtype=torch.long)
        return PairDataset(self.functions, t[:, :2], t[:, 2])

    def read(self) -> None:
        data, train, *_ = self.files()
        root = self.require_data_dir(*self.files())
        index, funcs = {}, []
        for _, record in read_jsonl(root / data, ("func", "idx")):
            index[str(record["idx"])] = len(funcs)
            funcs.append(normalize(record["func"]))
        self.functions = TokenizedTexts.encode(self.tokenizer, funcs, None, self.max_length)
        self.train_set = self._pairs(root / train, index, float(self.cfg["train_fraction"]))
        val_fraction = float(self.cfg["val_fraction"])  # a sample of valid only: test is scored in full
        self.val_sets = [
            self._pairs(root / f"{s}.txt", index, val_fraction if s == "valid" else 1.0) for s in self.eval_splits
        ]

    def metric_inputs(self, logits, labels):
        return logits.softmax(-1)[:, 1], labels  # clone if p(clone) > 0.5, as the official evaluation

    def metrics(self) -> MetricCollection:
        return MetricCollection({"precision": BinaryPrecision(), "recall": BinaryRecall(), "f1": BinaryF1Score()})
