"""LibriSpeech ASR (WER; decoding with beam search, CTC and LM fusion) and its language model's text.

``task.data_dir`` holds the splits as released (the reader, filterbanks, augmentation and batching are in
:mod:`gfsa.zoo.tasks.speech_data`); every file problem is found before training starts and named in one line.
``task=librispeech_lm`` reads the language model's text: the LibriSpeech LM corpus
(``librispeech-lm-norm.txt``, one normalised sentence per line) plus the training transcripts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.text import WordErrorRate

from gfsa.utils.errors import ConfigError
from gfsa.zoo.tasks.base import Task, prefixed_directions
from gfsa.zoo.tasks.speech_data import (
    SAMPLE_RATE,
    TOKENIZERS,
    BatchedDataset,
    DurationBatches,
    FilterbankExtractor,
    SpeechDataset,
    Tokenizer,
    as_is,
    collate_speech,
    read_transcripts,
    scan_split,
    spec_augment,
)

log = logging.getLogger(__name__)

DECODING_KEYS = ("beam_size", "ctc_weight", "lm_weight", "temperature", "lm_temperature")


class LibriSpeechTask(Task):
    """Train on ``task.train_splits``; score WER on ``task.eval_splits`` (the first selects, e.g. dev-clean).

    Validation also scores the decoder's teacher-forced token accuracy (``acc``, SpeechBrain's ACC, which ranks
    its checkpoints); WER decoding runs every ``task.decode_every`` validations (SpeechBrain: every 10th).
    After training, ``task.average_checkpoints`` > 0 averages the best epochs by ``task.average_by`` and/or
    ``task.test_decoding`` decodes with the test settings (beam, CTC, LM fusion with ``task.lm_checkpoint``):
    that final evaluation is the record's last entry (gfsa/zoo/recipes/asr.py)."""

    recipe = "asr"
    primary_metric = "wer"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.train_splits = list(cfg.train_splits)
        self.eval_splits = list(cfg.eval_splits)
        self.directions = prefixed_directions({"wer": "down", "loss": "down", "acc": "up"}, self.eval_splits)
        self.eval_batch_size = int(cfg["eval_batch_size"])
        self.num_mel_bins = int(cfg["num_mel_bins"])
        self.specaugment = dict(cfg["specaugment"])
        self.speeds = [int(v) for v in cfg["speed_perturb"]]
        self.dynamic = dict(cfg["dynamic_batching"])
        self.test_decoding = None if cfg["test_decoding"] is None else dict(cfg["test_decoding"])
        self.data_report: dict = {}

    def check(self) -> None:
        kind = self.cfg["tokenizer"]
        if kind not in TOKENIZERS:
            raise ConfigError(f"task.tokenizer={kind}: choose {' or '.join(TOKENIZERS)}")
        if not self.eval_splits or not self.train_splits:
            raise ConfigError("task.train_splits and task.eval_splits must each name at least one split")
        if any(v < 1 for v in self.speeds):
            raise ConfigError(f"task.speed_perturb={self.speeds}: speeds are percentages > 0, e.g. [95, 100, 105]")
        if self.dynamic["max_seconds"] is not None and float(self.dynamic["max_seconds"]) <= 0:
            raise ConfigError(f"task.dynamic_batching.max_seconds={self.dynamic['max_seconds']}: must be > 0 (or null)")
        if int(self.cfg["decode_every"]) < 1 or int(self.cfg["average_checkpoints"]) < 0:
            raise ConfigError("task.decode_every must be >= 1 and task.average_checkpoints >= 0")
        if self.cfg["average_by"] not in ("acc", "wer", "loss"):
            raise ConfigError(f"task.average_by={self.cfg['average_by']}: choose acc (SpeechBrain's), wer or loss")
        d = self.test_decoding
        if d is not None:
            missing = [k for k in DECODING_KEYS if k not in d]
            if missing:
                raise ConfigError(f"task.test_decoding lacks {', '.join(missing)}: give {', '.join(DECODING_KEYS)}")
            if float(d["lm_weight"]) > 0 and not self.cfg["lm_checkpoint"]:
                raise ConfigError(
                    f"task.test_decoding.lm_weight={d['lm_weight']} fuses a language model: train one "
                    "(python run.py preset=speech/transformer_lm task.data_dir=… task.lm_corpus=…) and pass "
                    "task.lm_checkpoint=<its run dir>, or set task.test_decoding.lm_weight=0 (no LM, unlike the paper)"
                )
        self.require_data_dir(*self.train_splits, *self.eval_splits)

    def load(self) -> None:
        root = self.require_data_dir(*self.train_splits, *self.eval_splits)
        utts = {s: scan_split(root, s) for s in dict.fromkeys(self.train_splits + self.eval_splits)}
        off = [u for us in utts.values() for u in us if u.sample_rate != SAMPLE_RATE]
        if off and not self.cfg["resample"]:
            raise ConfigError(
                f"{off[0].path}: {off[0].sample_rate} Hz audio, expected {SAMPLE_RATE}: "
                "set task.resample=true (scipy polyphase resampling) or convert the files"
            )
        if off:
            log.warning(
                "%d audio file(s) are not %d Hz and are resampled with scipy.signal.resample_poly, e.g. %s (%d Hz)",
                len(off),
                SAMPLE_RATE,
                off[0].path,
                off[0].sample_rate,
            )
        train = [u for s in self.train_splits for u in utts[s]]
        self.tokenizer = Tokenizer(str(self.cfg["tokenizer"]), [u.text for u in train], int(self.cfg["vocab_size"]))
        self.vocab_size = self.tokenizer.vocab_size
        self.data_report = {"resampled_files": len(off), "tokenizer": self.tokenizer.digest}
        extractor = FilterbankExtractor(self.num_mel_bins, float(self.cfg["window_ms"]), int(self.cfg["n_fft"]))
        self.train_set = SpeechDataset(train, self.tokenizer, extractor, self.speeds)
        # Evaluation in length order: batches of similar length pad less (WER does not depend on order).
        self.eval_sets = [
            SpeechDataset(sorted(utts[s], key=lambda u: u.seconds), self.tokenizer, extractor) for s in self.eval_splits
        ]

    @property
    def samples_per_step(self) -> int | None:
        return self.batch_size if self.dynamic["max_seconds"] is None else None

    def train_dataloader(self) -> DataLoader:
        d = self.dynamic
        if d["max_seconds"] is None:
            return self.loader(self.train_set, True, collate_fn=collate_speech)
        t = self.trainer
        world, rank = (t.world_size, t.global_rank) if t is not None else (1, 0)
        seconds = [u.seconds for u in self.train_set.utts]
        sampler = DurationBatches(
            seconds, d["max_seconds"], d["max_items"], d["buckets"], seed=0, rank=rank, world=world
        )
        return DataLoader(
            BatchedDataset(self.train_set, collate_speech),
            batch_size=None,
            sampler=sampler,
            collate_fn=as_is,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self.loader(d, False, self.eval_batch_size, collate_fn=collate_speech) for d in self.eval_sets]

    def train_batch(self, batch: dict) -> dict:
        s = self.specaugment
        if not (s["freq_masks"] or s["time_masks"] or s["time_warp"]):
            return batch
        feats = spec_augment(
            batch["features"],
            batch["feature_mask"],
            int(s["freq_masks"]),
            int(s["freq_width"]),
            int(s["time_masks"]),
            int(s["time_width"]),
            int(s["time_warp"]),
        )
        return {**batch, "features": feats}

    def metrics(self) -> MetricCollection:
        return MetricCollection({"wer": WordErrorRate()})

    def accuracy_metrics(self) -> MetricCollection:
        """The decoder's teacher-forced token accuracy (``</s>`` included), SpeechBrain's ACC."""
        return MetricCollection({"acc": MeanMetric()})


