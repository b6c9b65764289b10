"""``gfsa report``: our results beside the baselines and the paper's numbers.

The command: check the input, collect, build, print, write (and publish); bad input is one line and exit 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from gfsa.ops.report.aggregate import Report, build
from gfsa.ops.report.collect import ReportError, collect, local_records, wandb_records
from gfsa.ops.report.publish import publish_report, split_wandb_path, write
from gfsa.ops.report.render import print_tables
from gfsa.ops.tables import EXPERIMENTS_DIR, TableError, load_tables
from gfsa.utils.errors import fail
from gfsa.utils.files import unwritable


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
        split_wandb_path(wandb_path)
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
    echo(f"wrote {out_dir / 'report.md'} ({sum(len(v) for v in files.values())} files: Markdown, CSV, PNG/PDF/SVG)")
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
        fail(str(e))
