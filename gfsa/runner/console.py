"""What the run path prints: one-line errors for bad overrides and the comparison table.

Light on purpose (no torch, no Lightning): override checks run before anything heavy loads.
"""

from __future__ import annotations

from pathlib import Path

from gfsa.utils.errors import fail

# Config groups whose option names can be checked against conf/ before Hydra starts.
CHECKED_GROUPS = (
    "backbone",
    "task",
    "gfsa",
    "optim",
    "trainer",
    "logger",
    "callbacks",
    "preset",
    "method",
    "hydra/launcher",
)


def group_options(conf_dir: Path, group: str) -> list[str]:
    base = conf_dir / group
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")) if base.is_dir() else []


def check_overrides(args: list[str], conf_dir: Path) -> None:
    """Exit 2 with one line naming the choices for an unknown group option (Hydra's own message
    spans many lines and comes after Lightning has been imported)."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        if key.startswith("hydra/") and key != "hydra/launcher":
            continue
        if key not in CHECKED_GROUPS or not (conf_dir / key).is_dir():
            continue
        choices = group_options(conf_dir, key)
        for option in value.split(","):
            option = option.strip()
            if option and option != "null" and option not in choices:
                fail(f"unknown {key} '{option}'; choose one of: {', '.join(choices)} (files in conf/{key}/)")


def _fmt(v, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def print_comparison(record: dict, baseline: dict | None, cfg: dict) -> None:
    """Baseline vs this run: metric, improvement %, added parameters, step-time overhead."""
    from rich.console import Console
    from rich.table import Table

    from gfsa.runner.results import pair, selected_metrics

    console = Console()
    if baseline is None:
        console.print(
            f"[yellow]no baseline record yet for {record['backbone']}/{record['task']} seed {record['seed']}[/]: "
            "run the same command with gfsa.layers=none (or with_baseline=true); "
            "it will complete this run's improvement % when it finishes."
        )
        return
    cmp = pair(record, baseline)
    if cmp.get("not_compared"):
        console.print(f"[yellow]no improvement %[/]: {cmp['not_compared']}")
        return
    name = cmp["metric"]
    title = f"{record['backbone']} on {record['task']}, seed {record['seed']}: {name} ({cmp.get('direction', 'up')})"
    table = Table(title=title)
    for col in ("run", name, "Δ %", "+params", "layers", "ms/step", "time Δ %"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for rec, is_base in ((baseline, True), (record, False)):
        value = selected_metrics(rec).get(name, {}).get("value")
        step = rec.get("timing", {}).get("step_time_s")
        table.add_row(
            rec["variant"],
            _fmt(value),
            "" if is_base else _fmt(cmp.get("improvement_pct"), "+.2f"),
            str(rec.get("gfsa", {}).get("added_parameters", 0)),
            "none" if is_base else ",".join(map(str, rec["gfsa"]["layers"])),
            _fmt(step * 1000 if step else None, ".1f"),
            "" if is_base else _fmt(cmp.get("step_time_overhead_pct"), "+.1f"),
        )
    console.print(table)
