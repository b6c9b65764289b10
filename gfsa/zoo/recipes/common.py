"""Pieces every recipe shares: the optimizer with its no-decay groups (``optim.no_decay``), the schedule, and the
callbacks that measure what results records report (validation history, step time, memory)."""

from __future__ import annotations

import math
import resource
import statistics
import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from gfsa.utils.errors import ConfigError

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
# optim.momentum is optional: only SGD reads it, and conf/optim/ does not set it (a key there would change
# every run's directory). This is its one default, documented in conf/optim/adamw.yaml and the README.
SGD_MOMENTUM = 0.9


# optim.no_decay entries with a meaning of their own; any other entry is a substring of parameter names (the
# transformers scripts' rule, e.g. [bias, LayerNorm.weight]). [] decays every parameter (Graphormer v1, SpeechBrain).
NO_DECAY_RULES = {
    "1d": "every parameter with at most one dimension or named *.bias (timm's rule: biases, norms, GFSA coefficients)",
    "model": "the names the model's modules list in no_weight_decay() (timm: position embeddings, class tokens)",
    "gfsa": "the GFSA coefficients (*.gfsa.w0|w1|wK)",
}


def param_groups(model: nn.Module, weight_decay: float, no_decay=("1d", "model")) -> tuple[list[dict], dict]:
    """Two groups, [decayed, not decayed] (always both, in this order, so checkpoints resume), and a report
    of the split for the results record. The split is timm's ``param_groups_weight_decay`` with its 1-D
    rule switched by ``1d`` and every other entry of ``no_decay`` as a name pattern; it does not depend
    on ``weight_decay`` (timm's helper puts everything in one group at 0, which would hide the rule).
    timm's ``create_optimizer_v2`` is not used: it knows only timm's rule (no ``[]``, no name substrings), and
    its groups (empty ones dropped, no-decay first) would not load the optimizer state of earlier checkpoints."""
    from timm.optim import param_groups_weight_decay

    rules = list(no_decay)
    patterns = [f"*{entry}*" for entry in rules if entry not in NO_DECAY_RULES]
    if "gfsa" in rules:
        patterns += ["gfsa.*", "*.gfsa.*"]
    if "model" in rules:
        for prefix, m in model.named_modules():
            if hasattr(m, "no_weight_decay") and callable(m.no_weight_decay):
                patterns += [f"{prefix}.{n}" if prefix else n for n in m.no_weight_decay()]
    groups = param_groups_weight_decay(
        model, weight_decay=1.0, weight_decay_exclude_1d="1d" in rules, no_weight_decay_list=patterns
    )
    exempt = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for _, p in named if id(p) not in exempt]
    kept = [(n, p) for n, p in named if id(p) in exempt]
    report = {
        "weight_decay": weight_decay,
        "no_decay": rules,
        "decayed": {"tensors": len(decay), "parameters": sum(p.numel() for p in decay)},
        "not_decayed": {
            "tensors": len(kept),
            "parameters": sum(p.numel() for _, p in kept),
            "names": [n for n, _ in kept],
        },
    }
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": [p for _, p in kept], "weight_decay": 0.0},
    ], report


