"""Results are never lost or wrong: diverged runs, shared results dirs, the same config twice at once,
broken checkpoints and records, file modes, and the one-line error contract — with real processes,
real signals and real filesystems (a tmpfs in a private mount namespace stands for a full disk)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
from conftest import FAST, PYTHON, REPO, compose
from omegaconf import OmegaConf

from gfsa.runner import results as R
from gfsa.runner.config import normalise
from gfsa.runner.lock import LOCK, RunLock, RunLocked, read_holder
from gfsa.runner.train import run
from gfsa.utils.errors import ConfigError

DIGITS = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
# One epoch of single-image steps (~10 s on this CPU): long enough to signal a run in the middle of it.
LONG_EPOCH = ["trainer.limit_train_batches=1.0", "task.batch_size=1", "trainer.max_epochs=1"]
GFSA_EXE = str(Path(sys.executable).parent / "gfsa")


def _env(**extra) -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **extra}


def cli(*args, timeout=300, prefix=(), **popen):
    """``python run.py ARGS`` as a user types it."""
    return subprocess.run(
        [*prefix, PYTHON, "run.py", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **popen,
    )


def error_lines(out) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error: ")]


def one_line_error(out, code: int = 2) -> str:
    """The contract: exit ``code``, one ``error:`` line, no traceback."""
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = error_lines(out)
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


def strict_json(path: Path) -> dict:
    """Parse as a strict parser would: a bare NaN/Infinity is an error."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def run_dir_of(overrides: list[str], results: Path) -> Path:
    return R.run_dir(normalise(OmegaConf.to_container(compose(overrides, results), resolve=True)))


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``proc`` has created ``path`` (e.g. its run dir's lock: it is about to train)."""
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------------
# 1. diverged runs


def test_a_gfsa_run_that_diverges_is_recorded_as_diverged_and_never_compared(tmp_path):
    """A healthy baseline against a diverging GFSA run: no improvement % anywhere, exit 4, strict JSON."""
    out = cli(*FAST, *DIGITS, "gfsa.layers=all", "gfsa.w0=1e30", f"paths.results_dir={tmp_path}")
    line = one_line_error(out, code=4)
    assert "diverged at epoch 0, step" in line and "train/loss = nan" in line and "not compared" in line
    assert "Δ %" not in out.stdout and "improvement" not in out.stdout.lower()
    records = {r["variant"]: (p, r) for p, r in R.iter_records(tmp_path)}
    base_path, base = records["baseline"]
    path, rec = records["gfsa"]
    assert base["status"] == "finished"
    assert rec["status"] == "diverged" and rec["diverged"]["step"] >= 1 and rec["comparison"] is None
    strict_json(path), strict_json(base_path)
    assert not (Path(rec["run_dir"]) / "checkpoints" / "last.ckpt").exists()  # it stopped in epoch 0

    again = cli(*FAST, *DIGITS, "gfsa.layers=all", "gfsa.w0=1e30", f"paths.results_dir={tmp_path}")
    assert again.returncode == 4 and "already diverged" in again.stdout  # never trained again, still an error

    from gfsa.ops import report as rp

    collected = rp.collect(rp.local_records([tmp_path]))
    assert [r.record["variant"] for r in collected.runs] == ["baseline"]
    assert any("diverged at step" in why for _, why in collected.skipped)


def test_both_runs_diverge(tmp_path):
    out = cli(*FAST, *DIGITS, "optim.lr=1e30", f"paths.results_dir={tmp_path}")
    line = one_line_error(out, code=4)
    assert "diverged" in line
    assert "warning: the baseline" in out.stderr and "no improvement % for this run" in out.stderr
    statuses = sorted(r["status"] for _, r in R.iter_records(tmp_path))
    assert statuses == ["diverged", "diverged"]
    for path, rec in R.iter_records(tmp_path):
        strict_json(path)
        assert rec.get("comparison") is None


def test_non_finite_values_are_null_with_a_flag(tmp_path):
    record = {"schema": R.SCHEMA, "metrics": {"loss": {"value": float("nan")}}, "history": [1.0, float("inf")]}
    R.write_record(tmp_path, record)
    data = strict_json(tmp_path / R.RECORD)
    assert data["metrics"]["loss"]["value"] is None and data["history"] == [1.0, None]
    assert data["non_finite"] == ["metrics.loss.value", "history[1]"]


def test_pairing_never_involves_a_run_that_did_not_finish():
    base = {"status": "finished", "primary_metric": "acc", "metrics": {"acc": {"value": 0.9, "direction": "up"}}}
    bad = {**base, "status": "diverged", "diverged": {"step": 3, "what": "train/loss = nan"}}
    assert R.pair(bad, base)["improvement_pct"] is None
    assert "this run diverged at step 3" in R.pair(bad, base)["not_compared"]
    assert "the baseline diverged" in R.pair(base, bad)["not_compared"]
    assert R.pair({**base, "status": "running"}, base)["improvement_pct"] is None
    assert R.pair(base, base)["improvement_pct"] == 0.0


# --------------------------------------------------------------------------------------------------
# 2. + 3. shared results dirs and the same config twice at once


def test_ctrl_c_in_a_shared_fresh_results_dir_loses_no_other_run(tmp_path):
    """Run A starts in a fresh results dir, run B finishes there, A gets Ctrl-C in epoch 0: B's record,
    checkpoint and W&B run stay (A used to remove the results dir it had created)."""
    root = tmp_path / "fresh"
    a_args = [*FAST, *LONG_EPOCH, "gfsa.layers=none", "logger=wandb", f"paths.results_dir={root}"]
    a = subprocess.Popen(
        [PYTHON, "run.py", *a_args], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    a_dir = run_dir_of(a_args[:-1], root)
    _wait_for(a_dir / LOCK, a)
    b = run(compose([*FAST, *DIGITS, "gfsa.layers=none", "seed=1", "logger=wandb"], root))
    b_dir = Path(b["run_dir"])
    a.send_signal(signal.SIGINT)
    _, err = a.communicate(timeout=120)
    assert a.returncode == 130, err[-2000:]
    assert R.load_record(b_dir)["status"] == "finished"
    assert (b_dir / "checkpoints" / "last.ckpt").is_file() and list(b_dir.glob("wandb/offline-run-*"))
    assert (a_dir / "checkpoints" / "last.ckpt").is_file()  # A stopped at a step boundary with a checkpoint


class FailAt(L.Callback):
    """An error in the middle of epoch 0, before any checkpoint."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            raise RuntimeError("boom")


def test_a_run_that_fails_before_its_first_checkpoint_removes_only_its_own_directory(tmp_path):
    other = run(compose([*FAST, "gfsa.layers=none", "seed=1"], tmp_path))
    cfg = compose([*FAST, *DIGITS, "gfsa.layers=none", "logger=csv"], tmp_path)
    rdir = run_dir_of([*FAST, *DIGITS, "gfsa.layers=none", "logger=csv"], tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg, callbacks=(FailAt(),))
    assert not rdir.exists()  # its csv log, lock and empty checkpoint folder are gone
    assert rdir.parent.is_dir() and R.load_record(other["run_dir"])["status"] == "finished"

    (rdir / "notes").mkdir(parents=True)  # something that is not the run's own: the directory stays as it is
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg, callbacks=(FailAt(),))
    names = {p.name for p in rdir.iterdir()}
    assert "notes" in names and LOCK not in names


def test_a_second_process_waits_for_the_run_dir_or_names_its_holder(tmp_path):
    """While one process trains a config, an identical one waits (then trains it, once), or with
    run.lock_timeout=0 stops at once with one line naming the holder."""
    args = [*FAST, *DIGITS, "gfsa.layers=none", "logger=csv", f"paths.results_dir={tmp_path}"]
    rdir = run_dir_of(args[:-1], tmp_path)
    holder = RunLock(rdir).acquire()  # the first process, caught while training
    try:
        waiter = subprocess.Popen(
            [PYTHON, "run.py", *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(15)
        assert waiter.poll() is None, waiter.communicate()[1][-2000:]  # still waiting
        assert not (rdir / R.RECORD).exists()
        refused = cli(*args, "run.lock_timeout=0")
        line = one_line_error(refused)
        assert f"{rdir} is being trained by pid {os.getpid()} on {socket.gethostname()}" in line
    finally:
        holder.release()
    _, err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err[-2000:]
    assert f"waiting for pid {os.getpid()}" in err
    assert R.load_record(rdir)["status"] == "finished"
    assert not list(rdir.glob("checkpoints/*.tmp")) and not (rdir / LOCK).exists()


def test_two_gfsa_variants_started_together_train_their_baseline_once(tmp_path):
    common = [*FAST, *DIGITS, "logger=wandb", f"paths.results_dir={tmp_path}"]
    procs = [
        subprocess.Popen(
            [PYTHON, "run.py", *common, f"gfsa.layers={layers}"],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for layers in ("all", "selected")
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    base_dir = run_dir_of([*common[:-1], "gfsa.layers=none"], tmp_path)
    assert sum("already finished" in o[0] for o in outs) == 1  # the second found the first's baseline
    assert len(list(base_dir.glob("wandb/offline-run-*"))) == 1  # one W&B run, one history
    variants = sorted(r["variant"] for _, r in R.iter_records(tmp_path))
    assert variants == ["baseline", "gfsa", "gfsa"]


def test_a_dead_holder_on_this_host_releases_the_lock_at_once(tmp_path):
    code = f"from gfsa.runner.lock import RunLock; RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); input()"
    holder = subprocess.Popen([PYTHON, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
        RunLock(tmp_path).acquire(timeout=0)
    holder.kill()
    holder.wait()
    started = time.monotonic()
    lock = RunLock(tmp_path).acquire(timeout=5)
    assert time.monotonic() - started < 2 and read_holder(tmp_path / LOCK).pid == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_a_holder_on_another_host_is_stale_once_its_heartbeat_stops(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"host": "node-that-died", "pid": 1, "started": "x", "token": "t"}))
    with pytest.raises(RunLocked, match="pid 1 on node-that-died"):
        RunLock(tmp_path, stale_after=30).acquire(timeout=0.5, poll=0.1)
    lock = RunLock(tmp_path, stale_after=1).acquire(timeout=10, poll=0.1)
    assert lock.holds()
    lock.release()


def test_a_live_heartbeat_keeps_the_lock(tmp_path):
    holder = RunLock(tmp_path, heartbeat=0.2).acquire()
    try:
        with pytest.raises(RunLocked):  # another host would judge it by the heartbeat: it keeps beating
            waiter = RunLock(tmp_path, stale_after=1)
            waiter.acquire(timeout=3, poll=0.1)
    finally:
        holder.release()


# --------------------------------------------------------------------------------------------------
# 4. broken checkpoints


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A finished one-epoch GFSA run (its last.ckpt is a real checkpoint of the model), and the overrides
    of the same model trained for two epochs."""
    root = tmp_path_factory.mktemp("one_epoch")
    args = [*FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"]
    cfg = compose([*args, "trainer.max_epochs=1"], root)
    rec = run(cfg)  # one epoch, finished: its last.ckpt is a valid checkpoint of this model
    ckpt = Path(rec["run_dir"]) / "checkpoints" / "last.ckpt"
    return root, args, ckpt


@pytest.mark.parametrize("kind", ["truncated", "empty", "foreign"])
def test_a_broken_checkpoint_is_one_line_then_restart_trains(kind, one_epoch, tmp_path):
    _, args, good = one_epoch
    rdir = run_dir_of(args, tmp_path)
    ckpt = rdir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    if kind == "truncated":
        ckpt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        ckpt.write_bytes(b"")
    else:  # a real Lightning checkpoint of another model (the baseline's: no GFSA coefficients)
        other = run(compose([*FAST, "gfsa.layers=none", "trainer.limit_train_batches=1"], tmp_path / "other"))
        shutil.copy(Path(other["run_dir"]) / "checkpoints" / "last.ckpt", ckpt)
    out = cli(*args, "with_baseline=false", f"paths.results_dir={tmp_path}")
    line = one_line_error(out)
    assert str(ckpt) in line and "resume=restart" in line
    assert {"truncated": "truncated or not a checkpoint", "empty": "an empty file"}.get(kind, "another model") in line
    ok = cli(*args, "with_baseline=false", "resume=restart", f"paths.results_dir={tmp_path}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert R.load_record(rdir)["status"] == "finished"


def test_gfsa_analyze_names_a_broken_checkpoint(one_epoch, tmp_path):
    *_, good = one_epoch
    rdir = tmp_path / "copy"
    shutil.copytree(good.parent.parent, rdir)
    (rdir / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint at all")
    out = subprocess.run([GFSA_EXE, "analyze", str(rdir)], capture_output=True, text=True, env=_env(), check=False)
    line = one_line_error(out)
    assert "last.ckpt" in line and "truncated or not a checkpoint" in line


# --------------------------------------------------------------------------------------------------
# 5. file modes


def test_records_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        rec = run(compose([*FAST, "gfsa.layers=none"], tmp_path))
    finally:
        os.umask(old)
    rdir = Path(rec["run_dir"])
    for path in (rdir / R.RECORD, rdir / "checkpoints" / "last.ckpt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_report_names_permission_denied(tmp_path):
    """A record another user cannot read (what mkstemp's 0600 used to make) is skipped as such."""
    shared = Path(tempfile.mkdtemp(prefix="gfsa-shared-", dir="/tmp"))  # a folder every user can reach
    shared.chmod(0o777)
    request_cleanup = shutil.rmtree
    rec = run(compose([*FAST, "gfsa.layers=none"], shared / "results"))
    (Path(rec["run_dir"]) / R.RECORD).chmod(0o600)
    out_dir = shared / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    as_other_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    out = subprocess.run(
        [*as_other_user, GFSA_EXE, "report", str(shared / "results"), "--out", str(out_dir / "report")],
        capture_output=True,
        text=True,
        env=_env(HOME=str(out_dir), XDG_CACHE_HOME=str(out_dir)),
        check=False,
    )
    request_cleanup(shared, ignore_errors=True)
    assert "permission denied" in out.stdout + out.stderr, out.stdout + out.stderr


# --------------------------------------------------------------------------------------------------
# 6. + 7. the one-line contract and input read as something else


@pytest.mark.parametrize(
    "args, message",
    [
        (["task.batch_size=0"], "task.batch_size=0: expected a positive integer >= 1"),
        (["optim.lr=-1"], "optim.lr=-1: must be > 0"),
        (["seed=abc"], "seed='abc': expected an integer"),
        (["trainer.accelerator=gpu"], "trainer.accelerator=gpu but this machine has no usable GPU"),
        (["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0 turns validation off"),
        (["gfsa.layers="], "gfsa.layers='': empty (the baseline is gfsa.layers=none)"),
        (["with_baseline=maybe"], "with_baseline='maybe': choose auto | true | false"),
        (["gfsa.wK=abc"], "gfsa.wK='abc': expected a finite number"),
        (["+trainer.gradient_clip_algorithm=sideways"], "trainer options rejected by Lightning"),
        (["trainer.strategy=ddp"], "is added with +trainer.strategy=…"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, args, message):
    out = cli(*FAST, *args, f"paths.results_dir={tmp_path / 'r'}")
    assert message in one_line_error(out)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*"))


def _in_namespace(script: str) -> list[str]:
    """Run in a private mount namespace (root inside, any user outside): mounts there touch nothing else."""
    return ["unshare", "-Urm", "sh", "-ec", script, "sh"]


@pytest.fixture(scope="module")
def namespaces():
    probe = subprocess.run(_in_namespace("mount -t tmpfs tmpfs /mnt"), capture_output=True, check=False)
    if probe.returncode:
        pytest.fail(f"user namespaces with tmpfs mounts are needed for the filesystem tests: {probe.stderr!r}")


def test_a_read_only_results_dir(tmp_path, namespaces):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = cli(
        *FAST,
        f"paths.results_dir={ro / 'results'}",
        prefix=_in_namespace(f'mount -t tmpfs tmpfs {ro} && mount -o remount,ro {ro} && exec "$@"'),
    )
    line = one_line_error(out)
    assert f"cannot write to paths.results_dir={ro / 'results'}" in line


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, namespaces):
    """A 6 MB disk holds the first epoch's checkpoints (best.ckpt and last.ckpt, ~2.4 MB each) but not a
    third beside them: one line, the first epoch's checkpoint kept to resume from, no partial file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f'mount -t tmpfs -o size=6m tmpfs {disk}; code=0; "$@" || code=$?; find {disk} >&2; exit $code'
    args = [*FAST, "trainer.max_epochs=2", "gfsa.layers=none", f"paths.results_dir={disk}"]
    out = cli(*args, prefix=_in_namespace(script))
    line = one_line_error(out)
    assert "no space left on the device while writing" in line and "run the same command again" in line
    listing = out.stderr.split(line)[-1].split()
    assert any(p.endswith("checkpoints/last.ckpt") for p in listing), listing
    assert not any(p.endswith(".tmp") for p in listing), listing


def test_report_into_an_unwritable_folder(tmp_path, namespaces):
    rec = run(compose([*FAST, "gfsa.layers=none"], tmp_path / "results"))
    assert rec["status"] == "finished"
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f'mount -t tmpfs tmpfs {ro} && mount -o remount,ro {ro} && exec "$@"'
    out = subprocess.run(
        [*_in_namespace(script), GFSA_EXE, "report", str(tmp_path / "results"), "--out", str(ro / "report")],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    line = one_line_error(out)
    assert f"cannot write the report to {ro / 'report'}" in line and "--out" in line


def test_spellings_of_one_value_name_one_run(tmp_path):
    def rdir(*args):
        return run_dir_of([*FAST, *args], tmp_path)

    assert rdir("gfsa.wK='0.5'") == rdir("gfsa.wK=0.5")
    assert rdir("gfsa.K='3'") == rdir("gfsa.K=3") == rdir("gfsa.K=3.0")
    assert rdir("gfsa.layers=-1") == rdir("gfsa.layers=[-1]") == rdir("gfsa.layers='[-1]'")
    assert rdir("gfsa.layers=-1").name.startswith("gfsa-L-1-K3-")
    assert rdir("seed='1'") == rdir("seed=1")
    assert rdir("with_baseline=false") == rdir("with_baseline=true")  # not part of what is computed
    with pytest.raises(ConfigError, match="choose auto | true | false"):
        rdir("with_baseline=maybe")


# --------------------------------------------------------------------------------------------------
# 8. identity


def test_a_moved_results_dir_names_its_new_place(tmp_path):
    old = tmp_path / "old"
    rec = run(compose([*FAST, "gfsa.layers=none"], old))
    new = tmp_path / "new"
    shutil.move(old, new)
    out = cli(*FAST, "gfsa.layers=none", f"paths.results_dir={new}")
    assert out.returncode == 0, out.stderr[-2000:]
    moved = Path(str(rec["run_dir"]).replace(str(old), str(new)))
    assert f"already finished: {moved}" in out.stdout and str(old) not in out.stdout
    again = R.load_record(moved)
    assert again["run_dir"] == str(moved) and again["recorded_run_dir"] == rec["run_dir"]


def test_a_changed_data_dir_is_noticed(tmp_path):
    from test_vision import CLASSES

    from gfsa.zoo.demo.vision import write_imagefolder

    data = write_imagefolder(tmp_path / "data", CLASSES, n_train=2, n_val=1)
    args = [
        *FAST,
        "task=imagenet",
        "task.image_size=32",
        "task.batch_size=2",
        "backbone=deit_t",
        "+backbone.kwargs.patch_size=8",
        "+backbone.kwargs.embed_dim=32",
        "+backbone.kwargs.num_heads=2",
        "backbone.depth=2",
        "gfsa.layers=none",
        "trainer.accelerator=cpu",
    ]
    rec = run(compose([*args, f"task.data_dir={data}"], tmp_path / "r"))
    fp = rec["data"]["fingerprint"]
    assert fp["files"] == len(CLASSES) * 3 and fp["path"] == str(data.resolve())

    elsewhere = shutil.copytree(data, tmp_path / "copy")
    out = cli(*args, f"task.data_dir={elsewhere}", f"paths.results_dir={tmp_path / 'r'}")
    assert out.returncode == 0 and "already finished" in out.stdout
    assert f"this run was trained on task.data_dir={data}" in out.stderr
    assert "task.data_dir is not part of a run's identity" in out.stderr

    write_imagefolder(data, ["n09999999"], n_train=1, n_val=1)  # the same folder, new contents
    out = cli(*args, f"task.data_dir={data}", f"paths.results_dir={tmp_path / 'r'}")
    assert f"task.data_dir={data} has changed since this run trained on it" in out.stderr


# --------------------------------------------------------------------------------------------------
# 9. recovery


def test_ctrl_c_checkpoints_mid_epoch_and_resumes_to_the_same_metrics(tmp_path):
    args = [*FAST, *LONG_EPOCH, "gfsa.layers=none"]
    reference = run(compose(args, tmp_path / "reference"))
    root = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [PYTHON, "run.py", *args, f"paths.results_dir={root}", "trainer.log_every_n_steps=1"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rdir = run_dir_of(args, root)
    _wait_for(rdir / LOCK, proc)
    time.sleep(4)  # into the epoch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped at epoch 0, step" in err and "(Ctrl-C); run the same command to resume" in err
    import torch

    ckpt = torch.load(rdir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    consumed = next(v["consumed"] for k, v in ckpt["callbacks"].items() if k.startswith("Preemption"))
    assert 0 < consumed < reference["steps"]  # mid-epoch, not at its end
    resumed = run(compose(args, root))
    assert resumed["metrics"] == reference["metrics"] and resumed["steps"] == reference["steps"]
    assert resumed["timing"]["attempts"] == 2
    assert resumed["timing"]["steps_timed"] + 3 >= reference["timing"]["steps_timed"]  # both attempts' steps


def test_a_corrupt_record_is_moved_aside_with_a_word(tmp_path):
    rec = run(compose([*FAST, "gfsa.layers=none"], tmp_path))
    path = Path(rec["run_dir"]) / R.RECORD
    path.write_text('{"schema": 1, "status": "fini')
    out = cli(*FAST, "gfsa.layers=none", f"paths.results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"warning: {path} is not JSON" in out.stderr and "moved to result.json.unreadable-" in out.stderr
    assert R.load_record(path)["status"] == "finished"
    assert len(list(path.parent.glob("result.json.unreadable-*"))) == 1


def test_sweep_status_counts_diverged_cells_apart(tmp_path):
    from gfsa.ops import sweep

    cells = []
    for i, status in enumerate(("finished", "diverged")):
        rdir = tmp_path / "results" / f"cell{i}"
        R.write_record(rdir, {"schema": R.SCHEMA, "status": status, "run_dir": str(rdir)})
        cells.append({"index": i, "label": status, "overrides": [], "run_dir": str(rdir)})
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / sweep.MANIFEST).write_text(json.dumps({"cells": cells, "submissions": []}))
    states = [row["state"] for row in sweep.status(sweep_dir)]
    assert states == ["done", "diverged"]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("seed", 1.5, "seed=1.5: expected an integer"),
        ("gfsa.K", 0.5, "K must be a number >= 1"),
        ("gfsa.wK", float("nan"), "gfsa.wK=nan: expected a finite number"),
        ("gfsa.learn", ["w2"], "unknown ['w2']"),
        ("gfsa.impl", "fast", "gfsa.impl='fast': choose one of auto, fused, materialized"),
        ("optim.name", "lion", "optim.name='lion': choose one of adamw, adam, sgd"),
        ("optim.schedule", "cosin", "optim.schedule='cosin': choose one of"),
        ("optim.betas", [0.9], "optim.betas=[0.9]: expected two numbers"),
        ("trainer.devices", 0, "trainer.devices=0: expected a device count"),
        ("trainer.accelerator", "npu", "trainer.accelerator='npu': choose one of"),
        ("run.lock_timeout", -1, "run.lock_timeout=-1: must be >= 0"),
        ("resume", "sometimes", "resume='sometimes': choose one of auto, restart"),
    ],
)
def test_each_config_value_is_checked_where_it_enters(key, value, message):
    cfg = OmegaConf.to_container(compose(FAST), resolve=True)
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError) as err:
        normalise(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_normalise_is_idempotent_and_keeps_the_yaml_types():
    cfg = OmegaConf.to_container(compose(["preset=imagenet/deit_s"]), resolve=True)
    once = normalise(cfg)
    assert normalise(once) == once
    assert once["optim"]["lr_batch_base"] == 512 and isinstance(once["optim"]["lr_batch_base"], int)
    assert R.run_dir(once) == R.run_dir(normalise(cfg))


def test_normalising_keeps_the_run_directories_of_every_preset():
    """Results dirs written before normalisation existed still name the same runs."""
    from conftest import CONF_DIR

    from gfsa.runner.console import group_options

    for preset in group_options(CONF_DIR, "preset"):
        for layers in ("none", "all", "selected"):
            cfg = OmegaConf.to_container(compose([f"preset={preset}", f"gfsa.layers={layers}"]), resolve=True)
            assert R.run_dir(normalise(cfg)) == R.run_dir(cfg), (preset, layers)
