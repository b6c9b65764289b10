"""GLUE (CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE) with GLUE's dev-set metrics.

Data: the hub dataset ``nyu-mll/glue`` when ``task.data_dir`` is null, or a folder in the official
GLUE TSV layout (``<data_dir>/CoLA/train.tsv`` or the task folder itself). TSVs are read the way
transformers' GLUE processors read them (tab-separated, no quoting), with the hub's label ids.
MNLI is scored on dev_matched and dev_mismatched in one validation pass: its labels carry the
set each example came from (column 1), so the classification recipe needs no second dataloader.
"""

from __future__ import annotations

import csv
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score, BinaryMatthewsCorrCoef, MulticlassAccuracy
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from gfsa.utils.errors import ConfigError, first_line
from gfsa.zoo.tasks.text import TextTask, TokenizedTexts

csv.field_size_limit(sys.maxsize)  # a few GLUE sentences are long


@dataclass(frozen=True)
class GlueSpec:
    """How one GLUE task is stored: TSV folder and columns (names, or indices without a header),
    hub columns, label names (TSV text → hub id; None: the TSV holds the number) and metrics."""

    folder: str
    text: tuple
    label: str | int
    hub_text: tuple
    labels: tuple | None = None
    header: bool = True
    val_files: tuple = ("dev.tsv",)
    hub_val: tuple = ("validation",)
    metrics: tuple = ("acc",)
    skip_short_rows: bool = False  # QQP's TSVs hold a few rows with missing fields; transformers skips them


NLI = ("entailment", "not_entailment")
SPECS = {
    # CoLA has no header: source, label, original judgement, sentence.
    "cola": GlueSpec("CoLA", (3,), 1, ("sentence",), header=False, metrics=("mcc",)),
    "sst2": GlueSpec("SST-2", ("sentence",), "label", ("sentence",)),
    "mrpc": GlueSpec("MRPC", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"), metrics=("f1", "acc")),
    "qqp": GlueSpec(
        "QQP",
        ("question1", "question2"),
        "is_duplicate",
        ("question1", "question2"),
        metrics=("f1", "acc"),
        skip_short_rows=True,
    ),
    "stsb": GlueSpec(
        "STS-B", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), metrics=("spearman", "pearson")
    ),
    "mnli": GlueSpec(
        "MNLI",
        ("sentence1", "sentence2"),
        "gold_label",
        ("premise", "hypothesis"),
        labels=("entailment", "neutral", "contradiction"),
        val_files=("dev_matched.tsv", "dev_mismatched.tsv"),
        hub_val=("validation_matched", "validation_mismatched"),
        metrics=("acc_m", "acc_mm"),
    ),
    "qnli": GlueSpec("QNLI", ("question", "sentence"), "label", ("question", "sentence"), labels=NLI),
    "rte": GlueSpec("RTE", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), labels=NLI),
}


