"""The run path: config → task → backbone (+ gfsa.patch) → Lightning trainer → results record.

Everything that can reject the input (names, layer specs, data dirs, file formats) runs before
the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gfsa.runner import results as R
from gfsa.runner.config import gfsa_settings, normalise
from gfsa.runner.registry import resolve
from gfsa.utils.errors import ConfigError, first_line
from gfsa.utils.files import unwritable
from gfsa.utils.resources import SOURCE_ROOT


def validate(cfg: dict) -> dict:
    """Cheap checks of the config alone, with the option name in the message; returns the config with
    every value in one form (:func:`gfsa.runner.config.normalise`), which is what names the run directory."""
    return normalise(cfg)


def check_environment(cfg: dict) -> None:
    """What the config asks of this machine: the accelerator exists, the results dir is writable."""
    import torch

    t = cfg["trainer"]
    acc = t["accelerator"]
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={acc} but this machine has no usable GPU "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): "
            "use trainer.accelerator=cpu or auto, or run where a GPU is visible"
        )
    if acc == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but MPS is not available here: use trainer.accelerator=cpu or auto")
    devices = t["devices"]
    if acc in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigError(
            f"trainer.devices={devices} but {torch.cuda.device_count()} GPU(s) are visible: "
            f"pass trainer.devices={torch.cuda.device_count()} (or fewer)"
        )
    root = Path(cfg["paths"]["results_dir"]).expanduser()
    why = unwritable(root)
    if why:
        raise ConfigError(
            f"cannot write to paths.results_dir={root} ({why}): choose a writable paths.results_dir (or GFSA_RESULTS_DIR)"
        )


def apply_global_batch(cfg: dict, trainer) -> int:
    """Check (or derive, with ``trainer.accumulate_grad_batches=auto``) the preset's global batch:
    world size × per-device batch × accumulation. Returns the global batch."""
    per_step = trainer.world_size * int(cfg["task"]["batch_size"])
    want = cfg["task"].get("global_batch_size")  # optional: the presets that fix a global batch set it
    if str(cfg["trainer"]["accumulate_grad_batches"]).lower() == "auto":
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
    root = SOURCE_ROOT
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
    """Check and build a run without touching the disk: the record if the run already ended."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    cfg = validate(cfg)
    rdir = R.run_dir(cfg)
    done = _ended(rdir)
    if done is not None:
        return done
    check_environment(cfg)

    import lightning as L

    import gfsa
    from gfsa.zoo.backbones import patch_target

    L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    task_cfg = OmegaConf.create(cfg["task"])
    task = resolve("task", task_cfg.type)(task_cfg)
    task.check()
    task.setup("fit")
    model = resolve("backbone", cfg["backbone"]["type"])(OmegaConf.create(cfg["backbone"]), task)
    if not R.is_baseline(cfg):
        try:
            gfsa.patch(patch_target(model), settings=gfsa_settings(cfg["gfsa"]))
        except (ValueError, TypeError) as e:  # a layer spec the model cannot take, an unsupported model
            raise ConfigError(str(e)) from None
    from gfsa.zoo.methods import apply_from_config  # compared methods (conf/method/): AttnScale, FeatScale, ContraNorm

    method_parameters = apply_from_config(cfg, patch_target(model))
    recipe = resolve("recipe", task.recipe)(model, task, cfg["optim"])
    facts = {
        "layers": gfsa.patched_layers(patch_target(model)),
        "added_parameters": gfsa.added_parameters(model) + method_parameters,
        "total_parameters": sum(p.numel() for p in model.parameters()),
    }
    return Prepared(cfg, rdir, R.variant_name(cfg), task, model, recipe, facts)


def _ended(rdir: Path) -> dict | None:
    """The record of a run that finished or diverged (never trained again by the same command). A
    record that cannot be read is moved aside with a word (the run then trains and writes a new one)."""
    record, why = R.read_record(rdir)
    if record is not None:
        return record if record.get("status") in R.TERMINAL else None
    path = rdir / R.RECORD
    if why != "no result.json" and path.exists():
        aside = path.with_name(f"{R.RECORD}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        with contextlib.suppress(OSError):
            path.rename(aside)
            print(f"warning: {path} is {why}; moved to {aside.name}, the run trains again", file=sys.stderr)
    return None


def _coefficients(model) -> dict:
    """Final GFSA coefficients per patched layer, for the record and the analysis."""
    from gfsa.nn.attention import GFSACoefficients

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, GFSACoefficients):
            out[name] = {c: getattr(m, c).detach().cpu().tolist() for c in ("w0", "w1", "wK")}
    return out


