"""Causal-LM recipe: next-token cross-entropy. Validation hands the summed loss and the token
count to the task's metrics, so perplexity is exp(total loss / total tokens) across devices."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gfsa.zoo.recipes.classification import ClassificationRecipe


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of predicting token t+1 from tokens ≤ t, and how many tokens were predicted
    (labels of -100 are skipped, as in transformers)."""
    target = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target, ignore_index=-100, reduction="sum"
    )
    return total, (target != -100).sum()


class CausalLMRecipe(ClassificationRecipe):
    """The classification recipe with a token-level loss (one cross-entropy per step)."""

    def _step(self, batch):
        batch = dict(batch)
        labels = batch.pop("labels")
        total, count = token_nll(self.model(**batch), labels)
        return total, count, total / count.clamp(min=1)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        total, count, _ = self._step(batch)
        self.split_metrics.update(dataloader_idx, total, count)
