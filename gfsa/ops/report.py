"""``gfsa report``: our results beside the baselines and the paper's numbers.

Reads results records (``result.json`` under the given directories, or W&B runs), counts each run
once, pairs every GFSA or compared-method run with its baseline by config (``pair_key`` + seed, as
:mod:`gfsa.runner.results` does), aggregates over seeds and sets the paper's numbers (``experiments/*.yaml``)
beside ours. Writes Markdown + CSV tables and PNG charts, prints the tables with rich, and can publish
a W&B report. Pure Python + Hydra + matplotlib: no torch model code, no Lightning.

How a record finds its paper cell: the cell's overrides are composed with Hydra (cached on disk,
keyed by the contents of conf/ and the overrides) and both configs are reduced to
:func:`gfsa.runner.results.canonical` minus the seed and :data:`MATCH_IGNORE` (devices, per-device batch,
precision, …: how a run was executed, not what it computes). A record matches a cell when
``backbone.name`` and ``task.name`` agree and every key present in both configs has the same value
(keys only one side has, e.g. options added to conf/ after a run, are not compared). One record may
fill several cells (MNLI's two dev sets); a record that matches no cell goes to the generic table.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gfsa.nn.layers import spec_tag
from gfsa.ops.tables import EXPERIMENTS_DIR, Cell, Table, TableError, load_tables
from gfsa.runner import results as R
from gfsa.utils.files import atomic_write_json, unwritable
from gfsa.utils.resources import conf_dir

CONF_DIR = conf_dir()
# How a run was executed, not what it computes: ignored when matching records to paper cells.
MATCH_IGNORE = (
    "seed",
    "checkpoint",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "trainer.deterministic",
    "trainer.benchmark",
    "trainer.enable_checkpointing",
    "task.batch_size",
    "task.eval_batch_size",
    "gfsa.impl",
)
DOMAINS = (  # table name prefix → the domain of the paper's Figure 1
    ("glue", "NLU (GLUE)"),
    ("compared_glue", "NLU (GLUE)"),
    ("causal_lm", "Causal LM"),
    ("imagenet", "Vision"),
    ("compared_imagenet", "Vision"),
    ("graph", "Graph"),
    ("speech", "Speech"),
    ("code", "Code"),
)
# Records read from W&B carry no metric directions: these names are lower-is-better.
LOWER_IS_BETTER = {"loss", "perplexity", "ppl", "mae", "mae_valid", "mse", "rmse", "wer", "cer"}
PRIMARY_GUESS = ("acc", "mcc", "f1", "spearman", "ap", "perplexity", "mae", "wer")


class ReportError(ValueError):
    """Bad input to ``gfsa report``: one line that names the fix."""


# --------------------------------------------------------------------------------------------------
# collecting runs


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


# --------------------------------------------------------------------------------------------------
# matching records to paper cells


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: node}


def match_view(cfg: dict) -> dict:
    """The flattened config that matching compares (see the module docstring)."""
    flat = _flat(R.canonical(cfg))
    view = {k: v for k, v in flat.items() if not any(k == i or k.startswith(i + ".") for i in MATCH_IGNORE)}
    return view | {"_variant": R.variant_name(cfg)}  # compared always: a group only one side has is skipped


def matches(cell_view: dict, run_view: dict) -> bool:
    for key in ("backbone.name", "task.name", "_variant"):
        if key not in cell_view or cell_view.get(key) != run_view.get(key):
            return False
    return all(run_view[k] == v for k, v in cell_view.items() if k in run_view)


@functools.cache
def _yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _choices(defaults: list) -> dict[str, str]:
    """Group choices of a defaults list (``- task: x`` / ``- override /task: x``)."""
    out = {}
    for item in defaults or []:
        if isinstance(item, dict):
            for k, v in item.items():
                out[str(k).replace("override ", "").strip().lstrip("/")] = v
    return out


def _preset_choices(name: str, seen: frozenset = frozenset()) -> dict[str, str]:
    data = _yaml(CONF_DIR / "preset" / f"{name}.yaml")
    out = {}
    for item in data.get("defaults") or []:  # inherited presets first, their overrides after
        if isinstance(item, str) and item.startswith("/preset/") and item not in seen:
            out |= _preset_choices(item[len("/preset/") :], seen | {item})
    return out | _choices(data.get("defaults"))


def cell_names(cell: Cell) -> tuple[str, str] | None:
    """(backbone.name, task.name) a cell composes to, read from conf/ without Hydra; None if unsure.

    Only a pre-filter (cells whose names differ from every record's are not composed): command-line
    group overrides win over an experiment's defaults, which win over config.yaml's."""
    choice = _choices(_yaml(CONF_DIR / "config.yaml").get("defaults"))
    cli = {}
    for o in cell.overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key == "preset":
            choice |= _preset_choices(value)
        elif key in ("backbone", "task"):
            cli[key] = value
        elif key in ("backbone.name", "task.name"):
            return None
    choice |= cli
    names = []
    for group in ("backbone", "task"):
        if group not in choice:
            return None
        names.append(_yaml(CONF_DIR / group / f"{choice[group]}.yaml").get("name", choice[group]))
    return names[0], names[1]


def _conf_digest() -> str:
    h = hashlib.sha1()
    for p in sorted(CONF_DIR.rglob("*.yaml")):
        h.update(str(p.relative_to(CONF_DIR)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "gfsa" / "cell-configs.json"


def cell_views(cells: list[Cell]) -> dict[tuple[str, ...], dict]:
    """Composed and reduced configs of ``cells`` (one per distinct override list), cached on disk."""
    digest = _conf_digest()
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
        cache = cache if cache.get("digest") == digest else {}
    except (OSError, ValueError, AttributeError):
        cache = {}
    views = dict(cache.get("views") or {})
    todo = sorted({c.overrides for c in cells if json.dumps(c.overrides) not in views})
    if todo:
        from hydra import compose, initialize_config_dir
        from hydra.errors import HydraException
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            for overrides in todo:
                try:
                    cfg = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
                    views[json.dumps(overrides)] = match_view(cfg)
                except (HydraException, OmegaConfBaseException) as e:
                    views[json.dumps(overrides)] = {"_error": str(e).splitlines()[0]}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"digest": digest, "views": views})
        except OSError:
            pass  # a read-only home: the report still works, only slower next time
    return {c.overrides: views[json.dumps(c.overrides)] for c in cells}


# --------------------------------------------------------------------------------------------------
# aggregation


@dataclass
class Stat:
    mean: float
    std: float | None  # sample standard deviation; None for a single value
    n: int


def stat(values: Iterable[float | None]) -> Stat | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


@dataclass
class Row:
    """One line of a table: a paper cell, or a group of runs of one config (generic table)."""

    table: str
    row: str
    column: str
    variant: str
    metric: str
    direction: str
    value: Stat | None = None  # in the table's units (paper units for paper tables)
    paper: float | None = None
    baseline: Stat | None = None
    gain_pct: Stat | None = None  # relative %, over paired seeds, positive = better
    gain_abs: Stat | None = None  # absolute, table units
    paper_gain: float | None = None  # the paper's gain in the table's convention
    paper_gain_pct: float | None = None  # the paper's gain as relative % (Figure 1), whatever the table prints
    overhead_pct: Stat | None = None  # step time vs the baseline
    added_parameters: int | None = None
    runs: list[Run] = field(default_factory=list)
    domain: str = ""
    improvement: str = "relative"

    @property
    def vs_paper(self) -> float | None:
        return None if self.value is None or self.paper is None else self.value.mean - self.paper

    @property
    def gain(self) -> Stat | None:
        """Our gain in the table's convention (relative % or absolute points)."""
        return self.gain_pct if self.improvement == "relative" else self.gain_abs

    @property
    def gain_vs_paper(self) -> float | None:
        return None if self.gain is None or self.paper_gain is None else self.gain.mean - self.paper_gain


def _domain(table: Table) -> str:
    return next((d for prefix, d in DOMAINS if table.name.startswith(prefix)), table.title)


def _pairs(runs: list[Run], baselines: dict, metric: str, direction: str, scale: float):
    """Per-seed (gain %, gain abs × scale, step-time overhead %) against the paired baselines."""
    out = []
    for run in runs:
        base = baselines.get((run.record.get("pair_key"), run.seed))
        if base is None:
            continue
        ours, theirs = run.value(metric), base.value(metric)
        pct, diff = R.improvement(ours, theirs, direction)
        cmp = R.pair(run.record, base.record)
        out.append((pct, None if diff is None else diff * scale, cmp.get("step_time_overhead_pct")))
    return out


def _fill(row: Row, runs: list[Run], baselines: dict, scale: float) -> None:
    row.runs = sorted(runs, key=lambda r: str(r.seed))
    row.value = stat(r.value(row.metric) * scale if r.value(row.metric) is not None else None for r in runs)
    if row.variant != "baseline":
        pairs = _pairs(runs, baselines, row.metric, row.direction, scale)
        row.gain_pct, row.gain_abs = stat(p[0] for p in pairs), stat(p[1] for p in pairs)
        row.overhead_pct = stat(p[2] for p in pairs)
        bases = [baselines.get((r.record.get("pair_key"), r.seed)) for r in runs]
        row.baseline = stat(
            b.value(row.metric) * scale if b and b.value(row.metric) is not None else None for b in bases
        )
    params = [(r.record.get("gfsa") or {}).get("added_parameters") for r in runs]
    row.added_parameters = next((p for p in params if p is not None), None)


@dataclass
class Report:
    tables: dict[str, tuple[Table, list[Row]]]
    generic: list[Row]
    collected: Collected
    warnings: list[str]


def _cell_runs(cell: Cell, view: dict, runs: list[Run], run_views: dict, matched: set, warnings: list) -> list[Run]:
    """The runs that fill ``cell``, one per seed (the newest when two configs match the same seed);
    every matching run joins ``matched`` (it stays out of the generic table)."""
    by_seed: dict = {}
    for r in runs:
        if not matches(view, run_views[r.key]) or r.value(cell.metric) is None:
            continue
        matched.add(r.key)
        kept = by_seed.get(r.seed)
        if kept is not None:
            warnings.append(f"cell {cell.id} seed {r.seed}: {r.source} and {kept.source} both match; kept the newest")
            if str(r.record.get("finished_at", "")) <= str(kept.record.get("finished_at", "")):
                continue
        by_seed[r.seed] = r
    return list(by_seed.values())


def build(collected: Collected, tables: dict[str, Table], only: list[str] | None = None) -> Report:
    """Every paper table with at least one matching run (or those named in ``only``, even if empty)
    and the generic table of runs that match no cell."""
    runs = collected.runs
    warnings = [f"skipped {src}: {why}" for src, why in collected.skipped]
    warnings += [
        f"duplicate {drop} (same config and seed as {keep}): counted once" for drop, keep in collected.duplicates
    ]
    baselines = {(r.record.get("pair_key"), r.seed): r for r in runs if r.record.get("variant") == "baseline"}
    names = {(r.record["config"]["backbone"].get("name"), r.record["config"]["task"].get("name")) for r in runs}
    candidates = []
    for t in tables.values():
        for c in t.cells:
            pre = cell_names(c)
            if pre is None or pre in names:
                candidates.append(c)
    views = cell_views(candidates) if candidates and runs else {}
    run_views = {r.key: r.view if r.view is not None else match_view(r.record["config"]) for r in runs}
    matched: set[str] = set()
    out: dict[str, tuple[Table, list[Row]]] = {}
    for t in tables.values():
        rows = []
        for cell in t.cells:
            view = views.get(cell.overrides)
            if view and "_error" in view:
                warnings.append(f"cell {cell.id} does not compose: {view['_error']}")
                view = None
            cell_runs = _cell_runs(cell, view, runs, run_views, matched, warnings) if view else []
            row = Row(
                t.name,
                cell.row,
                cell.column,
                cell.variant,
                cell.metric,
                t.direction,
                paper=cell.paper,
                domain=_domain(t),
                improvement=t.improvement,
            )
            base_cell = next((c for c in t.select([cell.row], [cell.column], ["baseline"])), None)
            if cell.variant != "baseline" and base_cell is not None and cell.paper is not None:
                pct, diff = R.improvement(cell.paper, base_cell.paper, t.direction)
                row.paper_gain, row.paper_gain_pct = (pct if t.improvement == "relative" else diff), pct
            _fill(row, cell_runs, baselines, t.scale)
            rows.append(row)
        if (only and t.name in only) or (not only and any(r.runs for r in rows)):
            out[t.name] = (t, rows)
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.key not in matched:
            groups[r.group].append(r)
    generic = []
    for members in groups.values():
        first = members[0]
        metric = first.record.get("primary_metric")
        if metric is None:
            continue
        row = Row(
            "other",
            first.record["backbone"],
            first.record["task"],
            first.label,
            metric,
            first.direction(metric),
            domain=f"task: {first.record['task']}",
        )
        _fill(row, members, baselines, 1.0)
        generic.append(row)
    generic.sort(key=lambda r: (r.row, r.column, r.variant != "baseline", r.variant))
    return Report(out, generic, collected, warnings)


# --------------------------------------------------------------------------------------------------
# rendering


def _digits(v: float) -> int:
    a = abs(v)
    return 2 if a >= 10 else 3 if a >= 1 else 4


def _num(v: float | None, signed: bool = False, digits: int | None = None) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    d = _digits(v) if digits is None else digits
    return f"{v:+.{d}f}" if signed else f"{v:.{d}f}"


def _pm(s: Stat | None, signed: bool = False) -> str:
    """``mean ± std`` with the std at the mean's precision; ``missing`` when there is no run."""
    if s is None:
        return "missing"
    d = _digits(s.mean)
    return _num(s.mean, signed, d) + (f" ± {_num(s.std, digits=d)}" if s.std is not None else "")


PAPER_COLUMNS = (
    "row",
    "column",
    "variant",
    "n",
    "ours",
    "paper",
    "Δ paper",
    "gain %",
    "gain pts",
    "paper gain",
    "Δ gain",
)
GENERIC_COLUMNS = (
    "backbone",
    "task",
    "variant",
    "metric",
    "n",
    "ours",
    "baseline",
    "gain %",
    "gain abs",
    "+params",
    "time Δ %",
)


def paper_cells(row: Row) -> list[str]:
    n = len(row.runs)
    return [
        row.row,
        row.column,
        row.variant,
        str(n),
        _pm(row.value),
        _num(row.paper),
        _num(row.vs_paper, True, None if row.paper is None else _digits(row.paper)),
        "" if row.variant == "baseline" else _pm(row.gain_pct, True),
        "" if row.variant == "baseline" else _pm(row.gain_abs, True),
        "" if row.variant == "baseline" else _num(row.paper_gain, True),
        "" if row.variant == "baseline" else _num(row.gain_vs_paper, True),
    ]


def generic_cells(row: Row) -> list[str]:
    base = row.variant == "baseline"
    return [
        row.row,
        row.column,
        row.variant,
        f"{row.metric} ({row.direction})",
        str(len(row.runs)),
        _pm(row.value),
        "" if base else _pm(row.baseline),
        "" if base else _pm(row.gain_pct, True),
        "" if base else _pm(row.gain_abs, True),
        str(row.added_parameters or 0),
        "" if base else _pm(row.overhead_pct, True),
    ]


def _caption(table: Table) -> str:
    unit = "relative %" if table.improvement == "relative" else "absolute points"
    return (
        f"{table.title} — values × {table.scale:g} (paper units), {table.direction} is better; "
        f"paper gain and Δ gain in {unit}; mean ± std over seeds, gains over seeds paired with their baseline"
    )


def markdown(columns: Iterable[str], rows: list[list[str]]) -> str:
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


CSV_FIELDS = (
    "table",
    "row",
    "column",
    "variant",
    "metric",
    "direction",
    "n",
    "mean",
    "std",
    "paper",
    "vs_paper",
    "baseline_mean",
    "gain_pct_mean",
    "gain_pct_std",
    "gain_abs_mean",
    "gain_abs_std",
    "pairs",
    "paper_gain",
    "gain_vs_paper",
    "step_time_overhead_pct",
    "added_parameters",
    "seeds",
    "runs",
)


def csv_row(row: Row) -> dict:
    def m(s):
        return None if s is None else s.mean

    def sd(s):
        return None if s is None else s.std

    return {
        "table": row.table,
        "row": row.row,
        "column": row.column,
        "variant": row.variant,
        "metric": row.metric,
        "direction": row.direction,
        "n": len(row.runs),
        "mean": m(row.value),
        "std": sd(row.value),
        "paper": row.paper,
        "vs_paper": row.vs_paper,
        "baseline_mean": m(row.baseline),
        "gain_pct_mean": m(row.gain_pct),
        "gain_pct_std": sd(row.gain_pct),
        "gain_abs_mean": m(row.gain_abs),
        "gain_abs_std": sd(row.gain_abs),
        "pairs": row.gain_pct.n if row.gain_pct else 0,
        "paper_gain": row.paper_gain,
        "gain_vs_paper": row.gain_vs_paper,
        "step_time_overhead_pct": m(row.overhead_pct),
        "added_parameters": row.added_parameters,
        "seeds": " ".join(str(r.seed) for r in row.runs),
        "runs": " ".join(r.source for r in row.runs),
    }


def write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow(csv_row(row))


def print_tables(report: Report, console=None) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    if console is None:  # a pipe or CI log: wide enough that numbers are not cut
        console = Console()
        console = console if console.is_terminal else Console(width=200)
    for table, rows in report.tables.values():
        t = RichTable(title=f"{table.name}: {table.title}", caption=_caption(table))
        for c in PAPER_COLUMNS:
            t.add_column(c, justify="left" if c in ("row", "column", "variant") else "right")
        for row in rows:  # Text: labels like gfsa[all,K3] are not rich markup
            t.add_row(*map(Text, paper_cells(row)), style="dim" if not row.runs else None)
        console.print(t)
    if report.generic:
        t = RichTable(title="runs that match no paper cell, per backbone/task (raw metric units)")
        for c in GENERIC_COLUMNS:
            t.add_column(c, justify="left" if c in ("backbone", "task", "variant", "metric") else "right")
        for row in report.generic:
            t.add_row(*map(Text, generic_cells(row)))
        console.print(t)
    c = report.collected
    console.print(
        f"{len(c.runs)} runs from {c.read} records ({len(c.duplicates)} duplicates counted once, "
        f"{len(c.skipped)} skipped)"
    )


# --------------------------------------------------------------------------------------------------
# charts


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_domains(report: Report, path: Path) -> Path | None:
    """The paper's Figure 1 as bars: GFSA's mean improvement % per domain, ours vs the paper's
    (over the same cells; generic runs appear by task, ours only)."""
    ours: dict[str, list[float]] = defaultdict(list)
    paper: dict[str, list[float]] = defaultdict(list)
    for _, rows in report.tables.values():
        for row in rows:
            if row.variant == "gfsa" and row.gain_pct is not None:
                ours[row.domain].append(row.gain_pct.mean)
                if row.paper_gain_pct is not None:
                    paper[row.domain].append(row.paper_gain_pct)
    for row in report.generic:
        if row.variant.startswith("gfsa") and row.gain_pct is not None:
            ours[row.domain].append(row.gain_pct.mean)
    if not ours:
        return None
    plt = _plt()
    domains = sorted(ours)
    x = range(len(domains))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(domains)), 3.8))
    ax.bar([i - 0.2 for i in x], [statistics.fmean(ours[d]) for d in domains], 0.4, label="ours")
    ax.bar(
        [i + 0.2 for i in x],
        [statistics.fmean(paper[d]) if paper[d] else 0 for d in domains],
        0.4,
        label="paper",
        color="grey",
    )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(list(x), domains, rotation=20, ha="right")
    ax.set_ylabel("GFSA improvement % (relative)")
    ax.set_title("GFSA vs baseline per domain (paper Figure 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def chart_table(table: Table, rows: list[Row], path: Path) -> Path | None:
    """Bars per cell and variant (mean ± std over seeds), the paper's number as a black mark."""
    cells = sorted(
        {(r.row, r.column) for r in rows if r.runs}, key=lambda rc: [(r.row, r.column) for r in rows].index(rc)
    )
    if not cells:
        return None
    variants = list(dict.fromkeys(r.variant for r in rows))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(cells) * max(len(variants), 1)), 3.8))
    width = 0.8 / len(variants)
    labelled = set()
    for j, v in enumerate(variants):
        for i, rc in enumerate(cells):
            row = next((r for r in rows if (r.row, r.column, r.variant) == (*rc, v)), None)
            if row is None:
                continue
            xpos = i + (j - (len(variants) - 1) / 2) * width
            if row.value is not None:
                ax.bar(
                    xpos,
                    row.value.mean,
                    width,
                    yerr=row.value.std or 0,
                    capsize=3,
                    color=f"C{j}",
                    label=None if v in labelled else v,
                )
                labelled.add(v)
            if row.paper is not None:
                ax.plot(xpos, row.paper, "k_", markersize=14)
    ax.set_xticks(range(len(cells)), [f"{r}\n{c}" for r, c in cells], fontsize=8)
    ax.set_ylabel(f"{rows[0].metric} × {table.scale:g}")
    ax.set_title(f"{table.title} (bars: ours, mean ± std; black: paper)", fontsize=9)
    ax.legend(fontsize=8)
    values = [r.value.mean + sign * (r.value.std or 0) for r in rows if r.value for sign in (-1, 1)]
    values += [r.paper for r in rows if r.paper is not None and (r.row, r.column) in cells]
    lo, hi = min(values), max(values)
    ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9) - 1e-6, hi + 0.15 * (hi - lo + 1e-9) + 1e-6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def chart_overhead(report: Report, path: Path) -> Path | None:
    """Step-time overhead % vs improvement %, one point per variant (cell or generic group)."""
    points = []
    for _, rows in report.tables.values():
        points += [(r, f"{r.row}/{r.column}/{r.variant}") for r in rows]
    points += [(r, f"{r.row}/{r.column}/{r.variant}") for r in report.generic]
    points = [(r.overhead_pct.mean, r.gain_pct.mean, label) for r, label in points if r.overhead_pct and r.gain_pct]
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    for x, y, label in points:
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="black", lw=0.8)
    ax.margins(x=0.3, y=0.15)  # room for the labels
    ax.set_xlabel("step-time overhead vs baseline (%)")
    ax.set_ylabel("improvement (relative %)")
    ax.set_title("cost vs gain")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# writing, publishing, the command


