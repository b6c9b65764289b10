"""A LibriSpeech tree: ``<split>/<speaker>/<chapter>/`` with FLAC files (synthetic tones, one per word,
written by soundfile) and ``<speaker>-<chapter>.trans.txt`` transcripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ["THE", "CAT", "SAT", "ON", "A", "MAT", "DOG", "RAN", "HOME", "SUN"]
SPLITS = {"train-clean-100": 8, "dev-clean": 3, "test-clean": 3, "test-other": 3}


def write_librispeech(root: Path, splits=SPLITS, sample_rate: int = 16000, seed: int = 0) -> Path:
    """Speakers/chapters per split, each utterance a FLAC of short tones (one per word) and a transcript line."""
    import soundfile  # the speech extra

    rng = np.random.default_rng(seed)
    for s, (split, count) in enumerate(splits.items()):
        chapter = root / split / str(100 + s) / str(2000 + s)
        chapter.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(count):
            uid = f"{100 + s}-{2000 + s}-{i:04d}"
            words = list(rng.choice(WORDS, size=int(rng.integers(2, 4))))
            t = np.arange(int(0.25 * sample_rate)) / sample_rate  # ~12 chars/s, as read speech
            audio = np.concatenate([0.3 * np.sin(2 * np.pi * (200 + 60 * WORDS.index(w)) * t) for w in words])
            audio += 0.01 * rng.normal(size=audio.shape)
            soundfile.write(chapter / f"{uid}.flac", audio.astype(np.float32), sample_rate)
            lines.append(f"{uid} {' '.join(words)}")
        (chapter / f"{100 + s}-{2000 + s}.trans.txt").write_text("\n".join(lines) + "\n")
    return root
