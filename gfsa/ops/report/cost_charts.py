"""The report's cost figures: what GFSA costs against what it gains (selected layers, step-time overhead,
Long Range Arena). Same statistics and files as :mod:`gfsa.ops.report.charts`.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from gfsa.ops.report.aggregate import Report, Row, Stat, stat
from gfsa.ops.report.charts import (
    all_rows,
    decimals,
    report_variants,
    seeds_note,
    stat_bar,
)
from gfsa.utils.plots import Chart, place_labels, save, style, variant_colors, variant_order

LAYER_SPECS = ("none", "selected", "all")  # the selected-layer chart's bars, as gfsa.layers spells them


def _layers_spec(row: Row) -> str | None:
    """``none`` / ``selected`` / ``all`` (gfsa.layers of the row's runs) for baseline and GFSA rows."""
    specs = set()
    for run in row.runs:
        cfg = run.record["config"]
        method = (cfg.get("method") or {}).get("name", "none") if isinstance(cfg.get("method"), dict) else "none"
        if method not in (None, "none"):
            return None
        specs.add(str((cfg.get("gfsa") or {}).get("layers", "none")))
    return specs.pop() if len(specs) == 1 else None


def _step_times(row: Row) -> Stat | None:
    return stat((r.record.get("timing") or {}).get("step_time_s") for r in row.runs)


def _layer_groups(report: Report) -> list[tuple[str, str, dict[str, Row]]]:
    """(title, metric label, {none|selected|all: row}) for every config run with ``selected`` and at least
    one of ``none``/``all``."""
    groups: dict[tuple, dict] = defaultdict(dict)
    titles, metrics = {}, {}
    for table, rows in report.tables.values():
        for row in rows:
            spec = _layers_spec(row) if row.runs else None
            if spec in LAYER_SPECS and row.value is not None:
                key = (table.name, row.row, row.column, None)
                groups[key].setdefault(spec, row)
                titles[key] = f"{row.row} / {row.column}"
                metrics[key] = f"{row.metric}{f' × {table.scale:g}' if table.scale != 1 else ''}"
    for row in report.generic:
        spec = _layers_spec(row)
        if spec in LAYER_SPECS and row.value is not None:
            pk = row.runs[0].record.get("pair_key")
            k = None if spec == "none" else row.runs[0].record["config"].get("gfsa", {}).get("K")
            groups[("other", pk, k)].setdefault(spec, row)
            titles[("other", pk, k)] = f"{row.row} / {row.column}"
            metrics[("other", pk, k)] = row.metric
    for key in [
        k for k in groups if k[0] == "other" and k[2] is None and "none" in groups[k]
    ]:  # the baseline joins every K of its config
        for other in [k for k in groups if k[:2] == key[:2] and k[2] is not None]:
            groups[other].setdefault("none", groups[key]["none"])
        del groups[key]
    out = []
    for key, by_spec in groups.items():
        if "selected" in by_spec and len(by_spec) >= 2:
            k = f", K={key[-1]}" if key[-1] is not None else ""
            out.append((titles[key] + k, metrics[key], by_spec))
    return sorted(out, key=lambda g: g[0])


def chart_layers(report: Report, path: Path) -> Chart | None:
    """GFSA on the selected layers (the paper's GFSA_even) vs every layer vs none: the metric and the
    training step time, mean ± std over seeds, for each config run all ways (with ``selected``)."""
    groups = _layer_groups(report)
    if not groups:
        return None
    colors = {
        "none": variant_colors([])["baseline"],
        "selected": variant_colors([])["gfsa_even"],
        "all": variant_colors([])["gfsa"],
    }
    per_line = min(2, len(groups))
    lines = math.ceil(len(groups) / per_line)
    with style() as plt:
        fig = plt.figure(figsize=(4.6 * per_line + 0.4, 3.0 * lines + 0.8), layout="constrained")
        axes = fig.subplots(lines, 2 * per_line, squeeze=False)
        for g, (title, metric, by_spec) in enumerate(groups):
            ax_m, ax_t = axes[g // per_line][2 * (g % per_line)], axes[g // per_line][2 * (g % per_line) + 1]
            specs = [s for s in LAYER_SPECS if s in by_spec]
            times = {s: _step_times(by_spec[s]) for s in specs}
            dm = decimals(by_spec[s].value.mean for s in specs)
            dt = decimals(t.mean for t in times.values() if t is not None)
            for i, s in enumerate(specs):
                value = by_spec[s].value
                stat_bar(ax_m, i, value, 0.7, colors[s], f"{title}/{s}/metric")
                ax_m.annotate(f"{value.mean:.{dm}f}", (i, value.mean + (value.std or 0)), xytext=(0, 2),
                              textcoords="offset points", ha="center", va="bottom", fontsize=7)  # fmt: skip
                t = times[s]
                if t is not None:
                    stat_bar(ax_t, i, t, 0.7, colors[s], f"{title}/{s}/time")
                    base = times.get("none")
                    label = f"{t.mean:.{dt}f}" + (
                        f"\n{100 * (t.mean / base.mean - 1):+.0f}%" if base and s != "none" else ""
                    )
                    ax_t.annotate(label, (i, t.mean + (t.std or 0)), xytext=(0, 2), textcoords="offset points",
                                  ha="center", va="bottom", fontsize=7)  # fmt: skip
            for ax in (ax_m, ax_t):
                ax.set_xticks(range(len(specs)), specs)
                ax.set_xlabel("gfsa.layers")
                ax.margins(y=0.22)
            ax_m.set_ylabel(metric)
            ax_t.set_ylabel("training step time (s)")
            ns = seeds_note([by_spec[s].value for s in specs])
            ax_m.set_title(f"{title} ({ns})", loc="left", fontsize=8)
        for ax in axes.flat[2 * len(groups) :]:
            ax.set_visible(False)
        fig.suptitle("GFSA on no / the selected (even) / all layers\nmetric and training step time, "
                     "mean ± std over seeds (time: change vs none)")  # fmt: skip
        return save(fig, path, {"groups": [(t, [s for s in LAYER_SPECS if s in b]) for t, _, b in groups]})


def chart_lra(report: Report, path: Path) -> Chart | None:
    """Long Range Arena (``task=listops`` runs): accuracy vs training step time, circle area ∝ peak memory,
    one point per backbone and variant (mean ± std over seeds), as the paper's LRA figure."""
    points = []
    seen = set()
    for row in all_rows(report):
        runs = [r for r in row.runs if r.record.get("task") == "listops" and r.key not in seen]
        if not runs:
            continue
        seen.update(r.key for r in runs)
        acc = stat(r.value(row.metric) for r in runs)
        time = stat((r.record.get("timing") or {}).get("step_time_s") for r in runs)
        mem = stat((r.record.get("timing") or {}).get("peak_memory_mb") for r in runs)
        kinds = {(r.record.get("timing") or {}).get("memory_kind") for r in runs}
        if acc and time and mem:
            points.append((runs[0].record["backbone"], row.variant, row.metric, acc, time, mem, kinds))
    if not points:
        return None
    pct = all(p[2].endswith("acc") for p in points) and all(0 <= p[3].mean <= 1 for p in points)
    k = 100 if pct else 1
    colors = variant_colors(p[1] for p in points)
    mem_max = max(p[5].mean for p in points)

    def area(mb: float) -> float:
        return 40 + 1400 * mb / mem_max

    kinds = set().union(*(p[6] for p in points)) - {None}
    with style() as plt:
        fig, ax = plt.subplots(figsize=(6.8, 4.6), layout="constrained")
        times = [p[4].mean for p in points]
        log = max(times) / min(times) > 4
        where = [math.log(t) if log else t for t in times]
        mid = (min(where) + max(where)) / 2 if len(points) > 1 else math.inf
        for (backbone, variant, _, acc, time, mem, _), w in zip(points, where, strict=True):
            ax.scatter(time.mean, k * acc.mean, s=area(mem.mean), color=colors[variant], alpha=0.55,
                       edgecolor="black", lw=0.6, zorder=3, gid=f"{backbone}/{variant}")  # fmt: skip
            ax.errorbar(time.mean, k * acc.mean, xerr=time.std, yerr=None if acc.std is None else k * acc.std,
                        fmt="none", ecolor="black", elinewidth=0.8, capsize=2.5, zorder=4)  # fmt: skip
            ax.annotate(
                f"{backbone}\n{variant}, {mem.mean:.0f} MB",
                (time.mean, k * acc.mean),
                xytext=((1 if w <= mid else -1) * (area(mem.mean) ** 0.5 / 2 + 5), 0),
                textcoords="offset points",
                ha="left" if w <= mid else "right",
                va="center",
                fontsize=7,
            )  # fmt: skip  (labels point inwards: none leaves the axes)
        if log:
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.margins(x=0.3, y=0.3)
        ax.set_xlabel("training step time (s, median per run; mean ± std over seeds)")
        ax.set_ylabel(f"{'accuracy (%)' if pct else points[0][2]} (mean ± std over seeds)")
        nice = [f * 10**e for e in range(-1, 7) for f in (1, 2, 5) if f * 10**e <= mem_max]
        refs = nice[-3:] or [mem_max]  # round sizes for the key: 1000, 2000, 5000 MB
        handles = [ax.scatter([], [], s=area(m), color="white", edgecolor="black", lw=0.6) for m in refs]
        diameter = area(max(refs)) ** 0.5 / 9  # the largest circle, in font sizes (9 pt)
        ax.legend(handles, [f"{m:.0f} MB" for m in refs], title="peak memory", loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False, labelspacing=diameter * 0.8, borderpad=diameter / 2,
                  handletextpad=diameter / 2, handlelength=diameter)  # fmt: skip
        kind = "; memory: " + ", ".join(sorted(kinds)) if kinds else ""
        ax.set_title(f"LRA ListOps: accuracy vs training step time (circle area ∝ peak memory{kind})")
        return save(fig, path, {"points": [(p[0], p[1]) for p in points]})


def _combined_stat(stats: list[Stat]) -> Stat:
    """Mean over cells, ± the std over seeds of that mean (√(Σ sᵢ²)/m; None when a cell has one seed)."""
    stds = [s.std for s in stats]
    err = None if any(sd is None for sd in stds) else math.sqrt(sum(sd * sd for sd in stds)) / len(stats)
    return Stat(statistics.fmean(s.mean for s in stats), err, min(s.n for s in stats))


def chart_overhead(report: Report, path: Path) -> Chart | None:
    """Step-time overhead % vs relative gain %: one point per variant and domain (the mean over its cells,
    ± the std over seeds on both axes; the cells are in the per-domain bars); hollow points have a cell with
    one seed (no error bar: the position is noise-prone)."""
    rows = [r for r in all_rows(report) if r.overhead_pct and r.gain_pct]
    if not rows:
        return None
    colors = variant_colors(report_variants(report))
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.variant, r.domain)].append(r)
    with style() as plt:
        fig, ax = plt.subplots(figsize=(7.2, 4.8), layout="constrained")
        labelled, labels, bars = set(), [], []
        order = variant_order(v for v, _ in groups)
        for (v, domain), members in sorted(groups.items(), key=lambda g: (order.index(g[0][0]), g[0][1])):
            cost, gain = (
                _combined_stat([r.overhead_pct for r in members]),
                _combined_stat([r.gain_pct for r in members]),
            )
            whole = gain.std is not None and cost.std is not None
            ax.errorbar(cost.mean, gain.mean, xerr=cost.std, yerr=gain.std, fmt="o", ms=6, color=colors[v],
                        mfc=colors[v] if whole else "white", mec=colors[v], ecolor=colors[v], elinewidth=1.0,
                        capsize=2.5, zorder=4, label=None if v in labelled else v, gid=f"{domain}/{v}")  # fmt: skip
            labelled.add(v)
            name = domain.removeprefix("task: ")
            cells = f" ({len(members)})" if len(members) > 1 else ""
            labels.append((cost.mean, gain.mean, f"{name}{cells}"))
            if whole:  # the error bars: no label on top of them
                bars.append(((cost.mean - cost.std, gain.mean), (cost.mean + cost.std, gain.mean)))
                bars.append(((cost.mean, gain.mean - gain.std), (cost.mean, gain.mean + gain.std)))
        ax.axhline(0, color="black", lw=0.8)
        ax.axvline(0, color="black", lw=0.8)
        ax.margins(x=0.2, y=0.2)
        ax.set_xlabel("training step-time overhead vs the paired baseline (%)")
        ax.set_ylabel("improvement over the paired baseline (relative %)")
        ax.set_title("cost vs gain per domain (cells): mean over the cells ± std over seeds (√Σsᵢ²/m)\n"
                     "hollow: a cell with one seed (no error bar: its position is noise-prone)")  # fmt: skip
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="variant")
        place_labels(ax, labels, avoid=bars, fontsize=7, color="0.25", zorder=5)
        return save(fig, path, {"points": sorted(groups)})
