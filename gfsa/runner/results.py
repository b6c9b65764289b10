"""Run directories, results records and baseline pairing.

Pure Python on purpose (no torch, no Lightning): reports and sweep bookkeeping read records fast.

- A run's directory is derived from its resolved config: same config, same directory, so a
  resubmitted job resumes or finds its finished record instead of training again.
- A record (``result.json``) is written atomically, in strict JSON, once a run finishes or diverges
  (``status``: ``finished`` | ``diverged``); only finished runs are compared.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gfsa.nn.layers import spec_tag
from gfsa.utils.files import atomic_write, dumps_json, finite

RECORD = "result.json"
SCHEMA = 1
FINISHED, DIVERGED = "finished", "diverged"
TERMINAL = (FINISHED, DIVERGED)  # a run in either state is never trained again by the same command
# Keys that never change what a run computes: where data and outputs live, how it is logged.
DEFAULT_IGNORE = (
    "paths",
    "logger",
    "run",
    "with_baseline",
    "resume",
    "callbacks",  # callbacks observe a run (measurements, logs); what changes training is configured elsewhere
    "task.data_dir",
    "task.num_workers",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
)
# Keys added to the config after runs were recorded without them, each with the value that computes what
# those runs computed: at that value a key stays out of the run's identity, so older run directories keep
# matching their configs (tests/data/run_dirs.json pins the run directories of every preset).
ADDED_KEYS: dict[str, Any] = {
    "optim.no_decay": ["1d", "model"],  # every run exempted 1-D parameters and timm's no_weight_decay()
    "backbone.edge_type": "multi_hop",  # Graphormer's edge encoding
    "task.eval_interpolation": None,  # ImageNet: the eval resize used task.interpolation
    "task.flag": {"enabled": False, "m": 3, "step_size": 1.0e-3, "mag": 1.0e-3},  # graph tasks: no FLAG
    # LibriSpeech: Kaldi's 25 ms / 512-point fbank, no speed perturbation, no time warping, fixed-size batches, WER at
    # every validation, no checkpoint averaging, no final evaluation, no language model
    "task.window_ms": 25,
    "task.n_fft": 512,
    "task.speed_perturb": [],
    "task.specaugment.time_warp": 0,
    "task.dynamic_batching": {"max_seconds": None, "max_items": 128, "buckets": 200},
    "task.decode_every": 1,
    "task.average_checkpoints": 0,
    "task.average_by": "acc",
    "task.test_decoding": None,
    "task.lm_checkpoint": None,
    # conf/config.yaml's early_stopping block, off (config.normalise resets its other keys when off).
    "early_stopping": {"patience": None, "min_delta": 0.0, "monitor": None, "stopping_threshold": None},
}
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


_MISSING = object()


def _get(cfg: dict, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


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
    for key, neutral in ADDED_KEYS.items():
        if _get(c, key, _MISSING) == neutral:
            _drop(c, key)
    if _get(c, "optim.weight_decay") == 0:  # without weight decay, which parameters are exempt is irrelevant
        _drop(c, "optim.no_decay")
    if is_baseline(c):  # GFSA settings of an unpatched model are irrelevant
        c["gfsa"] = dict(BASELINE_GFSA)
        c.pop("method", None)
    elif isinstance(c.get("method"), dict) and c["method"].get("name") in (None, "none"):
        c.pop("method")  # no compared method: its settings are irrelevant (and older records lack the group)
    return c


def digest(obj: Any, n: int = 10) -> str:
    """The first ``n`` hex digits of the SHA-1 of ``obj`` as canonical JSON (sorted keys): short, stable ids."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def run_key(cfg: dict) -> str:
    return digest(canonical(cfg))


def pair_key(cfg: dict) -> str:
    """Identifies a run's baseline family: the config minus variant groups and seed."""
    c = canonical(cfg)
    for g in (*VARIANT_GROUPS, "seed"):
        c.pop(g, None)
    return digest(c)


def baseline_config(cfg: dict) -> dict:
    c = copy.deepcopy(cfg)
    c["gfsa"] = {**(c.get("gfsa") or {}), "layers": "none"}
    if isinstance(c.get("method"), dict):
        c["method"] = {**c["method"], "name": "none"}
    return c


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", str(s)).strip("-")


def run_dir(cfg: dict, root: str | Path | None = None) -> Path:
    """``<results>/<backbone>/<task>/<variant>-seed<seed>-<hash>``: readable, unique per config."""
    root = Path(root if root is not None else cfg.get("paths", {}).get("results_dir", "results"))
    variant = variant_name(cfg)
    if variant == "gfsa":
        g = cfg["gfsa"]
        variant = f"gfsa-{spec_tag(g.get('layers'))}-K{g.get('K')}"
    name = f"{variant}-seed{cfg.get('seed')}-{run_key(cfg)}"
    return root / _slug(cfg["backbone"]["name"]) / _slug(cfg["task"]["name"]) / name


