"""Aggregation: every paper cell filled with its runs (one per seed), gains over seeds paired with their
baseline, and the generic table of runs that match no cell."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from gfsa.ops.report.collect import Collected, Run
from gfsa.ops.report.match import cell_views, match_view, matches
from gfsa.ops.report.resolve import cell_names
from gfsa.ops.tables import Cell, Table
from gfsa.runner import results as R

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


CONFIDENCE = 0.95  # the level of the paired-seed intervals of gains


@dataclass
class Stat:
    mean: float
    std: float | None  # sample standard deviation; None for a single value
    n: int

    def interval(self, level: float = CONFIDENCE) -> tuple[float, float] | None:
        """Student-t interval of the mean (n − 1 degrees of freedom); None below two values. Of a gain
        (per-seed differences against the same seed's baseline) it is the paired t-interval."""
        if self.std is None or self.n < 2:
            return None
        from scipy.stats import t

        half = float(t.ppf(0.5 + level / 2, self.n - 1)) * self.std / self.n**0.5
        return self.mean - half, self.mean + half


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
    departs: str | None = None  # the cell's recipe departs from the official one (experiments/*.yaml ``departs``)

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
                departs=cell.departs,
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
