"""LibriSpeech ASR (and its language model's text): the release's folder layout, 80-dim log-mel filterbanks,
speed perturbation, SpecAugment, batches by duration, WER.

``task.data_dir`` holds the splits as released: ``<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``
(one ``<utterance-id> <TEXT>`` per line) next to ``<utterance-id>.flac``. Filterbanks are Kaldi's as
transformers' ``Speech2TextFeatureExtractor`` computes them (numpy, utterance CMVN), with the window and FFT
size of the recipe (``task.window_ms``, ``task.n_fft``); audio that is not 16 kHz, and speed perturbation,
are resampled with ``scipy.signal.resample_poly`` (no torchaudio). Tokens: characters, or a SentencePiece
unigram model trained on the training transcripts (the paper's recipes: 5000 units), cached by content
under ``$GFSA_CACHE_DIR``. Every file problem is found before training starts and named in one line.
``task=librispeech_lm`` reads the language model's text: the LibriSpeech LM corpus
(``librispeech-lm-norm.txt``, one normalised sentence per line) plus the training transcripts.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.text import WordErrorRate
from transformers import Speech2TextFeatureExtractor
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

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

    @property
    def digest(self) -> str:
        """Identifies the token inventory: a language model must have been trained with the same one."""
        data = "\n".join(self.symbols).encode() if self.kind == "char" else self.sp.serialized_model_proto()
        return hashlib.sha256(data).hexdigest()[:16]

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


def read_transcripts(root: Path, split: str) -> list[str]:
    """The transcript texts of one split (no audio is opened: what a language model reads)."""
    trans = sorted((root / split).glob("*/*/*.trans.txt"))
    if not trans:
        raise ConfigError(f"{root / split}: no <speaker>/<chapter>/*.trans.txt transcripts (the LibriSpeech layout)")
    texts = []
    for t in trans:
        for line in t.read_text().splitlines():
            text = line.strip().partition(" ")[2]
            if text.strip():
                texts.append(" ".join(text.split()))
    return texts


def read_audio(path: str) -> np.ndarray:
    """Mono float32 at 16 kHz (other rates resampled with scipy's polyphase filter)."""
    wav, sr = soundfile.read(path, dtype="float32", always_2d=True)
    wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = math.gcd(sr, SAMPLE_RATE)
        wav = resample_poly(wav, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return wav


def speed_perturb(wav: np.ndarray, speed: int) -> np.ndarray:
    """SpeechBrain's ``SpeedPerturb``: resample 16 kHz audio to ``speed`` % of the rate and play it at 16 kHz,
    so ``speed`` 95 gives 95 % of the samples (a faster, higher voice); scipy's polyphase filter, not torchaudio."""
    if speed == 100:
        return wav
    return resample_poly(wav, speed, 100).astype(np.float32)


class FilterbankExtractor(Speech2TextFeatureExtractor):
    """Kaldi log-mel filterbanks + utterance CMVN exactly as ``Speech2TextFeatureExtractor`` computes them without
    torchaudio (povey window, pre-emphasis 0.97, DC removal, 10 ms hop), with the recipe's window length and FFT
    size (SpeechBrain: 25 ms / 400 for the Transformer, 32 ms / 512 for the Branchformer). 25 ms / 512 is the
    extractor's own setting."""

    def __init__(self, num_mel_bins: int, window_ms: float = 25.0, n_fft: int = 512):
        super().__init__(feature_size=num_mel_bins, num_mel_bins=num_mel_bins, sampling_rate=SAMPLE_RATE)
        self.frame_length = round(window_ms * SAMPLE_RATE / 1000)
        if n_fft < self.frame_length:
            raise ConfigError(
                f"task.n_fft={n_fft} is shorter than the {window_ms} ms window ({self.frame_length} samples): "
                f"set task.n_fft >= {self.frame_length}"
            )
        self.n_fft = n_fft
        self.window = window_function(self.frame_length, "povey", periodic=False)
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=num_mel_bins,
            min_frequency=20,
            max_frequency=SAMPLE_RATE // 2,
            sampling_rate=SAMPLE_RATE,
            norm=None,
            mel_scale="kaldi",
            triangularize_in_mel_space=True,
        )

    def _extract_fbank_features(self, waveform: np.ndarray) -> np.ndarray:
        return spectrogram(
            np.squeeze(waveform * (2**15)),
            self.window,
            frame_length=self.frame_length,
            hop_length=160,
            fft_length=self.n_fft,
            power=2.0,
            center=False,
            dither=self.dither,
            preemphasis=0.97,
            mel_filters=self.mel_filters,
            log_mel="log",
            mel_floor=1.192092955078125e-07,
            remove_dc_offset=True,
        ).T


class SpeechDataset(Dataset):
    """Utterances as filterbanks and token ids; ``speeds`` (training): one speed per utterance and epoch,
    drawn uniformly (SpeechBrain's ``speeds: [95, 100, 105]``)."""

    def __init__(self, utts: list[Utterance], tokenizer: Tokenizer, extractor, speeds: list[int] | None = None):
        self.utts, self.tokenizer, self.extractor = utts, tokenizer, extractor
        self.speeds = list(speeds or [])

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> dict:
        u = self.utts[i]
        wav = read_audio(u.path)
        if self.speeds:
            wav = speed_perturb(wav, self.speeds[int(torch.randint(len(self.speeds), ()))])
        feats = self.extractor(wav, sampling_rate=SAMPLE_RATE, return_attention_mask=False)
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


def mask_bands(limit: torch.Tensor, n: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` bands per utterance inside ``[0, limit)``: starts and widths (B, n), widths uniform in 0…``width``
    (SpeechBrain's ``mask_width: w`` draws 0…w−1: the presets pass w−1)."""
    starts, widths = [], []
    for _ in range(n):
        w = torch.minimum((torch.rand(len(limit), device=limit.device) * (width + 1)).long(), limit)
        starts.append((torch.rand(len(limit), device=limit.device) * (limit - w + 1)).long())
        widths.append(w)
    if not n:
        empty = limit.new_zeros(len(limit), 0)
        return empty, empty
    return torch.stack(starts, 1), torch.stack(widths, 1)


def time_warp(x: torch.Tensor, window: int) -> torch.Tensor:
    """SpeechBrain's SpecAugment time warping: one point c of the batch moves to w (|w − c| ≤ window) and each
    side is stretched to fit (bicubic, align_corners=True), over the padded length as SpeechBrain does."""
    T = x.shape[1]
    if window <= 0 or T - window <= window:
        return x
    c = int(torch.randint(window, T - window, ()))
    w = int(torch.randint(c - window, c + window, ())) + 1
    img = x[:, None]
    left = F.interpolate(img[:, :, :c], (w, x.shape[2]), mode="bicubic", align_corners=True)
    right = F.interpolate(img[:, :, c:], (T - w, x.shape[2]), mode="bicubic", align_corners=True)
    return torch.cat([left, right], dim=2)[:, 0]


def spec_augment(
    x: torch.Tensor,
    mask: torch.Tensor,
    freq_masks: int,
    freq_width: int,
    time_masks: int,
    time_width: int,
    time_warp_window: int = 0,
) -> torch.Tensor:
    """SpecAugment (SpeechBrain's order): time warping, then frequency and time masks; bands of random width
    up to the given maxima set to 0, which after utterance CMVN is the batch mean SpeechBrain fills with.
    Time masks stay inside each utterance."""
    x = time_warp(x, time_warp_window)
    B, T, C = x.shape
    keep = torch.ones(B, T, C, dtype=torch.bool, device=x.device)
    lengths = mask.sum(-1)
    for n, width, size, axis in ((freq_masks, freq_width, C, 2), (time_masks, time_width, T, 1)):
        limit = torch.full_like(lengths, size) if axis == 2 else lengths
        starts, widths = mask_bands(limit, n, width)
        pos = torch.arange(size, device=x.device)[None, None, :]
        band = ((pos >= starts[..., None]) & (pos < (starts + widths)[..., None])).any(1)
        keep &= ~(band[:, None, :] if axis == 2 else band[:, :, None])
    return x * keep


class DurationBatches(DistributedSampler):
    """Batches by total audio duration (SpeechBrain's dynamic batching): utterances go to ``buckets`` duration
    buckets bounded by quantiles of the durations (equal durations share one); each bucket's batch holds
    ⌊max_seconds / its longest utterance⌋ utterances (at most ``max_items``), so a padded batch never exceeds
    ``max_seconds`` of audio; bucket
    contents and the order of the batches are shuffled every epoch. A DistributedSampler (Lightning keeps it
    and calls ``set_epoch``) that yields index lists and shards whole batches over ranks, every rank the same
    number (the list is padded by repeating its first batches, as DistributedSampler pads indices)."""

    def __init__(
        self, durations, max_seconds: float, max_items: int, buckets: int, shuffle=True, seed=0, rank=0, world=1
    ):
        super().__init__(range(len(durations)), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.durations = np.asarray(durations, dtype=np.float64)
        self.max_seconds, self.max_items = float(max_seconds), int(max_items)
        bounds = np.unique(np.quantile(self.durations, np.linspace(0, 1, max(1, int(buckets)) + 1)[1:]))
        which = np.searchsorted(bounds, self.durations, side="left")
        self.buckets = [np.flatnonzero(which == i) for i in range(len(bounds)) if (which == i).any()]
        self.sizes = [
            max(1, min(self.max_items, int(self.max_seconds // self.durations[b].max()))) for b in self.buckets
        ]

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        out = []
        for bucket, size in zip(self.buckets, self.sizes, strict=True):
            idx = bucket[torch.randperm(len(bucket), generator=g).numpy()] if self.shuffle else bucket
            out += [idx[i : i + size].tolist() for i in range(0, len(idx), size)]
        if self.shuffle:
            out = [out[i] for i in torch.randperm(len(out), generator=g).tolist()]
        per_rank = math.ceil(len(out) / self.num_replicas)
        out += out[: per_rank * self.num_replicas - len(out)]
        return out[self.rank :: self.num_replicas]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(
            sum(math.ceil(len(b) / s) for b, s in zip(self.buckets, self.sizes, strict=True)) / self.num_replicas
        )


class BatchedDataset(Dataset):
    """``dataset[list of indices]`` → one collated batch (the DataLoader runs with ``batch_size=None``)."""

    def __init__(self, dataset: Dataset, collate):
        self.dataset, self.collate = dataset, collate

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> dict:
        return self.collate([self.dataset[i] for i in indices])


def _as_is(batch):
    return batch


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
            collate_fn=_as_is,
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
