"""Collecting runs: results records (local ``result.json`` files or W&B runs) checked, and each run
counted once (same config and seed = the same run, :func:`gfsa.runner.results.run_key`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gfsa.nn.layers import spec_tag
from gfsa.ops.report.match import match_view
from gfsa.runner import results as R

# Records read from W&B carry no metric directions: these names are lower-is-better.
LOWER_IS_BETTER = {"loss", "perplexity", "ppl", "mae", "mae_valid", "mse", "rmse", "wer", "cer"}
PRIMARY_GUESS = ("acc", "mcc", "f1", "spearman", "ap", "perplexity", "mae", "wer")


class ReportError(ValueError):
    """Bad input to ``gfsa report``: one line that names the fix (every stage of the report raises it)."""


@dataclass
class Run:
    """One run (deduplicated): its record and where it came from."""

    source: str
    record: dict
    key: str  # results.run_key: same config and seed = the same run
    group: str  # the run's config across seeds
    view: dict | None = None  # match_view of the config (computed once, in collect)

    @property
    def seed(self):
        return self.record.get("seed")

    @property
    def label(self) -> str:
        """``baseline``, ``gfsa[layers,K]`` or the compared method (``+gfsa[…]`` when combined)."""
        cfg = self.record["config"]
        variant = self.record.get("variant") or R.variant_name(cfg)
        g = cfg.get("gfsa") or {}
        gfsa = f"gfsa[{spec_tag(g.get('layers'))},K{g.get('K')}]"
        if variant == "baseline":
            return "baseline"
        if variant == "gfsa":
            return gfsa
        layers = g.get("layers")
        return variant + (f"+{gfsa}" if layers not in (None, "none", []) else "")

    def value(self, metric: str) -> float | None:
        entry = R.selected_metrics(self.record).get(metric)
        v = entry.get("value") if isinstance(entry, dict) else None
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def direction(self, metric: str, default: str = "up") -> str:
        entry = R.selected_metrics(self.record).get(metric)
        return entry.get("direction", default) if isinstance(entry, dict) else default


@dataclass
class Collected:
    runs: list[Run]
    read: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped, kept)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, why)


_HASHABLE = (str, int, float, bool, type(None))


def _valid(record: dict | None) -> str | None:
    """Why a parsed record cannot be reported (None when it can): the fields the report reads must
    have the types gfsa.runner.train writes, so a foreign or half-written record is skipped, not a crash."""
    if record is None:
        return "not a results record (unreadable JSON or another schema)"
    if record.get("status") == R.DIVERGED:
        where = record.get("diverged") if isinstance(record.get("diverged"), dict) else {}
        return f"diverged at step {where.get('step')} ({where.get('what', 'non-finite values')}): no result to compare"
    if record.get("status") != R.FINISHED:
        return f"status {record.get('status')!r}, not finished"
    cfg = record.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("backbone"), dict) or not isinstance(cfg.get("task"), dict):
        return "no resolved config"
    for group in ("backbone", "task"):
        if not isinstance(cfg[group].get("name"), str):
            return f"config.{group}.name is not a string"
    for group in ("gfsa", "method", "run"):
        if cfg.get(group) is not None and not isinstance(cfg[group], dict):
            return f"config.{group} is {type(cfg[group]).__name__}, not a mapping"
    if not isinstance((cfg.get("run") or {}).get("ignore", []), list):
        return "config.run.ignore is not a list"
    if not isinstance(record.get("metrics"), dict) or "pair_key" not in record:
        return "no metrics or pair_key"
    for key in ("backbone", "task"):
        if not isinstance(record.get(key), str):
            return f"no top-level {key} name"
    for key in ("pair_key", "seed", "variant", "primary_metric"):
        if not isinstance(record.get(key), _HASHABLE):
            return f"{key} is {type(record[key]).__name__}"
    for key in ("gfsa", "best"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            return f"{key} is {type(record[key]).__name__}, not a mapping"
    if not isinstance(record.get("timing", {}), dict):
        return f"timing is {type(record['timing']).__name__}, not a mapping"
    for name, entry in R.selected_metrics(record).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float, type(None))):
            return f"metric {name!r} is not a {{value, direction}} entry"
    return None


def collect(sources: Iterable[tuple]) -> Collected:
    """Deduplicate ``(source, record[, why unreadable])`` items: a run (same config and seed, i.e. the
    same :func:`gfsa.runner.results.run_key`) is counted once, keeping its newest record (``finished_at``)."""
    out = Collected(runs=[])
    by_key: dict[str, Run] = {}
    for source, record, *unreadable in sources:
        out.read += 1
        why = (unreadable[0] if unreadable and record is None and unreadable[0] else None) or _valid(record)
        if why:
            out.skipped.append((source, why))
            continue
        cfg = record["config"]
        try:  # anything _valid missed: a bad record is skipped, naming its file, not a crash of the report
            run = Run(source, record, R.run_key(cfg), R.run_key({**cfg, "seed": None}), match_view(cfg))
            _ = run.label, R.pair(record, record) if record.get("primary_metric") is not None else None
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            out.skipped.append((source, f"malformed record ({type(e).__name__}: {e})"))
            continue
        old = by_key.get(run.key)
        if old is None:
            by_key[run.key] = run
        elif str(record.get("finished_at", "")) > str(old.record.get("finished_at", "")):
            by_key[run.key] = run
            out.duplicates.append((old.source, source))
        else:
            out.duplicates.append((source, old.source))
    out.runs = list(by_key.values())
    return out


def local_records(dirs: Iterable[str | Path]) -> Iterable[tuple[str, dict | None, str | None]]:
    for d in dirs:
        p = Path(d)
        if not p.exists():
            raise ReportError(f"{p} does not exist: pass results directories (paths.results_dir of the runs)")
        for path, record, why in R.iter_record_files(p):
            yield str(path), record, why


def wandb_records(path: str) -> Iterable[tuple[str, dict | None]]:
    """Runs of a W&B project (``ENTITY/PROJECT``) as results records, from their config and summary.

    W&B keeps no metric directions: names in :data:`LOWER_IS_BETTER` count as lower-is-better, so a
    local record of the same run (same run_key) is always preferred.
    """
    import wandb

    for run in wandb.Api().runs(path):
        cfg = dict(run.config)
        summary = {k: v for k, v in dict(run.summary).items() if isinstance(v, (int, float))}
        if not isinstance(cfg.get("backbone"), dict) or not isinstance(cfg.get("task"), dict):
            yield run.url, None
            continue
        metrics = {
            k[4:]: {"value": v, "direction": "down" if k[4:] in LOWER_IS_BETTER else "up"}
            for k, v in summary.items()
            if k.startswith("val/")
        }
        primary = next((m for m in PRIMARY_GUESS if m in metrics), next(iter(metrics), None))
        yield (
            run.url,
            {
                "schema": R.SCHEMA,
                "status": "finished" if run.state == "finished" else run.state,
                "run_dir": run.url,
                "backbone": cfg["backbone"].get("name"),
                "task": cfg["task"].get("name"),
                "variant": R.variant_name(cfg),
                "seed": cfg.get("seed"),
                "pair_key": R.pair_key(cfg),
                "primary_metric": primary,
                "metrics": metrics,
                "gfsa": {"added_parameters": summary.get("added_parameters", 0)},
                "timing": {"step_time_s": summary.get("step_time_s")},
                "config": cfg,
                "finished_at": "",  # oldest possible: a local record of the same run (with directions) wins
            },
        )
