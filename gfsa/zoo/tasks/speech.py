"""LibriSpeech ASR: the release's folder layout, 80-dim log-mel filterbanks, SpecAugment, WER.

``task.data_dir`` holds the splits as released: ``<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``
(one ``<utterance-id> <TEXT>`` per line) next to ``<utterance-id>.flac``. Filterbanks come from
transformers' ``Speech2TextFeatureExtractor`` (Kaldi-compatible fbank in numpy, utterance CMVN);
audio that is not 16 kHz is resampled with ``scipy.signal.resample_poly`` (or refused, with
``task.resample=false``). Tokens: characters, or a SentencePiece unigram model trained on the
training transcripts (the paper's recipes: 5000 units), cached by content under ``$GFSA_CACHE_DIR``.
Every file problem is found before training starts and named in one line.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MetricCollection
from torchmetrics.text import WordErrorRate
from transformers import Speech2TextFeatureExtractor

from gfsa.utils.errors import ConfigError
from gfsa.zoo import formats
from gfsa.zoo.tasks.base import Task, prefixed_directions

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
TOKENIZERS = ("char", "unigram")


@dataclass(frozen=True)
class Utterance:
    uid: str
    path: str
    text: str
    seconds: float
    sample_rate: int


class Tokenizer:
    """Text ↔ ids. Ids 0–3 are ``<blank/pad>``, ``<s>``, ``</s>``, ``<unk>`` for both kinds, so the CTC blank
    is the padding id and the decoder starts from ``<s>``."""

    PAD, BOS, EOS, UNK = formats.PAD, formats.BOS, formats.EOS, formats.UNK
    SPECIALS = 4

    def __init__(self, kind: str, texts: list[str], vocab_size: int = 5000):
        self.kind = kind
        if kind == "char":
            self.symbols = sorted(set("".join(texts)))
            self.ids = {c: i + self.SPECIALS for i, c in enumerate(self.symbols)}
            self.vocab_size = self.SPECIALS + len(self.symbols)
        else:
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_proto=_unigram_model(texts, vocab_size))
            self.vocab_size = self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if self.kind == "char":
            return [self.ids.get(c, self.UNK) for c in text]
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if int(i) >= self.SPECIALS or int(i) == self.UNK]
        if self.kind == "char":
            return "".join(self.symbols[i - self.SPECIALS] if i >= self.SPECIALS else "" for i in ids)
        return self.sp.decode(ids)


def _unigram_model(texts: list[str], vocab_size: int) -> bytes:
    """A SentencePiece unigram model of the transcripts, trained once and cached by content.

    Training is deterministic (one thread, every sentence), so DDP ranks and resumed runs agree;
    the cache file is written atomically.
    """
    import sentencepiece as spm

    key = hashlib.sha256(f"unigram-{vocab_size}\n".encode() + "\n".join(texts).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GFSA_CACHE_DIR", "~/.cache/gfsa")).expanduser() / "tokenizers"
    path = cache / f"unigram{vocab_size}-{key}.model"
    if path.exists():
        return path.read_bytes()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return buf.getvalue()


def scan_split(root: Path, split: str) -> list[Utterance]:
    """Utterances of one split from its transcripts; each line must have its FLAC file."""
    trans = sorted((root / split).glob("*/*/*.trans.txt"))
    if not trans:
        raise ConfigError(f"{root / split}: no <speaker>/<chapter>/*.trans.txt transcripts (the LibriSpeech layout)")
    utts = []
    for t in trans:
        for lineno, line in enumerate(t.read_text().splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if not text.strip():
                raise ConfigError(f"{t}:{lineno}: utterance {uid} has no text; expected '<utterance-id> <TEXT>'")
            audio = t.parent / f"{uid}.flac"
            if not audio.exists():
                raise ConfigError(
                    f"{t}:{lineno}: no audio file {audio.name} for utterance {uid}: restore it or delete the line"
                )
            try:
                info = soundfile.info(str(audio))
            except (RuntimeError, soundfile.LibsndfileError) as e:
                raise ConfigError(f"{audio}: cannot read the audio ({e}): replace the file") from None
            utts.append(
                Utterance(uid, str(audio), " ".join(text.split()), info.frames / info.samplerate, info.samplerate)
            )
    return utts


def read_audio(path: str) -> np.ndarray:
    """Mono float32 at 16 kHz (other rates resampled with scipy's polyphase filter)."""
    wav, sr = soundfile.read(path, dtype="float32", always_2d=True)
    wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = math.gcd(sr, SAMPLE_RATE)
        wav = resample_poly(wav, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return wav


class SpeechDataset(Dataset):
    def __init__(self, utts: list[Utterance], tokenizer: Tokenizer, extractor: Speech2TextFeatureExtractor):
        self.utts, self.tokenizer, self.extractor = utts, tokenizer, extractor

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> dict:
        u = self.utts[i]
        feats = self.extractor(read_audio(u.path), sampling_rate=SAMPLE_RATE, return_attention_mask=False)
        return {
            "features": torch.from_numpy(np.asarray(feats["input_features"][0], dtype=np.float32)),
            "tokens": torch.tensor(self.tokenizer.encode(u.text), dtype=torch.long),
            "text": u.text,
        }


def collate_speech(items: list[dict]) -> dict:
    """Padded features (B, T, mels) with a bool frame mask, padded token ids (0 = pad), reference texts."""
    feats = [it["features"] for it in items]
    lengths = torch.tensor([len(f) for f in feats])
    return {
        "features": pad_sequence(feats, batch_first=True),
        "feature_mask": torch.arange(int(lengths.max()))[None, :] < lengths[:, None],
        "tokens": pad_sequence([it["tokens"] for it in items], batch_first=True, padding_value=Tokenizer.PAD),
        "texts": [it["text"] for it in items],
    }


def spec_augment(
    x: torch.Tensor, mask: torch.Tensor, freq_masks: int, freq_width: int, time_masks: int, time_width: int
) -> torch.Tensor:
    """SpecAugment's frequency and time masking (no time warping): bands of random width up to the
    given maxima set to 0, the utterance mean after CMVN."""
    B, T, C = x.shape
    keep = torch.ones(B, T, C, dtype=torch.bool, device=x.device)
    lengths = mask.sum(-1)
    for n, width, size, axis in ((freq_masks, freq_width, C, 2), (time_masks, time_width, T, 1)):
        limit = torch.full_like(lengths, size) if axis == 2 else lengths
        pos = torch.arange(size, device=x.device)[None, :]
        for _ in range(n):
            w = torch.minimum((torch.rand(B, device=x.device) * (width + 1)).long(), limit)
            start = (torch.rand(B, device=x.device) * (limit - w + 1)).long()
            band = (pos >= start[:, None]) & (pos < (start + w)[:, None])
            keep &= ~(band[:, None, :] if axis == 2 else band[:, :, None])
    return x * keep


class LibriSpeechTask(Task):
    """Train on ``task.train_splits``; score WER on ``task.eval_splits`` (the first selects, e.g. dev-clean)."""

    recipe = "asr"
    primary_metric = "wer"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.train_splits = list(cfg.train_splits)
        self.eval_splits = list(cfg.eval_splits)
        self.directions = prefixed_directions({"wer": "down", "loss": "down"}, self.eval_splits)
        self.eval_batch_size = int(cfg["eval_batch_size"])
        self.num_mel_bins = int(cfg["num_mel_bins"])
        self.specaugment = dict(cfg["specaugment"])
        self.data_report: dict = {}

    def check(self) -> None:
        kind = self.cfg["tokenizer"]
        if kind not in TOKENIZERS:
            raise ConfigError(f"task.tokenizer={kind}: choose {' or '.join(TOKENIZERS)}")
        if not self.eval_splits or not self.train_splits:
            raise ConfigError("task.train_splits and task.eval_splits must each name at least one split")
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
        self.data_report = {"resampled_files": len(off)}
        train = [u for s in self.train_splits for u in utts[s]]
        self.tokenizer = Tokenizer(str(self.cfg["tokenizer"]), [u.text for u in train], int(self.cfg["vocab_size"]))
        self.vocab_size = self.tokenizer.vocab_size
        extractor = Speech2TextFeatureExtractor(
            feature_size=self.num_mel_bins, num_mel_bins=self.num_mel_bins, sampling_rate=SAMPLE_RATE
        )
        self.train_set = SpeechDataset(train, self.tokenizer, extractor)
        # Evaluation in length order: batches of similar length pad less (WER does not depend on order).
        self.eval_sets = [
            SpeechDataset(sorted(utts[s], key=lambda u: u.seconds), self.tokenizer, extractor) for s in self.eval_splits
        ]

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, True, collate_fn=collate_speech)

    def val_dataloader(self) -> list[DataLoader]:
        return [self.loader(d, False, self.eval_batch_size, collate_fn=collate_speech) for d in self.eval_sets]

    def train_batch(self, batch: dict) -> dict:
        s = self.specaugment
        if not (s["freq_masks"] or s["time_masks"]):
            return batch
        feats = spec_augment(
            batch["features"],
            batch["feature_mask"],
            int(s["freq_masks"]),
            int(s["freq_width"]),
            int(s["time_masks"]),
            int(s["time_width"]),
        )
        return {**batch, "features": feats}

    def metrics(self) -> MetricCollection:
        return MetricCollection({"wer": WordErrorRate()})
