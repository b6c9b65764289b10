"""The built-in task: scikit-learn's handwritten digits (8×8, 10 classes), shipped with the package.

It needs no download, so ``python run.py`` compares baseline and GFSA on any fresh machine.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from gfsa.zoo.tasks.base import DictDataset, Task


class DigitsTask(Task):
    num_classes = 10
    image_size = 8
    in_chans = 1

    def load(self) -> None:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        x = (x - 0.5) / 0.5
        y = torch.tensor(y, dtype=torch.long)
        # A fixed split (not the run seed): every run is scored on the same images.
        tr, va = train_test_split(range(len(y)), test_size=float(self.cfg.val_fraction), random_state=0, stratify=y)
        self.train_set = DictDataset(image=x[tr], labels=y[tr])
        self.val_set = DictDataset(image=x[va], labels=y[va])

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set, False, batch_size=256)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"acc": MulticlassAccuracy(num_classes=10, average="micro")})
