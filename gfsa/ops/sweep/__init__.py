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

- :mod:`.slurm`: launcher presets, the controller and partition checks, the sbatch script, squeue/sacct;
- :mod:`.cells`: expanding and checking the cells (:func:`expand`, :func:`table_runs`, :func:`plan`);
- :mod:`.status`: the manifest and each cell's state (:func:`status`);
- :mod:`.submit`: the sweep directory and a submission (:func:`submit`);
- :mod:`.cli`: ``gfsa sweep`` (:func:`main_cli`).
"""

from gfsa.ops.sweep.cells import DEFAULT_LAUNCHER, Plan, SweepCell, expand, labelled, plan, preflight, table_runs
from gfsa.ops.sweep.cli import main, main_cli, parser
from gfsa.ops.sweep.slurm import SLURM_TARGET, TEMPLATE, Launcher, check_slurm, sbatch_lines, write_script
from gfsa.ops.sweep.status import MANIFEST, STATES, ended, load_manifest, status
from gfsa.ops.sweep.submit import default_dir, submit

__all__ = [
    "DEFAULT_LAUNCHER",
    "MANIFEST",
    "SLURM_TARGET",
    "STATES",
    "TEMPLATE",
    "Launcher",
    "Plan",
    "SweepCell",
    "check_slurm",
    "default_dir",
    "ended",
    "expand",
    "labelled",
    "load_manifest",
    "main",
    "main_cli",
    "parser",
    "plan",
    "preflight",
    "sbatch_lines",
    "status",
    "submit",
    "table_runs",
    "write_script",
]
