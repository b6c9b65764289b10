"""Vision zoo on ImageNet-style folders: DeiT (S, S-24, T, any depth), CaiT-S24 and Swin-S with DeiT's recipe.

The data are tiny JPEG trees in ImageNet's layout (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) written with PIL;
the architectures keep their depth and head structure but are shrunk in width and image size through
``backbone.kwargs`` and ``task.image_size`` (32 px: patch 8 for DeiT/CaiT, window 2 for Swin).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from conftest import FAST, PYTHON, REPO, compose
from omegaconf import OmegaConf
from timm.data.auto_augment import RandAugment
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.mixup import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DistributedSampler

import gfsa
from gfsa.ops.tables import load_tables
from gfsa.runner.registry import resolve
from gfsa.runner.train import run
from gfsa.utils.errors import ConfigError
from gfsa.zoo.backbones import patch_target
from gfsa.zoo.demo.vision import write_imagefolder
from gfsa.zoo.tasks.imagenet import read_class_list

CLASSES = ["n01558993", "n01692333", "n01729322"]  # three ImageNet-100 wnids
IMAGENET100 = read_class_list("imagenet100")
# Tiny widths, real depths and head layouts; 32-px images.
SHRINK = {
    "deit": ["+backbone.kwargs.patch_size=8", "+backbone.kwargs.embed_dim=32", "+backbone.kwargs.num_heads=2"],
    "cait_s24": ["+backbone.kwargs.patch_size=8", "+backbone.kwargs.embed_dim=32", "+backbone.kwargs.num_heads=2"],
    "swin_s": ["+backbone.kwargs.embed_dim=24", "+backbone.kwargs.window_size=2"],  # heads 3-6-12-24 kept
}
SHRINK["deit_s24"] = SHRINK["deit_t"] = SHRINK["deit"]
PRESET = {"deit": "deit_s", "deit_s24": "deit_s24", "deit_t": "contranorm_deit_t", "cait_s24": "cait_s24"}
PRESET["swin_s"] = "swin_s"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("imagenet"), CLASSES)


@pytest.fixture(scope="module")
def data100(tmp_path_factory) -> Path:
    """All 100 ImageNet-100 classes (one image each) plus one class outside the list."""
    return write_imagefolder(tmp_path_factory.mktemp("imagenet_full"), [*IMAGENET100, "n15075141"], n_train=1, n_val=1)


def overrides(backbone: str, data_dir: Path, *extra: str) -> list[str]:
    """The backbone's paper preset, shrunk, on CPU: 2 micro-batches of 4 make one optimizer step of 8."""
    return [
        *FAST,
        f"preset=imagenet/{PRESET[backbone]}",
        f"backbone={backbone}",
        *SHRINK[backbone],
        f"task.data_dir={data_dir}",
        "task.image_size=32",
        "task.batch_size=4",
        "task.global_batch_size=8",
        "task.num_workers=0",
        "trainer.precision=32-true",
        *extra,
    ]


def build(cfg, **backbone):
    """Task (loaded) and unpatched model, as the run path builds them."""
    cfg = OmegaConf.merge(cfg, {"backbone": backbone}) if backbone else cfg
    task = resolve("task", cfg.task.type)(cfg.task)
    task.check()
    task.setup("fit")
    return task, resolve("backbone", cfg.backbone.type)(cfg.backbone, task)


def run_dirs(results: Path) -> list[Path]:
    return [p for p in results.rglob("*") if p.is_dir() and "-seed" in p.name]


# --------------------------------------------------------------------------------------------------
# every backbone end to end through the run path, with its paper preset


E2E = {  # backbone: (extra overrides, layers GFSA gets, heads per layer)
    "deit": (["backbone.depth=2", "gfsa.layers=all", "optim.ema_decay=0.9"], [0, 1], 2),
    "deit_s24": (["gfsa.layers=selected"], list(range(1, 24, 2)), 2),
    "cait_s24": (["gfsa.layers=all"], list(range(24)), 2),
    "swin_s": (["gfsa.layers=all"], list(range(24)), None),
}


