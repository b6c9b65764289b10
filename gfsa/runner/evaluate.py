"""``gfsa eval RUN_DIR``: a finished run scored again from one of its checkpoints.

The run is rebuilt from its record's config (``gfsa.runner.train.prepare``; a record of an older version
is completed by ``gfsa.runner.config.with_run_defaults``), the checkpoint is verified
(``gfsa.runner.requeue.checkpoint_problem``) and Lightning's validation loop runs over the batches the
run was scored on (its ``trainer.limit_val_batches`` and precision), with the callbacks' checkpointed
state (the EMA weights). So ``--ckpt last`` gives the record's ``metrics`` and ``--ckpt best`` its ``best``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

from gfsa.runner import results as R
from gfsa.runner.selection import BEST, LAST
from gfsa.utils.errors import ConfigError

CHECKPOINTS = {"best": BEST, "last": LAST}


def _override(cfg: dict, overrides: list[str]) -> dict:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"{bad[0]}: changes to the recorded config are KEY=VALUE, e.g. task.data_dir=/data")
    try:
        merged = OmegaConf.merge(OmegaConf.create(cfg), OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{' '.join(overrides)}: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_container(merged, resolve=True)


def split_metrics(metrics: dict, splits: list[str], split: str | None) -> dict:
    """The metrics of one evaluation split (``acc`` for the first, ``test_acc`` for ``test``, the EMA's
    ``ema_…`` with them), named as the record names them."""
    from gfsa.zoo.tasks.base import split_prefixes

    if split is None:
        return metrics
    if split not in splits:
        raise ConfigError(f"--split {split}: this run's task evaluates {', '.join(splits)}")
    prefixes = dict(zip(splits, split_prefixes(splits), strict=True))

    def of(name: str) -> str:
        bare = name.removeprefix("ema_")
        return next((s for s, p in prefixes.items() if p and bare.startswith(p)), splits[0])

    return {k: v for k, v in metrics.items() if of(k) == split}


def evaluate(
    run_dir: str | Path, ckpt: str | None = None, split: str | None = None, overrides=(), quiet: bool = False
) -> dict:
    """``{run_dir, checkpoint: {name, path, epoch, step}, split, metrics, recorded}``: the metrics of the
    checkpoint's validation and the record's numbers for the same checkpoint (None where it has none)."""
    import torch

    from gfsa.runner.config import with_run_defaults
    from gfsa.runner.console import quiet_libraries
    from gfsa.runner.requeue import checkpoint_problem
    from gfsa.zoo.tasks.base import eval_splits

    run_dir = Path(run_dir)
    record, why = R.read_record(run_dir)
    if record is None:
        raise ConfigError(f"{run_dir}: {why}; gfsa eval scores a run that ended (its result.json holds its config)")
    name = ckpt or ("best" if record["selected_by"] == "best" else "last")
    path = run_dir / "checkpoints" / CHECKPOINTS[name]
    if not path.is_file():
        hint = {
            "best": "runs recorded before best.ckpt was kept, and runs with checkpoint=false, have none: use --ckpt last",
            "last": "the run was trained with checkpoint=false",
        }[name]
        raise ConfigError(f"no checkpoint {path}: {hint}")
    cfg = with_run_defaults(record["config"])
    # Score on this machine's accelerator (trainer.accelerator=cpu among the overrides picks the CPU), in
    # one process, with the run's limits and precision.
    t = cfg["trainer"]
    t |= {"accelerator": "auto", "devices": 1, "num_nodes": 1, "fast_dev_run": False, "enable_progress_bar": False}
    t.pop("strategy", None)
    cfg = _override(cfg, list(overrides))
    quiet_libraries()
    out = sys.stderr if quiet else sys.stdout
    with contextlib.redirect_stdout(out), tempfile.TemporaryDirectory() as tmp:
        from gfsa.runner.restore import rebuild

        prepared = rebuild(cfg)
        splits = eval_splits(prepared.task)
        if split is not None and split not in splits:
            raise ConfigError(f"--split {split}: this run's task evaluates {', '.join(splits)}")
        problem = checkpoint_problem(path, prepared.recipe)
        if problem:
            raise ConfigError(
                f"cannot score {path}: it is {problem}; train the run again (resume=restart) or pass --ckpt"
            )
        metrics = _validate(prepared, path, tmp)
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    recorded = R.selected_metrics({**record, "selected_by": name})
    recorded = {k: v["value"] for k, v in recorded.items() if not k.startswith("_")}
    return {
        "run_dir": str(run_dir),
        "checkpoint": {"name": name, "path": str(path), "epoch": state["epoch"], "step": state["global_step"]},
        "split": split,
        "metrics": split_metrics(metrics, splits, split),
        "recorded": split_metrics(recorded, splits, split),
    }


def _validate(prepared, path: Path, root: str) -> dict:
    """One validation epoch of the checkpoint, as the run's trainer would score it: its metrics by name."""
    import lightning as L

    from gfsa.runner.train import _trainer
    from gfsa.zoo.recipes.common import ValidationHistory

    trainer_cfg = dict(prepared.cfg["trainer"])
    if str(trainer_cfg["accumulate_grad_batches"]).lower() == "auto":
        trainer_cfg["accumulate_grad_batches"] = 1
    trainer_cfg["enable_model_summary"] = False
    history = ValidationHistory()
    trainer = _trainer(trainer_cfg, False, [history], Path(root))
    L.seed_everything(int(prepared.cfg["seed"]), workers=True, verbose=False)
    with warnings.catch_warnings():
        # The training-only callbacks (timers, the divergence guard, last.ckpt's owner) are not needed to score.
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need to be provided")
        trainer.validate(
            prepared.recipe, datamodule=prepared.task, ckpt_path=str(path), verbose=False, weights_only=False
        )
    return dict(history.history[-1]["metrics"]) if history.history else {}


def print_evaluation(result: dict) -> None:
    """The checkpoint's metrics beside the record's, as a table."""
    from rich.table import Table

    from gfsa.runner.console import wide_console

    c = result["checkpoint"]
    console = wide_console()
    console.print(result["run_dir"], highlight=False)
    split = f", split {result['split']}" if result["split"] else ""
    table = Table(title=f"{c['name']}.ckpt: epoch {c['epoch']}, step {c['step']}{split}")
    for col in ("metric", "now", "recorded", "Δ"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for k, v in sorted(result["metrics"].items()):
        then = result["recorded"].get(k)
        delta = "" if then is None or v is None else f"{v - then:+.2e}"
        table.add_row(k, f"{v:.6f}", "—" if then is None else f"{then:.6f}", delta)
    console.print(table)