def write(report: Report, out: Path) -> dict[str, list[Path]]:
    """Markdown + CSV per table (and the generic one), PNG charts, and report.md with all of it."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = defaultdict(list)
    doc = ["# GFSA results", ""]
    c = report.collected
    doc.append(
        f"{len(c.runs)} runs from {c.read} records; {len(c.duplicates)} duplicates counted once "
        f"(same config and seed), {len(c.skipped)} skipped."
    )
    for name, png in (
        ("improvement by domain", chart_domains(report, out / "improvement_by_domain.png")),
        ("cost vs gain", chart_overhead(report, out / "overhead_vs_improvement.png")),
    ):
        if png:
            files["charts"].append(png)
            doc += ["", f"![{name}]({png.name})"]
    for table, rows in report.tables.values():
        md = markdown(PAPER_COLUMNS, [paper_cells(r) for r in rows])
        (out / f"{table.name}.md").write_text(f"## {table.title}\n\n{_caption(table)}\n\n{md}\n")
        write_csv(out / f"{table.name}.csv", rows)
        files[table.name] += [out / f"{table.name}.md", out / f"{table.name}.csv"]
        doc += ["", f"## {table.title}", "", _caption(table), "", md]
        png = chart_table(table, rows, out / f"{table.name}.png")
        if png:
            files[table.name].append(png)
            doc += ["", f"![{table.name}]({png.name})"]
    if report.generic:
        md = markdown(GENERIC_COLUMNS, [generic_cells(r) for r in report.generic])
        (out / "other.md").write_text(f"## Runs that match no paper cell\n\n{md}\n")
        write_csv(out / "other.csv", report.generic)
        files["other"] += [out / "other.md", out / "other.csv"]
        doc += ["", "## Runs that match no paper cell (raw metric units)", "", md]
    if report.warnings:
        doc += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    (out / "report.md").write_text("\n".join(doc) + "\n")
    files["report"].append(out / "report.md")
    return dict(files)


def wandb_report(report: Report, entity: str, project: str, title: str = "GFSA reproduction"):
    """The W&B report (wandb-workspaces): the tables as Markdown blocks and native panels of the
    project's runs (improvement % per group, step time vs improvement). Built offline too."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise ReportError("--publish needs wandb-workspaces: pip install 'gfsa[report]'") from None
    blocks = [wr.H1(title), wr.P("Built by gfsa report from the suite's results records; paper numbers beside ours.")]
    grid = wr.PanelGrid(
        runsets=[wr.Runset(entity=entity, project=project, name="all runs")],
        panels=[
            wr.BarPlot(
                title="improvement % (vs paired baseline)",
                metrics=[wr.SummaryMetric("improvement_pct")],
                groupby=wr.Config("backbone.name"),
            ),
            wr.ScatterPlot(
                title="step time vs improvement %",
                x=wr.SummaryMetric("step_time_s"),
                y=wr.SummaryMetric("improvement_pct"),
            ),
        ],
    )
    blocks.append(grid)
    for table, rows in report.tables.values():
        blocks += [
            wr.H2(table.title),
            wr.P(_caption(table)),
            wr.MarkdownBlock(markdown(PAPER_COLUMNS, [paper_cells(r) for r in rows])),
        ]
    if report.generic:
        blocks += [
            wr.H2("Runs that match no paper cell"),
            wr.MarkdownBlock(markdown(GENERIC_COLUMNS, [generic_cells(r) for r in report.generic])),
        ]
    return wr.Report(
        project=project, entity=entity, title=title, description="GFSA vs baselines and the paper", blocks=blocks
    )


