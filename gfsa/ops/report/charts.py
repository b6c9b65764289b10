"""The report's figures, each saved as PNG, PDF and SVG (:func:`gfsa.utils.plots.save`) and returned as a
:class:`~gfsa.utils.plots.Chart` whose matplotlib axes the tests read.

Statistics, the same in every figure: a value is the mean over seeds with its sample std as error bar; a
gain is computed per seed against the baseline of the same seed, shown as the mean with the Student-t
interval of the paired gains (:meth:`Stat.interval`) or, where gains of several cells are combined, the
std over seeds. Different variants are never averaged together: every variant has its own bar, point or
polygon. Bars start at zero.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from gfsa.ops.report.aggregate import CONFIDENCE, Report, Row, Stat
from gfsa.ops.tables import Table
from gfsa.utils.plots import Chart, save, style, variant_colors, variant_order

MAX_CELLS_PER_PANEL = 12  # a paper table with more cells gets one panel per row of the table
CI = f"{CONFIDENCE:.0%} CI"


def all_rows(report: Report) -> list[Row]:
    return [r for _, rows in report.tables.values() for r in rows] + list(report.generic)


def report_variants(report: Report) -> list[str]:
    return variant_order(r.variant for r in all_rows(report))


def decimals(values) -> int:
    """Decimals that give the largest of ``values`` three significant digits (the same for a whole panel)."""
    top = max((abs(v) for v in values if v), default=1.0)
    return max(0, 2 - math.floor(math.log10(top)))


def seeds_note(stats: list[Stat | None]) -> str:
    ns = sorted({s.n for s in stats if s is not None})
    if not ns:
        return ""
    return f"n = {ns[0]} seeds" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]} seeds"


def _ci_err(s: Stat) -> list[list[float]] | None:
    ci = s.interval()
    return None if ci is None else [[s.mean - ci[0]], [ci[1] - s.mean]]


def stat_bar(ax, x, stat: Stat, width, color, gid, err=None, **kw):
    """One bar of ``stat.mean`` with ``err`` (default: the std over seeds) and its identity as ``gid``."""
    if err is None and stat.std is not None:
        err = stat.std
    container = ax.bar(
        x,
        stat.mean,
        width,
        yerr=err,
        color=color,
        edgecolor="black",
        linewidth=0.4,
        error_kw={"elinewidth": 0.9, "capsize": 2.5, "ecolor": "black"},
        **kw,
    )
    container.patches[0].set_gid(gid)
    return container


# --------------------------------------------------------------------------------------------------
# one figure per paper table


def _panels(cells: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    if len(cells) <= MAX_CELLS_PER_PANEL:
        return [cells]
    by_row: dict[str, list] = defaultdict(list)
    for rc in cells:
        by_row[rc[0]].append(rc)
    return [
        group[i : i + MAX_CELLS_PER_PANEL]
        for group in by_row.values()
        for i in range(0, len(group), MAX_CELLS_PER_PANEL)
    ]


def chart_table(table: Table, rows: list[Row], path: Path) -> Chart | None:
    """A paper table as bars: per cell, one bar per variant (mean ± std over seeds, from zero) with the
    paper's number as a black line; below, each variant's gain over the baseline (mean and the paired-seed
    t-interval) with the paper's gain. Large tables get one pair of panels per row of the table."""
    cells = list(dict.fromkeys((r.row, r.column) for r in rows if r.runs))
    if not cells:
        return None
    variants = variant_order(r.variant for r in rows if r.runs)
    gain_variants = [v for v in variants if v != "baseline"]
    has_gains = any(r.gain is not None for r in rows if r.variant != "baseline")  # else: no gain panels
    colors = variant_colors(variants)
    by = {(r.row, r.column, r.variant): r for r in rows}
    metric_of = {(r.row, r.column): r.metric for r in rows}
    one_metric = len({metric_of[c] for c in cells}) == 1
    panels = _panels(cells)
    per_row = len(panels) > 1
    width_cells = max(len(p) for p in panels)
    unit = "%" if table.improvement == "relative" else "points"
    scale = f" × {table.scale:g}" if table.scale != 1 else ""
    better = "higher" if table.direction == "up" else "lower"

    def tick(rc):
        label = rc[1] if per_row else f"{rc[0]}\n{rc[1]}"
        return label if one_metric else f"{label}\n({metric_of[rc]})"

    chars = max(len(line) for rc in cells for line in tick(rc).split("\n"))
    per_cell = max(0.32 * len(variants), 0.075 * chars + 0.15)  # inches: the bars, or the longest tick label
    with style() as plt:
        per = 2 if has_gains else 1
        fig = plt.figure(
            figsize=(min(22, max(6.5, per_cell * width_cells + 2)), (4.6 if has_gains else 3.0) * len(panels) + 0.6),
            layout="constrained",
        )
        ratios = [3, 2] if has_gains else [1]
        axes = fig.subplots(per * len(panels), 1, gridspec_kw={"height_ratios": ratios * len(panels)}, squeeze=False)
        for p, group in enumerate(panels):
            ax_v = axes[per * p][0]
            ax_g = axes[per * p + 1][0] if has_gains else None
            slot = min(0.8 / len(variants), 0.35)  # a lone variant gets a bar, not a block
            gslot = min(0.8 / max(len(gain_variants), 1), 0.35)
            for i, rc in enumerate(group):  # the variants run in this cell, centred on it
                here = [v for v in variants if (*rc, v) in by and by[(*rc, v)].value is not None]
                gains = [v for v in here if v != "baseline"]
                for j, v in enumerate(here):
                    row = by[(*rc, v)]
                    x = i + (j - (len(here) - 1) / 2) * slot
                    stat_bar(ax_v, x, row.value, slot, colors[v], f"{rc[0]}/{rc[1]}/{v}")
                    if row.paper is not None:
                        ax_v.hlines(row.paper, x - slot / 2, x + slot / 2, color="black", lw=1.8, zorder=4)
                    if v == "baseline" or ax_g is None:
                        continue
                    xg = i + (gains.index(v) - (len(gains) - 1) / 2) * gslot
                    if row.gain is not None:
                        stat_bar(ax_g, xg, row.gain, gslot, colors[v], f"{rc[0]}/{rc[1]}/{v}", err=_ci_err(row.gain))
                    if row.paper_gain is not None:
                        ax_g.hlines(row.paper_gain, xg - gslot / 2, xg + gslot / 2, color="black", lw=1.8, zorder=4)
            ax_v.set_xlim(-0.5, width_cells - 0.5)
            metric = metric_of[group[0]] if one_metric else "value (metric per column)"
            ax_v.set_ylabel(f"{metric}{scale}\n({better} is better)")
            ax_x = ax_v
            if ax_g is not None:
                ax_g.sharex(ax_v)
                ax_v.tick_params(labelbottom=False)
                ax_g.axhline(0, color="black", lw=0.8)
                ax_g.set_ylabel(f"gain vs baseline\n({unit}, > 0 is better)")
                ax_x = ax_g
            ax_x.set_xticks(range(len(group)), [tick(rc) for rc in group])
            ax_x.set_xlabel("table column" if per_row else "table row / column")
            if per_row:
                ax_v.set_title(group[0][0], loc="left", fontweight="bold")
        handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colors[v], edgecolor="black", lw=0.4) for v in variants]
        handles.append(plt.Line2D([], [], color="black", lw=1.8))
        fig.legend(handles, [*variants, "paper"], loc="outside lower center", ncols=min(len(variants) + 1, 6))
        stats = [r.value for r in rows if r.runs]
        gains = (
            f"gains: mean and {CI} of the per-seed paired gains" if has_gains else "no variant has run yet: no gains"
        )
        fig.suptitle(
            f"{table.title}\nbars: ours, mean ± std over seeds ({seeds_note(stats)}); {gains}; black lines: the paper",
            fontsize=9,
        )
        return save(fig, path, {"cells": cells, "variants": variants, "panels": panels})


