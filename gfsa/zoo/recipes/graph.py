"""Graph recipe: the classification recipe, plus FLAG adversarial augmentation when ``task.flag.enabled``.

FLAG (Kong et al. 2022) as the Graphormer code's ``flag_bounded``: a perturbation δ of the node embeddings,
uniform in ±mag/√hidden (±step_size when mag is 0), takes ``m − 1`` ascent steps
δ ← δ + step_size·sign(∂loss/∂δ), each projected back to per-node norm ≤ mag; the loss of each of the m
passes, divided by m, is back-propagated into the weights. Here the m losses are summed and returned,
which gives the same weight gradients as the official m backward calls, under Lightning's automatic
optimization (one optimizer step, gradient clipping and AMP as configured).
"""

from __future__ import annotations

import math

import torch

from gfsa.utils.errors import ConfigError
from gfsa.zoo.recipes.classification import ClassificationRecipe


def flag_loss(model, inputs: dict, labels, loss_fn, m: int, step_size: float, mag: float) -> torch.Tensor:
    """Σ over the m FLAG passes of ``loss_fn(model(**inputs, perturb=δ_i), labels) / m``."""
    shape = model.perturbation_shape(**inputs)
    device = next(model.parameters()).device
    noise = torch.rand(shape, device=device) * 2 - 1
    perturb = noise * (mag / math.sqrt(shape[-1]) if mag > 0 else step_size)
    total = 0.0
    for i in range(m):
        perturb.requires_grad_()
        loss = loss_fn(model(**inputs, perturb=perturb), labels) / m
        total = total + loss
        if i == m - 1:
            break
        (grad,) = torch.autograd.grad(loss, perturb, retain_graph=True)
        perturb = perturb.detach() + step_size * torch.sign(grad.detach())
        if mag > 0:  # rows longer than mag are scaled back to norm mag
            norm = perturb.norm(dim=-1, keepdim=True)
            perturb = torch.where(norm > mag, perturb * mag / norm, perturb).detach()
    return total


class GraphRecipe(ClassificationRecipe):
    """Batches: ``{"graph": Batch, "labels": …}``; with FLAG the backbone must take ``perturb``."""

    def __init__(self, model, task, optim: dict):
        super().__init__(model, task, optim)
        self.flag = dict(task.flag)
        if self.flag["enabled"] and not callable(getattr(model, "perturbation_shape", None)):
            raise ConfigError(
                "task.flag.enabled=true perturbs the node embeddings of Graphormer: use backbone=graphormer_slim "
                "or graphormer, or set task.flag.enabled=false"
            )

    def training_step(self, batch, batch_idx):
        f = self.flag
        if not f["enabled"]:
            return super().training_step(batch, batch_idx)
        inputs = dict(self.task.train_batch(batch))
        labels = inputs.pop("labels")
        loss = flag_loss(
            self.model, inputs, labels, self.task.loss, int(f["m"]), float(f["step_size"]), float(f["mag"])
        )
        self.log("train/loss", loss, prog_bar=True)
        return loss
