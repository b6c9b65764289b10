"""gfsa sweep's planning without a cluster: presets, table expansion, dry runs, and a Lightning-free path."""

from __future__ import annotations

import subprocess

import pytest
from conftest import CONF_DIR, FAST, PYTHON, REPO

from gfsa.console import group_options
from gfsa.sweep import expand, plan, table_runs


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
