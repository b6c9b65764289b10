"""A sweep's cells: a multirun or a paper table expanded into override lists, each composed with Hydra's
compose API and checked (``gfsa.runner.config.normalise``, registry names, data dirs, launcher vs
``trainer.devices``/``num_nodes``) before anything is submitted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gfsa.ops.sweep.slurm import Launcher, check_slurm, launcher_from
from gfsa.runner import results as R
from gfsa.runner.config import normalise
from gfsa.runner.registry import BACKBONES, TASKS
from gfsa.utils.errors import ConfigError, first_line, first_lines
from gfsa.utils.resources import conf_dir

DEFAULT_LAUNCHER = "slurm"


@dataclass
class SweepCell:
    """One run of the sweep: the overrides its job passes to ``gfsa run`` and where its record lands
    (not to be confused with :class:`gfsa.ops.tables.Cell`, a cell of a paper table)."""

    index: int
    label: str
    overrides: list[str]
    run_dir: str


@dataclass
class Plan:
    cells: list[SweepCell]
    launcher: Launcher
    results_dir: Path
    name: str


# -- expanding ----------------------------------------------------------------------------------------
def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_launcher(override: str) -> bool:
    return _key(override) == "hydra/launcher" or _key(override).startswith("hydra.launcher.")


def expand(overrides: list[str]) -> list[list[str]]:
    """Hydra's multirun expansion (``a=1,2 b=x,y`` → 4 override lists, in Hydra's order)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the overrides: {first_line(e, with_type=False)}") from None
    return [list(o) for o in BasicSweeper.split_arguments(parsed, None)[0]]


def table_runs(table: str, extra: list[str], rows=None, columns=None, variants=None) -> list[tuple[str, list[str]]]:
    """(label, overrides) per seed of each selected cell of a paper table, with ``extra`` added to each.
    An extra override of a key that the cell sets to something else is a conflict, not a silent win;
    an extra ``seed=`` replaces the table's seeds."""
    from gfsa.ops.tables import EXPERIMENTS_DIR, TableError, load_table

    path = Path(table) if table.endswith(".yaml") else EXPERIMENTS_DIR / f"{table}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")))
        raise ConfigError(f"--table {table}: no such table; choose one of: {names} (files in experiments/)")
    try:
        cells = load_table(path).select(rows, columns, variants)
    except TableError as e:
        raise ConfigError(str(e)) from None
    if not cells:
        raise ConfigError(f"--table {table}: no cell matches --rows/--columns/--variants")
    out = []
    for varying, combo in labelled(expand(extra), empty="") if extra else [("", [])]:
        for cell in cells:
            theirs = {_key(o): o for o in cell.overrides}
            for o in combo:
                if _key(o) in theirs and theirs[_key(o)] != o:
                    raise ConfigError(
                        f"override {o} conflicts with {theirs[_key(o)]} of table cell {cell.id}: "
                        "drop it, or choose cells with --rows/--columns/--variants"
                    )
            # seed=... among the extra overrides replaces the table's seeds (gfsa sweep glue seed=0,1,2)
            seeds = [[]] if any(_key(o) == "seed" for o in combo) else [[s] for s in (r[-1] for r in cell.runs())]
            for seed in seeds:
                label = " ".join([f"{cell.row}/{cell.column}/{cell.variant}", *seed, varying]).strip()
                out.append((label, [*cell.overrides, *[o for o in combo if o not in cell.overrides], *seed]))
    return out


