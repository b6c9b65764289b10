"""Lightning's best-checkpoint and early-stopping callbacks for metrics that not every validation scores.

ASR decodes WER only every ``task.decode_every`` epochs (SpeechBrain's valid_search_interval). Lightning
keeps every metric ever logged in ``callback_metrics``, so its callbacks would fail before the first
score and then judge the same stale score again on the epochs between. These two act on the validations
that scored their metric (a recipe names them in ``validation_keys``, as for the record's history) and
pass over the others. Metric names are checked before training (gfsa.runner.selection), so a typo still
stops the run; a metric that no validation scored is said once at the end of training.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from gfsa.zoo.recipes.common import validation_scored


def scored_now(monitor: str, trainer, metrics) -> bool:
    """Whether the validation that just ended scored ``monitor`` (``val/<name>``)."""
    return monitor in metrics and validation_scored(trainer.lightning_module, monitor.removeprefix("val/"))


def _never_scored(callback, trainer, scored: bool, what: str) -> None:
    if not scored and trainer.fit_loop.epoch_loop.val_loop._has_run:
        rank_zero_warn(f"{callback.monitor} was scored by no validation of this run: {what}")


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps its best over the validations that scored ``monitor``."""

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if scored_now(self.monitor, trainer, monitor_candidates):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        # best_model_score rides in last.ckpt: a resumed attempt counts the scores of the ones before it
        _never_scored(self, trainer, self.best_model_score is not None, "no best.ckpt was written")


class ScoredEarlyStopping(EarlyStopping):
    """EarlyStopping whose patience counts the validations that scored ``monitor``."""

    def _run_early_stopping_check(self, trainer) -> None:
        if scored_now(self.monitor, trainer, trainer.callback_metrics):
            super()._run_early_stopping_check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # best_score starts at ±inf and rides in last.ckpt; any scored validation makes it finite (a
        # non-finite metric is the divergence guard's, which stops the run first)
        _never_scored(self, trainer, bool(self.best_score.isfinite()), "early stopping never judged it")