# --------------------------------------------------------------------------------------------------
# improvement per domain (bars) and per backbone (radar): the paper's Figure 1


def _combined(rows: list[Row]) -> tuple[float, float | None]:
    """Mean over cells of their mean relative gain, and the std over seeds of that mean (cells' seeds
    independent: √(Σ sᵢ²)/m); no std when a cell has a single seed."""
    means = [r.gain_pct.mean for r in rows]
    stds = [r.gain_pct.std for r in rows]
    err = None if any(s is None for s in stds) else math.sqrt(sum(s * s for s in stds)) / len(rows)
    return statistics.fmean(means), err


def _paper_combined(rows: list[Row]) -> float | None:
    """The paper's gain over the same cells (only when the paper has every one of them)."""
    values = [r.paper_gain_pct for r in rows]
    return None if any(v is None for v in values) else statistics.fmean(values)


def _gains_by(report: Report, key) -> dict[str, dict[str, list[Row]]]:
    out: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in all_rows(report):
        if row.variant != "baseline" and row.gain_pct is not None:
            out[key(row)][row.variant].append(row)
    return out


def chart_domains(report: Report, path: Path) -> Chart | None:
    """The paper's Figure 1 by domain: one bar per variant (never averaged together): the mean over the
    domain's cells of the relative gain, ± the std over seeds; dots: the cells; black line: the paper's
    gain over the same cells. Runs outside the paper tables count under their task."""
    groups = _gains_by(report, lambda r: r.domain)
    if not groups:
        return None
    domains = sorted(groups)
    colors = variant_colors(report_variants(report))
    present = variant_order(v for d in domains for v in groups[d])
    slot, gap = 1.0, 0.8  # bar width, space between domains
    starts, x0 = [], 0.0
    for d in domains:
        starts.append(x0)
        x0 += len(groups[d]) * slot + gap
    centres = [s + (len(groups[d]) - 1) * slot / 2 for s, d in zip(starts, domains, strict=True)]
    with style() as plt:
        fig, ax = plt.subplots(figsize=(min(16, max(5.5, 0.42 * x0 + 2.5)), 4.4), layout="constrained")
        for i, d in enumerate(domains):
            vs = variant_order(groups[d])
            for j, v in enumerate(vs):
                rows = groups[d][v]
                x = starts[i] + j * slot
                mean, err = _combined(rows)
                stat_bar(ax, x, Stat(mean, err, len(rows)), slot, colors[v], f"{d}/{v}")
                offsets = [(k - (len(rows) - 1) / 2) * slot * 0.5 / max(len(rows) - 1, 1) for k in range(len(rows))]
                ax.scatter([x + o for o in offsets], [r.gain_pct.mean for r in rows], s=9, color="black", zorder=5,
                           gid=f"{d}/{v}/cells")  # fmt: skip
                paper = _paper_combined(rows)
                if paper is not None:
                    ax.hlines(paper, x - slot / 2, x + slot / 2, color="black", lw=1.8, zorder=4, gid=f"{d}/{v}/paper")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(
            centres, domains, rotation=20 if len(domains) > 4 else 0, ha="right" if len(domains) > 4 else "center"
        )
        ax.set_xlim(-slot, x0 - gap)
        ax.set_xlabel("domain (paper tables) or task (other runs)")
        ax.set_ylabel("improvement over the paired baseline (relative %)")
        handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colors[v], edgecolor="black", lw=0.4) for v in present]
        labels = list(present)
        if any(c.get_gid().endswith("/paper") for c in ax.collections if c.get_gid()):
            handles.append(plt.Line2D([], [], color="black", lw=1.8))
            labels.append("paper (same cells)")
        handles.append(plt.Line2D([], [], color="black", marker="o", ms=3, lw=0))
        labels.append("one cell")
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_title(
            "GFSA and compared methods vs baseline per domain (paper Figure 1)\n"
            "bar: mean over the cells ± std over seeds (√Σsᵢ²/m); dot: one cell's mean gain"
        )
        return save(fig, path, {"domains": domains, "variants": {d: variant_order(groups[d]) for d in domains}})


