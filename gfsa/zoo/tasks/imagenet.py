"""ImageNet (and any ImageFolder tree): ``<data_dir>/train/<class>/*.JPEG`` and ``<data_dir>/val/<class>/…``.

The training recipe is DeiT's, assembled from timm's own pieces: ``create_transform`` (RandAugment,
random erasing, bicubic random-resized crop), ``Mixup`` (Mixup/CutMix with label smoothing → soft
targets and ``SoftTargetCrossEntropy``) and ``RepeatAugSampler`` (repeated augmentation).
``task.classes`` restricts the folder to a class list, e.g. ImageNet-100 (``gfsa/tasks/data/``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch.nn.functional as F
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchvision import datasets

from gfsa.utils.errors import ConfigError
from gfsa.zoo.tasks.base import Task

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASS_LISTS = Path(__file__).resolve().parent / "data"


class UnreadableImageError(ConfigError):
    """An image file PIL cannot read. DataLoader workers re-raise it with their traceback as the
    message; only the line that names the file is kept, so the user still sees one line."""

    PREFIX = "unreadable image "

    def __init__(self, message: str):
        lines = [ln[ln.index(self.PREFIX) :] for ln in str(message).splitlines() if self.PREFIX in ln]
        super().__init__(lines[-1] if lines else message)


def load_image(path: str) -> Image.Image:
    """torchvision's PIL loader, with a one-line error naming the file it cannot read."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated or corrupt files
        raise unreadable(path, e) from None


def unreadable(path: str, error: BaseException) -> UnreadableImageError:
    reason = (str(error).splitlines() or [""])[0]
    return UnreadableImageError(
        f"{UnreadableImageError.PREFIX}{path} ({type(error).__name__}: {reason}): replace or delete it"
    )


def read_class_list(spec: str) -> list[str]:
    """``task.classes``: a list shipped in gfsa/tasks/data/ (by name) or a text file, one class per line."""
    path = CLASS_LISTS / f"{spec}.txt"
    if not path.is_file():
        path = Path(spec).expanduser()
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CLASS_LISTS.glob("*.txt")))
        raise ConfigError(f"task.classes={spec}: no such list; use one of {shipped} or a file with one class per line")
    names = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"task.classes={spec}: {path} must list distinct class folder names, one per line")
    return names


class ClassFolder(datasets.ImageFolder):
    """ImageFolder, optionally restricted to ``only`` (class folder names), reading images with
    :func:`load_image`."""

    def __init__(self, root: str, transform, only: list[str] | None = None):
        self.only = only
        super().__init__(root, transform=transform, loader=load_image)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        if self.only is None:
            return super().find_classes(directory)
        missing = [c for c in self.only if not os.path.isdir(os.path.join(directory, c))]
        if missing:
            raise ConfigError(
                f"task.classes: {len(missing)} of its {len(self.only)} classes are not folders of {directory} "
                f"(e.g. {', '.join(missing[:3])}): point task.data_dir at the full ImageNet folder"
            )
        classes = sorted(self.only)
        return classes, {c: i for i, c in enumerate(classes)}

    def check_headers(self) -> None:
        """Open the first image of every class (header only): catches non-images and broken folders
        at load time, for the price of one file per class."""
        seen = set()
        for path, target in self.samples:
            if target not in seen:
                seen.add(target)
                try:
                    with Image.open(path) as im:
                        im.size  # noqa: B018 (parses the header)
                except (OSError, SyntaxError, ValueError) as e:
                    raise unreadable(path, e) from None


