"""The measurements during training: :class:`AnalysisCallback` (``callbacks=analysis``,
``conf/callbacks/analysis.yaml``) logs them with the learned coefficients to every logger.

This module imports Lightning; :mod:`gfsa.ops.analysis` loads it only when ``AnalysisCallback`` is asked for.
"""

from __future__ import annotations

import lightning as L

from gfsa.ops.analysis.capture import Capture, coefficients


class AnalysisCallback(L.Callback):
    """Every ``every_n_epochs`` validation epochs, measure the first ``batches`` validation batches
    (the trainer's own forward passes: no extra compute but the measurements, no RNG use) and log
    them, with the learned coefficients, to every logger (W&B also gets the response curves)."""

    def __init__(self, every_n_epochs: int = 1, batches: int = 2):
        self.every_n_epochs = int(every_n_epochs)
        self.batches = int(batches)
        self.capture: Capture | None = None

    def _due(self, trainer) -> bool:
        return (
            self.every_n_epochs > 0
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer, pl_module):
        if self._due(trainer):
            from gfsa.zoo.backbones import patch_target

            self.capture = Capture(patch_target(pl_module.model)).attach()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.capture is not None:
            self.capture.batch(batch, record=dataloader_idx == 0 and batch_idx < self.batches)

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.capture is None:
            return
        capture, self.capture = self.capture, None
        capture.detach()
        if trainer.is_global_zero:
            log_summary(trainer, capture.summary(), coefficients(pl_module.model))

    def on_exception(self, trainer, pl_module, exception):
        if self.capture is not None:
            self.capture.detach()
            self.capture = None


def scalars(summary: dict, coeffs: dict) -> dict:
    """Flat ``analysis/…`` metrics of one measurement: per-layer values and per-head coefficients."""
    out = {}
    for row in summary["layers"]:
        for key in ("cosine_similarity", "hf_energy_ratio", "dc_gain", "hf_gain"):
            if key in row:
                out[f"analysis/{key}/layer_{row['layer']}"] = row[key]
    for name, values in coeffs.items():
        for coef, per_head in values.items():
            if coef in ("wK", "omega", "w0") and (coef != "w0" or len(set(per_head)) > 1 or per_head[0] != 0):
                for h, v in enumerate(per_head):
                    out[f"analysis/{coef}/{name}/head_{h}"] = v
    return out


def log_summary(trainer, summary: dict, coeffs: dict) -> None:
    metrics = scalars(summary, coeffs)
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and summary["normalized_frequency"]:
            import wandb

            curves = [r["frequency_response"] for r in summary["layers"] if "frequency_response" in r]
            plot = wandb.plot.line_series(
                xs=summary["normalized_frequency"],
                ys=curves,
                keys=[f"layer {r['layer']}" for r in summary["layers"] if "frequency_response" in r],
                title="frequency response |λ_k| of the attention per layer",
                xname="normalized frequency k/n",
            )
            logger.experiment.log(
                {**metrics, "analysis/frequency_response": plot, "trainer/global_step": trainer.global_step}
            )
        else:
            logger.log_metrics(metrics, step=trainer.global_step)
