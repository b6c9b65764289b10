"""Preemption-safe resume, in process: a real signal stops a run with a checkpoint, the same config
resumes from it, and the final metrics equal those of an uninterrupted run (CPU, deterministic)."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
from conftest import FAST, compose
from omegaconf import OmegaConf

from gfsa.runner import results as R
from gfsa.runner.requeue import EXIT_CODE, Stopped
from gfsa.runner.train import run

# 3 epochs of 5 steps: signals can land mid-epoch, on an epoch's last batch, or between epochs.
RESUME = [*FAST, "trainer.max_epochs=3", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2"]


class SignalAt(L.Callback):
    """Sends a real signal to this process after a given optimizer step, as Slurm would."""

    def __init__(self, step: int, sig: int):
        self.step, self.sig, self.sent = step, sig, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.sig)


def _comparable(record: dict) -> dict:
    keys = ("metrics", "best", "history", "steps", "epochs", "global_batch_size")
    return {k: record[k] for k in keys} | {"coefficients": record["gfsa"]["coefficients"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    return run(compose(RESUME, tmp_path_factory.mktemp("reference")))


@pytest.mark.parametrize(
    "step, sig, overrides",
    [
        (7, signal.SIGUSR1, []),  # mid-epoch (epoch 1, batch 2): the warning before a time limit
        (5, signal.SIGUSR2, []),  # the last batch of epoch 0: stops after its validation
        (3, signal.SIGTERM, []),  # preemption
        (4, signal.SIGUSR1, ["trainer.accumulate_grad_batches=2"]),  # waits for the optimizer step
    ],
    ids=["usr1-mid-epoch", "usr2-epoch-end", "sigterm-mid-epoch", "usr1-accumulating"],
)
def test_interrupted_run_resumes_to_the_same_metrics(tmp_path, reference, step, sig, overrides):
    cfg = compose([*RESUME, *overrides], tmp_path)
    handler = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Stopped) as stop:
        run(cfg, callbacks=(SignalAt(step, sig),))
    assert stop.value.code == EXIT_CODE and "stopped at" in str(stop.value)
    rdir = R.run_dir(OmegaConf.to_container(cfg, resolve=True))
    assert (rdir / "checkpoints" / "last.ckpt").is_file() and R.load_record(rdir) is None
    assert signal.getsignal(signal.SIGUSR1) is handler  # the run's handler lives only while it trains
    resumed = run(cfg)
    if overrides:
        expected = run(compose([*RESUME, *overrides], tmp_path / "uninterrupted"))
    else:
        expected = reference
    assert _comparable(resumed) == _comparable(expected)
    again = run(cfg)  # a finished run is never trained again
    assert again["finished_at"] == resumed["finished_at"]