def configure_optimizers(module: L.LightningModule, model: nn.Module, optim: dict):
    """Optimizer + LR schedule (per step; timm_cosine: per epoch or step) from the ``optim`` config group.
    Every key is read as conf/optim/ sets it; ``momentum`` (SGD) and ``schedule_kwargs`` are optional."""
    name = optim["name"]
    if name not in OPTIMIZERS:
        raise ConfigError(f"optim.name={name}: choose one of {', '.join(OPTIMIZERS)}")
    lr = float(optim["lr"])
    if optim["lr_batch_base"]:  # linear scaling rule: lr × global batch / base (DeiT: 512)
        t = module.trainer
        global_batch = t.world_size * t.accumulate_grad_batches * module.task.batch_size
        lr = lr * global_batch / float(optim["lr_batch_base"])
        rank_zero_info(f"lr {lr:.4g} = optim.lr {optim['lr']} × global batch {global_batch} / {optim['lr_batch_base']}")
    kwargs = {"lr": lr}
    if name in ("adamw", "adam"):
        kwargs["betas"] = tuple(optim["betas"])
        kwargs["eps"] = float(optim["eps"])
    if name == "sgd":
        kwargs["momentum"] = float(optim.get("momentum", SGD_MOMENTUM))
    groups, module.weight_decay_groups = param_groups(model, float(optim["weight_decay"]), optim["no_decay"])
    opt = OPTIMIZERS[name](groups, **kwargs)
    schedule = optim["schedule"]
    if schedule == "timm_cosine":
        return {"optimizer": opt, "lr_scheduler": timm_cosine(module.trainer, opt, optim)}
    if schedule in (None, "none", "constant") and not optim["warmup_steps"]:
        return opt
    from transformers import get_scheduler

    total = int(module.trainer.estimated_stepping_batches)
    warmup = int(optim["warmup_steps"] or 0) or int(float(optim["warmup_ratio"]) * total)
    name = "constant_with_warmup" if schedule in (None, "none", "constant") else schedule
    extra = dict(optim.get("schedule_kwargs") or {})  # optional, e.g. {lr_end: 1e-9, power: 1.0} for polynomial
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total, scheduler_specific_kwargs=extra)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def timm_cosine(trainer, opt, optim: dict) -> dict:
    """``optim.schedule=timm_cosine``: timm's CosineLRScheduler, as the DeiT and Swin recipes use it:
    ``warmup_epochs`` linear warm-up from ``warmup_lr``, then cosine down to ``min_lr``, updated per
    epoch (``schedule_interval: epoch``, DeiT) or per optimizer step (``step``, Swin). Recipes that
    use it step it through :func:`lr_scheduler_step`."""
    from timm.scheduler import CosineLRScheduler

    epochs = trainer.max_epochs
    if not epochs or epochs < 1:
        raise ConfigError("optim.schedule=timm_cosine counts epochs: set trainer.max_epochs")
    interval = optim["schedule_interval"]  # epoch | step, checked by gfsa.runner.config
    warmup = float(optim["warmup_epochs"])
    if interval == "step":
        total = int(trainer.estimated_stepping_batches)
        length, warmup_t = total, round(warmup * total / epochs)
    else:
        length, warmup_t = epochs, round(warmup)
    sched = CosineLRScheduler(
        opt,
        t_initial=length,
        lr_min=float(optim["min_lr"]),
        warmup_t=warmup_t,
        warmup_lr_init=float(optim["warmup_lr"]),
        t_in_epochs=interval == "epoch",
    )
    return {"scheduler": sched, "interval": interval}


def lr_scheduler_step(module: L.LightningModule, scheduler, metric) -> None:
    """``LightningModule.lr_scheduler_step`` for torch and timm schedulers. timm's per-epoch schedule
    is stepped with the index of the epoch that just ended, as DeiT's ``lr_scheduler.step(epoch)``
    (so epoch e+1 trains at the value for e); per-step with the number of optimizer steps taken."""
    from timm.scheduler.scheduler import Scheduler

    if isinstance(scheduler, Scheduler):
        if scheduler.t_in_epochs:
            scheduler.step(module.current_epoch)
        else:
            scheduler.step_update(module.global_step)
    elif metric is None:
        scheduler.step()
    else:
        scheduler.step(metric)


def validation_scored(pl_module, name: str) -> bool:
    """Whether the validation that just ended scored metric ``name`` (without ``val/``). Lightning keeps every
    metric ever logged in callback_metrics: a recipe that scores some metrics only on some epochs (ASR: WER
    every task.decode_every) names this epoch's in ``validation_keys``, so older values are not taken again."""
    keys = getattr(pl_module, "validation_keys", None)
    return keys is None or name in keys


class ValidationHistory(L.Callback):
    """Validation metrics after every validation epoch (sanity checks excluded), as plain floats."""

    def __init__(self, prefix: str = "val/"):
        self.prefix = prefix
        self.history: list[dict] = []

    def on_validation_end(self, trainer, pl_module):
        # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the
        # module's, so the epoch's metrics would not be logged yet.
        if trainer.sanity_checking:
            return
        metrics = {
            k[len(self.prefix) :]: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(self.prefix) and torch.as_tensor(v).numel() == 1
        }
        metrics = {k: v for k, v in metrics.items() if validation_scored(pl_module, k)}
        if metrics:
            self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "metrics": metrics})

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state):
        self.history = list(state.get("history", []))


class Diverged(Exception):
    """Training produced a non-finite loss or validation metric: the run stops, recorded as diverged."""

    def __init__(self, what: str, value: float, epoch: int, step: int):
        self.what, self.value, self.epoch, self.step = what, value, epoch, step
        super().__init__(f"{what} = {value} at epoch {epoch}, step {step}")


