"""Causal language modelling (PTB, WikiText-2, WikiText-103) as transformers' ``run_clm`` does it,
which the official GPT-2 + GFSA script runs: every line is tokenized, the token streams are
concatenated and cut into blocks of ``task.block_size`` tokens (the remainder dropped), and the
validation perplexity is exp(mean next-token loss).

Data: the hub (``task.hub``: path, config name, text column) when ``task.data_dir`` is null, or
the raw text files (``task.files``: the first existing candidate per split). ``task.lines`` makes
local files read like the hub datasets: ``strip`` (ptb_text_only strips every line) or ``keep``
(wikitext keeps each line's newline and turns blank lines into "").
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchmetrics import Metric, MetricCollection

from gfsa.utils.errors import ConfigError, first_line
from gfsa.zoo.tasks.text import CHUNK, TextTask

LINE_MODES = ("strip", "keep")


class TokenNLL(Metric):
    """Mean next-token loss over every token seen by every process; ``exp=True``: perplexity.

    Sums, not per-batch means: the result does not depend on batch sizes or the number of devices.

    Not torchmetrics' ``Perplexity``: it also sums −log p over tokens, but takes the [B, T, V] logits and
    computes softmax, then log, so a confidently wrong token (logit gap ~120) gives −log 0 = inf where the
    cross-entropy the loss uses (log-softmax) is finite (perplexity 1.3e52), and it holds B·T·V
    probabilities (GPT-2: 50257 per token) beside the logits. This metric takes the summed cross-entropy the
    recipe already computed, in float64 (WikiText-103's validation sums ~10⁶ nats).
    """

    full_state_update = False

    def __init__(self, exp: bool = False):
        super().__init__()
        self.exp = exp
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, count: torch.Tensor) -> None:
        self.total += nll_sum.detach().double()
        self.count += count.detach().long()

    def compute(self) -> torch.Tensor:
        mean = self.total / self.count.clamp(min=1)
        return mean.exp() if self.exp else mean


class Blocks(Dataset):
    """Token blocks stored as int32 (WikiText-103's 120M tokens: 0.5 GB, not 1 GB), served as int64."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        ids = self.blocks[i].long()
        return {"input_ids": ids, "labels": ids}


class CausalLMTask(TextTask):
    head = "causal_lm"
    recipe = "lm"
    primary_metric = "perplexity"
    directions: ClassVar[dict[str, str]] = {"perplexity": "down", "loss": "down"}
    length_option = "task.block_size"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.lines = str(cfg["lines"])
        if self.lines not in LINE_MODES:
            raise ConfigError(f"task.lines={self.lines}: choose one of {', '.join(LINE_MODES)}")

    def _path(self, split: str):
        return self.data_file(split, *self.cfg.files[split])

    def check(self) -> None:
        if self.cfg["data_dir"]:
            for split in ("train", "val"):
                self._path(split)

    def _read_lines(self, split: str) -> list[str]:
        if self.cfg["data_dir"]:
            with open(self._path(split), encoding="utf-8") as f:
                if self.lines == "strip":
                    return [line.strip() for line in f]
                return [line if line.strip() else "" for line in f]
        import datasets

        from gfsa.zoo.hub import use_hub

        hub = self.cfg.hub
        use_hub()
        try:
            ds = datasets.load_dataset(str(hub.path), hub["name"], split=str(hub.splits[split]))
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: script-only datasets (datasets >= 4)
            raise ConfigError(
                f"cannot load {hub.path}/{hub['name']} from the Hugging Face hub ({first_line(e)}): pass task.data_dir=<folder with {self.cfg.files[split][0]}>"
            ) from None
        return list(ds[str(hub.text_column)])

    def _blocks(self, lines: list[str], split: str) -> torch.Tensor:
        parts = []
        for start in range(0, len(lines), CHUNK):
            ids = self.tokenizer(lines[start : start + CHUNK], verbose=False)["input_ids"]
            parts.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32))
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        n = len(ids) // self.max_length
        if n == 0:
            raise ConfigError(
                f"the {split} split has {len(ids)} tokens, fewer than one block of task.block_size={self.max_length}: "
                "lower task.block_size"
            )
        return torch.from_numpy(ids[: n * self.max_length].reshape(n, self.max_length))

    def read(self) -> None:
        self.train_set, self.val_set = (Blocks(self._blocks(self._read_lines(s), s)) for s in ("train", "val"))

    def metrics(self) -> MetricCollection:
        return MetricCollection({"perplexity": TokenNLL(exp=True), "loss": TokenNLL()}, compute_groups=False)
