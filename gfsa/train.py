"""The run path: config → task → backbone (+ gfsa.patch) → Lightning trainer → results record.

Everything that can reject the input (names, layer specs, data dirs, file formats) runs before
the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gfsa import results as R
from gfsa.registry import ConfigError, resolve

CONF_DIR = Path(os.environ.get("GFSA_CONF_DIR", Path(__file__).resolve().parents[1] / "conf"))


_TRAINER_TYPES = (
    ("max_epochs", int, "an integer (-1: no limit)"),
    ("max_steps", int, "an integer (-1: no limit)"),
    ("accumulate_grad_batches", int, "an integer or auto"),
    ("num_nodes", int, "an integer"),
    ("log_every_n_steps", int, "an integer"),
    ("limit_train_batches", (int, float), "a fraction (float) or a number of batches (int)"),
    ("limit_val_batches", (int, float), "a fraction (float) or a number of batches (int)"),
)


def validate(cfg: dict) -> None:
    """Cheap checks of the config alone, with the option name in the message."""
    from gfsa.patch import COEFFICIENTS, GFSASettings

    g = cfg.get("gfsa") or {}
    K = g.get("K")
    if isinstance(K, bool) or not isinstance(K, (int, float)) or K < 1:
        raise ConfigError(f"gfsa.K={K}: K must be a number >= 1 (the paper uses 2..10)")
    try:
        GFSASettings(
            K=K,
            impl=g.get("impl", "auto"),
            dropout_order=g.get("dropout_order", "after"),
            cross_attention=g.get("cross_attention", "plain"),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    bad = [c for c in g.get("learn") or [] if c not in COEFFICIENTS]
    if bad:
        raise ConfigError(f"gfsa.learn={g.get('learn')}: unknown {bad}; choose from {', '.join(COEFFICIENTS)}")
    t = cfg.get("trainer") or {}
    for key, types, what in _TRAINER_TYPES:
        v = t.get(key)
        if v is not None and not (isinstance(v, types) and not isinstance(v, bool)) and v != "auto":
            raise ConfigError(f"trainer.{key}={v!r}: expected {what}")
    for key in ("batch_size", "num_workers"):
        v = (cfg.get("task") or {}).get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ConfigError(f"task.{key}={v!r}: expected a non-negative integer")


def apply_global_batch(cfg: dict, trainer) -> int:
    """Check (or derive, with ``trainer.accumulate_grad_batches=auto``) the preset's global batch:
    world size × per-device batch × accumulation. Returns the global batch."""
    per_step = trainer.world_size * int(cfg["task"]["batch_size"])
    want = cfg["task"].get("global_batch_size")
    if str(cfg["trainer"].get("accumulate_grad_batches")).lower() == "auto":
        if not want:
            raise ConfigError("trainer.accumulate_grad_batches=auto needs task.global_batch_size")
        if want % per_step:
            raise ConfigError(
                f"task.global_batch_size={want} cannot be met: {trainer.world_size} device(s) × batch "
                f"{cfg['task']['batch_size']} = {per_step} per step does not divide it; change task.batch_size or devices"
            )
        trainer.accumulate_grad_batches = want // per_step
    got = per_step * trainer.accumulate_grad_batches
    if want and got != want:
        raise ConfigError(
            f"task.global_batch_size={want} but {trainer.world_size} device(s) × batch {cfg['task']['batch_size']} × "
            f"accumulation {trainer.accumulate_grad_batches} = {got}: set trainer.accumulate_grad_batches=auto"
        )
    return got


def git_revision() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {
        "revision": rev.stdout.strip() or None,
        "dirty": bool(dirty.stdout.strip()) if rev.returncode == 0 else None,
    }


def _versions() -> dict:
    import lightning
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__}


@dataclass
class Prepared:
    """A run that passed every check and is ready to train; nothing is on disk yet."""

    cfg: dict
    rdir: Path
    variant: str
    task: object
    model: object
    recipe: object
    facts: dict


def prepare(cfg: DictConfig | dict) -> Prepared | dict:
    """Check and build a run without touching the disk: the finished record if there is one."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    validate(cfg)
    rdir = R.run_dir(cfg)
    done = R.load_record(rdir)
    if done is not None and done.get("status") == "finished":
        return done

    import lightning as L

    import gfsa
    from gfsa.backbones import patch_target

    L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    task_cfg = OmegaConf.create(cfg["task"])
    task = resolve("task", task_cfg.type)(task_cfg)
    task.check()
    task.setup("fit")
    model = resolve("backbone", cfg["backbone"]["type"])(OmegaConf.create(cfg["backbone"]), task)
    g = cfg["gfsa"]
    if not R.is_baseline(cfg):
        try:
            gfsa.patch(
                patch_target(model),
                layers=g["layers"],
                K=g["K"],
                w0=g["w0"],
                w1=g["w1"],
                wK=g["wK"],
                learn=g["learn"],
                impl=g["impl"],
                dropout_order=g.get("dropout_order", "after"),
                cross_attention=g.get("cross_attention", "plain"),
            )
        except (ValueError, TypeError) as e:  # layer specs, unsupported models: name the option
            raise ConfigError(str(e)) from None
    from gfsa.methods import apply_from_config  # compared methods (conf/method/): AttnScale, FeatScale, ContraNorm

    method_parameters = apply_from_config(cfg, patch_target(model))
    recipe = resolve("recipe", task.recipe)(model, task, cfg["optim"])
    facts = {
        "layers": gfsa.patched_layers(patch_target(model)),
        "added_parameters": gfsa.added_parameters(model) + method_parameters,
        "total_parameters": sum(p.numel() for p in model.parameters()),
    }
    return Prepared(cfg, rdir, R.variant_name(cfg), task, model, recipe, facts)


