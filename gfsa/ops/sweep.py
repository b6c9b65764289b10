"""``gfsa sweep``: big sweeps on Slurm without waiting for them.

A multirun (``gfsa.layers=none,all seed=0,1,2``) or a paper table (``--table glue``) is expanded into
cells; every cell's config is composed with Hydra's compose API and checked (``gfsa.runner.train.validate``,
registry names, data dirs, launcher vs ``trainer.devices``/``num_nodes``, Slurm and its partition) before
anything is submitted. Then a manifest and an ``sbatch --array`` script (from ``slurm/sweep.sbatch``) go
into a sweep directory, the array is submitted, and the command returns. ``--only-missing`` submits only
the cells without a finished results record that are not still queued or running (``--force``: those too);
``--status`` counts done / running / failed / missing.

Light on purpose: Hydra and the results records, never Lightning (which takes ~10 s to import), so a
sweep of hundreds of cells is checked in seconds. The same checks guard ``python run.py -m
hydra/launcher=slurm ...`` (:func:`preflight`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gfsa.runner import results as R
from gfsa.runner.config import normalise
from gfsa.runner.registry import BACKBONES, TASKS
from gfsa.utils.errors import ConfigError
from gfsa.utils.files import atomic_write_json
from gfsa.utils.resources import conf_dir, slurm_template

TEMPLATE = slurm_template()
MANIFEST = "manifest.json"
DEFAULT_LAUNCHER = "slurm"
SLURM_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
STATES = ("done", "diverged", "running", "failed", "missing")


@dataclass
class Cell:
    """One run of the sweep: the overrides its job passes to ``gfsa run`` and where its record lands."""

    index: int
    label: str
    overrides: list[str]
    run_dir: str


@dataclass
class Launcher:
    """The Slurm resources of every array task, read from a ``conf/hydra/launcher`` preset."""

    preset: str
    target: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    timeout_min: int = 60
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    array_parallelism: int = 256
    signal_delay_s: int = 120
    setup: list[str] = field(default_factory=list)
    additional_parameters: dict = field(default_factory=dict)

    @property
    def is_slurm(self) -> bool:
        return self.target == SLURM_TARGET


@dataclass
class Plan:
    cells: list[Cell]
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
        raise ConfigError(f"cannot parse the overrides: {str(e).splitlines()[0]}") from None
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
def _launcher(hydra_launcher, preset: str) -> Launcher:
    from omegaconf import OmegaConf

    keys = {f for f in Launcher.__dataclass_fields__ if f not in ("preset", "target")}
    values = {"target": str(hydra_launcher["_target_"])}
    for k in keys:
        if k in hydra_launcher:
            v = hydra_launcher[k]
            values[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    values["setup"] = list(values.get("setup") or [])
    values["additional_parameters"] = dict(values.get("additional_parameters") or {})
    return Launcher(preset=preset, **values)


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


def check_slurm(launcher: Launcher) -> None:
    """Slurm is there and knows the partition, so ``sbatch`` cannot reject the array later."""
    if not launcher.is_slurm:
        return
    if shutil.which("sbatch") is None:
        raise ConfigError(
            f"hydra/launcher={launcher.preset} needs Slurm but sbatch is not on PATH: run on a Slurm login node "
            "(or start slurm/local-cluster.sh), or use hydra/launcher=local"
        )
    known = _partitions()
    if launcher.partition and launcher.partition not in known:
        raise ConfigError(
            f"hydra.launcher.partition={launcher.partition}: no such partition; choose one of: {', '.join(known)}"
        )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _partitions(timeout: float = 30) -> list[str]:
    """The controller's partitions (``sinfo``); one line naming the fix when no controller answers."""

    def unreachable(why: str) -> ConfigError:
        return ConfigError(
            f"Slurm controller not reachable ({why}): start it (slurm/local-cluster.sh start) or set SLURM_CONF"
        )

    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # sinfo would retry for a minute
        raise unreachable(f"SLURM_CONF={conf} is not a file")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise unreachable(f"sinfo got no answer in {timeout:.0f} s") from None
    if out.returncode:
        raise unreachable(f"sinfo: {_last_line(out.stderr)}")
    return sorted(set(out.stdout.split()))


