"""What a run selects by its task's metrics: the best checkpoint (``checkpoints/best.ckpt``), when to stop
early (the ``early_stopping`` block), and the objective a sweeper (Optuna, a W&B agent) gets back.

Every metric is named as the record names it (``acc``, ``test_mae``, ``ema_acc``; logged as ``val/<name>``)
and has the direction its task gives it.
"""

from __future__ import annotations

import math
from pathlib import Path

from gfsa.runner import results as R
from gfsa.utils.errors import ConfigError

BEST = "best.ckpt"
LAST = "last.ckpt"


def direction_of(task, name: str) -> str | None:
    """``up`` or ``down`` for a metric of ``task`` (the EMA model's ``ema_<name>`` as ``<name>``), None if unknown."""
    directions = task.directions
    if name in directions:
        return directions[name]
    return directions[name[len("ema_") :]] if name.startswith("ema_") and name[len("ema_") :] in directions else None


def _checked(task, option: str, name: str) -> str:
    direction = direction_of(task, name)
    if direction is None:
        known = ", ".join(sorted(task.directions))
        raise ConfigError(f"{option}={name}: {type(task).__name__} scores {known} (a metric name without val/)")
    return direction


def objective_name(cfg: dict, task) -> str:
    return cfg["run"]["objective"] or task.primary_metric


def check_metric_options(cfg: dict, task) -> None:
    """``early_stopping.monitor`` and ``run.objective`` name metrics the task scores (before training)."""
    if cfg["early_stopping"]["monitor"]:
        _checked(task, "early_stopping.monitor", cfg["early_stopping"]["monitor"])
    if cfg["run"]["objective"]:
        _checked(task, "run.objective", cfg["run"]["objective"])


def best_checkpoint(cfg: dict, task, ckpt_dir: Path):
    """``best.ckpt``: the weights of the best validation of the task's primary metric (what
    ``task.metric_select=best`` reports), beside ``last.ckpt`` (gfsa.runner.requeue owns that one).
    Overwritten in place (one file, no version suffix); its state rides in last.ckpt, so a resumed run
    keeps the best of every attempt."""
    from gfsa.runner.monitors import BestCheckpoint

    if not cfg["checkpoint"]:
        return None
    primary = task.primary_metric
    return BestCheckpoint(
        dirpath=str(ckpt_dir),
        filename=BEST.removesuffix(".ckpt"),
        monitor=f"val/{primary}",
        mode="max" if _checked(task, "task.primary_metric", primary) == "up" else "min",
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_on_train_epoch_end=False,  # at validation end: the weights that validation scored
    )


def early_stopping(cfg: dict, task):
    """Lightning's EarlyStopping from the ``early_stopping`` block (None when off). Non-finite values are
    the divergence guard's (a diverged run is recorded as such), so ``check_finite`` is off here."""
    from gfsa.runner.monitors import ScoredEarlyStopping

    es = cfg["early_stopping"]
    if es["patience"] is None and es["stopping_threshold"] is None:
        return None
    name = es["monitor"] or task.primary_metric
    return ScoredEarlyStopping(
        monitor=f"val/{name}",
        mode="max" if _checked(task, "early_stopping.monitor", name) == "up" else "min",
        patience=es["patience"] if es["patience"] is not None else 2**31 - 1,  # only the threshold stops it
        min_delta=float(es["min_delta"]),
        stopping_threshold=es["stopping_threshold"],
        check_finite=False,
        verbose=True,  # one line per validation: improved, or how long since it last did, then why it stopped
    )


def checkpoint_facts(rdir: Path, record: dict) -> dict:
    """The record's ``checkpoints``: which files hold the weights its ``metrics`` (the last validation)
    and ``best`` describe, with the epoch and step of the validation that scored them."""
    out = {}
    history = record["history"]
    if (rdir / "checkpoints" / LAST).is_file() and history:
        out["last"] = {"path": f"checkpoints/{LAST}", "epoch": history[-1]["epoch"], "step": history[-1]["step"]}
    primary = record["primary_metric"]
    if (rdir / "checkpoints" / BEST).is_file() and history and primary in record["best"]:
        # the first validation with the best value (ModelCheckpoint keeps the first too, replacing it only on
        # a strict improvement), among those that scored it in training: an ASR run's final evaluation of the
        # averaged model is not in best.ckpt
        sign = 1 if record["best"][primary]["direction"] == "up" else -1
        scored = [h for h in history if primary in h["metrics"] and "final" not in h]
        if scored:
            best = max(scored, key=lambda h: sign * h["metrics"][primary])
            out["best"] = {"path": f"checkpoints/{BEST}", "epoch": best["epoch"], "step": best["step"]}
    return out


def objective(record: dict | None, cfg: dict) -> float | None:
    """The value a sweeper optimises: ``run.objective`` (default: the primary metric) as
    ``task.metric_select`` picks it. None for a run that did not finish (diverged, a smoke run): Optuna
    marks the trial FAILED (a number such as 0 would be taken as a result)."""
    if not record or record["status"] != R.FINISHED:
        return None
    name = cfg["run"]["objective"] or record["primary_metric"]
    metrics = R.selected_metrics(record)
    if name not in metrics:
        raise ConfigError(f"run.objective={name}: this run recorded {', '.join(sorted(metrics))}")
    value = metrics[name]["value"]
    return float(value) if value is not None and math.isfinite(value) else None


def check_sweeper_direction(cfg: dict, name: str, direction: str) -> None:
    """Under a sweeper that optimises (Optuna), its direction agrees with the objective's, before anything
    trains: a search that maximised a loss would look like a working search."""
    try:
        from hydra.core.hydra_config import HydraConfig

        sweeper = HydraConfig.get().sweeper
    except ValueError:  # not under Hydra
        return
    if "direction" not in sweeper:  # the basic sweeper: no objective
        return
    want = sweeper.direction
    if not isinstance(want, (str, bytes)) and hasattr(want, "__len__"):
        if len(want) != 1:
            raise ConfigError(
                f"hydra.sweeper.direction={list(want)}: the suite returns one objective (run.objective); give one direction"
            )
        want = want[0]
    want = str(getattr(want, "name", want)).lower()
    right = "maximize" if direction == "up" else "minimize"
    if want != right:
        raise ConfigError(
            f"hydra.sweeper.direction={want} but the objective {name} is better {direction}: "
            f"set hydra.sweeper.direction={right} (or run.objective=<another metric>)"
        )
