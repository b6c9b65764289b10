"""``gfsa report``: our results beside the baselines and the paper's numbers.

Reads results records (``result.json`` under the given directories, or W&B runs), counts each run
once, pairs every GFSA or compared-method run with its baseline by config (``pair_key`` + seed, as
:mod:`gfsa.runner.results` does), aggregates over seeds and sets the paper's numbers (``experiments/*.yaml``)
beside ours. Writes Markdown + CSV tables and figures (PNG, PDF, SVG), prints the tables with rich, and can publish
a W&B report. Pure Python + Hydra + matplotlib: no torch model code, no Lightning.

One stage per module, each importing only the ones before it:

- :mod:`.collect`: records read, checked and deduplicated (:func:`collect`, :func:`local_records`, W&B runs);
- :mod:`.resolve`: the backbone/task names a paper cell composes to, read from ``conf/`` without Hydra;
- :mod:`.match`: records matched to paper cells (how: see its docstring), composed cells cached on disk;
- :mod:`.aggregate`: cells filled with runs, gains over paired seeds, the generic table (:func:`build`);
- :mod:`.render`: Markdown, CSV and terminal tables; :mod:`.charts`: the figures;
- :mod:`.publish`: the report's files (:func:`write`) and the W&B report;
- :mod:`.cli`: ``gfsa report`` (:func:`run`, :func:`main_cli`).
"""

from gfsa.ops.report.aggregate import CONFIDENCE, DOMAINS, Report, Row, Stat, build, stat
from gfsa.ops.report.charts import chart_domains, chart_radar, chart_table
from gfsa.ops.report.cli import main_cli, run
from gfsa.ops.report.collect import (
    LOWER_IS_BETTER,
    PRIMARY_GUESS,
    Collected,
    ReportError,
    Run,
    collect,
    local_records,
    wandb_records,
)
from gfsa.ops.report.cost_charts import chart_layers, chart_lra, chart_overhead
from gfsa.ops.report.match import MATCH_IGNORE, cell_views, match_view, matches
from gfsa.ops.report.publish import publish_report, wandb_report, write
from gfsa.ops.report.render import (
    CSV_FIELDS,
    GENERIC_COLUMNS,
    PAPER_COLUMNS,
    csv_row,
    generic_cells,
    markdown,
    paper_cells,
    print_tables,
    write_csv,
)
from gfsa.ops.report.resolve import cell_names
from gfsa.ops.tables import load_tables  # the paper tables the report reads (rp.build(..., rp.load_tables(dir)))

__all__ = [
    "CONFIDENCE",
    "CSV_FIELDS",
    "DOMAINS",
    "GENERIC_COLUMNS",
    "LOWER_IS_BETTER",
    "MATCH_IGNORE",
    "PAPER_COLUMNS",
    "PRIMARY_GUESS",
    "Collected",
    "Report",
    "ReportError",
    "Row",
    "Run",
    "Stat",
    "build",
    "cell_names",
    "cell_views",
    "chart_domains",
    "chart_layers",
    "chart_lra",
    "chart_overhead",
    "chart_radar",
    "chart_table",
    "collect",
    "csv_row",
    "generic_cells",
    "load_tables",
    "local_records",
    "main_cli",
    "markdown",
    "match_view",
    "matches",
    "paper_cells",
    "print_tables",
    "publish_report",
    "run",
    "stat",
    "wandb_records",
    "wandb_report",
    "write",
    "write_csv",
]