class LineOffsets:
    """Byte offsets of the lines of a large text file (the LM corpus: 40M lines, 4 GB), found with numpy in
    chunks; lines are read on demand, each process with its own file handle."""

    def __init__(self, path: str, chunk: int = 1 << 26):
        self.path = path
        starts = [np.zeros(1, np.int64)]
        size = 0
        with open(path, "rb") as f:
            while block := f.read(chunk):
                starts.append(np.flatnonzero(np.frombuffer(block, np.uint8) == 10).astype(np.int64) + size + 1)
                size += len(block)
        offsets = np.concatenate(starts)
        self.offsets = np.append(offsets[offsets < size], size)  # line i: [offsets[i], offsets[i+1])
        self._handle = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        if self._handle is None or self._handle[0] != os.getpid():
            self._handle = (os.getpid(), open(self.path, "rb"))  # noqa: SIM115 (one handle per worker process)
        f = self._handle[1]
        f.seek(int(self.offsets[i]))
        return f.read(int(self.offsets[i + 1] - self.offsets[i])).decode("utf-8", "replace").strip()

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}


class SentenceDataset(Dataset):
    """Sentences (transcripts in memory, then the corpus lines) as ``<s> tokens </s>``, cut at ``max_tokens``."""

    def __init__(self, texts: list[str], corpus: LineOffsets | None, tokenizer: Tokenizer, max_tokens: int):
        self.texts, self.corpus, self.tokenizer, self.max_tokens = texts, corpus, tokenizer, max_tokens

    def __len__(self) -> int:
        return len(self.texts) + (len(self.corpus) if self.corpus is not None else 0)

    def __getitem__(self, i: int) -> dict:
        text = self.texts[i] if i < len(self.texts) else self.corpus[i - len(self.texts)]
        ids = [Tokenizer.BOS, *self.tokenizer.encode(text), Tokenizer.EOS][: self.max_tokens]
        return {"input_ids": torch.tensor(ids, dtype=torch.long)}


