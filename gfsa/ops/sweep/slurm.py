"""What ``gfsa sweep`` asks of Slurm: the launcher preset's resources, a reachable controller that knows
the partition, the ``sbatch --array`` script (from ``slurm/sweep.sbatch``), its submission, and the
states of submitted tasks (``squeue``, ``sacct``)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gfsa.utils.errors import ConfigError
from gfsa.utils.resources import slurm_template

if TYPE_CHECKING:
    from gfsa.ops.sweep.cells import Plan, SweepCell

TEMPLATE = slurm_template()
SLURM_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


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


def launcher_from(hydra_launcher, preset: str) -> Launcher:
    """The :class:`Launcher` of a composed ``hydra.launcher`` node (the preset ``preset``)."""
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
    """The last non-empty line of a command's output (where sinfo and sbatch say what went wrong)."""
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


def sbatch_lines(launcher: Launcher, n: int, sweep: Path) -> list[str]:
    """The ``#SBATCH`` lines of an array of ``n`` tasks with the launcher's resources."""
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


def write_script(p: Plan, cells: list[SweepCell], sweep: Path, number: int) -> Path:
    """``<sweep>/submit-<number>.sbatch``: the template filled in for ``cells`` (one array task each)."""
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


def sbatch(script: Path, launcher: Launcher) -> str:
    """Submit ``script``; its job id, or one line naming sbatch's complaint and where to fix it."""
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
    if out.returncode:
        raise ConfigError(
            f"sbatch failed, nothing submitted ({_last_line(out.stderr)}): check the Slurm settings of "
            f"hydra/launcher={launcher.preset} (hydra.launcher.<key>=...)"
        )
    return out.stdout.strip().split(";")[0]


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """``<job>_<task>`` → Slurm state for the sweep's tasks still known to the controller."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True, text=True, check=False
    )
    return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)


def sacct_states(job_ids: list[str]) -> dict[str, str]:
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
