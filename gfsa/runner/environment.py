"""The machine a run executes on: the accelerator and devices it asks for exist, the results dir takes
files, the global batch adds up, and ranks come from the launcher (Slurm, submitit), never from
Lightning re-launching itself inside a job."""

from __future__ import annotations

import os
from pathlib import Path

from gfsa.utils.errors import ConfigError
from gfsa.utils.files import unwritable


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


def cluster_plugins() -> list:
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
