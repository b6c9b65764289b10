"""``gfsa sweep``'s command line: plan, check, submit (or ``--dry-run``, ``--status``) and return."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gfsa.ops.sweep.cells import Plan, expand, labelled, plan, table_runs
from gfsa.ops.sweep.slurm import check_slurm
from gfsa.ops.sweep.status import STATES, ended, status
from gfsa.ops.sweep.submit import default_dir, submit
from gfsa.utils.errors import ConfigError, fail


def _print_cells(p: Plan, title: str) -> None:
    from rich.table import Table

    from gfsa.runner.console import wide_console

    table = Table(title=title)
    for col in ("#", "cell", "run directory", "record"):
        table.add_column(col)
    for c in p.cells:
        rel = os.path.relpath(c.run_dir, p.results_dir)
        table.add_row(str(c.index), c.label, rel, ended(c) or "—")
    wide_console().print(table)  # whole rows in a log file or a pipe too


def _print_status(sweep: Path, rows: list[dict]) -> None:
    from rich.table import Table

    from gfsa.runner.console import wide_console

    table = Table(title=f"sweep {sweep}")
    for col in ("#", "cell", "state", "slurm task", "why"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["index"]), r["label"], r["state"], r["task"] or "—", r["why"])
    console = wide_console()
    console.print(table)
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    console.print(", ".join(f"{s} {n}" for s, n in counts.items()))


def _names(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gfsa sweep",
        description="Expand a multirun or a paper table into cells, check them all, submit one sbatch --array "
        "and return (docs/scale_out.md).",
    )
    p.add_argument(
        "overrides", nargs="*", help="Hydra overrides; a,b,c sweeps; hydra/launcher=<preset> (default slurm)"
    )
    p.add_argument(
        "--table",
        help="a paper table: name in experiments/ (glue, imagenet, …) or a .yaml path; also the first argument",
    )
    p.add_argument("--rows", type=_names, help="table rows to run, comma-separated (default all)")
    p.add_argument("--columns", type=_names, help="table columns to run, comma-separated (default all)")
    p.add_argument("--variants", type=_names, help="table variants to run, comma-separated (default all)")
    p.add_argument("--dir", type=Path, help="sweep directory (default <results_dir>/.sweeps/<name>-<hash of cells>)")
    p.add_argument(
        "--only-missing",
        action="store_true",
        help="submit only the cells without a finished record that are not still queued or running",
    )
    p.add_argument("--force", action="store_true", help="with --only-missing: also resubmit queued or running cells")
    p.add_argument("--dry-run", action="store_true", help="check and print the cells; submit nothing")
    p.add_argument("--status", type=Path, metavar="SWEEP_DIR", help="count done / running / failed / missing cells")
    return p


def main(args: argparse.Namespace) -> None:
    if args.force and not args.only_missing:
        raise ConfigError("--force goes with --only-missing (resubmit cells that are still queued or running)")
    if args.status:
        rows = status(args.status)
        _print_status(args.status, rows)
        return
    first = args.overrides[0] if args.overrides else ""
    if not args.table and first and "=" not in first and not first.startswith(("~", "+")):
        args.table = args.overrides.pop(0)  # `gfsa sweep glue ...`: a table name, as experiments/README.md writes
    if args.table:
        name = Path(args.table).stem
        runs = table_runs(args.table, args.overrides, args.rows, args.columns, args.variants)
    else:
        if args.rows or args.columns or args.variants:
            raise ConfigError("--rows/--columns/--variants select cells of a --table")
        name = "sweep"
        runs = labelled(expand(args.overrides))
    p = plan(runs, name)
    sweep = (args.dir or default_dir(p)).resolve()
    if args.dry_run:
        _print_cells(p, f"{len(p.cells)} cells, hydra/launcher={p.launcher.preset}, sweep dir {sweep} (dry run)")
        return
    if not p.launcher.is_slurm:
        raise ConfigError(
            f"hydra/launcher={p.launcher.preset} is not a Slurm preset: gfsa sweep submits to Slurm; "
            "run local sweeps with python run.py -m"
        )
    check_slurm(p.launcher)
    job, cells, skipped = submit(p, sweep, args.only_missing, args.force)
    still = f"; skipped {skipped} still queued or running (--force resubmits them)" if skipped else ""
    if job is None:
        print(
            f"nothing to submit: {len(p.cells) - skipped} of {len(p.cells)} cells have finished records{still} ({sweep})"
        )
        return
    print(f"submitted {len(cells)} of {len(p.cells)} cells as Slurm array job {job}{still}")
    print(f"sweep dir: {sweep}")
    print(f"follow it: gfsa sweep --status {sweep}")


def main_cli(argv: list[str]) -> None:
    """``gfsa sweep``: overrides and options mix freely; bad input is one line and exit code 2."""
    try:
        main(parser().parse_intermixed_args(argv))
    except ConfigError as e:
        fail(str(e))
