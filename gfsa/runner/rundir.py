"""One run per run directory: claiming it (its lock), resuming from a verified checkpoint, what a failed
run may remove (its own partial files, never a parent), and what a run that already ended says."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gfsa.runner import results as R
from gfsa.utils.errors import ConfigError


def ended(rdir: Path) -> dict | None:
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


def already(record: dict, cfg: DictConfig | dict | None = None) -> dict:
    """Say where the ended run is, and whether the data it was trained on has changed since."""
    what = "already diverged" if record.get("status") == R.DIVERGED else "already finished"
    print(f"{what}: {record['run_dir']} (delete it to train again)")
    if cfg is not None:
        cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
        note = data_changed(record, cfg)
        if note:
            print(f"warning: {note}", file=sys.stderr)
    return record


def data_changed(record: dict, cfg: dict) -> str | None:
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


# What a run may leave in its directory before its first checkpoint: removing these removes nothing
# that is not this run's own partial output.
_PARTIAL = {".lock", "wandb", "csv", "tensorboard", "checkpoints"}


def release_after_failure(rdir: Path, lock) -> None:
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


def claim(rdir: Path, cfg: dict):
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
    done = ended(rdir)
    if done is not None:
        lock.release()
        return done
    return lock


def resume_from(cfg: dict, last: Path, recipe) -> str | None:
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