def _coefficients(model) -> dict:
    """Final GFSA coefficients per patched layer, for the record and the analysis."""
    from gfsa.patch import GFSACoefficients

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, GFSACoefficients):
            out[name] = {c: getattr(m, c).detach().cpu().tolist() for c in ("w0", "w1", "wK")}
    return out


def run(cfg: DictConfig | dict, callbacks: tuple = ()) -> dict | None:
    """Train one config (or find its finished record); returns the record (None for smoke runs).
    ``callbacks``: extra Lightning callbacks (instrumentation); they do not change the run directory."""
    p = prepare(cfg)
    return execute(p, callbacks) if isinstance(p, Prepared) else _already(p)


def _mkdirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; returns the topmost created (to undo), or []."""
    missing = [d for d in (path, *path.parents) if not d.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return missing[-1:]


def _already(record: dict) -> dict:
    print(f"already finished: {record['run_dir']} (delete it to train again)")
    return record


def _cluster_plugins() -> list:
    """Ranks come from the launcher, never from Lightning re-launching itself inside a job.

    Under Slurm (srun starts one task per device) Lightning reads the ranks from SLURM_* and requeue
    belongs to gfsa.requeue, so Lightning's own auto-requeue is off. Under submitit's local executor
    the tasks it starts get the torch.distributed variables from its job environment."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        import submitit

        job = submitit.JobEnvironment()
        if job.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            os.environ.setdefault("NODE_RANK", str(job.node))
    return []