@pytest.mark.parametrize("backbone", list(E2E))
def test_backbone_trains_end_to_end(backbone, data, results_dir):
    extra, layers, heads = E2E[backbone]
    rec = run(compose(overrides(backbone, data, *extra), results_dir))
    assert rec["backbone"] == backbone and rec["task"] == "imagenet" and rec["variant"] == "gfsa"
    assert rec["gfsa"]["layers"] == layers
    # the paper's count for Swin-S: one wK per head of 2×3 + 2×6 + 18×12 + 2×24 heads
    assert rec["gfsa"]["added_parameters"] == (282 if backbone == "swin_s" else heads * len(layers))
    assert rec["global_batch_size"] == 8 and rec["steps"] == 1  # 2 micro-batches accumulated into one step
    assert set(rec["metrics"]) >= {"acc", "acc5", "loss"} and rec["selected_by"] == "best"
    t = rec["timing"]
    for key in ("train_epoch_time_s", "train_epoch_samples_per_s", "val_epoch_time_s", "val_epoch_samples_per_s"):
        assert t[key] > 0, key
    if backbone == "deit":  # the EMA weights are evaluated beside the model
        assert 0.0 <= rec["metrics"]["ema_acc"]["value"] <= 1.0 and "ema_acc5" in rec["metrics"]
        assert rec["config"]["backbone"]["depth"] == 2


def test_deit_t_depth_override_on_imagenet100(data100, results_dir):
    """The ContraNorm setting: DeiT-T at depth 16 on the 100 CMC classes of a full ImageNet folder."""
    rec = run(compose(overrides("deit_t", data100, "backbone.depth=16", "gfsa.layers=all"), results_dir))
    assert rec["task"] == "imagenet100" and rec["backbone"] == "deit_t"
    assert rec["gfsa"]["layers"] == list(range(16)) and rec["gfsa"]["added_parameters"] == 16 * 2
    assert rec["config"]["trainer"]["max_epochs"] == 1  # FAST overrides the preset's 300


def test_imagenet100_selects_the_cmc_classes(data100):
    assert len(IMAGENET100) == 100 and len(set(IMAGENET100)) == 100
    assert IMAGENET100[:3] == ["n02869837", "n01749939", "n02488291"]  # CMC's order (labels are sorted wnids)
    task, _ = build(compose(overrides("deit_t", data100)))
    assert task.classes == sorted(IMAGENET100) and task.num_classes == 100
    assert len(task.train_set) == 100 and len(task.val_set) == 100  # n15075141 is not read


def test_imagenet100_without_its_classes_fails(data):
    with pytest.raises(ConfigError, match=r"task.classes: 97 of its 100 classes are not folders"):
        build(compose(overrides("deit_t", data)))


# --------------------------------------------------------------------------------------------------
# identity at init and checkpoint loading, per backbone


@pytest.mark.parametrize("backbone", ["deit", "deit_s24", "deit_t", "cait_s24", "swin_s"])
def test_checkpoint_loads_and_patch_starts_at_identity(backbone, data, tmp_path):
    cfg = compose(overrides(backbone, data, "task=imagenet"))  # deit_t's preset reads ImageNet-100
    task, stock = build(cfg)
    ckpt = tmp_path / "model.pth"
    torch.save({"model": stock.net.state_dict()}, ckpt)  # DeiT's checkpoint format
    _, loaded = build(cfg, pretrained=str(ckpt))
    for (name, a), (_, b) in zip(stock.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # every weight, the classifier included (same classes)
    gfsa.patch(patch_target(loaded), layers="all", K=cfg.gfsa.K)
    batch = next(iter(task.val_dataloader()))
    stock.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(image=batch["image"]), stock(image=batch["image"]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("preset", "params_m", "added"),
    [("deit_s", 22.0, 72), ("deit_s24", 43.3, 144), ("cait_s24", 46.9, 192), ("swin_s", 49.6, 282)],
)
def test_full_size_models_match_the_paper(preset, params_m, added, data):
    """The presets' models at 224 px: the paper's parameter counts (1000-class head) and GFSA's additions."""
    cfg = compose([f"preset=imagenet/{preset}", f"task.data_dir={data}"])
    _, model = build(cfg)
    gfsa.patch(patch_target(model), layers=cfg.gfsa.layers, K=cfg.gfsa.K)
    head = model.net.get_classifier()
    n = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in head.parameters())
    n += (head.in_features + 1) * 1000
    assert (n - added) / 1e6 == pytest.approx(params_m, abs=0.06) and gfsa.added_parameters(model) == added