# -- composing and checking ---------------------------------------------------------------------------
def _check_cell(cfg: dict, launcher: Launcher, label: str) -> dict:
    """Everything cheap that a job would otherwise find out on the cluster; returns the normalised
    config (:func:`gfsa.runner.config.normalise`), which names the cell's run directory as the job will."""
    try:
        cfg = normalise(cfg)
    except ConfigError as e:
        raise ConfigError(f"cell {label}: {e}") from None
    for kind, name, table in (
        ("task", cfg["task"].get("type"), TASKS),
        ("backbone", cfg["backbone"].get("type"), BACKBONES),
    ):
        if "_target_" in cfg[kind]:  # a builder of the user's package: the job imports it (not this light path)
            continue
        if name not in table:
            raise ConfigError(f"cell {label}: unknown {kind} type '{name}'; known: {', '.join(sorted(table))}")
    data_dir = cfg["task"].get("data_dir")
    if data_dir and not Path(str(data_dir)).expanduser().exists():
        raise ConfigError(f"cell {label}: task.data_dir={data_dir} does not exist: pass task.data_dir=<dir>")
    trainer = cfg.get("trainer") or {}
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if isinstance(devices, bool) or not isinstance(devices, int):
        raise ConfigError(
            f"hydra/launcher={launcher.preset} starts {launcher.tasks_per_node} task(s) per node but trainer.devices="
            f"{devices}: set trainer.devices to an integer equal to tasks_per_node (trainer.devices="
            f"{launcher.tasks_per_node}; one srun task per device)"
        )
    if devices != launcher.tasks_per_node:
        raise ConfigError(
            f"hydra/launcher={launcher.preset} starts {launcher.tasks_per_node} task(s) per node but trainer.devices="
            f"{devices}: pass trainer.devices={launcher.tasks_per_node} or hydra.launcher.tasks_per_node={devices} "
            "(one srun task per device)"
        )
    gpus = launcher.gpus_per_node or 0
    if gpus and trainer.get("accelerator") != "cpu" and launcher.tasks_per_node > gpus:
        raise ConfigError(
            f"hydra/launcher={launcher.preset} starts {launcher.tasks_per_node} task(s) per node on {gpus} GPU(s): "
            f"pass hydra.launcher.gpus_per_node={launcher.tasks_per_node} or lower tasks_per_node and trainer.devices "
            "(one GPU per task)"
        )
    if nodes != launcher.nodes:
        raise ConfigError(
            f"hydra/launcher={launcher.preset} asks for {launcher.nodes} node(s) but trainer.num_nodes={nodes}: "
            f"pass trainer.num_nodes={launcher.nodes} or hydra.launcher.nodes={nodes}"
        )
    return cfg


def plan(runs: list[tuple[str, list[str]]], name: str) -> Plan:
    """Compose and check every run; cells that compute the same run are merged or rejected."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    cells: list[SweepCell] = []
    by_dir: dict[str, SweepCell] = {}
    launcher = None
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        for label, overrides in runs:
            job = [o for o in overrides if not _is_launcher(o)]
            if not any(_key(o) == "hydra/launcher" for o in overrides):
                overrides = [f"hydra/launcher={DEFAULT_LAUNCHER}", *overrides]
            preset = next(o.split("=", 1)[1] for o in overrides if _key(o) == "hydra/launcher")
            try:
                composed = compose("config", overrides=overrides, return_hydra_config=True)
                this = launcher_from(composed.hydra.launcher, preset)
                with open_dict(composed):
                    del composed["hydra"]
                cfg = OmegaConf.to_container(composed, resolve=True)
            except (HydraException, OmegaConfBaseException) as e:
                raise ConfigError(f"cell {label}: {first_lines(e, 2)}") from None
            launcher = launcher or this
            cfg = _check_cell(cfg, launcher, label)
            results_dir = Path(cfg["paths"]["results_dir"]).resolve()
            if not any(_key(o) == "with_baseline" for o in job):
                job.append("with_baseline=false")  # baselines are cells of the sweep; two jobs never train one
            job = [o for o in job if _key(o) != "paths.results_dir"] + [f"paths.results_dir={results_dir}"]
            rdir = str(R.run_dir(cfg, results_dir))
            if rdir in by_dir:
                first = by_dir[rdir]
                if sorted(first.overrides) != sorted(job):
                    raise ConfigError(
                        f"cells '{first.label}' and '{label}' compute the same run ({rdir}) with different overrides: "
                        "drop one of them"
                    )
                continue  # the same run listed twice (e.g. one MNLI run scores two table columns)
            cell = SweepCell(len(cells), label, job, rdir)
            by_dir[rdir] = cell
            cells.append(cell)
    return Plan(cells, launcher, results_dir, name)


def labelled(combos: list[list[str]], empty: str = "(one cell)") -> list[tuple[str, list[str]]]:
    """(label, overrides) per cell; the label is what varies across the sweep."""
    common = set.intersection(*(set(c) for c in combos)) if combos else set()
    return [(" ".join(o for o in c if o not in common and not _is_launcher(o)) or empty, c) for c in combos]


def preflight(args: list[str]) -> Plan | None:
    """``python run.py -m hydra/launcher=<preset> ...``: check every cell before hydra-submitit submits."""
    overrides = [a for a in args if not a.startswith("-")]
    if not any(_key(o) == "hydra/launcher" for o in overrides):
        return None
    p = plan(labelled(expand(overrides)), "multirun")
    check_slurm(p.launcher)
    return p
