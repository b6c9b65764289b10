"""Preemption and time limits: the training process owns requeue (see docs/scale_out.md).

On the warning signal (``sbatch --signal=USR1@N``; submitit sends USR2), on SIGTERM (preemption,
``scancel``) or on Ctrl-C (SIGINT; a second Ctrl-C stops at once) the run stops at the next optimizer-step boundary, saves ``<run dir>/checkpoints/last.ckpt``,
asks Slurm to requeue the job (on SIGTERM only while the job still runs: a preempted job in its GraceTime
ends FAILED unless requeued, a cancelled one must stay cancelled; never on Ctrl-C) and exits without a
results record.
The requeued job runs the same command, finds the same run directory and resumes from that checkpoint.

Why here and not in Lightning or submitit: Lightning's SLURM auto-requeue saves from inside the signal
handler, mid-step, to ``hpc_ckpt_*.ckpt``, and resumes mid-epoch with a fresh data order; submitit's
requeue only exists on the Hydra-launcher path and saves nothing. Both are switched off (Lightning:
``SLURMEnvironment(auto_requeue=False)``; submitit: ``max_num_timeout: 0`` and its signal handler replaced
during training) so that exactly one owner acts.

Resumed metrics equal uninterrupted ones: the checkpoint carries the RNG states and the position in the
epoch (batches consumed plus the RNG state that drew the epoch's order), and the train DataLoader replays
that order and skips the consumed batches (fetching them, so worker-side augmentation streams match too).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from gfsa.runner.loggers import finish_wandb

WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # time-limit warnings: requeue after the checkpoint
EXIT_CODE = 3  # "stopped with a checkpoint": the job is back in the queue or the user resubmits
EXIT_CTRL_C = 130  # the shell's code for SIGINT


class Stopped(SystemExit):
    """The run stopped with a checkpoint and must not write a record.

    A SystemExit, so Hydra does not treat it as a job result and submitit writes no result file (its
    job stays unfinished until the requeued attempt succeeds)."""

    def __init__(self, message: str, code: int = EXIT_CODE):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def slurm_job_id() -> str | None:
    """The id that ``scontrol requeue`` takes: ``<array>_<task>`` for array tasks."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job(only_if_running: bool = False) -> str:
    """``scontrol requeue`` this job; the same command then resumes from ``last.ckpt``.

    ``only_if_running``: for SIGTERM, which both preemption (the job still runs out its GraceTime, and
    ends FAILED unless requeued) and ``scancel`` (the job is already CANCELLED: requeueing would revive
    it) send."""
    job = slurm_job_id()
    if job is None:
        return "not a Slurm job: run the same command again to resume"
    if only_if_running:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, check=False)
        if state.stdout.strip() != "RUNNING":
            return f"Slurm job {job} is {state.stdout.strip().lower() or 'gone'}: not requeued (resubmit to resume)"
    out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False, timeout=60)
    if out.returncode:
        return f"scontrol requeue {job} failed ({out.stderr.strip()}): resubmit to resume"
    return f"requeued Slurm job {job}"


def rank_zero() -> bool:
    """Whether this process is global rank 0, before Lightning knows: every rank variable a launcher
    sets (Slurm's task id, torchrun's RANK, Lightning's own LOCAL_RANK/NODE_RANK for the processes it
    starts) is 0 or absent."""
    names = ("SLURM_PROCID", "RANK", "LOCAL_RANK", "NODE_RANK")
    return all(int(os.environ.get(n, "0") or 0) == 0 for n in names)


