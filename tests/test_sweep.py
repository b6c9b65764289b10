"""gfsa sweep's planning without a cluster: presets, table expansion, dry runs, and a Lightning-free path."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import CONF_DIR, FAST, PYTHON, REPO

from gfsa.ops.sweep import expand, plan, table_runs
from gfsa.runner.config import PRECISIONS
from gfsa.runner.console import group_options
from gfsa.utils.errors import ConfigError


def test_every_launcher_preset_composes_and_leaves_requeue_to_gfsa():
    from hydra import compose, initialize_config_dir

    presets = group_options(CONF_DIR, "hydra/launcher")
    assert {"slurm", "slurm_cpu", "slurm_gpu4", "slurm_multinode", "local"} <= set(presets)
    for preset in presets:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            launcher = compose(
                "config", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True
            ).hydra.launcher
        assert launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher")
        assert launcher.get("max_num_timeout", 0) == 0, f"{preset}: submitit must not requeue (gfsa owns it)"


def test_a_multirun_expands_like_hydra_and_each_cell_gets_its_run_directory(tmp_path):
    combos = expand(["hydra/launcher=slurm_cpu", *FAST, "gfsa.layers=none,selected", "seed=0,1"])
    assert len(combos) == 4
    p = plan([(str(i), c + [f"paths.results_dir={tmp_path}"]) for i, c in enumerate(combos)], "t")
    assert len({c.run_dir for c in p.cells}) == 4 and p.launcher.preset == "slurm_cpu"
    assert all("with_baseline=false" in c.overrides and c.run_dir.startswith(str(tmp_path)) for c in p.cells)


def test_a_table_cell_that_scores_two_columns_is_one_run(tmp_path):
    runs = table_runs("glue", [f"paths.results_dir={tmp_path}"], rows=["bert_base"], columns=["mnli_m", "mnli_mm"])
    assert len(runs) == 6  # baseline, gfsa, gfsa_even × two columns
    assert len(plan(runs, "glue").cells) == 3  # one MNLI run scores acc_m and acc_mm


@pytest.mark.timeout(120)
def test_dry_run_prints_the_cells_without_importing_lightning(tmp_path):
    code = (
        "import sys; from gfsa.cli import main\n"
        "try:\n    main(sys.argv[1:])\nfinally:\n    print('LIGHTNING' if 'lightning' in sys.modules else 'LIGHT')"
    )
    args = ["sweep", "--dry-run", "hydra/launcher=slurm_cpu", *FAST, "seed=0,1,2", f"paths.results_dir={tmp_path}"]
    out = subprocess.run(
        [PYTHON, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=100
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3 cells" in out.stdout and "seed=2" in out.stdout and out.stdout.strip().endswith("LIGHT")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "override, message",
    [
        ("gfsa.layers=sometimes", "gfsa.layers='sometimes': unknown spec; use none | all"),
        ("gfsa.layers=first:x", "'x' is not a layer count"),
        ("gfsa.layers=[1,a]", "list items must be integers"),
        ("trainer.precision=banana", "trainer.precision='banana' is not a Lightning precision: use one of 32-true"),
        ("trainer.precision=8", "trainer.precision=8 is not a Lightning precision"),
        ("trainer.devices=auto", "set trainer.devices to an integer equal to tasks_per_node (trainer.devices=1"),
        (
            [
                "hydra/launcher=slurm_gpu4",
                "trainer.devices=4",
                "trainer.accelerator=gpu",
                "hydra.launcher.gpus_per_node=2",
            ],
            "starts 4 task(s) per node on 2 GPU(s): pass hydra.launcher.gpus_per_node=4",
        ),
    ],
)
def test_a_bad_cell_is_rejected_before_submission(tmp_path, override, message):
    extra = override if isinstance(override, list) else [override]
    launcher = [] if any(o.startswith("hydra/launcher=") for o in extra) else ["hydra/launcher=slurm_cpu"]
    overrides = [*launcher, *FAST, *extra, f"paths.results_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        plan([("c", overrides)], "t")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "override", ["gfsa.layers=last:3", "gfsa.layers=[1,-1]", "gfsa.layers=first:40", "trainer.precision=bf16-mixed"]
)
def test_valid_layer_specs_and_precisions_pass_whatever_the_depth(tmp_path, override):
    plan([("c", ["hydra/launcher=slurm_cpu", *FAST, override, f"paths.results_dir={tmp_path}"])], "t")


def test_the_hard_coded_precisions_are_lightnings():
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT

    assert set(PRECISIONS) == {v for group in get_args(_PRECISION_INPUT) for v in get_args(group)}


@pytest.mark.timeout(120)
def test_dry_run_rejects_a_bad_cell_in_one_line(tmp_path):
    args = ["sweep", "--dry-run", "hydra/launcher=slurm_cpu", *FAST, "gfsa.layers=none,sometimes"]
    out = subprocess.run(
        [PYTHON, "-m", "gfsa.cli", *args, f"paths.results_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=100,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "gfsa.layers='sometimes'" in lines[0], out.stderr[-2000:]
    assert not any(tmp_path.iterdir())