def run(cfg: DictConfig | dict, callbacks: tuple = ()) -> dict | None:
    """Train one config (or find the record of its ended run); returns the record (None for smoke
    runs). ``callbacks``: extra Lightning callbacks (instrumentation); they do not change the run dir."""
    p = prepare(cfg)
    return execute(p, callbacks) if isinstance(p, Prepared) else _already(p, cfg)


def _already(record: dict, cfg: DictConfig | dict | None = None) -> dict:
    """Say where the ended run is, and whether the data it was trained on has changed since."""
    what = "already diverged" if record.get("status") == R.DIVERGED else "already finished"
    print(f"{what}: {record['run_dir']} (delete it to train again)")
    if cfg is not None:
        cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
        note = _data_changed(record, cfg)
        if note:
            print(f"warning: {note}", file=sys.stderr)
    return record


def _data_changed(record: dict, cfg: dict) -> str | None:
    """task.data_dir is not part of a run's identity (the same data may live anywhere): say so when the
    ended run was trained on another folder, or on different contents of the same one."""
    now = cfg["task"]["data_dir"]
    then = ((record.get("config") or {}).get("task") or {}).get("data_dir")  # a record of any age
    hint = "task.data_dir is not part of a run's identity: delete the run dir to train on this data"
    if now and then and os.path.abspath(os.path.expanduser(str(now))) != os.path.abspath(os.path.expanduser(then)):
        return f"this run was trained on task.data_dir={then}, not {now}; {hint}"
    recorded = (record.get("data") or {}).get("fingerprint")
    if now and recorded:
        current = R.data_fingerprint(now)
        if current and (current.get("files"), current.get("bytes")) != (recorded.get("files"), recorded.get("bytes")):
            return (
                f"task.data_dir={now} has changed since this run trained on it ({recorded.get('files')} files, "
                f"{recorded.get('bytes')} bytes then; {current['files']} files, {current['bytes']} bytes now); {hint}"
            )
    return None


def _cluster_plugins() -> list:
    """Ranks come from the launcher, never from Lightning re-launching itself inside a job.

    Under Slurm (srun starts one task per device) Lightning reads the ranks from SLURM_* and requeue
    belongs to gfsa.runner.requeue, so Lightning's own auto-requeue is off. Under submitit's local executor
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


# What a run may leave in its directory before its first checkpoint: removing these removes nothing
# that is not this run's own partial output.
_PARTIAL = {".lock", "wandb", "csv", "tensorboard", "checkpoints"}


def _release_after_failure(rdir: Path, lock) -> None:
    """After a failure before anything worth keeping: remove this run's own directory, only if it holds
    nothing but its own partial files (no checkpoint, no record, nothing else), while still holding its
    lock; never a parent, which other runs share. Then release the lock."""
    try:
        names = {p.name for p in rdir.iterdir()}
    except OSError:
        names = {"?"}
    keep = names - _PARTIAL or any(rdir.glob("checkpoints/*.ckpt")) or (rdir / R.RECORD).exists()
    if not keep:
        for name in names - {".lock"}:
            shutil.rmtree(rdir / name, ignore_errors=True)
    lock.release()
    if not keep:
        with contextlib.suppress(OSError):  # fails, harmlessly, if another process has taken the dir since
            rdir.rmdir()


def _claim(rdir: Path, cfg: dict):
    """Create the run directory and take its lock (rank 0; the other ranks of this run follow rank 0).
    Returns the lock, or the record of a run that ended while this process waited for it."""
    from gfsa.runner.lock import RunLock, RunLocked
    from gfsa.runner.requeue import rank_zero

    try:
        rdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create the run directory {rdir} ({e.strerror or e}): choose a writable paths.results_dir"
        ) from None
    if not rank_zero():
        return None

    def waiting(holder) -> None:
        who = holder.describe() if holder else "another process"
        print(f"waiting for {who}, which is training {rdir} (run.lock_timeout limits the wait)", file=sys.stderr)

    lock = RunLock(rdir)
    try:
        lock.acquire(timeout=cfg["run"]["lock_timeout"], on_wait=waiting)
    except RunLocked as e:
        raise ConfigError(str(e)) from None
    done = _ended(rdir)
    if done is not None:
        lock.release()
        return done
    return lock


def _resume_from(cfg: dict, last: Path, recipe) -> str | None:
    """The checkpoint to resume from, verified; ``resume=restart`` discards it."""
    from gfsa.runner.requeue import checkpoint_problem

    if not last.exists():
        return None
    if cfg["resume"] == "restart":
        last.unlink()
        print(f"resume=restart: removed {last}; training from the start", file=sys.stderr)
        return None
    problem = checkpoint_problem(last, recipe)
    if problem:
        raise ConfigError(
            f"cannot resume from {last}: it is {problem}; pass resume=restart to train from the start "
            "(it removes that file), or delete it"
        )
    return str(last)


def disk_error(e: OSError, rdir: Path) -> ConfigError | None:
    """One line for what the filesystem refused (full disk, quota, read-only, permissions)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return ConfigError(
            f"{why} while writing {e.filename or rdir}: free space and run the same command again "
            "(it resumes from the last checkpoint)"
        )
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ConfigError(f"cannot write {e.filename or rdir} ({e.strerror}): choose a writable paths.results_dir")
    return None