def publish_report(report: Report, wandb_path: str, mode: str, out_dir: Path, echo: Callable[[str], None]) -> None:
    """Save the W&B report online; offline (no API key or network) say what would be published, and where
    the local report is (wandb-workspaces is needed only to publish)."""
    entity, project = _split(wandb_path)
    if mode != "online":
        tables = ", ".join(t.name for t, _ in report.tables.values()) or "none"
        echo(
            f"W&B is {mode}: would publish the report 'GFSA reproduction' to {entity}/{project} with the paper "
            f"tables ({tables}), the generic table and panels of improvement % per backbone and step time vs "
            f"improvement %; the local report is {out_dir / 'report.md'}"
        )
        return
    wr_report = wandb_report(report, entity, project)
    wr_report.save()
    echo(f"published {wr_report.url}")


def _split(path: str) -> tuple[str, str]:
    entity, _, project = path.partition("/")
    if not entity or not project or "/" in project:
        raise ReportError(f"--wandb {path}: expected ENTITY/PROJECT (e.g. my-team/gfsa)")
    return entity, project


def _check_writable(out_dir: Path) -> None:
    """Before reading anything: the report can be written where it goes."""
    why = unwritable(out_dir)
    if why:
        raise ReportError(f"cannot write the report to {out_dir} ({why}): pass --out <writable dir>")


