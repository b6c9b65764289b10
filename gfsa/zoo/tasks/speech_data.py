"""LibriSpeech's acoustic input: the release's folder layout, 80-dim log-mel filterbanks, speed perturbation,
SpecAugment, batches by duration (the tasks are in :mod:`gfsa.zoo.tasks.speech`).

``<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` (one ``<utterance-id> <TEXT>`` per line) next
to ``<utterance-id>.flac``. Filterbanks are Kaldi's as transformers' ``Speech2TextFeatureExtractor`` computes
them (numpy, utterance CMVN), with the window and FFT size of the recipe; audio that is not 16 kHz, and speed
perturbation, are resampled with ``scipy.signal.resample_poly`` (no torchaudio). Tokens: characters, or a
SentencePiece unigram model trained on the training transcripts, cached by content under ``$GFSA_CACHE_DIR``.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, DistributedSampler
from transformers import Speech2TextFeatureExtractor
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from gfsa.utils.errors import ConfigError
from gfsa.zoo import formats

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


def as_is(batch):
    """The collate of :class:`BatchedDataset`: its items are already batches."""
    return batch