def execute(p: Prepared, extra_callbacks: tuple = ()) -> dict | None:
    """Train a prepared run and write its results record (rank 0).

    A run that diverges stops at once and is recorded as diverged (no comparison). A failure before the
    first checkpoint removes only this run's own directory; a second process with the same config waits
    for this one (the run directory's lock), then finds its record."""
    import lightning as L

    from gfsa.runner.loggers import finish_wandb, make_logger
    from gfsa.runner.requeue import Preemption
    from gfsa.zoo.recipes.common import Diverged, DivergenceGuard, StepTimer, ValidationHistory

    cfg, rdir, variant, task, model, recipe, facts = p.cfg, p.rdir, p.variant, p.task, p.model, p.recipe, p.facts
    trainer_cfg = dict(cfg["trainer"])
    if trainer_cfg["fast_dev_run"]:
        return _smoke(p, extra_callbacks)
    rid = R.run_id(rdir)
    history, timer = ValidationHistory(), StepTimer()
    callbacks = [history, timer, DivergenceGuard(), *extra_callbacks]
    callbacks += configured_callbacks(cfg)
    ckpt_dir = rdir / "checkpoints"
    # last.ckpt at every epoch end (checkpoint: true) and when a signal (time limit, preemption, Ctrl-C)
    # stops the run; the same command resumes from it to the same metrics (gfsa/requeue.py).
    preemption = Preemption(ckpt_dir / "last.ckpt", every_epoch=bool(cfg["checkpoint"]))
    callbacks.append(preemption)
    if str(trainer_cfg["accumulate_grad_batches"]).lower() == "auto":
        trainer_cfg["accumulate_grad_batches"] = 1  # apply_global_batch derives it
    logger = make_logger(cfg, rdir, rid, f"{cfg['backbone']['name']}/{cfg['task']['name']}/{rdir.name}", variant)
    trainer = _trainer(trainer_cfg, logger, callbacks, rdir)
    global_batch = apply_global_batch(cfg, trainer)
    claim = _claim(rdir, cfg)
    if isinstance(claim, dict):
        return _already(claim)
    facts = {**facts, "data_fingerprint": R.data_fingerprint(cfg["task"]["data_dir"])}
    try:
        resume = _resume_from(cfg, ckpt_dir / "last.ckpt", recipe)
        # Reseed: a run trains the same whether or not its baseline trained first in this process.
        L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
        with preemption.handling_signals():
            trainer.fit(recipe, datamodule=task, ckpt_path=resume)
            if trainer.interrupted:
                raise KeyboardInterrupt
            if not history.history:  # e.g. check_val_every_n_epoch did not line up with max_epochs
                trainer.validate(recipe, datamodule=task, verbose=False)
        status, diverged = R.FINISHED, None
    except Diverged as d:
        status, diverged = R.DIVERGED, d
    except BaseException as e:
        finish_wandb()
        if claim is not None:
            _release_after_failure(rdir, claim)
        if isinstance(e, OSError) and disk_error(e, rdir):
            raise disk_error(e, rdir) from None
        raise
    try:
        record = None
        if trainer.is_global_zero:
            record = _record(cfg, rdir, rid, variant, task, model, facts, history, timer, trainer, preemption)
            record["global_batch_size"] = global_batch
            if diverged is not None:
                record["status"] = R.DIVERGED
                record["diverged"] = {
                    "what": f"{diverged.what} = {diverged.value}",
                    "epoch": diverged.epoch,
                    "step": diverged.step,
                }
                record["comparison"] = None
            try:
                R.write_record(rdir, record)
            except OSError as e:
                raise (disk_error(e, rdir) or e) from None
            if variant == "baseline" and status == R.FINISHED:
                for path in R.complete_pairings(record, cfg["paths"]["results_dir"]):
                    print(f"paired {path.parent} with this baseline")
        comparison = (record or {}).get("comparison") or {}
        finish_wandb(
            {
                "status": status,
                "improvement_pct": comparison.get("improvement_pct"),
                "added_parameters": facts["added_parameters"],
                "step_time_s": (record or {}).get("timing", {}).get("step_time_s"),
            }
        )
    finally:
        if claim is not None:
            claim.release()
    return record


