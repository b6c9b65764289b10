"""LRA ListOps (Tay et al., 2021; Nangia & Bowman, 2018): evaluate nested MAX/MIN/MED/SM expressions, 10 classes.

The data is generated locally with the rules of the LRA generator (``lra_benchmarks/data/listops.py``):
operators MAX, MIN, MED (median, truncated to an int) and SM (sum mod 10) over the digits 0–9; a node is
a digit with probability 0.25 (always at the maximum depth), otherwise an operator with 2…max_args
arguments; only trees whose length (digits + operators + closing brackets) lies strictly between
``min_length`` and ``max_length`` are kept, duplicates dropped; the first ``num_train`` are the training
split, then ``num_val``, then ``num_test``. Two deliberate differences: the generator draws from its own
seeded ``random.Random`` (deterministic per ``task.generate.seed``) and keeps duplicates out with an
ordered dict instead of LRA's ``set`` (whose order depends on Python's hash seed).

Generated splits are written in LRA's on-disk format (``basic_{train,val,test}.tsv``, a header row
``Source``/``Target``, then one expression and its value per line) to a cache directory
(``$GFSA_CACHE_DIR``, default ``~/.cache/gfsa``, then ``listops/<hash of the generator settings>``); with
``task.data_dir`` set, the TSVs found there are read instead (e.g. LRA's released ``listops-1000``).
Tokenization is LRA's: ``]`` becomes ``X``, parentheses are dropped, whitespace splits; sequences are
truncated to ``task.max_tokens`` (LRA: 2000) and padded per batch with a key-padding mask.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import statistics
from pathlib import Path

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from gfsa.utils.errors import ConfigError
from gfsa.zoo.tasks.base import Task
from gfsa.zoo.tasks.text import PadCollator, TokenizedTexts

MIN, MAX, MED, SUM_MOD, END = "[MIN", "[MAX", "[MED", "[SM", "]"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
VALUE_P = 0.25  # probability that a node below the maximum depth is a digit
SPLITS = ("train", "val", "test")
# Token ids: 0 pads (LRA's TokenTextEncoder also reserves 0), 1 for anything outside LRA's vocabulary.
VOCAB = ("<pad>", "<unk>", MIN, MAX, MED, SUM_MOD, "X", *map(str, range(10)))
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int):
    """(tree, length) as LRA builds it: an operator node is ``((((op, a1), a2), …), "]")``."""
    if depth >= max_depth or rng.random() > VALUE_P:
        return rng.choice(range(10)), 1
    length = 2  # the operator and its closing bracket
    values = []
    for _ in range(rng.randint(2, max_args)):
        sub, sub_length = generate_tree(rng, depth + 1, max_depth, max_args)
        values.append(sub)
        length += sub_length
    tree = (rng.choice(OPERATORS), values[0])
    for value in values[1:]:
        tree = (tree, value)
    return (tree, END), length


def to_string(tree) -> str:
    """LRA's source string: every pair in parentheses, e.g. ``( ( ( [MAX 2 ) 9 ) ] )``."""
    if isinstance(tree, (str, int)):
        return str(tree)
    return f"( {to_string(tree[0])} {to_string(tree[1])} )"


def to_value(tree):
    """The expression's value (LRA's evaluation of the nested pairs)."""
    if not isinstance(tree, tuple):
        return tree
    left, right = to_value(tree[0]), to_value(tree[1])
    if left in OPERATORS:
        return (left, [right])
    if right == END:
        op, args = left
        if op == MIN:
            return min(args)
        if op == MAX:
            return max(args)
        if op == MED:
            return int(statistics.median(args))
        return sum(args) % 10
    return (left[0], [*left[1], right])


