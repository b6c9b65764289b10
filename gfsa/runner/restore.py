"""A finished run, built again from its record and loaded from one of its checkpoints: what the
operations on trained runs (export, analysis, evaluation) start from."""

from __future__ import annotations

import tempfile
from pathlib import Path

from gfsa.runner import results as R
from gfsa.utils.errors import ConfigError


def locate(path: str | Path, ckpt: str = "last") -> tuple[Path, dict, Path]:
    """(run dir, record, checkpoint file) for a run directory (``ckpt``: last | best) or a checkpoint in one."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist: pass a run directory (with result.json) or a checkpoint in one")
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        checkpoint = path
    else:
        run_dir, checkpoint = path, path / "checkpoints" / f"{ckpt}.ckpt"
    record = R.load_record(run_dir)
    if record is None or "config" not in record:
        raise ConfigError(f"no readable result.json in {run_dir}: pass the directory of a finished run")
    if not checkpoint.is_file():
        raise ConfigError(f"no checkpoint {checkpoint}: the run was trained with checkpoint=false or it was removed")
    return run_dir, record, checkpoint


def restore(record: dict, checkpoint: Path):
    """The run's :class:`~gfsa.runner.train.Prepared` (task, model, recipe) with the checkpoint's weights."""
    import torch

    from gfsa.runner.config import with_run_defaults
    from gfsa.runner.requeue import checkpoint_problem
    from gfsa.runner.train import Prepared, prepare

    cfg = with_run_defaults(record["config"])
    with tempfile.TemporaryDirectory() as tmp:  # a results dir without this run's record: prepare builds it
        cfg["paths"] = {**cfg["paths"], "results_dir": tmp}
        prepared = prepare(cfg)
    assert isinstance(prepared, Prepared)
    problem = checkpoint_problem(checkpoint, prepared.recipe)
    if problem:
        raise ConfigError(f"cannot load {checkpoint}: it is {problem}; pass another checkpoint or run")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    prepared.recipe.load_state_dict(state["state_dict"])
    prepared.recipe.eval()
    return prepared