def collate_sentences(items: list[dict]) -> dict:
    ids = pad_sequence([it["input_ids"] for it in items], batch_first=True, padding_value=Tokenizer.PAD)
    lengths = torch.tensor([len(it["input_ids"]) for it in items])
    mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    return {"input_ids": ids, "attention_mask": mask.long(), "labels": ids.masked_fill(~mask, -100)}


class LibriSpeechLMTask(Task):
    """The language model for shallow fusion: the LibriSpeech LM corpus (``task.lm_corpus``) plus the
    transcripts of ``task.train_splits``, which also train the tokenizer, so it is the ASR task's (same splits,
    same ``task.vocab_size``: checked by its digest when an ASR run loads the LM). Validation perplexity on the
    transcripts of ``task.eval_splits``."""

    recipe = "lm"
    primary_metric = "perplexity"
    directions: ClassVar[dict[str, str]] = {"perplexity": "down", "loss": "down"}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.train_splits = list(cfg.train_splits)
        self.eval_splits = list(cfg.eval_splits)
        self.eval_batch_size = int(cfg["eval_batch_size"])
        self.data_report: dict = {}

    def check(self) -> None:
        if self.cfg["tokenizer"] not in TOKENIZERS:
            raise ConfigError(f"task.tokenizer={self.cfg['tokenizer']}: choose {' or '.join(TOKENIZERS)}")
        corpus = self.cfg["lm_corpus"]
        if corpus and not Path(str(corpus)).expanduser().is_file():
            raise ConfigError(
                f"task.lm_corpus={corpus}: no such file; pass the LibriSpeech LM text (librispeech-lm-norm.txt) or null"
            )
        if int(self.cfg["max_tokens"]) < 2:
            raise ConfigError(f"task.max_tokens={self.cfg['max_tokens']}: must be >= 2 (<s> and </s>)")
        self.require_data_dir(*self.train_splits, *self.eval_splits)

    def load(self) -> None:
        root = self.require_data_dir(*self.train_splits, *self.eval_splits)
        train = [t for s in self.train_splits for t in read_transcripts(root, s)]
        self.tokenizer = Tokenizer(str(self.cfg["tokenizer"]), train, int(self.cfg["vocab_size"]))
        self.vocab_size = self.tokenizer.vocab_size
        corpus = LineOffsets(str(Path(str(self.cfg["lm_corpus"])).expanduser())) if self.cfg["lm_corpus"] else None
        self.data_report = {"tokenizer": self.tokenizer.digest, "corpus_lines": len(corpus) if corpus else 0}
        n = int(self.cfg["max_tokens"])
        self.train_set = SentenceDataset(train, corpus, self.tokenizer, n)
        self.val_set = SentenceDataset(
            [t for s in self.eval_splits for t in read_transcripts(root, s)], None, self.tokenizer, n
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, True, collate_fn=collate_sentences)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set, False, self.eval_batch_size, collate_fn=collate_sentences)

    def metrics(self) -> MetricCollection:
        from gfsa.zoo.tasks.lm import TokenNLL

        return MetricCollection({"perplexity": TokenNLL(exp=True), "loss": TokenNLL()}, compute_groups=False)