def plan(runs: list[tuple[str, list[str]]], name: str) -> Plan:
    """Compose and check every run; cells that compute the same run are merged or rejected."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    cells: list[Cell] = []
    by_dir: dict[str, Cell] = {}
    launcher = None
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        for label, overrides in runs:
            job = [o for o in overrides if not _is_launcher(o)]
            if not any(_key(o) == "hydra/launcher" for o in overrides):
                overrides = [f"hydra/launcher={DEFAULT_LAUNCHER}", *overrides]
            preset = next(o.split("=", 1)[1] for o in overrides if _key(o) == "hydra/launcher")
            try:
                composed = compose("config", overrides=overrides, return_hydra_config=True)
                this = _launcher(composed.hydra.launcher, preset)
                with open_dict(composed):
                    del composed["hydra"]
                cfg = OmegaConf.to_container(composed, resolve=True)
            except (HydraException, OmegaConfBaseException) as e:
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                raise ConfigError(f"cell {label}: {' '.join(lines[:2])}") from None
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
            cell = Cell(len(cells), label, job, rdir)
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


# -- the sweep directory ------------------------------------------------------------------------------
def _digest(cells: list[Cell]) -> str:
    return hashlib.sha1(json.dumps([c.run_dir for c in cells]).encode()).hexdigest()[:8]


def sbatch_lines(launcher: Launcher, n: int, sweep: Path) -> list[str]:
    lines = {
        "job-name": f"gfsa-{sweep.name}",
        "array": f"0-{n - 1}%{launcher.array_parallelism}",
        "partition": launcher.partition,
        "account": launcher.account,
        "qos": launcher.qos,
        "time": launcher.timeout_min,
        "nodes": launcher.nodes,
        "ntasks-per-node": launcher.tasks_per_node,
        "gpus-per-node": launcher.gpus_per_node or None,
        "cpus-per-task": launcher.cpus_per_task,
        "mem": f"{launcher.mem_gb}G" if launcher.mem_gb else None,
        "signal": f"USR1@{launcher.signal_delay_s}",
        "open-mode": "append",
        "output": str(sweep / "logs" / "%A_%a.out"),
        "chdir": os.getcwd(),
    }
    for k, v in launcher.additional_parameters.items():
        lines[k.replace("_", "-")] = v
    out = []
    for k, v in lines.items():
        if v is True:
            out.append(f"#SBATCH --{k}")
        elif v not in (None, False, ""):
            out.append(f"#SBATCH --{k}={v}")
    return out


def write_script(p: Plan, cells: list[Cell], sweep: Path, number: int) -> Path:
    text = TEMPLATE.read_text()
    fields = {
        "sbatch": "\n".join(sbatch_lines(p.launcher, len(cells), sweep)),
        "setup": "\n".join(p.launcher.setup),
        "cells": "\n".join("  " + shlex.quote(shlex.join(c.overrides)) for c in cells),
        "python": shlex.quote(sys.executable),
        "status_dir": str(sweep / "status"),
    }
    for k, v in fields.items():
        text = text.replace("{{" + k + "}}", v)
    path = sweep / f"submit-{number}.sbatch"
    path.write_text(text)
    return path


def load_manifest(sweep: Path) -> dict:
    try:
        return json.loads((sweep / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{sweep} is not a sweep directory (no readable {MANIFEST})") from None


def _queued(sweep: Path) -> set[str]:
    """Run directories of the cells of an earlier submission to ``sweep`` that are still queued or running."""
    if not (sweep / MANIFEST).is_file():
        return set()
    by_index = {c["index"]: c["run_dir"] for c in load_manifest(sweep)["cells"]}
    return {by_index[r["index"]] for r in status(sweep) if r["state"] == "running"}


def submit(p: Plan, sweep: Path, only_missing: bool, force: bool = False) -> tuple[str | None, list[Cell], int]:
    """Write the manifest and the array script, submit it; returns (job id, submitted cells, cells skipped
    because they are still queued or running). If sbatch fails, what this call wrote is removed."""
    cells = [c for c in p.cells if not (only_missing and _ended(c))]
    queued = _queued(sweep) if only_missing and not force else set()
    skipped = sum(c.run_dir in queued for c in cells)
    cells = [c for c in cells if c.run_dir not in queued]
    created = next((d for d in reversed([sweep, *sweep.parents]) if not d.exists()), None)
    sweep.mkdir(parents=True, exist_ok=True)
    for d in ("logs", "status"):
        (sweep / d).mkdir(exist_ok=True)
    manifest = json.loads((sweep / MANIFEST).read_text()) if (sweep / MANIFEST).is_file() else {"submissions": []}
    manifest.update(
        schema=1,
        name=p.name,
        results_dir=str(p.results_dir),
        launcher=asdict(p.launcher),
        cells=[asdict(c) for c in p.cells],
    )
    job = None
    if cells:
        script = write_script(p, cells, sweep, len(manifest["submissions"]))
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
        if out.returncode:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            else:
                script.unlink(missing_ok=True)
            raise ConfigError(
                f"sbatch failed, nothing submitted ({_last_line(out.stderr)}): check the Slurm settings of "
                f"hydra/launcher={p.launcher.preset} (hydra.launcher.<key>=...)"
            )
        job = out.stdout.strip().split(";")[0]
        manifest["submissions"].append(
            {"job_id": job, "script": script.name, "cells": [c.index for c in cells], "at": time.strftime("%FT%T%z")}
        )
    atomic_write_json(sweep / MANIFEST, manifest)
    return job, cells, skipped


# -- status -------------------------------------------------------------------------------------------
def _ended(cell: Cell | dict) -> str | None:
    """``finished`` or ``diverged`` when the cell's run has a record (neither trains again), else None."""
    rec = R.load_record(cell.run_dir if isinstance(cell, Cell) else cell["run_dir"])
    return rec.get("status") if rec is not None and rec.get("status") in R.TERMINAL else None