def chart_radar(report: Report, path: Path) -> Chart | None:
    """The paper's Figure 1 as a radar: one spoke per backbone (a paper table's row, or a run's backbone,
    with its domain), the mean relative gain over its cells, one polygon per GFSA variant; dashed: the
    paper's gain over the same cells. Needs three backbones or more (fewer: see the per-domain bars)."""
    groups = _gains_by(report, lambda r: (r.domain, r.row))
    gfsa = {b: {v: rows for v, rows in vs.items() if v.startswith("gfsa")} for b, vs in groups.items()}
    spokes = sorted(b for b, vs in gfsa.items() if vs)
    if len(spokes) < 3:
        return None
    variants = variant_order(v for b in spokes for v in gfsa[b])
    colors = variant_colors(report_variants(report))
    values = {v: [_combined(gfsa[b][v])[0] if v in gfsa[b] else math.nan for b in spokes] for v in variants}
    paper = {v: [_paper_combined(gfsa[b][v]) if v in gfsa[b] else None for b in spokes] for v in variants}
    paper = {v: [math.nan if p is None else p for p in ps] for v, ps in paper.items() if any(p is not None for p in ps)}
    finite = [x for vs in (*values.values(), *paper.values()) for x in vs if not math.isnan(x)]
    lo, hi = min(0.0, *finite), max(0.0, *finite)
    pad = 0.12 * (hi - lo) or 1.0
    angles = [2 * math.pi * k / len(spokes) for k in range(len(spokes))]
    closed = [*angles, angles[0]]

    def spoke_label(b):
        cells = max(len(rows) for rows in gfsa[b].values())
        domain = b[0].removeprefix("task: ")
        return f"{b[1]} ({cells})\n{domain}"

    with style() as plt:
        from matplotlib.ticker import MaxNLocator

        big = len(spokes) > 12
        fig = plt.figure(figsize=(8.6, 7.6) if big else (7.0, 6.0), layout="constrained")
        ax = fig.add_subplot(projection="polar")
        ax.set_theta_offset(math.pi / 2)
        ax.set_theta_direction(-1)
        ax.set_ylim(lo - pad, hi + pad)
        ticks = [t for t in MaxNLocator(4).tick_values(lo, hi) if lo - pad / 2 <= t <= hi + pad / 2]
        ax.set_yticks(ticks, [f"{t:+.3g}%" for t in ticks], fontsize=7)
        for label in ax.get_yticklabels():
            label.set_bbox({"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})
        ax.set_rlabel_position(180 / len(spokes))
        ax.plot([2 * math.pi * k / 120 for k in range(121)], [0.0] * 121, color="black", lw=1.0, zorder=3)
        for v in variants:
            ys = values[v]
            ax.plot(closed, [*ys, ys[0]], color=colors[v], lw=1.8, marker="o", ms=4, label=f"{v} (ours)", gid=v)
            if v in paper:
                ps = paper[v]
                ax.plot(closed, [*ps, ps[0]], color=colors[v], lw=1.2, ls="--", marker="s", ms=3,
                        label=f"{v} (paper)", gid=f"{v}/paper")  # fmt: skip
        ax.set_xticks(angles, [spoke_label(b) for b in spokes], fontsize=7 if big else 8)
        ax.tick_params(axis="x", pad=8)
        ax.set_title("GFSA improvement over the paired baseline per backbone (relative %, paper Figure 1)\n"
                     "spoke: backbone (cells) and domain; mean over its cells; black circle: 0 %", pad=22)  # fmt: skip
        ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), frameon=False)
        return save(fig, path, {"spokes": [b[1] for b in spokes], "values": values, "paper": paper})


# --------------------------------------------------------------------------------------------------
# GFSA on selected layers vs all layers; LRA; cost vs gain