def configured_callbacks(cfg: dict) -> list:
    """The ``callbacks`` group's entries, instantiated by Hydra (``_target_``): how a package above the
    run path (``gfsa.ops.analysis``) or the user's own code adds a callback without editing gfsa."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    out = []
    for name, spec in (cfg.get("callbacks") or {}).items():  # ~callbacks drops the group
        if not spec:
            continue
        if not isinstance(spec, dict) or "_target_" not in spec:
            raise ConfigError(f"callbacks.{name}: expected a mapping with _target_ (a callback class to instantiate)")
        try:
            out.append(instantiate(spec))
        except InstantiationException as e:
            raise ConfigError(f"callbacks.{name}: cannot instantiate {spec['_target_']} ({first_line(e)})") from None
    return out


def _trainer(trainer_cfg: dict, logger, callbacks: list, root: Path):
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(
            **trainer_cfg, logger=logger, callbacks=callbacks, default_root_dir=str(root), plugins=_cluster_plugins()
        )
    except (TypeError, ValueError, MisconfigurationException) as e:  # Lightning's own checks of trainer.*
        raise ConfigError(f"trainer options rejected by Lightning: {first_line(e, with_type=False)}") from None


def _smoke(p: Prepared, extra_callbacks: tuple) -> None:
    """``trainer.fast_dev_run``: a few batches through the whole path in a temporary folder, no record,
    nothing left behind."""
    trainer_cfg = dict(p.cfg["trainer"])
    if str(trainer_cfg["accumulate_grad_batches"]).lower() == "auto":
        trainer_cfg["accumulate_grad_batches"] = 1
    with tempfile.TemporaryDirectory(prefix="gfsa-smoke-") as tmp:
        trainer = _trainer(trainer_cfg, False, list(extra_callbacks), Path(tmp))
        trainer.fit(p.recipe, datamodule=p.task)
    print("fast_dev_run: smoke test passed, no results record written")


def _record(cfg, rdir, rid, variant, task, model, facts, history, timer, trainer, preemption) -> dict:
    directions = task.directions

    def with_direction(metrics: dict) -> dict:
        return {k: {"value": v, "direction": directions.get(k, "up")} for k, v in metrics.items()}

    primary = task.primary_metric
    sign = 1 if directions.get(primary, "up") == "up" else -1
    last = history.history[-1]["metrics"] if history.history else {}
    best = (
        max(history.history, key=lambda h: sign * h["metrics"].get(primary, float("-inf") * sign))
        if history.history
        else None
    )
    devices = trainer.world_size
    timing = timer.summary(trainer.strategy.root_device)
    timing["wall_time_s"] = round(preemption.wall_time(), 2)
    timing["attempts"] = preemption.attempts
    if timing["step_time_s"]:  # the timer measures micro-batches: batch size × devices samples each
        timing["samples_per_s"] = round(int(cfg["task"]["batch_size"]) * devices / timing["step_time_s"], 2)
    for cb in trainer.callbacks:  # callbacks may contribute entries (e.g. seconds per validation epoch)
        if callable(getattr(cb, "timing", None)):
            timing.update(cb.timing())
    data = dict(getattr(task, "data_report", None) or {})  # what loading skipped, e.g. unparseable molecules
    if facts.get("data_fingerprint"):
        data["fingerprint"] = facts["data_fingerprint"]
    record = {
        "schema": R.SCHEMA,
        "status": R.FINISHED,
        "run_dir": str(rdir),
        "run_id": rid,
        "backbone": cfg["backbone"]["name"],
        "task": cfg["task"]["name"],
        "variant": variant,
        "seed": cfg["seed"],
        "pair_key": R.pair_key(cfg),
        "primary_metric": primary,
        "selected_by": cfg["task"]["metric_select"],
        "metrics": with_direction(last),
        "best": (with_direction(best["metrics"]) | {"_epoch": {"value": best["epoch"], "direction": "up"}})
        if best
        else {},
        "history": history.history,
        "gfsa": {**{k: v for k, v in facts.items() if k != "data_fingerprint"}, "coefficients": _coefficients(model)},
        "data": data,
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


def wants_baseline(cfg: dict) -> bool:
    """``with_baseline=auto`` trains a missing baseline first in single runs, never in sweeps
    (a sweep lists its baselines as cells, and two jobs must not train the same one)."""
    mode = cfg["with_baseline"]
    if mode == "auto":
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            return HydraConfig.get().mode == RunMode.RUN
        except ValueError:  # not under Hydra: an API call decides for itself
            return False
    return bool(mode)


EXIT_DIVERGED = 4
DIVERGED_RUNS: list[str] = []  # diverged runs of this process: a multirun goes on past them, then exits 4


def _report_diverged(record: dict, is_baseline: bool) -> None:
    d = record.get("diverged") or {}
    where = f"at epoch {d.get('epoch')}, step {d.get('step')} ({d.get('what')})"
    if is_baseline:
        print(
            f"warning: the baseline {record['run_dir']} diverged {where}: no improvement % for this run",
            file=sys.stderr,
        )
        return
    print(
        f"error: {record['run_dir']} diverged {where}: recorded as diverged, not compared; lower optim.lr, "
        "set trainer.gradient_clip_val or change the config, then delete that run dir to train again",
        file=sys.stderr,
    )
    DIVERGED_RUNS.append(record["run_dir"])


def run_job(cfg: DictConfig) -> dict | None:
    """One Hydra job: the baseline first when wanted, then the run, then the comparison table."""
    from gfsa.runner.console import print_comparison

    container = validate(OmegaConf.to_container(cfg, resolve=True))
    prepared = prepare(container)  # every check of this run passes before its baseline trains
    if isinstance(prepared, Prepared):
        from gfsa.runner.requeue import ignore_warning_signals

        ignore_warning_signals()  # a job process: gfsa.runner.requeue acts on them while training, nobody else does
    baseline = None
    if not R.is_baseline(container) and wants_baseline(container):
        baseline = run(R.baseline_config(container))
        if baseline is not None and baseline.get("status") == R.DIVERGED:
            _report_diverged(baseline, is_baseline=True)
    record = execute(prepared) if isinstance(prepared, Prepared) else _already(prepared, container)
    if record is None:
        return None
    if record.get("status") == R.DIVERGED:
        _report_diverged(record, is_baseline=R.is_baseline(container))
    elif record["variant"] != "baseline":
        baseline = baseline or R.load_record(R.run_dir(R.baseline_config(container)))
        print_comparison(record, baseline, container)
    return record