def execute(p: Prepared, extra_callbacks: tuple = ()) -> dict | None:
    """Train a prepared run and write its results record (rank 0)."""
    import lightning as L

    from gfsa.recipes.common import StepTimer, ValidationHistory
    from gfsa.requeue import Preemption
    from gfsa.tracking import finish_wandb, make_logger

    cfg, rdir, variant, task, model, recipe, facts = p.cfg, p.rdir, p.variant, p.task, p.model, p.recipe, p.facts
    trainer_cfg = dict(cfg["trainer"])
    smoke = bool(trainer_cfg.get("fast_dev_run"))
    rid = R.run_id(rdir)
    history, timer = ValidationHistory(), StepTimer()
    callbacks = [history, timer, *extra_callbacks]
    if (cfg.get("analysis") or {}).get("every_n_epochs"):  # oversmoothing measurements (gfsa/analysis.py)
        from gfsa.analysis import AnalysisCallback

        callbacks.append(AnalysisCallback.from_config(cfg))
    ckpt_dir = rdir / "checkpoints"
    # last.ckpt at every epoch end (checkpoint: true) and when a signal (time limit, preemption) stops the
    # run; a resubmitted run resumes from it to the same metrics (gfsa/requeue.py).
    preemption = Preemption(ckpt_dir / "last.ckpt", every_epoch=bool(cfg.get("checkpoint", True)))
    if not smoke:
        callbacks.append(preemption)
    if str(trainer_cfg.get("accumulate_grad_batches")).lower() == "auto":
        trainer_cfg["accumulate_grad_batches"] = 1  # apply_global_batch derives it
    logger = make_logger(cfg, rdir, rid, f"{cfg['backbone']['name']}/{cfg['task']['name']}/{rdir.name}", variant)
    try:
        trainer = L.Trainer(
            **trainer_cfg,
            logger=logger,
            callbacks=callbacks,
            default_root_dir=str(rdir),
            plugins=_cluster_plugins(),
        )
    except (TypeError, ValueError) as e:  # Lightning's own checks of trainer.* values
        raise ConfigError(f"trainer options rejected by Lightning: {e}") from None
    global_batch = apply_global_batch(cfg, trainer)
    created = _mkdirs(rdir)
    try:
        last = ckpt_dir / "last.ckpt"
        # Reseed: a run trains the same whether or not its baseline trained first in this process.
        L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
        start = time.time()
        with preemption.handling_signals():
            trainer.fit(recipe, datamodule=task, ckpt_path=str(last) if last.exists() else None)
        if trainer.interrupted:
            raise KeyboardInterrupt
    except BaseException:
        finish_wandb()
        if created and not any(ckpt_dir.glob("*.ckpt")):  # nothing worth resuming: leave nothing behind
            for d in created:
                shutil.rmtree(d, ignore_errors=True)
        raise
    if smoke:
        finish_wandb()
        print("fast_dev_run: smoke test passed, no results record written")
        return None
    record = None
    if trainer.is_global_zero:
        record = _record(cfg, rdir, rid, variant, task, model, facts, history, timer, trainer, time.time() - start)
        record["global_batch_size"] = global_batch
        R.atomic_write_json(rdir / R.RECORD, record)
        if variant == "baseline":
            for path in R.complete_pairings(record, cfg["paths"]["results_dir"]):
                print(f"paired {path.parent} with this baseline")
    comparison = (record or {}).get("comparison") or {}
    finish_wandb(
        {
            "improvement_pct": comparison.get("improvement_pct"),
            "added_parameters": facts["added_parameters"],
            "step_time_s": (record or {}).get("timing", {}).get("step_time_s"),
        }
    )
    return record