class _AsDict:
    """ImageFolder yields (image, target); recipes take dict batches."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        image, target = self.ds[i]
        return {"image": image, "labels": target}


class RepeatAugDistributedSampler(RepeatAugSampler, DistributedSampler):
    """timm's RepeatAugSampler, typed as a DistributedSampler so that Lightning keeps it (it would
    otherwise wrap it in a second, sharding sampler); it shards by itself (rank, num_replicas)."""


class ImageFolderTask(Task):
    """ImageNet-style classification with Top-1 (``acc``) and Top-5 (``acc5``) and DeiT's recipe."""

    directions: ClassVar[dict[str, str]] = {
        "acc": "up",
        "acc5": "up",
        "loss": "down",
        "ema_acc": "up",
        "ema_acc5": "up",
    }
    in_chans = 3

    def __init__(self, cfg):
        super().__init__(cfg)
        self.image_size = int(cfg.image_size)
        self.mixup: Mixup | None = None
        self.train_criterion = None

    def check(self) -> None:
        self.require_data_dir("train", "val")
        if self.image_size < 1:
            raise ConfigError(f"task.image_size={self.image_size}: must be a positive number of pixels")
        if self.mixup_active and self.batch_size % 2:
            raise ConfigError(f"task.batch_size={self.batch_size}: Mixup/CutMix pairs images, use an even batch size")
        if self.cfg["classes"]:
            read_class_list(str(self.cfg.classes))

    @property
    def mixup_active(self) -> bool:
        c = self.cfg
        return bool(c["mixup"] or c["cutmix"] or c["cutmix_minmax"])

    def transforms(self, train: bool):
        """timm's ImageNet transforms: DeiT's training augmentation, resize + center crop for eval."""
        c = self.cfg
        interpolation = c["interpolation"]
        if not train:
            return create_transform(
                self.image_size,
                is_training=False,
                interpolation=c["eval_interpolation"] or interpolation,
                crop_pct=float(c["crop_pct"]),
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
            )
        return create_transform(
            self.image_size,
            is_training=True,
            interpolation=interpolation,
            auto_augment=c["auto_augment"],
            color_jitter=c["color_jitter"],
            re_prob=float(c["reprob"]),
            re_mode=c["remode"],
            re_count=int(c["recount"]),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    def load(self) -> None:
        root = self.require_data_dir("train", "val")
        only = read_class_list(str(self.cfg.classes)) if self.cfg["classes"] else None
        try:
            train = ClassFolder(str(root / "train"), self.transforms(True), only)
            val = ClassFolder(str(root / "val"), self.transforms(False), only)
        except FileNotFoundError as e:
            raise ConfigError(f"task.data_dir={root}: {e} (ImageFolder layout: train/<class>/*.JPEG)") from None
        if train.classes != val.classes:
            extra = sorted(set(train.classes) ^ set(val.classes))[:5]
            raise ConfigError(f"task.data_dir={root}: train/ and val/ have different classes (e.g. {extra})")
        train.check_headers()
        val.check_headers()
        self.classes = train.classes
        self.num_classes = len(train.classes)
        self.train_set, self.val_set = _AsDict(train), _AsDict(val)
        self._recipe_parts()

    def _recipe_parts(self) -> None:
        """Mixup/CutMix (with label smoothing) or smoothing alone: both give soft targets for
        SoftTargetCrossEntropy, which on smoothed one-hot targets equals LabelSmoothingCrossEntropy."""
        c = self.cfg
        smoothing = float(c["smoothing"])
        if self.mixup_active:
            minmax = c["cutmix_minmax"]
            self.mixup = Mixup(
                mixup_alpha=float(c["mixup"]),
                cutmix_alpha=float(c["cutmix"]),
                cutmix_minmax=list(minmax) if minmax else None,
                prob=float(c["mixup_prob"]),
                switch_prob=float(c["mixup_switch_prob"]),
                mode=c["mixup_mode"],
                label_smoothing=smoothing,
                num_classes=self.num_classes,
            )
        self.smoothing = smoothing
        self.train_criterion = SoftTargetCrossEntropy() if self.mixup_active or smoothing else None

    def train_batch(self, batch: dict) -> dict:
        if self.mixup is not None:
            image, labels = self.mixup(batch["image"], batch["labels"])
            return {**batch, "image": image, "labels": labels}
        if self.smoothing:
            return {**batch, "labels": mixup_target(batch["labels"], self.num_classes, 1.0, self.smoothing)}
        return batch

    def loss(self, logits, labels):
        """Soft targets (training with Mixup or smoothing) → SoftTargetCrossEntropy; class indices → CE."""
        if labels.is_floating_point():
            return self.train_criterion(logits, labels)
        return F.cross_entropy(logits, labels)

    def train_dataloader(self) -> DataLoader:
        repeats = int(self.cfg["repeated_aug"])
        sampler = None
        if repeats > 1:
            t = self.trainer
            world, rank = (t.world_size, t.global_rank) if t is not None else (1, 0)
            sampler = RepeatAugDistributedSampler(self.train_set, num_replicas=world, rank=rank, num_repeats=repeats)
        return self.loader(self.train_set, True, sampler=sampler, shuffle=sampler is None, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set, False)

    def metrics(self) -> MetricCollection:
        k = min(5, self.num_classes)
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=self.num_classes, average="micro"),
                "acc5": MulticlassAccuracy(num_classes=self.num_classes, top_k=k, average="micro"),
            }
        )
