"""A real one-node Slurm cluster for the tests (slurm/local-cluster.sh), and helpers to drive it.

The session fixture starts the cluster (installing the Debian packages if missing) unless one is already
up, and stops what it started at the end, so `make test` alone runs the Slurm tests. It fails rather
than skips when the cluster cannot start: CI must run these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, REPO

from gfsa.runner import results as R

SCRIPT = REPO / "slurm" / "local-cluster.sh"
CLUSTER_DIR = Path(os.environ.get("GFSA_SLURM_DIR", "/tmp/gfsa-slurm"))
SLURM_CONF = CLUSTER_DIR / "etc" / "slurm.conf"
GFSA = str(Path(PYTHON).parent / "gfsa") if Path(PYTHON).parent.joinpath("gfsa").exists() else "gfsa"


@pytest.fixture(scope="session")
def slurm():
    """SLURM_CONF of a running local cluster (this process's environment points at it)."""
    if os.geteuid() != 0:
        pytest.fail("the Slurm tests start slurm/local-cluster.sh, which needs root (as CI runs)")
    up = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True, check=False).returncode == 0
    if not up:
        t0 = time.time()
        out = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, check=False, timeout=600)
        if out.returncode:
            pytest.fail(f"slurm/local-cluster.sh start failed:\n{out.stdout}\n{out.stderr}")
        print(f"local Slurm cluster started in {time.time() - t0:.1f} s")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(SLURM_CONF)
    yield str(SLURM_CONF)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if not up:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, check=False, timeout=120)


def env(**extra) -> dict:
    """The environment of commands and, through sbatch's default --export=ALL, of their jobs."""
    return {
        **os.environ,
        "SLURM_CONF": str(SLURM_CONF),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **extra,
    }


def gfsa(*args, timeout=180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GFSA, *args],
        check=False,
        cwd=REPO,
        env=kw.pop("env", None) or env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Reference:
    """An uninterrupted run of the same overrides, started now in a fresh process with a job's environment
    (one thread: float sums differ with the thread count, and a process that already ran other tests may
    not keep the count it was given), so it runs while the Slurm job does."""

    def __init__(self, overrides: list[str], results_dir: Path):
        self.results_dir = results_dir
        command = [
            PYTHON,
            "-m",
            "gfsa.cli",
            "run",
            *overrides,
            "with_baseline=false",
            f"paths.results_dir={results_dir}",
        ]
        self.proc = subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def record(self, timeout: float = 240) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, out.decode(errors="replace")[-3000:]
        return next(rec for _, rec in R.iter_records(self.results_dir))


def queue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], env=env(), capture_output=True, text=True, check=True)
    return out.stdout.split()


def manifest(sweep: Path) -> dict:
    return json.loads((sweep / "manifest.json").read_text())


def wait_for(condition, timeout: float, every: float = 1.0, what: str = "condition"):
    """Poll until ``condition()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_idle(job_ids: list[str], timeout: float) -> None:
    """Until none of the jobs is queued or running."""
    wait_for(
        lambda: not [j for j in queue() if j.split("_")[0] in job_ids],
        timeout,
        what=f"Slurm jobs {job_ids} to end",
    )