def test_imagenet_checkpoint_loads_without_its_classifier(data, tmp_path):
    """A 1000-class checkpoint on a 3-class task: timm drops the head, loads the rest."""
    cfg = compose(overrides("deit", data))
    _, stock = build(cfg)
    big = timm.create_model("deit_small_patch16_224", patch_size=8, embed_dim=32, num_heads=2, img_size=32)
    big.load_state_dict({**stock.net.state_dict(), **{k: v for k, v in big.state_dict().items() if "head" in k}})
    torch.save(big.state_dict(), tmp_path / "in1k.pth")
    _, loaded = build(cfg, pretrained=str(tmp_path / "in1k.pth"))
    assert loaded.net.head.out_features == 3
    assert torch.equal(loaded.net.blocks[5].mlp.fc1.weight, stock.net.blocks[5].mlp.fc1.weight)


def test_bad_checkpoints_name_backbone_pretrained(data, tmp_path):
    cfg = compose(overrides("deit", data))
    with pytest.raises(ConfigError, match=r"backbone.pretrained=true: could not download.*no network"):
        build(cfg, pretrained=True)  # HF_HUB_OFFLINE=1 (conftest): timm's hub download fails at once
    with pytest.raises(ConfigError, match=r"backbone.pretrained=.*missing.pth is not a file"):
        build(cfg, pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"cannot read it as a checkpoint"):
        build(cfg, pretrained=str(tmp_path / "junk.pth"))
    _, swin = build(compose(overrides("swin_s", data)))
    torch.save(swin.net.state_dict(), tmp_path / "swin.pth")
    with pytest.raises(ConfigError, match=r"does not fit deit_small_patch16_224 .*checkpoint of this architecture"):
        build(cfg, pretrained=str(tmp_path / "swin.pth"))


# --------------------------------------------------------------------------------------------------
# the recipe is timm's pieces, wired as DeiT does


