"""ASR recipe: joint CTC + attention training (speed perturbation, SpecAugment and batches from the task),
token accuracy and WER decoding on every evaluation split (dev and test sets) in one validation pass, and
the official recipes' end of training: the k best checkpoints averaged (by validation token accuracy, as
SpeechBrain ranks them) and one final evaluation with the test decoding (beam, CTC weight, LM fusion),
recorded as the run's last validation. Optimizer, schedule and callbacks are the classification recipe's."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from gfsa.utils.errors import ConfigError
from gfsa.zoo.recipes.classification import ClassificationRecipe
from gfsa.zoo.recipes.common import ValidationHistory
from gfsa.zoo.recipes.splits import SplitMetrics
from gfsa.zoo.tasks.base import eval_splits


class ASRRecipe(ClassificationRecipe):
    """Batches: ``features`` (B, T, mels), ``feature_mask``, ``tokens`` (B, L, 0-padded), ``texts``."""

    def __init__(self, model, task, optim: dict):
        super().__init__(model, task, optim)
        c = task.cfg
        self.decoding = {
            "beam_size": int(c["beam_size"]),
            "ctc_weight": float(c["decode_ctc_weight"]),
            "max_len_ratio": float(c["max_decode_ratio"]),
        }
        self.decode_every = int(c["decode_every"])
        self.accuracy = SplitMetrics(task.accuracy_metrics(), eval_splits(task))
        self.final = None
        # The fused LM is kept outside the module tree (in __dict__, not a submodule): neither trained, nor saved
        # in the ASR run's checkpoints, nor loaded back from them.
        self.__dict__["language_model"] = None
        test = task.test_decoding
        if int(c["average_checkpoints"]) > 0 or test is not None:
            self.final = FinalEvaluation(int(c["average_checkpoints"]), str(c["average_by"]), task)
        if c["lm_checkpoint"]:
            from gfsa.zoo.backbones.asr import load_language_model

            lm = load_language_model(str(c["lm_checkpoint"]), task.tokenizer.digest, task.vocab_size)
            self.__dict__["language_model"] = lm
        if test is not None:
            self.test_decoding = {
                "beam_size": int(test["beam_size"]),
                "ctc_weight": float(test["ctc_weight"]),
                "max_len_ratio": self.decoding["max_len_ratio"],
                "lm_weight": float(test["lm_weight"]),
                "temperature": float(test["temperature"]),
                "lm_temperature": float(test["lm_temperature"]),
            }
        else:
            self.test_decoding = dict(self.decoding)

    def training_step(self, batch, batch_idx):
        batch = self.task.train_batch(batch)
        out = self.model(batch["features"], batch["feature_mask"], batch["tokens"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=len(batch["texts"]))
        self.log_dict(
            {"train/ctc_loss": out["ctc_loss"], "train/att_loss": out["att_loss"]}, batch_size=len(batch["texts"])
        )
        return out["loss"]

    def decoding_epoch(self) -> bool:
        """WER on every ``task.decode_every``-th epoch and the last one (SpeechBrain: valid_search_interval)."""
        t = self.trainer
        last = t.max_epochs is not None and t.max_epochs > 0 and t.current_epoch + 1 >= t.max_epochs
        return t.sanity_checking or last or (t.current_epoch + 1) % self.decode_every == 0

    def on_validation_epoch_start(self):
        self._scored: set[int] = set()

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        decoding = self.decoding_epoch()
        if dataloader_idx > 0 and not decoding:
            return  # between decodings only the first split is scored (loss, token accuracy), as SpeechBrain
        out = self.model(batch["features"], batch["feature_mask"], batch["tokens"])
        n = len(batch["texts"])
        self._scored.add(dataloader_idx)
        self.log(
            self.split_metrics.loss_name(dataloader_idx),
            out["loss"],
            sync_dist=True,
            batch_size=n,
            add_dataloader_idx=False,
        )
        self.accuracy.update(dataloader_idx, out["acc"], out["tokens"])
        if decoding:
            hyps = self.model.decode(batch["features"], batch["feature_mask"], **self.decoding)
            self.split_metrics.update(dataloader_idx, [self.task.tokenizer.decode(h) for h in hyps], batch["texts"])

    def on_validation_epoch_end(self):
        values = {}
        for i, c in enumerate(self.accuracy.collections):  # only the splits this epoch scored
            if i in getattr(self, "_scored", ()):
                values.update(c.compute())
            c.reset()
        if self.decoding_epoch():
            values |= self.split_metrics.compute_and_reset()
        self.log_dict(values, prog_bar=True)
        losses = {self.split_metrics.loss_name(i) for i in getattr(self, "_scored", ())}
        self.validation_keys = {k[len("val/") :] for k in (*values, *losses)}  # what this epoch scored (history)

    def evaluate(self, decoding: dict) -> dict:
        """One pass over every evaluation split with ``decoding``: loss, token accuracy and WER, as validation
        logs them (``val/…`` names without the prefix), synchronised over devices."""
        trainer = self.trainer
        loss = SplitMetrics(self._loss_metrics(), eval_splits(self.task)).to(self.device)
        was_training = self.model.training
        self.model.eval()
        lm = self.language_model.to(self.device) if self.language_model is not None else None
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            loaders = trainer.val_dataloaders
            for split, loader in enumerate(loaders if isinstance(loaders, (list, tuple)) else [loaders]):
                for i, batch in enumerate(loader):
                    if i >= trainer.num_val_batches[split]:  # trainer.limit_val_batches, as validation
                        break
                    batch = trainer.strategy.batch_to_device(batch, self.device)
                    out = self.model(batch["features"], batch["feature_mask"], batch["tokens"])
                    loss.update(split, out["loss"].detach().float(), len(batch["texts"]))
                    self.accuracy.update(split, out["acc"], out["tokens"])
                    hyps = self.model.decode(batch["features"], batch["feature_mask"], lm=lm, **decoding)
                    self.split_metrics.update(split, [self.task.tokenizer.decode(h) for h in hyps], batch["texts"])
        self.model.train(was_training)
        values = loss.compute_and_reset() | self.accuracy.compute_and_reset() | self.split_metrics.compute_and_reset()
        return {k[len("val/") :]: float(v) for k, v in values.items()}

    def _loss_metrics(self):
        from torchmetrics import MeanMetric, MetricCollection

        return MetricCollection({"loss": MeanMetric()})

    def configure_callbacks(self):
        callbacks = super().configure_callbacks()
        return [*callbacks, self.final] if self.final is not None else callbacks


class FinalEvaluation(L.Callback):
    """Keeps the weights of the ``k`` best validation epochs by ``val/<metric>`` of the first split (files in
    ``<run dir>/checkpoints/average/``, listed in the checkpoint so a resumed run goes on with them); when
    training ends, loads their average (SpeechBrain's ``average_checkpoints``; the last weights when k is 0;
    saved as ``averaged.pt`` there) and evaluates every split with the test decoding. The result is appended to the validation history,
    so it is the results record's last (``metrics``) entry, marked ``final``."""

    def __init__(self, k: int, metric: str, task):
        self.k, self.metric = k, metric
        self.sign = 1 if task.directions.get(metric, "up") == "up" else -1
        self.kept: list[tuple[float, int, str]] = []  # (value, epoch, file name), best first

    def _dir(self, trainer) -> Path:
        return Path(trainer.default_root_dir) / "checkpoints" / "average"

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.k == 0:
            return
        value = trainer.callback_metrics.get(f"val/{self.metric}")
        if value is None or not math.isfinite(float(value)):
            return
        entry = (float(value), trainer.current_epoch, f"epoch={trainer.current_epoch}.pt")
        ranked = sorted([*self.kept, entry], key=lambda e: (self.sign * e[0], e[1]), reverse=True)
        keep, drop = ranked[: self.k], ranked[self.k :]
        folder = self._dir(trainer)
        if trainer.is_global_zero:
            if entry in keep:
                folder.mkdir(parents=True, exist_ok=True)
                state = {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()}
                torch.save(state, folder / entry[2])
            for e in drop:
                if e is not entry:
                    (folder / e[2]).unlink(missing_ok=True)
        self.kept = keep

    def on_train_end(self, trainer, pl_module):
        if self.kept:
            trainer.strategy.barrier()
            files = [self._dir(trainer) / name for _, _, name in self.kept]
            averaged = average_state_dicts(files)
            pl_module.model.load_state_dict(averaged)
            if trainer.is_global_zero:  # the evaluated model, next to the epochs it averages
                torch.save(averaged, self._dir(trainer) / "averaged.pt")
            rank_zero_info(
                f"averaged the {len(files)} best epochs by val/{self.metric}: {[e for _, e, _ in self.kept]}"
            )
        metrics = pl_module.evaluate(pl_module.test_decoding)
        for cb in trainer.callbacks:
            if isinstance(cb, ValidationHistory):
                cb.history.append(
                    {
                        "epoch": cb.history[-1]["epoch"] if cb.history else trainer.current_epoch,  # after the last
                        "step": trainer.global_step,
                        "metrics": metrics,
                        "final": {
                            "averaged_epochs": sorted(e for _, e, _ in self.kept),
                            "decoding": pl_module.test_decoding,
                        },
                    }
                )
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step=trainer.global_step)

    def state_dict(self):
        return {"kept": [list(e) for e in self.kept]}

    def load_state_dict(self, state):
        self.kept = [tuple(e) for e in state.get("kept", [])]


def average_state_dicts(files: list[Path]) -> dict:
    """The mean of the floating-point tensors of ``files`` (state dicts saved by torch.save), accumulated in
    float64; other tensors (counters) come from the first file."""
    if not files:
        raise ConfigError("no checkpoints to average")
    total: dict = {}
    for f in files:
        state = torch.load(f, map_location="cpu", weights_only=True)
        for k, v in state.items():
            if v.is_floating_point():
                total[k] = total[k] + v.double() if k in total else v.double()
            elif k not in total:
                total[k] = v
    first = torch.load(files[0], map_location="cpu", weights_only=True)
    return {k: (v / len(files)).to(first[k].dtype) if first[k].is_floating_point() else v for k, v in total.items()}