def run_id(path: str | Path) -> str:
    """A W&B-safe id derived from the run directory (a requeued job continues the same run)."""
    p = Path(path)
    return f"{p.name[-10:]}-{digest(str(p.parent.parent.name) + '/' + p.parent.name, 6)}"


def write_record(rdir: str | Path, record: dict) -> Path:
    """Write ``result.json`` atomically in strict JSON: a NaN or infinity becomes null and its place is
    listed under ``non_finite`` (JSON has no NaN; strict parsers reject Python's bare ``NaN``)."""
    clean, bad = finite({k: v for k, v in record.items() if k != "non_finite"})
    if bad:
        clean["non_finite"] = bad
    return atomic_write(Path(rdir) / RECORD, dumps_json(clean))


def read_record(path: str | Path) -> tuple[dict | None, str | None]:
    """(record, None), or (None, why it cannot be read) for a run directory or a record file.

    ``run_dir`` is where the record is now: a results dir that was copied or moved names its runs by
    their new place (the old one is kept as ``recorded_run_dir``)."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no result.json"
    except PermissionError:
        return None, "permission denied (ask its owner to make it readable: chmod a+r)"
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    except ValueError as e:
        return None, f"not JSON ({e})"
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None, "not a results record of this suite (another schema)"
    here = str(path.parent)
    recorded = data.get("run_dir")
    if isinstance(recorded, str) and os.path.abspath(recorded) != os.path.abspath(here):
        data["recorded_run_dir"] = recorded
        data["run_dir"] = here
    return data, None


def load_record(path: str | Path) -> dict | None:
    """The record in a run directory (or the record file itself), None if absent or unreadable."""
    return read_record(path)[0]


def iter_records(root: str | Path) -> Iterator[tuple[Path, dict | None]]:
    """Every ``result.json`` under ``root`` with its parsed record (None when corrupt/foreign)."""
    for path, record, _ in iter_record_files(root):
        yield path, record


def iter_record_files(root: str | Path) -> Iterator[tuple[Path, dict | None, str | None]]:
    """Every ``result.json`` under ``root``: (path, record or None, why it could not be read)."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(root.rglob(RECORD))
    for path in paths:
        record, why = read_record(path)
        yield path, record, why


def data_fingerprint(data_dir: str | Path | None, max_entries: int = 2_000_000) -> dict | None:
    """What a dataset directory holds, cheaply: files to depth 4 (names only, no stat) and the bytes
    of the files in its top two levels (where text, table and archive datasets keep their data; an
    image tree's millions of files are counted, not stat-ed). A changed dataset changes it."""
    if not data_dir:
        return None
    root = Path(str(data_dir)).expanduser()
    if not root.is_dir():
        return {"path": str(root), "files": 0, "bytes": 0} if root.exists() else None
    files = size = seen = 0
    stack = [(root, 0)]
    while stack:
        d, depth = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            seen += 1
            if seen > max_entries:
                return {"path": str(root.resolve()), "files": files, "bytes": size, "partial": True}
            if e.is_dir(follow_symlinks=True):
                if depth < 3:
                    stack.append((Path(e.path), depth + 1))
            elif e.is_file(follow_symlinks=True):
                files += 1
                if depth < 2:
                    try:
                        size += e.stat().st_size
                    except OSError:
                        pass
    return {"path": str(root.resolve()), "files": files, "bytes": size}


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


def not_comparable(record: dict, baseline: dict) -> str | None:
    """Why two runs cannot be compared (None if they can): only finished runs have results."""
    for who, rec in (("this run", record), ("the baseline", baseline)):
        status = rec.get("status")
        if status == DIVERGED:
            where = rec.get("diverged") or {}
            return f"{who} diverged at step {where.get('step')} ({where.get('what', 'non-finite values')})"
        if status != FINISHED:
            return f"{who} has not finished (status {status!r})"
    return None


def pair(record: dict, baseline: dict) -> dict:
    """The comparison of a variant's record with its baseline's, for its primary metric; no
    improvement % when either run diverged or has not finished."""
    name = record["primary_metric"]
    why = not_comparable(record, baseline)
    if why:
        return {"baseline_run": baseline.get("run_dir"), "metric": name, "improvement_pct": None, "not_compared": why}
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
    if baseline.get("status") != FINISHED:
        return updated
    task_dir = Path(baseline["run_dir"]).parent
    if not task_dir.is_dir():
        task_dir = Path(root)
    for path, rec in iter_records(task_dir):
        if (
            rec is None
            or rec.get("variant") == "baseline"
            or rec.get("status") != FINISHED
            or rec.get("pair_key") != baseline.get("pair_key")
            or rec.get("seed") != baseline.get("seed")
            or (rec.get("comparison") or {}).get("improvement_pct") is not None
        ):
            continue
        rec["comparison"] = pair(rec, baseline)
        write_record(path.parent, rec)
        updated.append(path)
    return updated