def generate(
    seed: int,
    num_train: int,
    num_val: int,
    num_test: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> dict[str, list[tuple[str, int]]]:
    """``{split: [(source, target), …]}``, deterministic for a seed."""
    if not 0 <= min_length < max_length - 1:
        raise ConfigError(f"task.generate: need 0 <= min_length < max_length - 1 (got {min_length}, {max_length})")
    rng = random.Random(seed)
    total = num_train + num_val + num_test
    trees: dict = {}
    while len(trees) < total:
        tree, length = generate_tree(rng, 1, max_depth, max_args)
        if min_length < length < max_length:
            trees.setdefault(tree, None)
    rows = [(to_string(t), to_value(t)) for t in trees]
    bounds = np.cumsum([0, num_train, num_val, num_test])
    return {s: rows[bounds[i] : bounds[i + 1]] for i, s in enumerate(SPLITS)}


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    """LRA's file format (written atomically: a half-written cache is never read)."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["Source", "Target"])
        writer.writerows(rows)
    tmp.replace(path)


def read_tsv(path: Path) -> list[tuple[str, int]]:
    """(source, target) rows of an LRA ListOps TSV; a malformed file is a one-line ConfigError."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
            raise ConfigError(f"{path}: expected LRA's ListOps TSV with a 'Source<TAB>Target' header, got {header}")
        rows = []
        for n, row in enumerate(reader, 2):
            if not row:
                continue
            try:
                target = int(row[1])
            except (IndexError, ValueError):
                raise ConfigError(
                    f"{path} line {n}: expected '<expression><TAB><digit 0-9>', got {row!r:.80}"
                ) from None
            if not 0 <= target <= 9:
                raise ConfigError(f"{path} line {n}: target {target} is not a digit 0-9")
            rows.append((row[0], target))
    return rows


def tokenize(source: str) -> list[str]:
    """LRA's tokenization: ``]`` → ``X``, parentheses removed, split on whitespace."""
    return source.translate({ord("]"): "X", ord("("): None, ord(")"): None}).split()


def cache_dir(settings: dict) -> Path:
    """Where generated splits live: one folder per generator setting."""
    root = Path(os.environ.get("GFSA_CACHE_DIR") or Path.home() / ".cache" / "gfsa").expanduser()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return root / "listops" / digest


class ListOpsTask(Task):
    """Sequence classification; batches are ``input_ids``, ``attention_mask`` (B, L) and ``labels``."""

    num_classes = 10
    vocab_size = len(VOCAB)
    pad_token_id = 0

    def __init__(self, cfg):
        super().__init__(cfg)
        self.max_length = int(cfg.max_tokens)  # what a backbone's position table must cover
        self.eval_batch_size = int(cfg["eval_batch_size"])

    def check(self) -> None:
        if self.cfg["data_dir"]:
            self.require_data_dir("basic_train.tsv", "basic_val.tsv")
        if self.max_length < 1:
            raise ConfigError(f"task.max_tokens={self.max_length}: must be >= 1")

    def split_files(self) -> dict[str, Path]:
        """The TSVs to read: ``task.data_dir``'s, or the generated ones (generated now if missing)."""
        if self.cfg["data_dir"]:
            root = self.require_data_dir("basic_train.tsv", "basic_val.tsv")
            return {s: root / f"basic_{s}.tsv" for s in ("train", "val")}
        settings = {k: int(v) for k, v in dict(self.cfg.generate).items()}
        root = cache_dir(settings)
        files = {s: root / f"basic_{s}.tsv" for s in SPLITS}
        if not all(f.is_file() for f in files.values()):
            root.mkdir(parents=True, exist_ok=True)
            for split, rows in generate(**settings).items():
                write_tsv(files[split], rows)
        return files

    def encode(self, rows: list[tuple[str, int]]) -> TokenizedTexts:
        ids = [[TOKEN_ID.get(t, 1) for t in tokenize(src)][: self.max_length] for src, _ in rows]
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
        flat = np.fromiter((i for x in ids for i in x), dtype=np.int32, count=int(offsets[-1]))
        labels = torch.tensor([target for _, target in rows], dtype=torch.long)
        return TokenizedTexts({"input_ids": flat}, offsets, labels)

    def load(self) -> None:
        files = self.split_files()
        self.train_set = self.encode(read_tsv(files["train"]))
        self.val_set = self.encode(read_tsv(files["val"]))
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise ConfigError(f"ListOps: empty split in {files['train'].parent} (train and val need examples)")

    def train_dataloader(self):
        return self.loader(self.train_set, True, collate_fn=PadCollator(self.pad_token_id))

    def val_dataloader(self):
        return self.loader(self.val_set, False, self.eval_batch_size, collate_fn=PadCollator(self.pad_token_id))

    def metrics(self) -> MetricCollection:
        return MetricCollection({"acc": MulticlassAccuracy(num_classes=self.num_classes, average="micro")})