class DivergenceGuard(L.Callback):
    """Stops a run at the first non-finite training loss or validation metric (NaN, ±inf): a diverged
    run is recorded as such and never compared, instead of finishing at chance level as a result.

    Every rank takes the same decision (one all-reduce of a flag per step under DDP)."""

    def _check(self, trainer, values: dict) -> None:
        bad = next(((k, v) for k, v in values.items() if not math.isfinite(v)), None)
        if trainer.world_size > 1:
            if not trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
                return
            bad = bad or ("a value on another rank", float("nan"))
        if bad is not None:
            raise Diverged(bad[0], bad[1], trainer.current_epoch, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss) and loss.numel() == 1:
            self._check(trainer, {"train/loss": float(loss.detach())})

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        values = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if not k.startswith("train") and torch.as_tensor(v).numel() == 1
        }
        self._check(trainer, values)


class StepTimer(L.Callback):
    """Seconds per optimizer step (median after warm-up) and peak memory of the run; the step times
    of earlier attempts come back with the checkpoint, so a resumed run reports all of them."""

    MAX_KEPT = 100_000  # step times kept for the median (a float each in the checkpoint)

    def __init__(self, warmup: int = 3):
        self.warmup = warmup
        self.times: list[float] = []
        self.total = 0.0
        self.count = 0
        self._t0 = None

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        dt = time.perf_counter() - self._t0
        self.times.append(dt)
        del self.times[: -self.MAX_KEPT]
        self.total += dt
        self.count += 1

    def state_dict(self):
        return {"times": list(self.times), "total": self.total, "count": self.count}

    def load_state_dict(self, state):
        self.times = list(state.get("times", []))
        self.total = float(state.get("total", sum(self.times)))
        self.count = int(state.get("count", len(self.times)))

    def summary(self, device: torch.device) -> dict:
        steady = self.times[self.warmup :] if len(self.times) > 2 * self.warmup else self.times
        if device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
        else:
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
        return {
            "step_time_s": statistics.median(steady) if steady else None,
            "steps_timed": len(steady),
            "train_time_s": self.total,
            "peak_memory_mb": round(peak, 1),
            "memory_kind": kind,
        }


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        batch = batch.get("labels", next(iter(batch.values())))
    return len(batch)


class EpochTimer(L.Callback):
    """Wall seconds per training epoch (its validation excluded) and per validation epoch, with
    samples/s over all devices: the paper's runtime tables (training s/epoch, inference s).
    ``timing()`` adds them to the results record."""

    def __init__(self):
        self.train: list[tuple[float, int]] = []  # (seconds, samples on this device) per epoch
        self.val: list[tuple[float, int]] = []
        self.world_size = 1
        self._t0 = self._v0 = None
        self._n = self._vn = 0
        self._val_in_epoch = 0.0

    def _now(self, pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_fit_start(self, trainer, pl_module):
        self.world_size = trainer.world_size

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0, self._n, self._val_in_epoch = self._now(pl_module), 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._n += _batch_size(batch)

    def on_train_epoch_end(self, trainer, pl_module):
        if self._t0 is not None and self._n:
            self.train.append((self._now(pl_module) - self._t0 - self._val_in_epoch, self._n))

    def on_validation_start(self, trainer, pl_module):
        self._v0, self._vn = (None, 0) if trainer.sanity_checking else (self._now(pl_module), 0)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._v0 is not None:
            self._vn += _batch_size(batch)

    def on_validation_end(self, trainer, pl_module):
        if self._v0 is None:
            return
        seconds = self._now(pl_module) - self._v0
        self._val_in_epoch += seconds
        self.val.append((seconds, self._vn))
        self._v0 = None

    def timing(self) -> dict:
        """Medians over epochs (the first epoch also pays for start-up when there are more)."""

        def summary(rows, prefix):
            if not rows:
                return {}
            steady = rows[1:] if len(rows) > 2 else rows
            return {
                f"{prefix}_time_s": round(statistics.median(s for s, _ in steady), 4),
                f"{prefix}_samples_per_s": round(statistics.median(n * self.world_size / s for s, n in steady), 2),
            }

        return summary(self.train, "train_epoch") | summary(self.val, "val_epoch")

    def state_dict(self):
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state):
        self.train = [tuple(r) for r in state.get("train", [])]
        self.val = [tuple(r) for r in state.get("val", [])]
