"""Writing the report (Markdown, CSV, figures as PNG + PDF + SVG) and publishing it to W&B."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from gfsa.ops.report.aggregate import Report
from gfsa.ops.report.charts import chart_domains, chart_radar, chart_table
from gfsa.ops.report.collect import ReportError
from gfsa.ops.report.cost_charts import chart_layers, chart_lra, chart_overhead
from gfsa.ops.report.render import (
    GENERIC_CAPTION,
    GENERIC_COLUMNS,
    PAPER_COLUMNS,
    caption,
    departures,
    generic_cells,
    markdown,
    paper_cells,
    write_csv,
)


def write(report: Report, out: Path) -> dict[str, list[Path]]:
    """Markdown + CSV per table (and the generic one), figures (PNG, PDF, SVG), and report.md with all of it."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = defaultdict(list)
    doc = ["# GFSA results", ""]
    c = report.collected
    doc.append(
        f"{len(c.runs)} runs from {c.read} records; {len(c.duplicates)} duplicates counted once "
        f"(same config and seed), {len(c.skipped)} skipped."
    )
    for name, stem, chart in (
        ("improvement by domain", "improvement_by_domain", chart_domains),
        ("improvement per backbone", "improvement_radar", chart_radar),
        ("GFSA on selected vs all layers", "selected_layers", chart_layers),
        ("LRA ListOps: accuracy, step time, memory", "lra_listops", chart_lra),
        ("cost vs gain", "overhead_vs_improvement", chart_overhead),
    ):
        made = chart(report, out / stem)
        if made:
            files["charts"] += made.files
            doc += ["", f"![{name}]({made.png.name})"]
    for table, rows in report.tables.values():
        md = markdown(PAPER_COLUMNS, [paper_cells(r) for r in rows])
        if departures(rows):  # the cells marked † and how their recipes depart from the official ones
            md += "\n\n" + "\n".join(f"- {line}" for line in departures(rows))
        (out / f"{table.name}.md").write_text(f"## {table.title}\n\n{caption(table)}\n\n{md}\n")
        write_csv(out / f"{table.name}.csv", rows)
        files[table.name] += [out / f"{table.name}.md", out / f"{table.name}.csv"]
        doc += ["", f"## {table.title}", "", caption(table), "", md]
        made = chart_table(table, rows, out / table.name)
        if made:
            files[table.name] += made.files
            doc += ["", f"![{table.name}]({made.png.name})"]
    if report.generic:
        md = markdown(GENERIC_COLUMNS, [generic_cells(r) for r in report.generic])
        (out / "other.md").write_text(f"## Runs that match no paper cell\n\n{GENERIC_CAPTION}\n\n{md}\n")
        write_csv(out / "other.csv", report.generic)
        files["other"] += [out / "other.md", out / "other.csv"]
        doc += ["", "## Runs that match no paper cell", "", GENERIC_CAPTION, "", md]
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
            wr.P(caption(table)),
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
    entity, project = split_wandb_path(wandb_path)
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


def split_wandb_path(path: str) -> tuple[str, str]:
    entity, _, project = path.partition("/")
    if not entity or not project or "/" in project:
        raise ReportError(f"--wandb {path}: expected ENTITY/PROJECT (e.g. my-team/gfsa)")
    return entity, project
