"""Graph-level recipe: the classification recipe's training with the task's loss (L1 or BCE), scored on
every evaluation split (validation and test) in one validation pass."""

from __future__ import annotations

from gfsa.recipes.classification import ClassificationRecipe
from gfsa.recipes.splits import SplitMetrics


class GraphRecipe(ClassificationRecipe):
    """Batches: ``{"graph": PyG Batch, "labels": (B, targets)}``; the model maps a graph batch to (B, targets)."""

    def __init__(self, model, task, optim: dict):
        super().__init__(model, task, optim)
        del self.val_metrics
        self.split_metrics = SplitMetrics(task.metrics(), task.eval_splits)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        logits, labels, loss = self._step(batch)
        self.split_metrics.update(dataloader_idx, *self.task.metric_inputs(logits, labels))
        self.log(
            self.split_metrics.loss_name(dataloader_idx),
            loss,
            sync_dist=True,
            batch_size=len(labels),
            add_dataloader_idx=False,
        )

    def on_validation_epoch_end(self):
        self.log_dict(self.split_metrics.compute_and_reset(), prog_bar=True)
