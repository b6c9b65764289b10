"""Sweeps, requeue and bad input against a real Slurm cluster (slurm/local-cluster.sh, started once per
session): both sweep paths produce records, --only-missing resubmits exactly the missing cell, a signalled
run checkpoints, is requeued and ends with the metrics of an uninterrupted run under one W&B run id."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, PYTHON, REPO
from slurm_cluster import Reference, env, gfsa, manifest, queue, slurm, wait_for, wait_idle  # noqa: F401
from test_resume import _comparable
from wandb_log import logged

from gfsa.runner import results as R

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm")]
SWEEP = ["hydra/launcher=slurm_cpu", *FAST, "gfsa.layers=none,selected", "seed=0,1"]


def _sweep_dir(out: subprocess.CompletedProcess) -> Path:
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(next(line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith("sweep dir: ")))


def _status(sweep: Path) -> str:
    out = gfsa("sweep", "--status", str(sweep))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.timeout(300)
def test_hydra_launcher_runs_the_multirun_as_one_job_array(tmp_path):
    out = subprocess.run(
        [PYTHON, "run.py", "-m", *SWEEP, f"paths.results_dir={tmp_path}"],
        check=False,
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = [r for _, r in R.iter_records(tmp_path)]
    assert sorted((r["variant"], r["seed"]) for r in records) == [
        ("baseline", 0),
        ("baseline", 1),
        ("gfsa", 0),
        ("gfsa", 1),
    ]
    tasks = [p.name for p in tmp_path.glob(".multirun/*/.submitit/[0-9]*_*")]
    assert len(tasks) == 4 and len({t.split("_")[0] for t in tasks}) == 1, tasks  # one array, four tasks


@pytest.mark.timeout(300)
def test_gfsa_sweep_returns_at_once_then_only_missing_resubmits_one_cell(tmp_path):
    args = ["sweep", *SWEEP, f"paths.results_dir={tmp_path}"]
    t0 = time.time()
    sweep = _sweep_dir(gfsa(*args))
    submit_s = time.time() - t0
    assert len(list(R.iter_records(tmp_path))) < 4, "gfsa sweep must return before its cells finish"
    m = manifest(sweep)
    job = m["submissions"][0]["job_id"]
    assert len(m["cells"]) == 4 and m["submissions"][0]["cells"] == [0, 1, 2, 3]
    assert "#SBATCH --array=0-3%" in (sweep / "submit-0.sbatch").read_text()
    wait_idle([job], 240)
    assert _status(sweep) == "done 4, diverged 0, running 0, failed 0, missing 0"

    victim = m["cells"][2]
    (Path(victim["run_dir"]) / R.RECORD).unlink()
    assert _status(sweep) == "done 3, diverged 0, running 0, failed 1, missing 0"  # its task exited 0 without a record
    again = gfsa(*args, "--only-missing")
    assert "submitted 1 of 4 cells" in again.stdout, again.stderr[-2000:]
    last = manifest(sweep)["submissions"][-1]
    assert last["cells"] == [victim["index"]] and "#SBATCH --array=0-0%" in (sweep / last["script"]).read_text()
    wait_idle([last["job_id"]], 180)
    assert R.load_record(victim["run_dir"])["status"] == "finished"
    assert _status(sweep) == "done 4, diverged 0, running 0, failed 0, missing 0"
    print(f"gfsa sweep returned in {submit_s:.1f} s")


@pytest.mark.timeout(300)
def test_only_missing_skips_cells_still_queued_unless_forced(tmp_path):
    """A job holding every CPU keeps the sweep's cells pending: --only-missing must not submit them again
    (two jobs would train into the same run directory); --force does."""
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], env=env(), capture_output=True, text=True, check=True)
    hold = ["sbatch", "--parsable", "-c", cpus.stdout.split()[0], "-o", "/dev/null", "--wrap", "sleep 300"]
    blocker = subprocess.run(hold, env=env(), capture_output=True, text=True, check=True).stdout.split(";")[0].strip()
    jobs: list[str] = []
    try:
        args = ["sweep", "hydra/launcher=slurm_cpu", *FAST, "seed=0,1", f"paths.results_dir={tmp_path}"]
        sweep = _sweep_dir(gfsa(*args))
        again = gfsa(*args, "--only-missing")
        assert again.returncode == 0, again.stderr[-2000:]
        assert "nothing to submit" in again.stdout and "skipped 2 still queued or running" in again.stdout
        assert len(manifest(sweep)["submissions"]) == 1
        forced = gfsa(*args, "--only-missing", "--force")
        assert "submitted 2 of 2 cells" in forced.stdout, forced.stderr[-2000:]
        jobs = [sub["job_id"] for sub in manifest(sweep)["submissions"]]
        assert len(jobs) == 2
    finally:
        subprocess.run(["scancel", blocker, *jobs], env=env(), check=False)
        wait_idle([blocker, *jobs], 120)


@pytest.mark.timeout(420)
def test_time_limit_warning_and_preemption_checkpoint_requeue_and_resume_to_the_same_metrics(tmp_path):
    """Attempt 0 gets the time-limit warning (USR1), attempt 1 is preempted by a job of the `urgent`
    partition (SIGTERM within GraceTime); attempt 2 finishes. Same metrics, one W&B run."""
    overrides = [
        "trainer.max_epochs=8",
        "trainer.limit_train_batches=10",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
        "gfsa.layers=selected",
    ]
    args = ["sweep", "hydra/launcher=slurm_cpu", *overrides, "logger=wandb", f"paths.results_dir={tmp_path / 'slurm'}"]
    sweep = _sweep_dir(gfsa(*args))
    job, cell = manifest(sweep)["submissions"][0]["job_id"], manifest(sweep)["cells"][0]
    rdir, log = Path(cell["run_dir"]), sweep / "logs" / f"{job}_0.out"
    # W&B starts inside trainer.fit: from then on the run acts on the signals (USR1 is ignored before).
    wait_for(lambda: list(rdir.glob("wandb/offline-run-*")), 240, 0.2, "training to start")
    subprocess.run(["scancel", "--signal=USR1", f"{job}_0"], env=env(), check=True)  # as --signal=USR1@N does
    wait_for(lambda: "Restored all states" in log.read_text(), 240, 0.2, "the requeued attempt to resume")
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], env=env(), capture_output=True, text=True, check=True)
    urgent = ["sbatch", "-p", "urgent", "-c", cpus.stdout.split()[0], "-o", "/dev/null", "--wrap", "sleep 1"]
    subprocess.run(urgent, env=env(), check=True, capture_output=True)  # needs the whole node: preempts
    reference = Reference([*overrides, "logger=none"], tmp_path / "uninterrupted")
    wait_idle([job], 300)

    text = log.read_text()
    # Each attempt stopped at a step boundary with a checkpoint, or (when the SIGTERM had already broken W&B
    # before the first step) gave up at once: both requeue, and the last checkpoint stays valid.
    assert text.count(f"(warning signal); requeued Slurm job {job}_0") == 1, text[-3000:]
    assert text.count(f"(SIGTERM); requeued Slurm job {job}_0") == 1, text[-3000:]
    assert "attempt 2" in text and text.count("Restored all states from the checkpoint") >= 2
    record = R.load_record(rdir)
    assert record is not None and _comparable(record) == _comparable(reference.record())
    # One W&B run continued by every attempt. Preemption signals W&B's service too, so the preempted
    # attempt's offline file may hold no more than its header; the others name the run themselves.
    files = sorted(rdir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 3 and {f.name for f in files} == {f"run-{record['run_id']}.wandb"}
    assert {logged(f, wait=False)[0]["id"] for f in (files[0], files[-1])} == {record["run_id"]}


NO_SLURM = {"PATH": str(Path(sys.executable).parent)}  # this venv's tools only: no sbatch
NO_CONF = {"SLURM_CONF": "/nonexistent"}
DOWN = {"SLURM_CONF": "<the cluster's slurm.conf with a port no controller listens on>"}  # see _down_conf
BAD = [  # (command, arguments, environment, message); run.py -m runs the same checks as gfsa sweep
    ("gfsa sweep", [], NO_SLURM, "sbatch is not on PATH"),
    ("run.py -m", [], NO_SLURM, "sbatch is not on PATH"),
    ("gfsa sweep", [], NO_CONF, "Slurm controller not reachable (SLURM_CONF=/nonexistent is not a file): start it"),
    ("run.py -m", [], NO_CONF, "Slurm controller not reachable (SLURM_CONF=/nonexistent is not a file): start it"),
    ("gfsa sweep", [], DOWN, "Slurm controller not reachable (sinfo: slurm_load_partitions: Unable to contact"),
    ("gfsa sweep", ["hydra.launcher.partition=nope"], {}, "partition=nope: no such partition; choose one of: debug"),
    (
        "gfsa sweep",
        ["+hydra.launcher.additional_parameters.constraint=nope"],
        {},
        "sbatch failed, nothing submitted (sbatch: error: ",
    ),
    ("gfsa sweep", ["gfsa.layers=none,sometimes"], {}, "gfsa.layers='sometimes': unknown spec"),
    ("run.py -m", ["trainer.precision=banana"], {}, "trainer.precision='banana' is not a Lightning precision"),
    ("gfsa sweep", ["gfsa.layers=none", "gfsa.K=3,4"], {}, "compute the same run"),
    ("gfsa sweep", ["hydra.launcher.tasks_per_node=2"], {}, "starts 2 task(s) per node but trainer.devices=1"),
    ("run.py -m", ["hydra.launcher.tasks_per_node=2"], {}, "starts 2 task(s) per node but trainer.devices=1"),
    (
        "gfsa sweep",
        ["--table", "glue", "--rows", "bert_base", "--columns", "cola", "gfsa.layers=none"],
        {},
        "conflicts",
    ),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "command, args, extra_env, message",
    BAD,
    ids=[
        "sweep-no-slurm",
        "multirun-no-slurm",
        "sweep-no-slurm-conf",
        "multirun-no-slurm-conf",
        "sweep-controller-down",
        "sweep-partition",
        "sweep-sbatch-rejects",
        "sweep-layers",
        "multirun-precision",
        "sweep-same-run",
        "sweep-tasks",
        "multirun-tasks",
        "sweep-table",
    ],
)
def test_bad_input_is_one_line_exit_2_and_submits_nothing(
    tmp_path, tmp_path_factory, command, args, extra_env, message
):
    before = set(queue())
    if extra_env is DOWN:
        extra_env = {"SLURM_CONF": _down_conf(tmp_path_factory.mktemp("down") / "slurm.conf")}
    full = ["hydra/launcher=slurm_cpu", *FAST, *args, f"paths.results_dir={tmp_path}"]
    if command == "gfsa sweep":
        out = gfsa("sweep", *full, env=env(**extra_env))
    else:
        out = subprocess.run(
            [PYTHON, "run.py", "-m", *full],
            check=False,
            cwd=REPO,
            env=env(**extra_env),
            capture_output=True,
            text=True,
            timeout=100,
        )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert message in lines[0]
    assert set(queue()) <= before and not any(tmp_path.iterdir()), "nothing may be submitted or written"


def _down_conf(path: Path) -> str:
    """A copy of the running cluster's slurm.conf whose controller port nothing listens on."""
    from slurm_cluster import SLURM_CONF

    lines = SLURM_CONF.read_text().splitlines()
    path.write_text("\n".join("SlurmctldPort=16999" if ln.startswith("SlurmctldPort=") else ln for ln in lines) + "\n")
    return str(path)
