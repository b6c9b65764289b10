"""Rendering: the tables as text cells, Markdown, CSV and rich tables on the terminal."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

from gfsa.ops.report.aggregate import CONFIDENCE, Report, Row, Stat
from gfsa.ops.tables import Table


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


CI = f"{CONFIDENCE:.0%} CI"


def _ci(s: Stat | None) -> str:
    """The paired-seed t-interval of a gain and its number of pairs: ``[+0.56, +4.39] n=3``."""
    if s is None:
        return "missing"
    ci = s.interval()
    if ci is None:
        return f"— n={s.n}"
    d = _digits(s.mean)
    return f"[{_num(ci[0], True, d)}, {_num(ci[1], True, d)}] n={s.n}"


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
    f"gain {CI}",
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
    f"gain % {CI}",
    "+params",
    "time Δ %",
)


def paper_cells(row: Row) -> list[str]:
    n = len(row.runs)
    return [
        row.row,
        row.column,
        row.variant + (f" {DEPARTS}" if row.departs else ""),
        str(n),
        _pm(row.value),
        _num(row.paper),
        _num(row.vs_paper, True, None if row.paper is None else _digits(row.paper)),
        "" if row.variant == "baseline" else _pm(row.gain_pct, True),
        "" if row.variant == "baseline" else _pm(row.gain_abs, True),
        "" if row.variant == "baseline" else _ci(row.gain),
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
        "" if base else _ci(row.gain_pct),
        str(row.added_parameters or 0),
        "" if base else _pm(row.overhead_pct, True),
    ]


DEPARTS = "†"  # marks a cell whose recipe departs from the official one


def departures(rows: list[Row]) -> list[str]:
    """One line per marked cell: how its recipe departs from the official code's (the cell's ``departs``)."""
    return [f"{DEPARTS} {r.row}/{r.column}/{r.variant}: {r.departs}" for r in rows if r.departs]


def caption(table: Table) -> str:
    unit = "relative %" if table.improvement == "relative" else "absolute points"
    return (
        f"{table.title} — values × {table.scale:g} (paper units), {table.direction} is better; "
        f"paper gain and Δ gain in {unit}; mean ± sample std over the n seeds; gains per seed against the "
        f"baseline of the same seed, their {CI} the Student-t interval of the mean paired gain ({unit}, n = pairs)"
    )


GENERIC_CAPTION = (
    "runs that match no paper cell, per backbone/task and config (raw metric units); mean ± sample std over the "
    f"n seeds; gains per seed against the baseline of the same seed, their {CI} the Student-t interval of the "
    "mean paired gain (relative %, n = pairs); time Δ: step time vs the baseline"
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
    "gain_pct_ci_low",
    "gain_pct_ci_high",
    "gain_abs_ci_low",
    "gain_abs_ci_high",
    "pairs",
    "paper_gain",
    "gain_vs_paper",
    "step_time_overhead_pct",
    "step_time_overhead_pct_std",
    "added_parameters",
    "seeds",
    "runs",
    "departs",
)


def csv_row(row: Row) -> dict:
    def m(s):
        return None if s is None else s.mean

    def sd(s):
        return None if s is None else s.std

    def ci(s, i):
        bounds = None if s is None else s.interval()
        return None if bounds is None else bounds[i]

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
        "gain_pct_ci_low": ci(row.gain_pct, 0),
        "gain_pct_ci_high": ci(row.gain_pct, 1),
        "gain_abs_ci_low": ci(row.gain_abs, 0),
        "gain_abs_ci_high": ci(row.gain_abs, 1),
        "pairs": row.gain_pct.n if row.gain_pct else 0,
        "paper_gain": row.paper_gain,
        "gain_vs_paper": row.gain_vs_paper,
        "step_time_overhead_pct": m(row.overhead_pct),
        "step_time_overhead_pct_std": sd(row.overhead_pct),
        "added_parameters": row.added_parameters,
        "seeds": " ".join(str(r.seed) for r in row.runs),
        "runs": " ".join(r.source for r in row.runs),
        "departs": row.departs or "",
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
        t = RichTable(title=f"{table.name}: {table.title}", caption=caption(table))
        for c in PAPER_COLUMNS:
            t.add_column(c, justify="left" if c in ("row", "column", "variant") else "right")
        for row in rows:  # Text: labels like gfsa[all,K3] are not rich markup
            t.add_row(*map(Text, paper_cells(row)), style="dim" if not row.runs else None)
        console.print(t)
        for line in departures(rows):
            console.print(Text(line), style="dim")
    if report.generic:
        t = RichTable(title="runs that match no paper cell", caption=GENERIC_CAPTION)
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
