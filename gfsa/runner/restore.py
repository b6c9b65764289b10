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


def rebuild(cfg: dict):
    """The run's :class:`~gfsa.runner.train.Prepared` (task, model, recipe) from its normalised config, built
    against an empty results folder (so the run's own record does not count as already finished)."""
    from gfsa.runner.train import Prepared, prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare({**cfg, "paths": {**cfg["paths"], "results_dir": tmp}})
    assert isinstance(prepared, Prepared)
    return prepared


def restore(record: dict, checkpoint: Path, check=None):
    """The run's :class:`~gfsa.runner.train.Prepared` (task, model, recipe) with the checkpoint's weights.
    ``check(prepared)`` runs before the checkpoint is read: a caller's own refusal comes first."""
    import torch

    from gfsa.runner.config import with_run_defaults
    from gfsa.runner.requeue import checkpoint_problem

    prepared = rebuild(with_run_defaults(record["config"]))
    if check is not None:
        check(prepared)
    problem = checkpoint_problem(checkpoint, prepared.recipe)
    if problem:
        raise ConfigError(f"cannot load {checkpoint}: it is {problem}; pass another checkpoint or run")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    missing, unexpected = prepared.recipe.load_state_dict(state["state_dict"], strict=False)
    missing = [k for k in missing if k.startswith("model.")]  # a recipe's own buffers (e.g. metrics) may be absent
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ConfigError(f"{checkpoint} does not fit this run's model ({what}, …): is it from another run?")
    prepared.recipe.eval()
    return prepared
