"""Run directories, results records and baseline pairing.

Pure Python on purpose (no torch, no Lightning): reports and sweep bookkeeping read records fast.

- A run's directory is derived from its resolved config: same config, same directory, so a
  resubmitted job resumes or finds its finished record instead of training again.
- A record (``result.json``) is written atomically once a run finishes.
- A GFSA run is paired with the baseline that has the same config minus the ``gfsa`` group
  (same seed): that baseline's directory is computed, not searched for.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RECORD = "result.json"
SCHEMA = 1
# Keys that never change what a run computes: where data and outputs live, how it is logged.
DEFAULT_IGNORE = (
    "paths",
    "logger",
    "run",
    "with_baseline",
    "analysis",  # measurements taken during validation (gfsa/analysis.py) change nothing that is trained
    "task.data_dir",
    "task.num_workers",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
)
# Config groups that make a run a variant of its baseline.
VARIANT_GROUPS = ("gfsa", "method")
BASELINE_GFSA = {"layers": "none"}


def _drop(cfg: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)


def is_baseline(cfg: dict) -> bool:
    layers = (cfg.get("gfsa") or {}).get("layers", "none")
    method = (cfg.get("method") or {}).get("name", "none") if isinstance(cfg.get("method"), dict) else "none"
    no_layers = layers in (None, "none", "", []) or (isinstance(layers, str) and layers.strip() in ("[]",))
    return no_layers and method in (None, "none")


def variant_name(cfg: dict) -> str:
    """``baseline``, ``gfsa`` or the compared method's name."""
    if is_baseline(cfg):
        return "baseline"
    method = cfg.get("method")
    if isinstance(method, dict) and method.get("name") not in (None, "none"):
        return str(method["name"])
    return "gfsa"


def canonical(cfg: dict) -> dict:
    """The part of a resolved config that decides what a run computes."""
    c = copy.deepcopy(cfg)
    for key in list((cfg.get("run") or {}).get("ignore", [])) + list(DEFAULT_IGNORE):
        _drop(c, key)
    if is_baseline(c):  # GFSA settings of an unpatched model are irrelevant
        c["gfsa"] = dict(BASELINE_GFSA)
        c.pop("method", None)
    elif isinstance(c.get("method"), dict) and c["method"].get("name") in (None, "none"):
        c.pop("method")  # no compared method: its settings are irrelevant (and older records lack the group)
    return c


def _digest(obj: Any, n: int = 10) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def run_key(cfg: dict) -> str:
    return _digest(canonical(cfg))


def pair_key(cfg: dict) -> str:
    """Identifies a run's baseline family: the config minus variant groups and seed."""
    c = canonical(cfg)
    for g in (*VARIANT_GROUPS, "seed"):
        c.pop(g, None)
    return _digest(c)


def baseline_config(cfg: dict) -> dict:
    c = copy.deepcopy(cfg)
    c["gfsa"] = {**(c.get("gfsa") or {}), "layers": "none"}
    if isinstance(c.get("method"), dict):
        c["method"] = {**c["method"], "name": "none"}
    return c


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", str(s)).strip("-")


def _layers_tag(layers: Any) -> str:
    if isinstance(layers, (list, tuple)):
        return "L" + "_".join(str(i) for i in layers)
    return _slug(layers)


def run_dir(cfg: dict, root: str | Path | None = None) -> Path:
    """``<results>/<backbone>/<task>/<variant>-seed<seed>-<hash>``: readable, unique per config."""
    root = Path(root if root is not None else cfg.get("paths", {}).get("results_dir", "results"))
    variant = variant_name(cfg)
    if variant == "gfsa":
        g = cfg["gfsa"]
        variant = f"gfsa-{_layers_tag(g.get('layers'))}-K{g.get('K')}"
    name = f"{variant}-seed{cfg.get('seed')}-{run_key(cfg)}"
    return root / _slug(cfg["backbone"]["name"]) / _slug(cfg["task"]["name"]) / name


def run_id(path: str | Path) -> str:
    """A W&B-safe id derived from the run directory (a requeued job continues the same run)."""
    p = Path(path)
    return f"{p.name[-10:]}-{_digest(str(p.parent.parent.name) + '/' + p.parent.name, 6)}"


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_record(path: str | Path) -> dict | None:
    """The record in a run directory (or the record file itself), None if absent or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def iter_records(root: str | Path) -> Iterator[tuple[Path, dict | None]]:
    """Every ``result.json`` under ``root`` with its parsed record (None when corrupt/foreign)."""
    root = Path(root)
    if root.is_file():
        yield root, load_record(root)
        return
    for path in sorted(root.rglob(RECORD)):
        yield path, load_record(path)


def improvement(value: float, baseline: float, direction: str) -> tuple[float | None, float | None]:
    """(relative %, absolute) improvement of ``value`` over ``baseline``; positive = better."""
    if value is None or baseline is None or not all(map(math.isfinite, (value, baseline))):
        return None, None
    sign = 1.0 if direction == "up" else -1.0
    diff = sign * (value - baseline)
    pct = 100.0 * diff / abs(baseline) if baseline != 0 else None
    return pct, diff


def selected_metrics(record: dict) -> dict:
    """The metrics that comparisons use: last or best validation, as the task selects."""
    return record.get("best") if record.get("selected_by") == "best" and record.get("best") else record["metrics"]


def pair(record: dict, baseline: dict) -> dict:
    """The comparison of a variant's record with its baseline's, for its primary metric."""
    name = record["primary_metric"]
    ours, base = selected_metrics(record).get(name), selected_metrics(baseline).get(name)
    if ours is None or base is None:
        return {"baseline_run": baseline.get("run_dir"), "metric": name, "improvement_pct": None}
    pct, diff = improvement(ours["value"], base["value"], ours["direction"])
    t_ours, t_base = record.get("timing", {}).get("step_time_s"), baseline.get("timing", {}).get("step_time_s")
    overhead = 100.0 * (t_ours / t_base - 1.0) if t_ours and t_base else None
    return {
        "baseline_run": baseline.get("run_dir"),
        "metric": name,
        "direction": ours["direction"],
        "value": ours["value"],
        "baseline_value": base["value"],
        "improvement_pct": pct,
        "improvement_abs": diff,
        "step_time_overhead_pct": overhead,
    }


def complete_pairings(baseline: dict, root: str | Path) -> list[Path]:
    """A baseline that finishes after its variants fills in their comparison; returns those updated."""
    updated = []
    task_dir = Path(baseline["run_dir"]).parent
    if not task_dir.is_dir():
        task_dir = Path(root)
    for path, rec in iter_records(task_dir):
        if (
            rec is None
            or rec.get("variant") == "baseline"
            or rec.get("pair_key") != baseline.get("pair_key")
            or rec.get("seed") != baseline.get("seed")
            or (rec.get("comparison") or {}).get("improvement_pct") is not None
        ):
            continue
        rec["comparison"] = pair(rec, baseline)
        atomic_write_json(path, rec)
        updated.append(path)
    return updated