def _record(cfg, rdir, rid, variant, task, model, facts, history, timer, trainer, wall) -> dict:
    directions = task.directions
    if not history.history:
        raise RuntimeError("training finished without a validation pass: check trainer.limit_val_batches")

    def with_direction(metrics: dict) -> dict:
        return {k: {"value": v, "direction": directions.get(k, "up")} for k, v in metrics.items()}

    primary = task.primary_metric
    sign = 1 if directions.get(primary, "up") == "up" else -1
    best = max(history.history, key=lambda h: sign * h["metrics"].get(primary, float("-inf") * sign))
    devices = trainer.world_size
    timing = timer.summary(trainer.strategy.root_device)
    timing["wall_time_s"] = round(wall, 2)
    if timing["step_time_s"]:  # the timer measures micro-batches: batch size × devices samples each
        timing["samples_per_s"] = round(int(cfg["task"]["batch_size"]) * devices / timing["step_time_s"], 2)
    for cb in trainer.callbacks:  # callbacks may contribute entries (e.g. seconds per validation epoch)
        if callable(getattr(cb, "timing", None)):
            timing.update(cb.timing())
    record = {
        "schema": R.SCHEMA,
        "status": "finished",
        "run_dir": str(rdir),
        "run_id": rid,
        "backbone": cfg["backbone"]["name"],
        "task": cfg["task"]["name"],
        "variant": variant,
        "seed": cfg["seed"],
        "pair_key": R.pair_key(cfg),
        "primary_metric": primary,
        "selected_by": cfg["task"].get("metric_select", "last"),
        "metrics": with_direction(history.history[-1]["metrics"]),
        "best": with_direction(best["metrics"]) | {"_epoch": {"value": best["epoch"], "direction": "up"}},
        "history": history.history,
        "gfsa": {**facts, "coefficients": _coefficients(model)},
        "data": dict(getattr(task, "data_report", None) or {}),  # what loading skipped, e.g. unparseable molecules
        "timing": timing,
        "world_size": devices,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "config": cfg,
        "git": git_revision(),
        "versions": _versions(),
        "host": platform.node(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if variant != "baseline":
        baseline = R.load_record(R.run_dir(R.baseline_config(cfg)))
        record["comparison"] = R.pair(record, baseline) if baseline else None
    return record


def wants_baseline(cfg: DictConfig) -> bool:
    """``with_baseline=auto`` trains a missing baseline first in single runs, never in sweeps
    (a sweep lists its baselines as cells, and two jobs must not train the same one)."""
    mode = str(cfg.get("with_baseline", "auto")).lower()
    if mode == "auto":
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            return HydraConfig.get().mode == RunMode.RUN
        except ValueError:  # not under Hydra: an API call decides for itself
            return False
    return mode in ("true", "1", "yes")


def run_job(cfg: DictConfig) -> dict | None:
    """One Hydra job: the baseline first when wanted, then the run, then the comparison table."""
    from gfsa.console import print_comparison

    container = OmegaConf.to_container(cfg, resolve=True)
    prepared = prepare(container)  # every check of this run passes before its baseline trains
    if isinstance(prepared, Prepared):
        from gfsa.requeue import ignore_warning_signals

        ignore_warning_signals()  # a job process: gfsa.requeue acts on them while training, nobody else does
    baseline = None
    if not R.is_baseline(container) and wants_baseline(cfg):
        baseline = run(R.baseline_config(container))
    record = execute(prepared) if isinstance(prepared, Prepared) else _already(prepared)
    if record is not None and record["variant"] != "baseline":
        baseline = baseline or R.load_record(R.run_dir(R.baseline_config(container)))
        print_comparison(record, baseline, container)
    return record


def _check_composes(args: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            compose("config", overrides=[a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))])
    except (HydraException, OmegaConfBaseException) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        unknown = re.match(r"Could not override '([^']+)'", lines[0]) if lines else None
        if unknown:
            key = unknown.group(1)
            msg = f"unknown option '{key}': check its spelling (`python run.py --cfg job` prints every option)"
        else:
            msg = " ".join(lines[:2])
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def _preflight(args: list[str]) -> None:
    """A multirun on a launcher preset: every cell is composed and checked (and Slurm asked about its
    partition) before hydra-submitit submits anything (gfsa/sweep.py)."""
    from gfsa.sweep import preflight

    try:
        preflight(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """``python run.py [overrides]``: Hydra-composed runs with one-line errors for bad input."""
    import hydra

    from gfsa.console import check_overrides

    args = sys.argv[1:] if argv is None else argv
    check_overrides(args, CONF_DIR)
    if not any(a.startswith("-") for a in args):  # single runs: report a bad key in one line
        _check_composes(args)
    elif "-m" in args or "--multirun" in args:
        _preflight(args)
    sys.argv = [sys.argv[0], *args]

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _job(cfg: DictConfig):
        try:
            return run_job(cfg)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    _job()
