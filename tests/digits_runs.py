"""Real tiny runs shared by the report, analysis and methods tests (trained once per test process):
vit_mini on digits with the conftest FAST overrides, W&B offline, checkpoints and the analysis callback."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from conftest import FAST, compose

STEPS = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "logger=wandb", "callbacks=analysis"]
VARIANTS = {
    "baseline": ["gfsa.layers=none"],
    "gfsa": ["gfsa.layers=all", "gfsa.w0=0.1", "gfsa.wK=0.2"],
    "contranorm": ["method=contranorm", "method.learnable=true"],
}


@functools.cache
def digits_runs() -> dict:
    """``{"root": results dir, variant: record}`` for a baseline, a GFSA run and a ContraNorm run."""

    from gfsa.runner.train import run

    root = Path(tempfile.mkdtemp(prefix="gfsa-digits-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out = {name: run(compose([*FAST, *STEPS, *overrides], root)) for name, overrides in VARIANTS.items()}
    return {"root": root, **out}
