"""An exponential moving average of the weights (timm's ModelEmaV3, DeiT's ``--model-ema``), kept
next to the trained model and evaluated on the same validation batches as ``val/ema_<metric>`` (every
evaluation split: ``val/ema_test_<metric>``).

Why timm's EMA and not Lightning's ``EMAWeightAveraging`` (2.6): Lightning's swaps the averaged weights
into the module for the whole validation epoch and copies them over the trained weights when fit ends, so
only the EMA is ever validated, ``trainer.test`` after fit tests the EMA and the raw weights are gone;
DeiT (and timm's train.py) validate the raw model, which is what the paper's tables report, and keep the
EMA beside it. Lightning's average also starts as a copy taken after the first optimizer step, DeiT's
before it (at decay 0.99996 the two stay apart for a long time). Both update after every optimizer step
(not every micro-batch) with ``ema = decay·ema + (1−decay)·w``."""

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
        self._ready(pl_module)

    def on_validation_start(self, trainer, pl_module):
        # A validate-only trainer (gfsa eval) has no fit start: the EMA comes from the checkpoint's state.
        if self.ema is None or self._pending is not None:
            self._ready(pl_module)

    def _ready(self, pl_module):
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