def ignore_warning_signals() -> None:
    """For job processes: a warning signal that comes outside training (start-up, writing the record)
    must not kill the process, which is SIGUSR1's default action; during training Preemption acts on it."""
    for sig in WARNING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _rng_state() -> dict:
    """Every RNG a training step may draw from, as tensors and plain Python values (checkpoints load
    with ``weights_only``, which refuses numpy arrays)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _resumable_iter(self):
    """``__iter__`` of the train DataLoader: records the RNG state that draws each epoch's order and,
    after a resume, replays it and skips the batches the checkpoint already trained on."""
    owner = self._gfsa_owner
    resume, owner.resume = owner.resume, None
    if resume is not None and resume["epoch_rng"] is None:  # at an epoch end: continue every RNG
        _set_rng_state(resume["rng"])
    elif resume is not None:  # mid-epoch: draw this epoch's order again, then skip what was trained
        torch.set_rng_state(resume["epoch_rng"])
    owner.epoch_rng, owner.in_epoch = torch.get_rng_state(), True
    it = super(type(self), self).__iter__()
    if resume is not None and resume["epoch_rng"] is not None:
        for _ in range(resume["consumed"]):
            next(it)
        _set_rng_state(resume["rng"])
    yield from it


class Preemption(Checkpoint):
    """Owns ``<run dir>/checkpoints/last.ckpt``: written atomically at every epoch end (``every_epoch``) and
    when a warning signal or SIGTERM stops the run; resuming from it gives the uninterrupted run's metrics.

    A ``Checkpoint``, so Lightning runs its epoch-end hook after every other callback's (their state is
    final) and adds no default ModelCheckpoint."""

    def __init__(self, ckpt_path: str | Path, every_epoch: bool = True):
        self.ckpt_path = Path(ckpt_path)
        self.every_epoch = every_epoch
        self.received: list[int] = []
        self.resume: dict | None = None  # position to restore when the train loader is next iterated
        self.epoch_rng: torch.Tensor | None = None
        self.in_epoch = False
        self._consumed = 0
        self._tmp_name = f".{self.ckpt_path.name}.{socket.gethostname()}-{os.getpid()}.tmp"
        # Wall time of earlier attempts (restored from the checkpoint) and when this attempt began.
        self.previous_wall = 0.0
        self.attempts = 1
        self._t0 = time.time()

    # -- signals -----------------------------------------------------------------------------------
    def _flag(self, signum, frame):
        if signum == signal.SIGINT:
            if signal.SIGINT in self.received:  # the second Ctrl-C: stop now, without a checkpoint
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            print(
                "\nCtrl-C: stopping at the next step with a checkpoint (Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
        self.received.append(signum)

    @contextlib.contextmanager
    def handling_signals(self):
        """Around ``trainer.fit``: the warning signals, SIGTERM and a first Ctrl-C only set a flag (replacing
        submitit's handlers and Python's KeyboardInterrupt), from set-up on, so a signal that comes before
        the first step stops the run there. Lightning adds its own SIGTERM handler during fit and keeps
        this one. DataLoader workers forked meanwhile inherit the flag, so Ctrl-C does not kill them."""
        signals = (*WARNING_SIGNALS, signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.getsignal(sig) for sig in signals}
        self._t0 = time.time()
        for sig in signals:
            signal.signal(sig, self._flag)
        try:
            with warnings.catch_warnings():
                # Lightning cannot see that the train loader resumes mid-epoch through this callback.
                warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch")
                yield self
        except Exception as e:
            if not self.received:
                raise
            # The signal reached every process of the job before a step boundary, e.g. W&B's service, whose
            # next call then fails: the last checkpoint stays valid, so requeue and resume from it.
            raise self._stopped(f"interrupted before a checkpoint ({type(e).__name__}: {e})", rank_zero()) from e
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def setup(self, trainer, pl_module, stage):
        # One temporary name per run attempt, the same on every rank (sharded strategies write from all).
        self._tmp_name = trainer.strategy.broadcast(self._tmp_name)
        dm = trainer.datamodule
        if dm is not None and "train_dataloader" not in vars(dm):
            original = dm.train_dataloader

            def train_dataloader():
                loader = original()
                if isinstance(loader, torch.utils.data.DataLoader) and not hasattr(loader, "_gfsa_owner"):
                    # A subclass made at run time keeps the loader's own class and survives Lightning
                    # re-instantiating the loader with a DistributedSampler (a mixin base would change
                    # the object layout, which __class__ assignment refuses).
                    namespace = {"__iter__": _resumable_iter, "_gfsa_owner": self}
                    loader.__class__ = type(f"Resumable{type(loader).__name__}", (type(loader),), namespace)
                return loader

            dm.train_dataloader = train_dataloader

    # -- when to stop ------------------------------------------------------------------------------
    def _should_stop(self, trainer) -> bool:
        local = bool(self.received) or trainer.received_sigterm
        if trainer.world_size > 1:  # any rank's signal stops all ranks at the same step
            return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
        return local

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last = batch_idx + 1 >= trainer.num_training_batches
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not last and stepped and self._should_stop(trainer):
            self._stop(trainer, consumed=batch_idx + 1)

    def on_train_epoch_end(self, trainer, pl_module):
        self.in_epoch = False
        more = trainer.max_epochs is None or trainer.max_epochs < 0 or trainer.current_epoch + 1 < trainer.max_epochs
        if more and self._should_stop(trainer):
            self._stop(trainer, consumed=0)
        elif self.every_epoch and not trainer.sanity_checking:
            self._save(trainer, consumed=0)

    def _save(self, trainer, consumed: int) -> None:
        """Readers (a resubmitted job) see the previous checkpoint or this one, never half of one; a
        failed write (a full disk) leaves the previous one and no partial file."""
        self._consumed = consumed
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.ckpt_path.with_name(self._tmp_name)
        try:
            trainer.save_checkpoint(str(tmp), weights_only=False)  # every rank takes part; rank 0 writes
            if trainer.is_global_zero:
                os.replace(tmp, self.ckpt_path)
        except BaseException as e:
            if trainer.is_global_zero:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno is not None:  # name the checkpoint, not a library's temp file
                raise OSError(e.errno, e.strerror, str(self.ckpt_path)) from e
            raise
        finally:
            self._consumed = 0

    def _stop(self, trainer, consumed: int) -> None:
        self._save(trainer, consumed)
        where = f"stopped at epoch {trainer.current_epoch}, step {trainer.global_step} with {self.ckpt_path}"
        raise self._stopped(where, trainer.is_global_zero)

    def _stopped(self, what: str, requeue: bool) -> Stopped:
        """Close W&B, requeue (rank 0) and say so; the caller raises the result."""
        warned = any(s in WARNING_SIGNALS for s in self.received)
        finish_wandb()  # before the requeue, which kills the job's processes (W&B's service among them)
        if signal.SIGINT in self.received:
            message = f"{what} (Ctrl-C); run the same command to resume"
            print(message, file=sys.stderr, flush=True)
            return Stopped(message, EXIT_CTRL_C)
        message = f"{what} ({'warning signal' if warned else 'SIGTERM'})"
        if requeue:
            message += f"; {requeue_slurm_job(only_if_running=not warned)}"
        print(message, file=sys.stderr, flush=True)
        return Stopped(message)

    # -- time across attempts ----------------------------------------------------------------------
    def wall_time(self) -> float:
        """Seconds of training over every attempt: earlier attempts up to their checkpoint, plus this one."""
        return self.previous_wall + time.time() - self._t0

    # -- checkpoint state ------------------------------------------------------------------------------
    def state_dict(self):
        return {
            "rng": _rng_state(),
            "consumed": self._consumed,
            "epoch_rng": self.epoch_rng if self.in_epoch and self._consumed else None,
            "wall_time_s": self.wall_time(),
            "attempts": self.attempts,
        }

    def load_state_dict(self, state):
        self.resume = {"rng": state["rng"], "consumed": state["consumed"], "epoch_rng": state["epoch_rng"]}
        self.previous_wall = float(state.get("wall_time_s", 0.0))
        self.attempts = int(state.get("attempts", 1)) + 1


def checkpoint_problem(path: str | Path, module: torch.nn.Module) -> str | None:
    """Why ``path`` cannot resume ``module`` (None when it can), found without reading the weights
    into memory (mmap): an empty or truncated file, not a Lightning checkpoint, or another model's."""
    from gfsa.utils.errors import first_line

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "an empty file"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever torch raises for a file that is not a checkpoint
        if "weights_only" not in str(e):
            return f"truncated or not a checkpoint ({first_line(e)})"
        try:  # a checkpoint holding objects that weights_only refuses (e.g. a callback's custom state)
            ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except Exception as e2:  # noqa: BLE001
            return f"truncated or not a checkpoint ({first_line(e2)})"
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or "loops" not in ckpt:
        return "not a Lightning checkpoint of a run"
    theirs, ours = ckpt["state_dict"], module.state_dict()
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        return f"the weights of another model ({first}, {len(missing) + len(unexpected)} keys differ)"
    for k, t in ours.items():
        if tuple(theirs[k].shape) != tuple(t.shape):
            return f"the weights of another model ({k}: {tuple(theirs[k].shape)} vs {tuple(t.shape)})"
    return None
