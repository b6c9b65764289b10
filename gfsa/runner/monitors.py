"""Lightning's best-checkpoint and early-stopping callbacks for metrics that not every validation scores.

ASR decodes WER only every ``task.decode_every`` epochs (SpeechBrain's valid_search_interval): Lightning's
callbacks would fail on the epochs between. These two act on the validations that scored their metric and
pass over the others; metric names are checked before training (gfsa.runner.selection), so a typo still
stops the run.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps its best over the validations that scored ``monitor``."""

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if self.monitor in monitor_candidates:
            super()._save_topk_checkpoint(trainer, monitor_candidates)


class ScoredEarlyStopping(EarlyStopping):
    """EarlyStopping whose patience counts the validations that scored ``monitor``."""

    def _validate_condition_metric(self, logs) -> bool:
        return self.monitor in logs