def test_deit_recipe_is_wired(data):
    import lightning as L

    from gfsa.zoo.recipes.classification import ClassificationRecipe

    cfg = compose(overrides("deit", data))
    task, model = build(cfg)
    train_tf, eval_tf = task.transforms(True).transforms, task.transforms(False).transforms
    assert any(isinstance(t, RandAugment) for t in train_tf) and any(isinstance(t, RandomErasing) for t in train_tf)
    erasing = next(t for t in train_tf if isinstance(t, RandomErasing))
    assert erasing.probability == 0.25 and erasing.mode == "pixel"
    assert [type(t).__name__ for t in eval_tf][:2] == ["Resize", "CenterCrop"] and eval_tf[0].size == 36  # 32/0.875

    assert isinstance(task.mixup, Mixup) and (task.mixup.mixup_alpha, task.mixup.cutmix_alpha) == (0.8, 1.0)
    assert task.mixup.label_smoothing == 0.1 and isinstance(task.train_criterion, SoftTargetCrossEntropy)
    batch = next(iter(task.train_dataloader()))
    mixed = task.train_batch(dict(batch))
    assert mixed["labels"].shape == (4, 3) and torch.allclose(mixed["labels"].sum(1), torch.ones(4))
    logits = torch.randn(4, 3)
    assert task.loss(logits, mixed["labels"]) == SoftTargetCrossEntropy()(logits, mixed["labels"])
    sampler = task.train_dataloader().sampler  # a DistributedSampler: Lightning's DDP keeps it as it is
    assert isinstance(sampler, RepeatAugSampler) and isinstance(sampler, DistributedSampler)

    gfsa.patch(patch_target(model), layers="all", K=4)
    recipe = ClassificationRecipe(model, task, OmegaConf.to_container(cfg.optim))
    recipe.trainer = L.Trainer(max_epochs=300, accumulate_grad_batches=128, accelerator="cpu", logger=False)
    out = recipe.configure_optimizers()
    decay, no_decay = out["optimizer"].param_groups
    ids = {id(p) for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert all(id(p) in ids for p in gfsa.gfsa_parameters(model)) and gfsa.gfsa_parameters(model)
    assert id(model.net.pos_embed) in ids and id(model.net.cls_token) in ids
    sched = out["lr_scheduler"]["scheduler"]
    assert isinstance(sched, CosineLRScheduler) and out["lr_scheduler"]["interval"] == "epoch"
    peak = 5e-4 * (4 * 128) / 512  # lr × global batch (batch 4 × accumulation 128) / 512
    assert decay["lr"] == pytest.approx(1e-6)  # warm-up starts at warmup_lr
    sched.step(1)
    assert decay["lr"] == pytest.approx(1e-6 + (peak - 1e-6) / 5)
    sched.step(5)
    assert decay["lr"] == pytest.approx(peak, rel=1e-3)  # warm-up ends on the cosine
    sched.step(300)
    assert decay["lr"] == pytest.approx(1e-5)  # cosine down to min_lr


def test_smoothing_alone_equals_label_smoothing_cross_entropy(data):
    task, _ = build(compose(overrides("deit", data, "task.mixup=0", "task.cutmix=0", "task.repeated_aug=0")))
    assert task.mixup is None
    assert not isinstance(task.train_dataloader().sampler, RepeatAugSampler)
    labels, logits = torch.tensor([0, 2, 1, 1]), torch.randn(4, 3)
    soft = task.train_batch({"image": None, "labels": labels})["labels"]
    expected = LabelSmoothingCrossEntropy(0.1)(logits, labels)
    torch.testing.assert_close(task.loss(logits, soft), expected)
    assert task.loss(logits, labels) == torch.nn.functional.cross_entropy(logits, labels)  # validation


# --------------------------------------------------------------------------------------------------
# presets and paper cells compose


def test_imagenet_presets_compose():
    presets = sorted(p.stem for p in (REPO / "conf/preset/imagenet").glob("*.yaml"))
    assert presets == ["cait_s24", "contranorm_deit_s", "contranorm_deit_t", "deit_s", "deit_s24", "swin_s"]
    for p in presets:
        cfg = compose([f"preset=imagenet/{p}"])
        assert cfg.task.global_batch_size in (512, 1024) and cfg.trainer.accumulate_grad_batches == "auto"
        assert cfg.optim.schedule == "timm_cosine" and cfg.optim.lr == 5e-4 and cfg.optim.lr_batch_base == 512


def test_imagenet_cells_compose():
    tables = load_tables()
    cells = [c for name in ("imagenet", "imagenet_k", "imagenet_contranorm") for c in tables[name].cells]
    assert len(cells) == 9 + 9 + 12
    for table in ("imagenet", "imagenet_k", "imagenet_contranorm"):
        t = tables[table]
        assert (t.improvement, t.scale, t.direction) == ("absolute", 100.0, "up")
    for cell in cells:
        cfg = compose(list(cell.overrides))
        assert cfg.task.name in ("imagenet", "imagenet100") and cell.metric == "acc" and cell.paper > 70
        assert (cfg.gfsa.layers == "none") == (cell.variant == "baseline") and cfg.method.name == "none", cell.id
    k3 = next(c for c in cells if c.table == "imagenet_k" and c.variant == "gfsa_K3" and c.row == "deit_s_12")
    assert compose(list(k3.overrides)).gfsa.K == 3


# --------------------------------------------------------------------------------------------------
# bad input: one-line ConfigError naming the fix, no run directory left behind


def _fails(overrides_: list[str], results_dir: Path, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        run(compose(overrides_, results_dir))
    assert "\n" not in str(e.value)
    assert run_dirs(results_dir) == []


def test_data_dir_without_train_or_val(tmp_path, results_dir):
    (tmp_path / "train" / CLASSES[0]).mkdir(parents=True)
    _fails(overrides("deit", tmp_path), results_dir, r"task.data_dir=.* has no val: expected train, val")


def test_classes_differ_between_train_and_val(tmp_path, results_dir):
    write_imagefolder(tmp_path, CLASSES, n_train=1, n_val=1)
    (tmp_path / "val" / CLASSES[2]).rename(tmp_path / "val" / "n09999999")
    _fails(overrides("deit", tmp_path), results_dir, r"train/ and val/ have different classes")


def test_unreadable_first_image_fails_at_load(tmp_path, results_dir):
    write_imagefolder(tmp_path, CLASSES, n_train=2, n_val=1)
    bad = min((tmp_path / "train" / CLASSES[1]).iterdir())
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    _fails(overrides("deit", tmp_path), results_dir, rf"unreadable image {re.escape(str(bad))} .*replace or delete it")


def test_unreadable_image_fails_when_read_by_a_worker(tmp_path, results_dir):
    """A broken file that the cheap check does not open is named when a DataLoader worker reads it."""
    write_imagefolder(tmp_path, CLASSES, n_train=2, n_val=2)
    bad = sorted((tmp_path / "val" / CLASSES[0]).iterdir())[1]
    bad.write_bytes(b"")
    _fails(overrides("deit", tmp_path, "task.num_workers=1"), results_dir, rf"^unreadable image {re.escape(str(bad))} ")


def test_odd_batch_with_mixup(data, results_dir):
    _fails(overrides("deit", data, "task.batch_size=3", "task.global_batch_size=3"), results_dir, "even batch size")


PATCH_MSG = (
    r"task.image_size=36 is not a multiple of the patch size 8 of backbone deit: use task.image_size=32 or .*=40"
)
WINDOW_MSG = r"task.image_size=48 does not fit backbone swin_s \(patch 4, window 2, 4 stages\): use .*=32 or .*=64"


@pytest.mark.parametrize(("backbone", "size", "match"), [("deit", 36, PATCH_MSG), ("swin_s", 48, WINDOW_MSG)])
def test_image_size_the_backbone_cannot_take(backbone, size, match, data, results_dir):
    _fails(overrides(backbone, data, f"task.image_size={size}"), results_dir, match)


def test_cli_bad_input_exits_2_with_one_line(data, tmp_path):
    results = tmp_path / "results"
    args = overrides("swin_s", data, "task.image_size=224", "backbone.kwargs.window_size=6", "logger=none")
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [PYTHON, "run.py", *args, f"paths.results_dir={results}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: task.image_size=224 does not fit backbone swin_s"), p.stderr[-2000:]
    assert sum(ln.startswith("error:") for ln in lines) == 1
    assert not results.exists() or run_dirs(results) == []


def test_swin_preset_evaluates_with_a_bilinear_resize_as_the_gfsa_swin_code():
    """GFSA's Swin data/build.py resizes with torchvision's default (bilinear) at eval; DeiT (and Swin's training
    augmentation) stay bicubic; the eval resize and crop are 256 → 224 in both."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    def resize(preset: str, train: bool):
        task = resolve("task", "imagefolder")(compose([f"preset={preset}"]).task)
        steps = task.transforms(train).transforms
        return steps, next(t for t in steps if hasattr(t, "interpolation"))

    steps, swin = resize("imagenet/swin_s", False)
    assert swin.interpolation == InterpolationMode.BILINEAR and isinstance(swin, Resize) and swin.size == 256
    assert any(isinstance(t, CenterCrop) and list(t.size) == [224, 224] for t in steps)
    assert resize("imagenet/deit_s", False)[1].interpolation == InterpolationMode.BICUBIC
    assert resize("imagenet/swin_s", True)[1].interpolation == InterpolationMode.BICUBIC
