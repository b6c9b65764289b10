"""An exponential moving average of the weights (timm's ModelEmaV3, DeiT's ``--model-ema``), kept
next to the trained model and evaluated on the same validation batches as ``val/ema_<metric>`` (every
evaluation split: ``val/ema_test_<metric>``)."""

from __future__ import annotations

import lightning as L
import torch
from timm.utils import ModelEmaV3

from gfsa.zoo.recipes.splits import SplitMetrics
from gfsa.zoo.tasks.base import eval_splits


class ModelEMA(L.Callback):
    """``optim.ema_decay``: updated after every optimizer step (not every micro-batch); its state is
    part of the checkpoint, so a resumed run continues the same average."""

    def __init__(self, decay: float, task):
        self.decay = float(decay)
        self.task = task
        self.ema: ModelEmaV3 | None = None
        self._pending: dict | None = None
        self._step = -1

    def on_fit_start(self, trainer, pl_module):
        if self.ema is None:
            self.ema = ModelEmaV3(pl_module.model, decay=self.decay)
        if self._pending is not None:
            self.ema.load_state_dict(self._pending)
            self._pending = None
        self.metrics = SplitMetrics(self.task.metrics(), eval_splits(self.task), prefix="val/ema_").to(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            self.ema.update(pl_module.model, step=trainer.global_step)

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        inputs = dict(batch)
        labels = inputs.pop("labels")
        with trainer.precision_plugin.forward_context():
            logits = self.ema.module(**inputs)
        self.metrics.update(dataloader_idx, *self.task.metric_inputs(logits, labels))

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log_dict(self.metrics.compute_and_reset())

    def state_dict(self):
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    def load_state_dict(self, state):
        self._pending = state.get("ema")