def _queue(job_ids: list[str]) -> dict[str, str]:
    """``<job>_<task>`` → Slurm state for the sweep's tasks still known to the controller."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True, text=True, check=False
    )
    return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)


def _accounting(job_ids: list[str]) -> dict[str, str]:
    """Final states from sacct where the cluster keeps accounting ({} where it does not)."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        return {}
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def status(sweep: Path) -> list[dict]:
    """Per cell: state (done | diverged | running | failed | missing) and what it is based on."""
    manifest = load_manifest(sweep)
    latest: dict[int, str] = {}
    for sub in manifest["submissions"]:
        for task, index in enumerate(sub["cells"]):
            latest[index] = f"{sub['job_id']}_{task}"
    jobs = sorted({s["job_id"] for s in manifest["submissions"]})
    queue, acct = _queue(jobs), _accounting(jobs)
    rows = []
    for cell in manifest["cells"]:
        task = latest.get(cell["index"])
        exit_file = sweep / "status" / f"{task}.exit"
        log = sweep / "logs" / f"{task}.out"
        ended = _ended(cell)
        if ended == R.FINISHED:
            state, why = "done", "finished record"
        elif ended == R.DIVERGED:
            state, why = "diverged", "recorded as diverged (delete its run dir to train again)"
        elif task is None:
            state, why = "missing", "never submitted"
        elif task in queue:
            state, why = "running", queue[task].lower()
        elif task in acct and acct[task].split()[0] in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED"):
            state, why = "running", acct[task].lower()
        elif task in acct:
            state, why = "failed", f"{acct[task].split()[0].lower()} without a record"
        elif exit_file.is_file():
            state, why = "failed", f"exit {exit_file.read_text().strip()} without a record"
        elif log.is_file():
            state, why = "failed", "ended without a record (see its log)"
        else:
            state, why = "missing", "not in the queue and never started"
        rows.append({"index": cell["index"], "label": cell["label"], "state": state, "why": why, "task": task})
    return rows


# -- command line -------------------------------------------------------------------------------------
def _print_cells(p: Plan, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("#", "cell", "run directory", "record"):
        table.add_column(col)
    for c in p.cells:
        rel = os.path.relpath(c.run_dir, p.results_dir)
        table.add_row(str(c.index), c.label, rel, _ended(c) or "—")
    Console().print(table)


def _print_status(sweep: Path, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep {sweep}")
    for col in ("#", "cell", "state", "slurm task", "why"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["index"]), r["label"], r["state"], r["task"] or "—", r["why"])
    console = Console()
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
    sweep = (args.dir or p.results_dir / ".sweeps" / f"{name}-{_digest(p.cells)}").resolve()
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
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
