"""An ImageNet-style ImageFolder (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``) of small random images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_imagefolder(root: Path, classes: list[str], n_train: int = 4, n_val: int = 2, seed: int = 0) -> Path:
    """ImageNet's layout with small random JPEGs of varied sizes (the transforms resize them)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(36, 56, size=2)
                name = f"{c}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{c[1:]}{i:02d}.JPEG"
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / name, quality=80)
    return root
