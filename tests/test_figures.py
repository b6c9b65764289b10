"""The report's statistics and figures on records shaped like the paper's tables (three seeds; GLUE with
GFSA and GFSA_even, ImageNet, ZINC; LRA ListOps with step time and memory; vit_mini with gfsa.layers
none/selected/all): the paired-seed intervals, and what each figure shows, read from its matplotlib axes
(bars from zero, error bars = the std over seeds or the paired interval, one bar per variant, one spoke
per backbone, labelled axes, PNG + PDF + SVG), not from pixels."""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from report_records import write_layer_records, write_listops_records, write_table_records

from gfsa.ops import report as rp

T_975_2 = 4.302652729749464  # Student-t 97.5% quantile, 2 degrees of freedom (3 seeds), from the t-table
SEEDS = [0, 1, 2]
GLUE_COLUMNS = ["cola", "stsb", "rte"]


@pytest.fixture(scope="module")
def paper_like(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # composed cells are cached here, not in the user's cache
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        root = tmp_path_factory.mktemp("paper_like") / "results"
        tables = rp.load_tables()
        expected = write_table_records(root, tables["glue"], SEEDS, rows=["bert_base"], columns=GLUE_COLUMNS)
        expected |= write_table_records(root, tables["imagenet"], SEEDS, rows=["deit_s_12"])
        expected |= write_table_records(root, tables["graph"], SEEDS, rows=["graphormer_slim"])
        lra = write_listops_records(root, SEEDS)
        layers = write_layer_records(root, SEEDS)
        out = root.parent / "report"
        report = rp.run([str(root)], out=str(out), tables=["glue", "imagenet", "graph"], echo=lambda m: None)
        yield {"report": report, "expected": expected, "lra": lra, "layers": layers, "out": out}


def _row(report, table, row, column, variant):
    return next(r for r in report.tables[table][1] if (r.row, r.column, r.variant) == (row, column, variant))


def _gains(expected, key, direction="up"):
    """Per-seed relative gains (%) of a cell over the same seed's baseline."""
    base = expected[(*key[:2], "baseline")]
    sign = 1 if direction == "up" else -1
    return [sign * 100 * (expected[key][s] - base[s]) / abs(base[s]) for s in SEEDS]


def _bars(ax) -> dict:
    """{gid: (height, error half-widths (low, high) or None)} of the bars on ``ax``."""
    out = {}
    for c in ax.containers:
        if not hasattr(c, "patches") or not c.patches or c.patches[0].get_gid() is None:
            continue
        patch = c.patches[0]
        err = None
        if c.errorbar is not None:
            (seg,) = c.errorbar.lines[2][0].get_segments()
            err = (patch.get_height() - seg[0][1], seg[1][1] - patch.get_height())
        assert patch.get_gid() not in out, f"two bars for {patch.get_gid()}"
        out[patch.get_gid()] = (patch.get_y(), patch.get_height(), err)
    return out


def _labelled(chart) -> None:
    """Every visible axes has both labels and a title somewhere (axes or figure); no overlapping x ticks."""
    fig = chart.figure
    canvas = FigureCanvasAgg(fig)  # pyplot has closed the figure: a canvas to measure its text on
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        if not ax.get_visible() or ax.name == "polar" or getattr(ax, "_colorbar", None):
            continue
        assert ax.get_ylabel().strip(), (chart.png, "no y label")
        assert ax.get_xlabel().strip() or not any(t.get_visible() and t.get_text() for t in ax.get_xticklabels()), (
            chart.png,
            "no x label",
        )
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        for a, b in itertools.pairwise(boxes):
            assert not a.overlaps(b), (chart.png, "x tick labels overlap")
    assert fig._suptitle is not None or any(ax.get_title() or ax.get_title("left") for ax in fig.axes)


def _files(chart) -> None:
    assert [p.suffix for p in chart.files] == [".png", ".pdf", ".svg"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in chart.files)
    assert len({p.stem for p in chart.files}) == 1


def test_paired_interval_and_tables(paper_like):
    rep, exp = paper_like["report"], paper_like["expected"]
    ours = _row(rep, "glue", "bert_base", "cola", "gfsa")
    gains = _gains(exp, ("bert_base", "cola", "gfsa"))
    mean, sd = statistics.fmean(gains), statistics.stdev(gains)
    assert (ours.gain_pct.mean, ours.gain_pct.std, ours.gain_pct.n) == pytest.approx((mean, sd, 3))
    lo, hi = ours.gain_pct.interval()
    assert (lo, hi) == pytest.approx((mean - T_975_2 * sd / 3**0.5, mean + T_975_2 * sd / 3**0.5))
    assert rp.Stat(1.0, None, 1).interval() is None
    md = (paper_like["out"] / "glue.md").read_text()
    assert "Student-t interval of the mean paired gain (relative %, n = pairs)" in md
    assert f"[{lo:+.3f}, {hi:+.3f}] n=3 |" in md
    # ImageNet prints gains in points: the interval is of the per-seed point differences
    deit = _row(rep, "imagenet", "deit_s_12", "top1", "gfsa")
    pts = [exp[("deit_s_12", "top1", "gfsa")][s] - exp[("deit_s_12", "top1", "baseline")][s] for s in SEEDS]
    half = T_975_2 * statistics.stdev(pts) / 3**0.5
    assert deit.gain.interval() == pytest.approx((statistics.fmean(pts) - half, statistics.fmean(pts) + half))
    with (paper_like["out"] / "imagenet.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["variant"] == "gfsa")
    assert float(row["gain_abs_ci_low"]) == pytest.approx(statistics.fmean(pts) - half)
    assert float(row["gain_abs_ci_high"]) == pytest.approx(statistics.fmean(pts) + half)
    other = (paper_like["out"] / "other.md").read_text()
    assert "gain % 95% CI" in other and "Student-t interval" in other


def test_table_chart_bars_from_zero_with_seed_std_and_paired_interval(paper_like, tmp_path):
    rep, exp = paper_like["report"], paper_like["expected"]
    table, rows = rep.tables["glue"]
    chart = rp.chart_table(table, rows, tmp_path / "glue")
    _files(chart)
    _labelled(chart)
    ax_value, ax_gain = chart.figure.axes[:2]
    bars = _bars(ax_value)
    cells = [("bert_base", c) for c in GLUE_COLUMNS]
    assert set(bars) == {f"bert_base/{c}/{v}" for _, c in cells for v in ("baseline", "gfsa", "gfsa_even")}
    for gid, (bottom, height, err) in bars.items():
        values = list(exp[tuple(gid.split("/"))].values())
        assert bottom == 0 and height == pytest.approx(statistics.fmean(values))
        assert err == pytest.approx((statistics.stdev(values),) * 2)
    assert ax_value.get_ylim()[0] == 0
    gains = _bars(ax_gain)
    assert set(gains) == {f"bert_base/{c}/{v}" for _, c in cells for v in ("gfsa", "gfsa_even")}
    g = _gains(exp, ("bert_base", "rte", "gfsa_even"))
    _, height, (below, above) = gains["bert_base/rte/gfsa_even"]
    half = T_975_2 * statistics.stdev(g) / 3**0.5
    assert height == pytest.approx(statistics.fmean(g)) and (below, above) == pytest.approx((half, half))
    paper = {round(seg[0][1], 6) for coll in ax_value.collections for seg in coll.get_segments()}
    assert {round(r.paper, 6) for r in rows if r.runs} <= paper  # the paper's numbers as black lines


def test_domain_chart_one_bar_per_variant_with_seed_error(paper_like, tmp_path):
    rep, exp = paper_like["report"], paper_like["expected"]
    chart = rp.chart_domains(rep, tmp_path / "domains")
    _files(chart)
    _labelled(chart)
    (ax,) = chart.figure.axes
    bars = _bars(ax)
    assert {"NLU (GLUE)/gfsa", "NLU (GLUE)/gfsa_even", "Vision/gfsa", "Vision/gfsa_even", "Graph/gfsa"} <= set(bars)
    assert {"task: digits/gfsa[all,K3]", "task: digits/gfsa[selected,K3]", "task: listops/gfsa[all,K3]"} <= set(bars)
    assert all(bottom == 0 for bottom, _, _ in bars.values())
    # GLUE: GFSA and GFSA_even are separate bars, each the mean over its three cells, ± √Σs²/3
    for variant in ("gfsa", "gfsa_even"):
        per_cell = [_gains(exp, ("bert_base", c, variant)) for c in GLUE_COLUMNS]
        _, height, err = bars[f"NLU (GLUE)/{variant}"]
        assert height == pytest.approx(statistics.fmean(statistics.fmean(g) for g in per_cell))
        combined = math.sqrt(sum(statistics.stdev(g) ** 2 for g in per_cell)) / 3
        assert err == pytest.approx((combined, combined))
    # one cell (ZINC, lower-is-better MAE): the error bar is that cell's std over seeds
    g = _gains(exp, ("graphormer_slim", "zinc", "gfsa"), "down")
    _, height, err = bars["Graph/gfsa"]
    assert height == pytest.approx(statistics.fmean(g)) and err == pytest.approx((statistics.stdev(g),) * 2)


def test_radar_has_one_spoke_per_backbone(paper_like, tmp_path):
    rep, exp = paper_like["report"], paper_like["expected"]
    chart = rp.chart_radar(rep, tmp_path / "radar")
    _files(chart)
    (ax,) = chart.figure.axes
    spokes = ["graphormer_slim", "bert_base", "deit_s_12", "vit_mini", "efficient_attention", "lra_transformer"]
    assert sorted(chart.notes["spokes"]) == sorted(spokes)
    assert len(ax.get_xticks()) == len(spokes)
    assert sorted(t.get_text().split(" (")[0] for t in ax.get_xticklabels()) == sorted(spokes)
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    assert {"gfsa", "gfsa/paper", "gfsa_even", "gfsa[all,K3]"} <= set(lines)
    bert = chart.notes["spokes"].index("bert_base")
    ys = lines["gfsa"].get_ydata()
    assert ys[bert] == pytest.approx(
        statistics.fmean(statistics.fmean(_gains(exp, ("bert_base", c, "gfsa"))) for c in GLUE_COLUMNS)
    )
    assert math.isnan(lines["gfsa_even"].get_ydata()[chart.notes["spokes"].index("graphormer_slim")])


def test_selected_layer_chart_shows_metric_and_time_for_none_selected_all(paper_like, tmp_path):
    rep, layers = paper_like["report"], paper_like["layers"]
    chart = rp.chart_layers(rep, tmp_path / "layers")
    _files(chart)
    _labelled(chart)
    titles = [t for t, _ in chart.notes["groups"]]
    assert titles == ["bert_base / cola", "bert_base / rte", "bert_base / stsb", "deit_s_12 / top1",
                      "vit_mini / digits, K=3"]  # fmt: skip
    assert all(specs == ["none", "selected", "all"] for _, specs in chart.notes["groups"])
    axes = [ax for ax in chart.figure.axes if ax.get_visible()]
    bars = {gid: v for ax in axes for gid, v in _bars(ax).items()}
    for spec, runs in layers.items():
        acc, time = [a for a, _ in runs], [t for _, t in runs]
        _, h, err = bars[f"vit_mini / digits, K=3/{spec}/metric"]
        assert h == pytest.approx(statistics.fmean(acc)) and err == pytest.approx((statistics.stdev(acc),) * 2)
        bottom, h, err = bars[f"vit_mini / digits, K=3/{spec}/time"]
        assert bottom == 0 and h == pytest.approx(statistics.fmean(time))
        assert err == pytest.approx((statistics.stdev(time),) * 2)
    assert all(ax.get_ylim()[0] == 0 for ax in axes)


def test_lra_chart_accuracy_vs_time_with_memory_as_area(paper_like, tmp_path):
    rep, lra = paper_like["report"], paper_like["lra"]
    chart = rp.chart_lra(rep, tmp_path / "lra")
    _files(chart)
    _labelled(chart)
    (ax,) = chart.figure.axes
    points = {c.get_gid(): c for c in ax.collections if c.get_gid()}
    assert set(points) == {f"{b}/{v}" for b in ("lra_transformer", "efficient_attention")
                           for v in ("baseline", "gfsa[all,K3]")}  # fmt: skip
    sizes = {}
    for (backbone, variant), runs in lra.items():
        gid = f"{backbone}/{'baseline' if variant == 'baseline' else 'gfsa[all,K3]'}"
        (x, y), size = points[gid].get_offsets()[0], points[gid].get_sizes()[0]
        assert x == pytest.approx(statistics.fmean(t for _, t, _ in runs))
        assert y == pytest.approx(100 * statistics.fmean(a for a, _, _ in runs))
        sizes[gid] = (size, statistics.fmean(m for _, _, m in runs))
    by_memory = sorted(sizes.values(), key=lambda s: s[1])
    assert [s for s, _ in by_memory] == sorted(s for s, _ in by_memory)  # area grows with memory
    (s0, m0), (s1, m1) = by_memory[0], by_memory[-1]
    assert (s1 - s0) / (m1 - m0) == pytest.approx(1400 / m1)  # area linear in MB
    assert ax.get_xscale() == "log"  # softmax and linear attention differ ~10× in step time


def test_cost_gain_chart_has_error_bars_of_the_seed_std(paper_like, tmp_path):
    rep = paper_like["report"]
    chart = rp.chart_overhead(rep, tmp_path / "cost")
    _files(chart)
    _labelled(chart)
    (ax,) = chart.figure.axes
    zinc = _row(rep, "graph", "graphormer_slim", "zinc", "gfsa")
    per_seed = []
    for run in zinc.runs:
        base = next(r for r in _row(rep, "graph", "graphormer_slim", "zinc", "baseline").runs if r.seed == run.seed)
        per_seed.append(100 * (run.record["timing"]["step_time_s"] / base.record["timing"]["step_time_s"] - 1))
    container = next(c for c in ax.containers if c.lines[0].get_gid() == "Graph/gfsa")
    line, _, (xerr, yerr) = container.lines
    assert line.get_xdata()[0] == pytest.approx(statistics.fmean(per_seed))
    (seg,) = xerr.get_segments()
    assert (seg[1][0] - seg[0][0]) / 2 == pytest.approx(statistics.stdev(per_seed))
    (seg,) = yerr.get_segments()
    assert (seg[1][1] - seg[0][1]) / 2 == pytest.approx(zinc.gain_pct.std)


def test_report_writes_every_figure_in_three_formats(paper_like):
    out = paper_like["out"]
    stems = ["improvement_by_domain", "improvement_radar", "selected_layers", "lra_listops",
             "overhead_vs_improvement", "glue", "imagenet", "graph"]  # fmt: skip
    for stem in stems:
        for fmt in ("png", "pdf", "svg"):
            assert (out / f"{stem}.{fmt}").stat().st_size > 1000, (stem, fmt)
    doc = (out / "report.md").read_text()
    assert all(f"]({stem}.png)" in doc for stem in stems)
    assert "<text" in (out / "glue.svg").read_text()  # SVG text stays text
    assert Path(out / "glue.pdf").read_bytes().startswith(b"%PDF")


def test_the_same_report_gives_the_same_files(paper_like, tmp_path):
    rp.write(paper_like["report"], tmp_path)
    for name in ("glue.svg", "glue.pdf", "improvement_radar.svg", "lra_listops.pdf"):
        assert (tmp_path / name).read_bytes() == (paper_like["out"] / name).read_bytes(), name