class SubsetAccuracy(Metric):
    """Accuracy over the examples of one validation set (MNLI matched = 0, mismatched = 1)."""

    full_state_update = False

    def __init__(self, subset: int):
        super().__init__()
        self.subset = subset
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, subset: torch.Tensor) -> None:
        keep = subset == self.subset
        self.correct += (preds[keep] == target[keep]).sum()
        self.total += keep.sum()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class GlueTask(TextTask):
    def __init__(self, cfg):
        super().__init__(cfg)
        name = str(cfg.glue_task)
        if name not in SPECS:
            raise ConfigError(f"task.glue_task={name}: choose one of {', '.join(SPECS)}")
        self.glue_task, self.spec = name, SPECS[name]
        self.regression = name == "stsb"
        self.num_classes = 1 if self.regression else 2 if self.spec.labels is None else len(self.spec.labels)
        self.primary_metric = self.spec.metrics[0]
        self.directions = {m: "up" for m in self.spec.metrics} | {"loss": "down"}

    def _folder_files(self) -> list[str]:
        """Paths of the split files under task.data_dir (GLUE root or the task's own folder)."""
        root = self.require_data_dir()
        sub = self.spec.folder if (root / self.spec.folder).is_dir() else "."
        return [f"{sub}/{f}" if sub != "." else f for f in ("train.tsv", *self.spec.val_files)]

    def check(self) -> None:
        if self.cfg["data_dir"]:
            self.require_data_dir(*self._folder_files())

    # ------------------------------------------------------------------ reading

    def _label(self, value: str, where: str):
        try:
            if self.regression:
                return float(value)
            if self.spec.labels is not None:
                return self.spec.labels.index(value)
            return int(value)
        except ValueError:
            want = "a number" if self.regression else " | ".join(self.spec.labels or ("0", "1"))
            raise ConfigError(f"{where}: label {value!r} is not {want}") from None

    def read_tsv(self, relative: str) -> tuple[list, list[str] | None, list]:
        """Text columns and labels of one GLUE TSV, named or indexed as the task's layout says."""
        path = self.require_data_dir() / relative
        spec = self.spec
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            columns = [*spec.text, spec.label]
            if spec.header:
                header = next(rows, None) or []
                missing = [c for c in columns if c not in header]
                if missing:
                    raise ConfigError(f"{path}: header lacks {', '.join(missing)} (GLUE {spec.folder} layout)")
                columns = [header.index(c) for c in columns]
            texts = [[] for _ in spec.text]
            labels, skipped = [], 0
            for n, row in enumerate(rows, 2 if spec.header else 1):
                if not row:
                    continue
                if len(row) <= max(columns) and spec.skip_short_rows:
                    skipped += 1
                    continue
                if len(row) <= max(columns):
                    raise ConfigError(
                        f"{path} line {n}: {len(row)} tab-separated fields, the GLUE layout needs {max(columns) + 1}"
                    )
                for out, c in zip(texts, columns, strict=False):
                    out.append(row[c])
                labels.append(self._label(row[columns[-1]], f"{path} line {n}"))
        if skipped:
            warnings.warn(
                f"{path}: skipped {skipped} rows with missing fields (as transformers' processor)", stacklevel=2
            )
        if not labels:
            raise ConfigError(f"{path} has no examples")
        return texts[0], texts[1] if len(texts) > 1 else None, labels

    def _read_hub(self, split: str) -> tuple[list, list[str] | None, list]:
        import datasets

        from gfsa.zoo.hub import use_hub

        path = str(self.cfg["hub_path"])
        use_hub()
        try:
            ds = datasets.load_dataset(path, self.glue_task, split=split)
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: script-only datasets (datasets >= 4)
            raise ConfigError(
                f"cannot load {path}/{self.glue_task} from the Hugging Face hub ({first_line(e)}): pass task.data_dir=<GLUE folder with {self.spec.folder}/train.tsv>"
            ) from None
        texts = [list(ds[c]) for c in self.spec.hub_text]
        return texts[0], texts[1] if len(texts) > 1 else None, list(ds["label"])

    def _encode(self, first, second, labels) -> TokenizedTexts:
        labels = torch.tensor(labels, dtype=torch.float32 if self.regression else torch.long)
        return TokenizedTexts.encode(self.tokenizer, first, second, self.max_length, labels)

    def read(self) -> None:
        if self.cfg["data_dir"]:
            files = self._folder_files()
            parts = [self.read_tsv(f) for f in files]
        else:
            parts = [self._read_hub(s) for s in ("train", *self.spec.hub_val)]
        # MNLI has two validation sets scored in one pass: labels become (label, set index).
        tag = len(parts) > 2

        def tagged(part, i):
            return (*part[:2], [(y, i) for y in part[2]]) if tag else part

        self.train_set = self._encode(*tagged(parts[0], 0))
        val = [tagged(p, i) for i, p in enumerate(parts[1:])]
        second = None if val[0][1] is None else [t for p in val for t in p[1]]
        self.val_set = self._encode([t for p in val for t in p[0]], second, [y for p in val for y in p[2]])

    # ------------------------------------------------------------------ scoring

    def _split(self, labels):
        return (labels[:, 0], labels[:, 1]) if labels.ndim == 2 else (labels, None)

    def loss(self, logits, labels):
        target, _ = self._split(labels)
        if self.regression:
            return F.mse_loss(logits.squeeze(-1), target.float())
        return F.cross_entropy(logits, target)

    def metric_inputs(self, logits, labels):
        target, subset = self._split(labels)
        if self.regression:
            return logits.squeeze(-1).float(), target.float()
        preds = logits.argmax(-1)
        return (preds, target) if subset is None else (preds, target, subset)

    def metrics(self) -> MetricCollection:
        make = {
            "acc": lambda: (
                BinaryAccuracy() if self.num_classes == 2 else MulticlassAccuracy(self.num_classes, average="micro")
            ),
            "mcc": BinaryMatthewsCorrCoef,
            "f1": BinaryF1Score,
            "pearson": PearsonCorrCoef,
            "spearman": SpearmanCorrCoef,
            "acc_m": lambda: SubsetAccuracy(0),
            "acc_mm": lambda: SubsetAccuracy(1),
        }
        # compute_groups=False: the MNLI subset metrics must not be merged on equal first states.
        return MetricCollection({m: make[m]() for m in self.spec.metrics}, compute_groups=False)
