"""Charts (PNG): improvement per domain beside the paper's Figure 1, bars per paper table, cost vs gain."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from gfsa.ops.report.aggregate import Report, Row
from gfsa.ops.tables import Table
from gfsa.utils.plots import pyplot


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
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
