"""One run at a time per run directory, on one machine or across a cluster's shared filesystem.

A lock file created with ``O_EXCL`` (atomic on local disks, NFSv3+, Lustre, GPFS) names its holder
(host, pid, start time); a heartbeat thread touches it. A waiting process decides that the holder is
gone by itself: on the same host when the pid no longer runs (at once), elsewhere when it has watched
the heartbeat stand still for ``stale_after`` seconds of its own clock (no clock sync between nodes
needed). A stale lock is broken under a short second lock, so two waiters never both take over.

Why not ``fcntl``/``flock``: on Lustre and BeeGFS they are node-local unless the filesystem is mounted
with global locking, so two nodes could both hold the run. Why not flufl.lock: its expiry is a lifetime
written as a future mtime (it needs synchronised clocks and a guess of the lifetime) and its ``lock()``
never asks whether a holder on this host is still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

LOCK = ".lock"
BREAK = ".lock.break"


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory."""

    host: str
    pid: int
    started: str
    token: str
    proc_start: str | None = None  # /proc/<pid>/stat start time: a reused pid is not the holder

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (since {self.started})"


class RunLocked(RuntimeError):
    """The run directory is held by another live process."""

    def __init__(self, directory: Path, holder: Holder | None):
        self.directory, self.holder = directory, holder
        who = holder.describe() if holder else "another process"
        super().__init__(
            f"{directory} is being trained by {who}: wait for it to finish (run.lock_timeout=null waits), "
            "or stop that process; the same config never trains twice at once"
        )


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


def _alive(holder: Holder) -> bool | None:
    """Whether the holder still runs: True/False on this host, None (unknown) on another."""
    if holder.host != socket.gethostname():
        return None
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    start = _proc_start(holder.pid)
    return not (holder.proc_start and start and start != holder.proc_start)


def read_holder(path: Path) -> Holder | None:
    """The holder named in a lock file, None while it is being written or if it is not one."""
    try:
        data = json.loads(path.read_text())
        return Holder(**{k: data[k] for k in ("host", "pid", "started", "token")}, proc_start=data.get("proc_start"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RunLock:
    """``with RunLock(run_dir).acquire(timeout):`` — exclusive use of ``run_dir`` by this process."""

    def __init__(self, directory: str | Path, heartbeat: float = 30.0, stale_after: float | None = None):
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self.heartbeat = heartbeat
        self.stale_after = 5 * heartbeat if stale_after is None else stale_after
        self.holder: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking it -------------------------------------------------------------------------------
    def _create(self) -> bool:
        me = Holder(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
            token=uuid.uuid4().hex,
            proc_start=_proc_start(os.getpid()),
        )
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the directory was removed by a run that failed before its first checkpoint
            self.directory.mkdir(parents=True, exist_ok=True)
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(me), f)
            f.flush()
            os.fsync(f.fileno())
        self.holder = me
        return True

    def acquire(
        self, timeout: float | None = None, on_wait: Callable[[Holder | None], None] | None = None, poll: float = 1.0
    ) -> RunLock:
        """Take the lock, waiting up to ``timeout`` seconds (None: as long as it takes; 0: not at all).
        ``on_wait(holder)`` is called once when this process has to wait. Raises RunLocked."""
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple | None = None  # (file identity, when this process first saw it unchanged)
        waited = False
        while not self._create():
            holder = read_holder(self.path)
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                continue  # released meanwhile: try again at once
            identity = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen is None or seen[0] != identity:
                seen = (identity, time.monotonic())
            alive = _alive(holder) if holder is not None else None
            if alive is False or (alive is None and time.monotonic() - seen[1] > self.stale_after):
                self._break(holder, identity)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise RunLocked(self.directory, holder)
            if not waited and on_wait is not None:
                on_wait(holder)
            waited = True
            time.sleep(poll)
        self._thread = threading.Thread(target=self._beat, name="gfsa-run-lock", daemon=True)
        self._thread.start()
        return self

    def _break(self, stale: Holder | None, identity: tuple) -> None:
        """Remove a stale lock, unless it changed since it was judged (another waiter took over)."""
        breaker = self.directory / BREAK
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            with contextlib.suppress(OSError):  # a breaker that died mid-break (it takes milliseconds)
                if time.time() - breaker.stat().st_mtime > 60:
                    breaker.unlink()
            time.sleep(0.1)
            return
        os.close(fd)
        try:
            st = os.stat(self.path)
            if (st.st_ino, st.st_mtime_ns, st.st_size) == identity and read_holder(self.path) == stale:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            breaker.unlink(missing_ok=True)

    # -- holding it ------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with contextlib.suppress(OSError):
                if self.holds():
                    os.utime(self.path)

    def holds(self) -> bool:
        return self.holder is not None and read_holder(self.path) == self.holder

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            if self.holds():
                self.path.unlink()
        self.holder = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