def run(
    dirs: list[str],
    wandb_path: str | None = None,
    out: str | None = None,
    tables: list[str] | None = None,
    publish: bool = False,
    experiments_dir: str | Path = EXPERIMENTS_DIR,
    echo: Callable[[str], None] = print,
) -> Report:
    """``gfsa report``: collect, build, print, write (and publish); returns the report."""
    from gfsa.runner.loggers import wandb_mode

    if publish and not wandb_path:
        raise ReportError("--publish needs --wandb ENTITY/PROJECT (where the report goes)")
    if wandb_path:
        _split(wandb_path)
    if not dirs and not wandb_path:
        raise ReportError("no results: pass results directories (e.g. gfsa report results/) or --wandb ENTITY/PROJECT")
    if not Path(experiments_dir).is_dir():
        raise ReportError(f"--experiments {experiments_dir} is not a folder: pass the folder of paper tables (*.yaml)")
    try:
        all_tables = load_tables(experiments_dir)
    except TableError as e:
        raise ReportError(str(e)) from None
    unknown = [t for t in tables or [] if t not in all_tables]
    if unknown:
        raise ReportError(f"unknown table {unknown[0]}; choose from {', '.join(all_tables)} (experiments/*.yaml)")
    chosen = {k: v for k, v in all_tables.items() if not tables or k in tables}
    out_dir = Path(out) if out else Path(dirs[0] if dirs else ".") / "report"
    _check_writable(out_dir)
    mode = wandb_mode("auto")
    sources: list[Iterable] = [local_records(dirs)]
    if wandb_path and mode == "online":
        sources.append(wandb_records(wandb_path))
    elif wandb_path:
        echo(f"W&B is {mode} (no API key or no reachable server): reading local records only")
    collected = collect(rec for src in sources for rec in src)
    if not collected.runs:
        where = ", ".join(dirs) or wandb_path
        skipped = "; ".join(f"{src}: {why}" for src, why in collected.skipped[:3])
        more = f" and {len(collected.skipped) - 3} more" if len(collected.skipped) > 3 else ""
        raise ReportError(
            f"no finished results records in {where} ({collected.read} read"
            + (f"; skipped {skipped}{more}" if skipped else "")
            + "): pass the runs' paths.results_dir"
        )
    report = build(collected, chosen, tables)
    for w in report.warnings:
        echo(f"warning: {w}")
    print_tables(report)
    try:
        files = write(report, out_dir)
    except OSError as e:
        raise ReportError(
            f"cannot write the report to {out_dir} ({e.strerror or e}): pass --out <writable dir>"
        ) from None
    echo(f"wrote {out_dir / 'report.md'} ({sum(len(v) for v in files.values())} files: Markdown, CSV, PNG)")
    if publish:
        publish_report(report, wandb_path, mode, out_dir, echo)
    return report


def main_cli(argv: list[str]) -> None:
    """Entry for ``gfsa report`` (argv after the subcommand); exit 2 with one line for bad input."""
    import argparse

    p = argparse.ArgumentParser(prog="gfsa report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="*", help="results directories (paths.results_dir of the runs)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read runs from this W&B project (when online)")
    p.add_argument("--out", help="output directory (default: <first dir>/report)")
    p.add_argument("--table", action="append", help="only this paper table (experiments/<name>.yaml); repeatable")
    p.add_argument("--publish", action="store_true", help="build a W&B report in --wandb (offline: say what)")
    p.add_argument("--experiments", default=str(EXPERIMENTS_DIR), help="folder of paper tables (default: the suite's)")
    args = p.parse_args(argv)
    try:
        run(args.dirs, args.wandb, args.out, args.table, args.publish, args.experiments)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
