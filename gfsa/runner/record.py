"""What a finished (or diverged) run's results record holds: metrics with their directions, the last and
best validation, history, GFSA layers and coefficients, timing over every attempt, the resolved config,
the code's revision and the library versions."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

from gfsa.runner import results as R
from gfsa.utils.resources import SOURCE_ROOT


def git_revision() -> dict:
    """The suite's own commit, from a checkout (or editable install) only: a wheel in a venv that sits
    inside some other git repository must not record that repository's commit."""
    root = SOURCE_ROOT
    unknown = {"revision": None, "dirty": None}
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        lines = rev.stdout.split()
        if rev.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != Path(root).resolve():
            return unknown
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return unknown
    return {"revision": lines[1], "dirty": bool(dirty.stdout.strip())}


def versions() -> dict:
    import lightning
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__}


def coefficients(model) -> dict:
    """Final GFSA coefficients per patched layer, for the record and the analysis."""
    from gfsa.nn.attention import GFSACoefficients

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, GFSACoefficients):
            out[name] = {c: getattr(m, c).detach().cpu().tolist() for c in ("w0", "w1", "wK")}
    return out


def build_record(cfg, rdir, rid, variant, task, model, facts, history, timer, trainer, preemption) -> dict:
    directions = task.directions

    def with_direction(metrics: dict) -> dict:
        return {k: {"value": v, "direction": directions.get(k, "up")} for k, v in metrics.items()}

    primary = task.primary_metric
    sign = 1 if directions.get(primary, "up") == "up" else -1
    last = history.history[-1]["metrics"] if history.history else {}
    best = (
        max(history.history, key=lambda h: sign * h["metrics"].get(primary, float("-inf") * sign))
        if history.history
        else None
    )
    devices = trainer.world_size
    timing = timer.summary(trainer.strategy.root_device)
    timing["wall_time_s"] = round(preemption.wall_time(), 2)
    timing["attempts"] = preemption.attempts
    per_step = getattr(task, "samples_per_step", None)  # None: batches vary (the epoch timing counts samples)
    if timing["step_time_s"] and per_step:  # the timer measures micro-batches: per_step × devices samples each
        timing["samples_per_s"] = round(per_step * devices / timing["step_time_s"], 2)
    for cb in trainer.callbacks:  # callbacks may contribute entries (e.g. seconds per validation epoch)
        if callable(getattr(cb, "timing", None)):
            timing.update(cb.timing())
    data = dict(getattr(task, "data_report", None) or {})  # what loading skipped, e.g. unparseable molecules
    fingerprint = R.data_fingerprint(cfg["task"]["data_dir"])  # rank 0 only: the one that writes the record
    if fingerprint:
        data["fingerprint"] = fingerprint
    record = {
        "schema": R.SCHEMA,
        "status": R.FINISHED,
        "run_dir": str(rdir),
        "run_id": rid,
        "backbone": cfg["backbone"]["name"],
        "task": cfg["task"]["name"],
        "variant": variant,
        "seed": cfg["seed"],
        "pair_key": R.pair_key(cfg),
        "primary_metric": primary,
        "selected_by": cfg["task"]["metric_select"],
        "metrics": with_direction(last),
        "best": (with_direction(best["metrics"]) | {"_epoch": {"value": best["epoch"], "direction": "up"}})
        if best
        else {},
        "history": history.history,
        "gfsa": {**facts, "coefficients": coefficients(model)},
        "data": data,
        "timing": timing,
        "world_size": devices,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "config": cfg,
        "git": git_revision(),
        "versions": versions(),
        "host": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    groups = getattr(trainer.lightning_module, "weight_decay_groups", None)
    if groups:  # which parameters the optimizer decayed (optim.no_decay), as the recipe built its groups
        record["weight_decay_groups"] = groups
    if variant != "baseline":
        baseline = R.load_record(R.run_dir(R.baseline_config(cfg)))
        record["comparison"] = R.pair(record, baseline) if baseline else None
    return record
