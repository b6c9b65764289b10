"""ASR recipe: joint CTC + attention training (SpecAugment from the task), decoding and WER on every
evaluation split (dev and test sets) in one validation pass. Optimizer, schedule and callbacks are the
classification recipe's."""

from __future__ import annotations

from gfsa.zoo.recipes.classification import ClassificationRecipe


class ASRRecipe(ClassificationRecipe):
    """Batches: ``features`` (B, T, mels), ``feature_mask``, ``tokens`` (B, L, 0-padded), ``texts``."""

    def __init__(self, model, task, optim: dict):
        super().__init__(model, task, optim)
        self.decoding = {
            "beam_size": int(task.cfg["beam_size"]),
            "ctc_weight": float(task.cfg["decode_ctc_weight"]),
            "max_len_ratio": float(task.cfg["max_decode_ratio"]),
        }

    def training_step(self, batch, batch_idx):
        batch = self.task.train_batch(batch)
        out = self.model(batch["features"], batch["feature_mask"], batch["tokens"])
        self.log("train/loss", out["loss"], prog_bar=True)
        self.log_dict({"train/ctc_loss": out["ctc_loss"], "train/att_loss": out["att_loss"]})
        return out["loss"]

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        out = self.model(batch["features"], batch["feature_mask"], batch["tokens"])
        name = self.split_metrics.loss_name(dataloader_idx)
        self.log(name, out["loss"], sync_dist=True, batch_size=len(batch["texts"]), add_dataloader_idx=False)
        hyps = self.model.decode(batch["features"], batch["feature_mask"], **self.decoding)
        self.split_metrics.update(dataloader_idx, [self.task.tokenizer.decode(h) for h in hyps], batch["texts"])
