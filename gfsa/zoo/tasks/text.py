"""What the text tasks (GLUE, language modelling, code) share: the tokenizer of the backbone's
checkpoint, compact storage of tokenized splits, and padding to the longest sequence per batch.

Token ids live in flat int32 arrays with offsets: Python lists of ints take ~30× the memory
(MNLI's 393k pairs would need gigabytes). Batches are padded on the right to their longest
sequence, as the official scripts' ``DataCollatorWithPadding`` does; with key-padding masks the
attention (GFSA's A² included) of real tokens does not depend on the padding length.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from gfsa.utils.errors import ConfigError
from gfsa.zoo.tasks.base import Task

# Per-token model inputs the tokenizer returns; the attention mask is rebuilt from lengths.
TOKEN_FIELDS = ("input_ids", "token_type_ids")
CHUNK = 10_000  # examples tokenized per call: bounds the temporary Python lists


class TokenizedTexts(Dataset):
    """Variable-length token sequences (flat int32 + offsets), with optional per-example labels."""

    def __init__(self, fields: dict[str, np.ndarray], offsets: np.ndarray, labels: torch.Tensor | None = None):
        self.fields, self.offsets, self.labels = fields, offsets, labels

    @classmethod
    def encode(cls, tokenizer, first: Sequence[str], second: Sequence[str] | None, max_length: int, labels=None):
        """Tokenize texts (or text pairs, truncated longest-first) in chunks."""
        parts: dict[str, list[np.ndarray]] = {}
        lengths: list[int] = []
        for start in range(0, len(first), CHUNK):
            a = list(first[start : start + CHUNK])
            b = None if second is None else list(second[start : start + CHUNK])
            enc = tokenizer(a, b, truncation=True, max_length=max_length)
            for key in TOKEN_FIELDS:
                if key in enc:
                    parts.setdefault(key, []).append(np.fromiter(itertools.chain.from_iterable(enc[key]), np.int32))
            lengths.extend(len(ids) for ids in enc["input_ids"])
        fields = {k: np.concatenate(v) if v else np.zeros(0, np.int32) for k, v in parts.items()}
        return cls(fields, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), labels)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def tokens(self, i: int) -> dict[str, torch.Tensor]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return {k: torch.from_numpy(v[lo:hi].astype(np.int64)) for k, v in self.fields.items()}

    def __getitem__(self, i: int) -> dict:
        sample = self.tokens(i)
        if self.labels is not None:
            sample["labels"] = self.labels[i]
        return sample


class PadCollator:
    """Pads token fields to the batch's longest sequence and adds ``attention_mask``. A sample whose
    token fields are tuples of sequences (pairs) gives ``(batch, per_sample, length)`` tensors."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[dict]) -> dict:
        def seqs(key):
            return [t for s in samples for t in (s[key] if isinstance(s[key], tuple) else (s[key],))]

        ids = seqs("input_ids")
        per = len(ids) // len(samples)
        lengths = torch.tensor([len(t) for t in ids])
        width = int(lengths.max())
        shape = (len(samples), per, width) if per > 1 else (len(samples), width)
        out = {
            "input_ids": pad_sequence(ids, batch_first=True, padding_value=self.pad_token_id).view(shape),
            "attention_mask": (torch.arange(width) < lengths[:, None]).long().view(shape),
        }
        for key in samples[0]:
            if key == "input_ids":
                continue
            if key in TOKEN_FIELDS:
                out[key] = pad_sequence(seqs(key), batch_first=True, padding_value=0).view(shape)
            else:
                out[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
        return out


class TextTask(Task):
    """A task on tokenized text. ``task.tokenizer`` (default: ``backbone.pretrained``) names the
    tokenizer; ``head`` tells the backbone what to return (sequence | pair | causal_lm)."""

    head = "sequence"
    length_option = "task.max_length"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.max_length = int(cfg[self.length_option.removeprefix("task.")])
        self.eval_batch_size = int(cfg["eval_batch_size"])

    def load(self) -> None:
        from gfsa.zoo.hub import load_tokenizer

        source = self.cfg["tokenizer"]
        if not isinstance(source, str) or source.lower() in ("", "true", "false"):
            raise ConfigError(
                f"task {self.cfg.name} reads text: pick a Hugging Face backbone (bert, roberta, gpt2, codet5_small, ...) "
                f"or set task.tokenizer=<hub name or local dir> (got {source!r})"
            )
        self.tokenizer = load_tokenizer(source)
        self.read()

    def read(self) -> None:
        """Read and tokenize the splits into ``train_set`` and ``val_set``."""
        raise TypeError(f"{type(self).__name__} must define read()")

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        collate = PadCollator(self.tokenizer.pad_token_id or 0) if self.head != "causal_lm" else None
        return self.loader(ds, train, None if train else self.eval_batch_size, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def data_file(self, name: str, *candidates: str) -> Path:
        """The first of ``candidates`` (relative paths) under ``task.data_dir``, or a one-line error."""
        root = self.require_data_dir()
        for c in candidates:
            if (root / c).is_file():
                return root / c
        raise ConfigError(
            f"task.data_dir={root} has no {' or '.join(candidates)} (the {name} split): "
            f"see docs/nlp_code.md for the layout"
        )


def read_jsonl(path: Path, fields: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """(line number, record) per non-empty line; a line that is not a JSON object with ``fields``
    is a one-line ConfigError naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} line {n} is not JSON ({e.msg}): expected one JSON object per line") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path} line {n} is not a JSON object: expected {{{', '.join(fields)}}}")
            missing = [k for k in fields if k not in record]
            if missing:
                raise ConfigError(f"{path} line {n} lacks {', '.join(missing)}: each line needs {', '.join(fields)}")
            yield n, record
