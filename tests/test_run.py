"""The run path end to end: Hydra configs → Lightning → results records, pairing, W&B, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, FAST, PYTHON, REPO, compose
from omegaconf import OmegaConf

from gfsa.runner import results as R
from gfsa.runner.console import group_options
from gfsa.runner.train import prepare, run, run_job
from gfsa.utils.errors import ConfigError

DIGITS = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]


def _run(overrides, results_dir):
    return run(compose([*FAST, *DIGITS, *overrides], results_dir))


def _cli(*args, cwd=REPO, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [PYTHON, "run.py", *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "group",
    ["backbone", "task", "gfsa", "optim", "trainer", "logger", "callbacks", "method"],
    ids=lambda g: f"conf/{g}",
)
def test_every_conf_option_composes(group):
    options = group_options(CONF_DIR, group)
    assert options, f"conf/{group}/ is empty"
    for option in options:
        cfg = compose([f"{group}={option}"])
        assert cfg[group] is not None


def test_every_preset_composes():
    for preset in group_options(CONF_DIR, "preset"):
        cfg = compose([f"preset={preset}"])
        assert cfg.backbone.name and cfg.task.name, preset


def test_gfsa_run_then_baseline_completes_pairing(results_dir):
    gfsa_rec = _run(["gfsa.layers=selected", "gfsa.wK=0.2"], results_dir)
    assert gfsa_rec["variant"] == "gfsa"
    assert gfsa_rec["comparison"] is None  # no baseline yet
    assert gfsa_rec["gfsa"]["layers"] == [1, 3, 5]  # vit_mini has 6 layers; selected = 2nd, 4th, 6th
    assert gfsa_rec["gfsa"]["added_parameters"] == 3 * 4  # one wK per head (4) per patched layer (3)
    assert sorted(gfsa_rec["gfsa"]["coefficients"]) == [f"net.blocks.{i}.attn.gfsa" for i in (1, 3, 5)]
    assert gfsa_rec["metrics"]["acc"]["direction"] == "up" and gfsa_rec["metrics"]["loss"]["direction"] == "down"
    assert 0.0 <= gfsa_rec["metrics"]["acc"]["value"] <= 1.0
    t = gfsa_rec["timing"]
    assert t["step_time_s"] > 0 and t["peak_memory_mb"] > 0 and t["memory_kind"] == "process_max_rss"
    assert gfsa_rec["global_batch_size"] == 64 and gfsa_rec["steps"] == 3
    assert gfsa_rec["config"]["gfsa"]["wK"] == 0.2 and "revision" in gfsa_rec["git"]

    base = _run(["gfsa.layers=none"], results_dir)
    assert base["variant"] == "baseline" and base["gfsa"]["added_parameters"] == 0
    assert base["pair_key"] == gfsa_rec["pair_key"]
    updated = R.load_record(gfsa_rec["run_dir"])
    cmp = updated["comparison"]
    ours, theirs = gfsa_rec["metrics"]["acc"]["value"], base["metrics"]["acc"]["value"]
    assert cmp["baseline_run"] == base["run_dir"]
    assert cmp["improvement_abs"] == pytest.approx(ours - theirs)
    if theirs:
        assert cmp["improvement_pct"] == pytest.approx(100 * (ours - theirs) / theirs)


def test_same_config_same_directory_and_no_retraining(results_dir):
    first = _run([], results_dir)
    path = Path(first["run_dir"]) / R.RECORD
    mtime = path.stat().st_mtime_ns
    again = _run(["task.num_workers=0", "logger=csv"], results_dir)  # not part of what is computed
    assert again["run_dir"] == first["run_dir"] and path.stat().st_mtime_ns == mtime
    other_seed = OmegaConf.to_container(compose([*FAST, *DIGITS, "seed=1"], results_dir), resolve=True)
    assert str(R.run_dir(other_seed)) != first["run_dir"]


def test_baseline_and_gfsa_start_from_the_same_weights(results_dir):
    """Same seed, so the only difference between the pair is GFSA (identity at init)."""
    import gfsa
    from gfsa.zoo.backbones import patch_target

    base = prepare(compose([*FAST, "gfsa.layers=none"], results_dir))
    ours = prepare(compose([*FAST, "gfsa.layers=all"], results_dir))
    x = torch.randn(4, 1, 8, 8)
    base.model.eval(), ours.model.eval()
    torch.testing.assert_close(base.model(image=x), ours.model(image=x), atol=1e-5, rtol=0)
    assert gfsa.patched_layers(patch_target(ours.model)) == list(range(6))


def test_global_batch_is_derived_or_rejected(results_dir):
    rec = _run(["+task.global_batch_size=128", "trainer.accumulate_grad_batches=auto"], results_dir)
    assert rec["global_batch_size"] == 128 and rec["steps"] == 2  # 3 batches: 2 accumulated + the last one
    with pytest.raises(ConfigError, match="global_batch_size=100 cannot be met"):
        _run(["+task.global_batch_size=100", "trainer.accumulate_grad_batches=auto", "seed=5"], results_dir)
    assert not list(results_dir.rglob("*seed5*"))


def test_fast_dev_run_writes_no_record(results_dir):
    assert _run(["trainer.fast_dev_run=true"], results_dir) is None
    assert not list(results_dir.rglob(R.RECORD))


def test_wandb_offline_run_logs_under_the_run_id(results_dir):
    import wandb
    from wandb_log import logged

    rec = _run(["logger=wandb", "gfsa.layers=none"], results_dir)
    assert wandb.run is None  # finished, so the next job starts its own run
    files = list(Path(rec["run_dir"]).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].name == f"run-{rec['run_id']}.wandb"
    run_info, values = logged(files[0])
    assert run_info == {
        "id": rec["run_id"],
        "group": "vit_mini/digits",
        "job_type": "baseline",
        "tags": ["layers=none", "K=3", "seed=0"],
    }
    assert values["val/acc"] == pytest.approx(rec["metrics"]["acc"]["value"], abs=1e-6)
    assert values["added_parameters"] == 0 and values["step_time_s"] == pytest.approx(rec["timing"]["step_time_s"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["gfsa.K=0"], "gfsa.K=0"),
        (["gfsa.layers=last:40"], "last:N needs 1 <= N <= 6"),
        (["gfsa.layers=[6]"], "index 6 is out of range"),
        (["gfsa.layers=sometimes"], "none | all | selected"),
        (["task=imagenet"], "task.data_dir is not set"),
        (["task=imagenet", "task.data_dir=/nonexistent/imagenet"], "does not exist"),
        (["trainer.precision=99"], "trainer.precision=99 is not a Lightning precision"),
        (["+trainer.gradient_clip_algorithm=sideways"], "trainer options rejected by Lightning"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(results_dir, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        run_job(compose([*FAST, *overrides, "with_baseline=true"], results_dir))
    assert "\n" not in str(err.value)
    assert not any(results_dir.iterdir()), "bad input must not leave a baseline or a run directory"


def test_data_dir_without_splits(results_dir, tmp_path):
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no val"):
        run(compose([*FAST, "task=imagenet", f"task.data_dir={tmp_path / 'imagenet'}"], results_dir))
    assert not any(results_dir.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["backbone=nope"], "unknown backbone 'nope'; choose one of:"),
        (
            ["logger=tensorbored"],
            "unknown logger 'tensorbored'; choose one of: csv, many, mlflow, none, tensorboard, wandb",
        ),
        (["gfsa.K=0"], "gfsa.K=0"),
        (["gfsa.layrs=all"], "unknown option 'gfsa.layrs'"),
    ],
)
def test_cli_bad_input_exit_code_and_one_line(tmp_path, args, message):
    out = _cli(*args, f"paths.results_dir={tmp_path / 'r'}")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert not (tmp_path / "r").exists()


def test_builtin_comparison_end_to_end(tmp_path):
    """`python run.py` (fast): baseline then GFSA, both recorded, the comparison table printed."""
    out = _cli(*FAST, *DIGITS, "logger=wandb", f"paths.results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    records = {r["variant"]: r for _, r in R.iter_records(tmp_path)}
    assert set(records) == {"baseline", "gfsa"}
    assert records["gfsa"]["comparison"]["baseline_run"] == records["baseline"]["run_dir"]
    assert "Δ %" in out.stdout and "1,3,5" in out.stdout
    again = _cli(*FAST, *DIGITS, "logger=wandb", f"paths.results_dir={tmp_path}")
    assert again.returncode == 0 and again.stdout.count("already finished") == 2


def test_multirun_lists_baseline_as_a_cell(tmp_path):
    """In a sweep the baseline is a cell of its own: with_baseline=auto does not train it twice."""
    out = _cli("-m", *FAST, *DIGITS, "gfsa.layers=none,selected", f"paths.results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    variants = sorted(r["variant"] for _, r in R.iter_records(tmp_path))
    assert variants == ["baseline", "gfsa"]


def test_gfsa_console_script():
    exe = Path(sys.executable).parent / "gfsa"
    out = subprocess.run([str(exe), "layers", "selected", "12"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.split() == ["1", "3", "5", "7", "9", "11"]
    bad = subprocess.run([str(exe), "layers", "last:40", "12"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "12-layer model" in bad.stderr
