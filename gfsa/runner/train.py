"""The run path: config → task → backbone (+ gfsa.patch) → Lightning trainer → results record.

Everything that can reject the input (names, layer specs, data dirs, file formats) runs before
the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gfsa.runner import results as R
from gfsa.runner import rundir
from gfsa.runner.config import gfsa_settings, normalise
from gfsa.runner.environment import apply_global_batch, check_environment, cluster_plugins
from gfsa.runner.record import build_record
from gfsa.runner.registry import builder, resolve
from gfsa.runner.selection import check_metric_options
from gfsa.utils.errors import ConfigError, first_line


def validate(cfg: dict) -> dict:
    """Cheap checks of the config alone, with the option name in the message; returns the config with
    every value in one form (:func:`gfsa.runner.config.normalise`), which is what names the run directory."""
    return normalise(cfg)


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
    done = rundir.ended(rdir)
    if done is not None:
        return done
    check_environment(cfg)

    import lightning as L

    import gfsa
    from gfsa.zoo.backbones import patch_target

    L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    task_cfg = OmegaConf.create(cfg["task"])
    task = builder("task", cfg["task"])(task_cfg)
    task.check()
    task.setup("fit")
    check_metric_options(cfg, task)
    model = builder("backbone", cfg["backbone"])(OmegaConf.create(cfg["backbone"]), task)
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


def run(cfg: DictConfig | dict, callbacks: tuple = ()) -> dict | None:
    """Train one config (or find the record of its ended run); returns the record (None for smoke
    runs). ``callbacks``: extra Lightning callbacks (instrumentation); they do not change the run dir."""
    p = prepare(cfg)
    return execute(p, callbacks) if isinstance(p, Prepared) else rundir.already(p, cfg)


def execute(p: Prepared, extra_callbacks: tuple = ()) -> dict | None:
    """Train a prepared run and write its results record (rank 0).

    A run that diverges stops at once and is recorded as diverged (no comparison). A failure before the
    first checkpoint removes only this run's own directory; a second process with the same config waits
    for this one (the run directory's lock), then finds its record."""
    import lightning as L

    from gfsa.runner import selection
    from gfsa.runner.loggers import finish_wandb, make_loggers, placeholder_values
    from gfsa.runner.requeue import Preemption
    from gfsa.zoo.recipes.common import Diverged, DivergenceGuard, StepTimer, ValidationHistory

    cfg, rdir, variant, task, model, recipe, facts = p.cfg, p.rdir, p.variant, p.task, p.model, p.recipe, p.facts
    trainer_cfg = dict(cfg["trainer"])
    if trainer_cfg["fast_dev_run"]:
        return _smoke(p, extra_callbacks)
    rid = R.run_id(rdir)
    loggers = make_loggers(cfg, placeholder_values(cfg, rdir, rid, variant))
    history, timer = ValidationHistory(), StepTimer()
    callbacks = [history, timer, DivergenceGuard(), *extra_callbacks]
    callbacks += configured_callbacks(cfg, has_logger=bool(loggers))
    stopper = selection.early_stopping(cfg, task)
    ckpt_dir = rdir / "checkpoints"
    # last.ckpt at every epoch end (checkpoint: true) and when a signal (time limit, preemption, Ctrl-C)
    # stops the run; the same command resumes from it to the same metrics (gfsa/requeue.py).
    preemption = Preemption(ckpt_dir / selection.LAST, every_epoch=bool(cfg["checkpoint"]))
    best = selection.best_checkpoint(cfg, task, ckpt_dir)
    callbacks += [c for c in (stopper, preemption, best) if c is not None]
    if str(trainer_cfg["accumulate_grad_batches"]).lower() == "auto":
        trainer_cfg["accumulate_grad_batches"] = 1  # apply_global_batch derives it
    trainer = _trainer(trainer_cfg, loggers or False, callbacks, rdir)
    if cfg["run"]["compile"]:
        model.compile()  # in place: the recipe, its checkpoints and the record see the same module
    global_batch = apply_global_batch(cfg, trainer)
    claim = rundir.claim(rdir, cfg)
    if isinstance(claim, dict):
        return rundir.already(claim)
    try:
        resume = rundir.resume_from(cfg, ckpt_dir / selection.LAST, recipe)
        with preemption.handling_signals():  # from the loggers' start on (W&B's run), a signal stops the run
            for lg in loggers:  # the resolved config, as every logger keeps hyperparameters (W&B's run config)
                lg.log_hyperparams(cfg)
            # Reseed: a run trains the same whether or not its baseline trained first in this process.
            L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
            trainer.fit(recipe, datamodule=task, ckpt_path=resume)
            if trainer.interrupted:
                raise KeyboardInterrupt
            if not history.history:  # e.g. max_steps stopped training before the first validation
                trainer.validate(recipe, datamodule=task, verbose=False)
                if best is not None:  # the one validation scored the final weights
                    trainer.save_checkpoint(ckpt_dir / selection.BEST, weights_only=False)
        status, diverged = R.FINISHED, None
    except Diverged as d:
        status, diverged = R.DIVERGED, d
    except BaseException as e:
        finish_wandb()
        if claim is not None:
            rundir.release_after_failure(rdir, claim)
        if isinstance(e, OSError) and rundir.disk_error(e, rdir):
            raise rundir.disk_error(e, rdir) from None
        raise
    try:
        record = None
        if trainer.is_global_zero:
            record = build_record(cfg, rdir, rid, variant, task, model, facts, history, timer, trainer, preemption)
            record["global_batch_size"] = global_batch
            record["checkpoints"] = selection.checkpoint_facts(rdir, record)
            # stopping_reason_message: Lightning >= 2.6 (stopped_epoch is also 0 when it stopped at epoch 0)
            reason = getattr(stopper, "stopping_reason_message", None)
            if stopper is not None and (reason is not None or stopper.stopped_epoch):
                record["early_stopping"] = {"epoch": stopper.stopped_epoch, "reason": reason}
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
                raise (rundir.disk_error(e, rdir) or e) from None
            if variant == "baseline" and status == R.FINISHED:
                for path in R.complete_pairings(record, cfg["paths"]["results_dir"]):
                    print(f"paired {path.parent} with this baseline")
        comparison = (record or {}).get("comparison") or {}
        finish_wandb(
            {
                "status": status,
                "objective": selection.objective(record, cfg) if record else None,
                "improvement_pct": comparison.get("improvement_pct"),
                "added_parameters": facts["added_parameters"],
                "step_time_s": (record or {}).get("timing", {}).get("step_time_s"),
            }
        )
    finally:
        if claim is not None:
            claim.release()
    return record


def configured_callbacks(cfg: dict, has_logger: bool = True) -> list:
    """The ``callbacks`` group's entries, instantiated by Hydra (``_target_``): how a package above the
    run path (``gfsa.ops.analysis``) or the user's own code adds a callback without editing gfsa.
    Without a logger, the callbacks that only write to loggers are left out (Lightning refuses them)."""
    from lightning.pytorch.callbacks import DeviceStatsMonitor, LearningRateMonitor

    from gfsa.runner.loggers import instantiate_entry

    out = []
    for name, spec in (cfg.get("callbacks") or {}).items():  # ~callbacks drops the group
        if not spec:
            continue
        callback = instantiate_entry("callbacks", name, spec)
        if not has_logger and isinstance(callback, (LearningRateMonitor, DeviceStatsMonitor)):
            continue
        out.append(callback)
    return out


def _trainer(trainer_cfg: dict, logger, callbacks: list, root: Path):
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    trainer_cfg = dict(trainer_cfg)
    plugins = trainer_cfg.pop("plugins", None) or []  # +trainer.plugins=[…]: Lightning's plugin names
    plugins = [*cluster_plugins(), *(plugins if isinstance(plugins, list) else [plugins])]
    try:
        return L.Trainer(**trainer_cfg, logger=logger, callbacks=callbacks, default_root_dir=str(root), plugins=plugins)
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


def wants_baseline(cfg: dict) -> bool:
    """``with_baseline=auto`` trains a missing baseline first in single runs, never in sweeps
    (a sweep lists its baselines as cells, and two jobs must not train the same one), W&B agents
    included: an agent's run is one W&B run of its sweep."""
    from gfsa.runner.loggers import under_wandb_agent

    mode = cfg["with_baseline"]
    if mode == "auto":
        if under_wandb_agent():
            return False
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
    from gfsa.runner import selection
    from gfsa.runner.console import print_comparison, quiet_libraries
    from gfsa.runner.loggers import report_ended_to_agent, under_wandb_agent

    quiet_libraries()
    container = validate(OmegaConf.to_container(cfg, resolve=True))
    prepared = prepare(container)  # every check of this run passes before its baseline trains
    if isinstance(prepared, Prepared):
        from gfsa.runner.requeue import ignore_warning_signals

        ignore_warning_signals()  # a job process: gfsa.runner.requeue acts on them while training, nobody else does
        name = selection.objective_name(container, prepared.task)
        selection.check_sweeper_direction(container, name, selection.direction_of(prepared.task, name) or "up")
    baseline = None
    if not R.is_baseline(container) and wants_baseline(container):
        base_cfg = R.baseline_config(container)
        if under_wandb_agent():  # the agent's W&B run is this run's; the baseline keeps its record only
            base_cfg["logger"] = {}
        baseline = run(base_cfg)
        if baseline is not None and baseline.get("status") == R.DIVERGED:
            _report_diverged(baseline, is_baseline=True)
    if isinstance(prepared, Prepared):
        record = execute(prepared)
    else:
        record = rundir.already(prepared, container)
        report_ended_to_agent(container, record)
    if record is None:
        return None
    if record.get("status") == R.DIVERGED:
        _report_diverged(record, is_baseline=R.is_baseline(container))
    elif record["variant"] != "baseline":
        baseline = baseline or R.load_record(R.run_dir(R.baseline_config(container)))
        print_comparison(record, baseline, container)
    return record
