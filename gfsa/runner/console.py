"""What the run path prints: one-line errors for bad overrides, the comparison table, and a console with
one line per message (third-party noise that says nothing to the user is filtered).

Light on purpose (no torch, no Lightning at import): override checks run before anything heavy loads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
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
    "hparams_search",
    "debug",
    "hydra/launcher",
)
# Hydra's own command-line flags: the other `--key=value` arguments are overrides in W&B agent style.
HYDRA_FLAGS = {
    "--multirun",
    "--cfg",
    "--help",
    "--hydra-help",
    "--info",
    "--resolve",
    "--package",
    "--run",
    "--config-path",
    "--config-name",
    "--config-dir",
    "--shell-completion",
    "--version",
    "--experimental-rerun",
}


def overrides_from_agent_args(args: list[str]) -> list[str]:
    """W&B's default sweep command passes ``--optim.lr=0.001``; Hydra takes ``optim.lr=0.001``. A bare
    ``None`` (how the agent writes a null in every argument style) becomes Hydra's ``null`` (quote it,
    ``key='None'``, for the string); Hydra's own flags stay as they are."""
    out = []
    for a in args:
        if a.startswith("--") and "=" in a and a.split("=", 1)[0] not in HYDRA_FLAGS:
            a = a[2:]
        if not a.startswith("-") and a.endswith("=None"):
            a = a[: -len("None")] + "null"
        out.append(a)
    return out


def search_dirs(args: list[str], conf_dir: Path) -> list[Path]:
    """conf/ and the config dirs a ``hydra.searchpath=[…]`` override adds (``file://``, plain paths,
    ``pkg://my_pkg.conf``): where a user's own task, backbone or preset files live."""
    dirs = [conf_dir]
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key != "hydra.searchpath":
            continue
        for item in value.strip().strip("[]").split(","):
            item = item.strip().strip("'\"")
            if item.startswith("pkg://"):
                spec = importlib.util.find_spec(item[len("pkg://") :]) if item[len("pkg://") :] else None
                locations = list(spec.submodule_search_locations or []) if spec else []
                dirs += [Path(loc) for loc in locations[:1]]
            elif item:
                dirs.append(Path(item.removeprefix("file://")))
    return dirs


def group_options(conf_dir: Path | list[Path], group: str) -> list[str]:
    found = set()
    for d in conf_dir if isinstance(conf_dir, list) else [conf_dir]:
        base = d / group
        if base.is_dir():
            found |= {str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")}
    return sorted(found)


def check_overrides(args: list[str], conf_dir: Path) -> None:
    """Exit 2 with one line naming the choices for an unknown group option (Hydra's own message
    spans many lines and comes after Lightning has been imported)."""
    dirs = search_dirs(args, conf_dir)
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        if key.startswith("hydra/") and key != "hydra/launcher":
            continue
        if key not in CHECKED_GROUPS or not any((d / key).is_dir() for d in dirs):
            continue
        choices = group_options(dirs, key)
        for option in value.split(","):
            option = option.strip()
            if option and option != "null" and option not in choices:
                fail(f"unknown {key} '{option}'; choose one of: {', '.join(choices)} (files in conf/{key}/)")


# Warnings from libraries that say nothing the user can act on, each with why.
NOISE = (
    # Lightning, on any machine with Slurm installed: ranks come from srun or Hydra's launcher (scale_out.md).
    r"The `srun` command is available on your system but is not used",
    # The DataLoader worker hint: task.num_workers is chosen per task in conf/task/ (0 or 2 where the data
    # are tensors in memory, more where files are decoded).
    r".*does not have many workers which may be a bottleneck",
    # Lightning 2.6 calling a torch API that torch deprecated since.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # best.ckpt beside last.ckpt when a run resumes in its own directory.
    r"Checkpoint directory .* exists and is not empty",
    # Under DDP: validation metrics are torchmetrics values, already reduced over every rank when computed.
    r"It is recommended to use `self.log\('val/.*sync_dist=True",
)


# Library loggers that talk at INFO about their own set-up, printed through Hydra's logging otherwise.
QUIET_LOGGERS = (
    "alembic",  # optuna's database layer announces each of its plugins when the Optuna sweeper loads
)


def quiet_startup() -> None:
    """Before Hydra starts: library loggers that would print their set-up through Hydra's handlers."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class _NoTips(logging.Filter):
    """Lightning's "💡 Tip: … litlogger / litmodels" advertisements (INFO on its rank_zero logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_libraries() -> None:
    """One line per log message and no third-party noise, for a job that Hydra's logging configured.

    Lightning's ``__init__`` gives its loggers handlers of their own, which print every message a second
    time when Lightning is imported after Hydra has configured the root logger (it is, lazily); those are
    removed so that each message goes once through Hydra's handler (console and job log)."""
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # a filter acts on its own logger only
    if not any(isinstance(f, _NoTips) for f in rank_zero.filters):
        rank_zero.addFilter(_NoTips())
    if logging.getLogger().handlers:
        import lightning  # noqa: F401 - its import adds the handlers that are removed here

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            lg.handlers.clear()
            lg.propagate = True


def wide_console():
    """A rich Console that keeps wide tables whole when the output is not a terminal (a log file, a pipe,
    a Slurm job), where rich would otherwise wrap them at 80 columns; COLUMNS still wins."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=400)
    return console


def _fmt(v, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def print_comparison(record: dict, baseline: dict | None, cfg: dict) -> None:
    """Baseline vs this run: metric, improvement %, added parameters, step-time overhead."""
    from rich.table import Table

    from gfsa.runner.results import pair, selected_metrics

    console = wide_console()
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
