"""DDP on CPU with ranks started by srun (gloo): 2 ranks × batch B train like 1 process × batch 2B.

Full-batch steps make the comparison exact: the digits split is set to 1436 training samples, so each
step of either run sees the whole training set (2 × 718 or 1 × 1436, no DistributedSampler padding) and
the gradients are the same up to the order of float sums. Tolerances:
- learned GFSA coefficients: 1e-5 absolute (float summation order in the gradient all-reduce; measured ~1e-7);
- validation: DistributedSampler pads the 361 validation samples to 362 by repeating sample 0, so the
  synced accuracy counts one sample twice: 362·acc_ddp − 361·acc_1 is 0 or 1 (one correct prediction),
  and the loss may move by that sample's share (≤ 5e-3; measured ~3e-4).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import FAST, PYTHON, REPO
from slurm_cluster import Reference, gfsa, manifest, slurm, wait_idle  # noqa: F401

from gfsa.runner import results as R

COMMON = [
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "logger=none",
    "trainer.max_epochs=15",
    "gfsa.layers=selected",
    "gfsa.wK=0.2",
    "optim.schedule=constant",
    "optim.warmup_ratio=0",
    "task.val_fraction=0.2005",  # 1797 digits → 1436 train (even), 361 validation
]


@pytest.mark.slow
@pytest.mark.usefixtures("slurm")
@pytest.mark.timeout(300)
def test_two_srun_ranks_match_one_process_with_the_doubled_batch(tmp_path):
    out = gfsa(
        "sweep",
        "hydra/launcher=slurm_cpu",
        "hydra.launcher.tasks_per_node=2",
        "trainer.devices=2",
        "task.batch_size=718",
        *COMMON,
        f"paths.results_dir={tmp_path / 'ddp'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = Path(out.stdout.split("sweep dir: ")[1].split()[0])
    m = manifest(sweep)
    reference = Reference([*COMMON, "task.batch_size=1436"], tmp_path / "one")  # while the DDP job runs
    job = m["submissions"][0]["job_id"]
    wait_idle([job], 240)
    one = reference.record()
    ddp = R.load_record(m["cells"][0]["run_dir"])
    log = (sweep / "logs" / f"{job}_0.out").read_text()
    assert ddp is not None, log[-3000:]
    assert "Starting with 2 processes" in log and "distributed_backend=gloo" in log

    assert (ddp["world_size"], one["world_size"]) == (2, 1)
    assert ddp["global_batch_size"] == one["global_batch_size"] == 1436 and ddp["steps"] == one["steps"] == 15
    for layer, coeffs in one["gfsa"]["coefficients"].items():
        assert ddp["gfsa"]["coefficients"][layer]["wK"] == pytest.approx(coeffs["wK"], abs=1e-5)
    for d, o in zip(ddp["history"], one["history"], strict=True):
        assert round(d["metrics"]["acc"] * 362) - round(o["metrics"]["acc"] * 361) in (0, 1)
        assert d["metrics"]["loss"] == pytest.approx(o["metrics"]["loss"], abs=5e-3)
    assert one["metrics"]["acc"]["value"] > 0.2  # it learned something (chance is 0.1)


@pytest.mark.timeout(300)
def test_local_launcher_starts_the_ranks_without_slurm(tmp_path):
    """hydra/launcher=local: submitit's local executor starts 2 tasks; gfsa.runner.train gives them the
    torch.distributed variables from submitit's job environment, and Lightning joins them (gloo)."""
    launcher = ["hydra/launcher=local", "hydra.launcher.tasks_per_node=2", "trainer.devices=2"]
    cmd = [PYTHON, "run.py", "-m", *launcher, *FAST, "gfsa.layers=selected", f"paths.results_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [r for _, r in R.iter_records(tmp_path)]
    assert record["world_size"] == 2 and record["global_batch_size"] == 2 * record["config"]["task"]["batch_size"]
    logs = "".join(p.read_text() for p in tmp_path.glob(".multirun/*/.submitit/*/*_log.*"))
    assert "Starting with 2 processes" in logs and "distributed_backend=gloo" in logs
