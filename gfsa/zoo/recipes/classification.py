"""Classification recipe: images, sequences, sentence pairs, graphs; cross-entropy or the task's loss.

Validation scores every split in ``task.eval_splits`` (default: the one validation set) in one pass, so
tasks whose papers report test numbers at the selected epoch (code, graphs, speech) record both.
"""

from __future__ import annotations

import lightning as L

from gfsa.zoo.recipes import common
from gfsa.zoo.recipes.splits import SplitMetrics
from gfsa.zoo.tasks.base import eval_splits


class ClassificationRecipe(L.LightningModule):
    """Batches are dicts: ``labels`` plus the model's keyword inputs; the model returns logits."""

    def __init__(self, model, task, optim: dict):
        super().__init__()
        self.model = model
        self.task = task
        self.optim = optim
        self.split_metrics = SplitMetrics(task.metrics(), eval_splits(task))

    def forward(self, **inputs):
        return self.model(**inputs)

    def _step(self, batch):
        batch = dict(batch)
        labels = batch.pop("labels")
        logits = self.model(**batch)
        return logits, labels, self.task.loss(logits, labels)

    def training_step(self, batch, batch_idx):
        _, _, loss = self._step(self.task.train_batch(batch))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        logits, labels, loss = self._step(batch)
        self.split_metrics.update(dataloader_idx, *self.task.metric_inputs(logits, labels))
        name = self.split_metrics.loss_name(dataloader_idx)
        self.log(name, loss, sync_dist=True, batch_size=len(labels), add_dataloader_idx=False)

    def on_validation_epoch_end(self):
        self.log_dict(self.split_metrics.compute_and_reset(), prog_bar=True)

    def configure_optimizers(self):
        return common.configure_optimizers(self, self.model, self.optim)

    def lr_scheduler_step(self, scheduler, metric):
        common.lr_scheduler_step(self, scheduler, metric)

    def configure_callbacks(self):
        """Epoch timing for the results record; EMA weights when ``optim.ema_decay`` is set."""
        callbacks = [common.EpochTimer()]
        # ema_decay: optional, the DeiT recipe's (conf/optim/deit.yaml: null); +optim.ema_decay=… with other optims
        if self.optim.get("ema_decay"):
            from gfsa.zoo.recipes.ema import ModelEMA

            callbacks.append(ModelEMA(self.optim["ema_decay"], self.task))
        return callbacks
