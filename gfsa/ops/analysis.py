"""Oversmoothing analysis: what each layer's (filtered) attention does to token representations.

Per layer, over a few validation batches:

- frequency response of the effective attention matrix ``H`` (``A``, GFSA's filter of ``A``, or
  AttnScale's rescaled ``A``): ``|λ_k| = |f_kᴴ H f_k|`` over the DFT basis ``f_k``, averaged over heads
  and samples. Self-attention is a low-pass filter (``λ_0 = 1``, the rest small); GFSA's ``w0·I`` and
  ``A²`` terms reshape it (``λ_0 = w0 + w1 + wK``). Real matrices have ``|λ_k| = |λ_{n−k}|``, so the
  half spectrum ``k/n ∈ [0, 1/2]`` is reported; sequences of other lengths are interpolated onto it.
- the high/low-frequency energy ratio of the layer's output tokens ``‖X − 1·x̄ᵀ‖² / ‖1·x̄ᵀ‖²``
  (0 when every token is the same: fully oversmoothed);
- the mean pairwise cosine similarity of the output tokens (1 when oversmoothed);
- the singular values of the last layer's output, normalised by the largest (dimensional collapse).

Attention matrices are recomputed from the queries and keys the model uses: a forward pre-hook on
timm's ``Attention`` (ViT/DeiT family) and a capturing attention implementation for transformers
models (BERT, RoBERTa, ALBERT, GPT-2), both found through ``gfsa.patch``'s adapters. Padding tokens
(``attention_mask`` in the batch) are left out of every measurement.

``gfsa analyze <run dir>`` rebuilds a finished run from its record and ``checkpoints/last.ckpt``;
:class:`AnalysisCallback` takes the same measurements during training (``analysis.every_n_epochs``).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gfsa.nn.attention import GFSACoefficients
from gfsa.nn.functional import attention_probs, gfsa_filter
from gfsa.nn.patching import UnsupportedModelError

SUPPORTED = "timm ViT/DeiT (timm.layers.Attention) and transformers BERT, RoBERTa, ALBERT, GPT-2"
HF_TYPES = ("bert", "roberta", "albert", "gpt2")
_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")  # the numbered block that holds an attention module
_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# the measurements (pure torch; the analytic tests check them)


def frequency_response(h: torch.Tensor) -> torch.Tensor:
    """``|f_kᴴ H f_k|`` for k = 0..n−1 of square matrices ``(…, n, n)``; ``f_k[j] = e^{2πijk/n}/√n``.

    With ``X = fft2(H)``, ``f_kᴴ H f_k = X[k, −k] / n``: O(n² log n) instead of forming the basis.
    """
    n = h.shape[-1]
    x = torch.fft.fft2(h.to(torch.float64))
    k = torch.arange(n, device=h.device)
    return (x[..., k, (-k) % n] / n).abs()


def hf_energy_ratio(x: torch.Tensor) -> torch.Tensor:
    """High- over low-frequency energy of tokens ``(…, n, d)``: ``‖X − 1·x̄ᵀ‖² / ‖1·x̄ᵀ‖²``."""
    dc = x.mean(dim=-2, keepdim=True)
    high = (x - dc).pow(2).sum(dim=(-2, -1))
    low = dc.pow(2).sum(dim=(-2, -1)) * x.shape[-2]
    return high / low.clamp_min(_EPS)


def cosine_similarity(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the pairs of distinct tokens of ``(…, n, d)``."""
    n = x.shape[-2]
    xn = F.normalize(x, dim=-1)
    gram = xn @ xn.transpose(-2, -1)
    return (gram.sum(dim=(-2, -1)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)) / max(n * (n - 1), 1)


def singular_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Singular values of ``(…, n, d)`` divided by the largest: ``[1, 0, …]`` for a rank-1 matrix."""
    s = torch.linalg.svdvals(x.to(torch.float64))
    return s / s[..., :1].clamp_min(_EPS)


def _half_on_grid(resp: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """A full response (n,) as a function of k/n, on the normalised-frequency ``grid`` (⊂ [0, 1/2])."""
    n = resp.shape[-1]
    freqs = torch.arange(n // 2 + 1, dtype=torch.float64) / n
    half = resp[: n // 2 + 1].cpu()
    if len(freqs) == len(grid) and torch.allclose(freqs, grid):
        return half
    idx = torch.searchsorted(freqs, grid.clamp(max=freqs[-1])).clamp(1, len(freqs) - 1)
    lo, hi = freqs[idx - 1], freqs[idx]
    t = ((grid - lo) / (hi - lo)).clamp(0, 1)
    return half[idx - 1] * (1 - t) + half[idx] * t


# --------------------------------------------------------------------------------------------------
# capturing attention matrices and layer outputs


def _effective_attention(module: nn.Module, attn: torch.Tensor, mask=None, is_causal=False, active=True):
    """``H`` as the module applies it: GFSA's filter and/or AttnScale's rescaling of ``A``."""
    g = getattr(module, "gfsa", None)
    if isinstance(g, GFSACoefficients) and active:
        attn = gfsa_filter(attn, g.w0, g.w1, g.wK, g.settings.K)
    scale = getattr(module, "attnscale", None)
    if scale is not None:
        from gfsa.zoo.methods.attnscale import mean_over_keys

        n = attn.shape[-1]
        uniform = mean_over_keys(torch.eye(n, dtype=attn.dtype, device=attn.device), mask, is_causal)
        w = scale.omega.to(attn.dtype).view(-1, 1, 1)
        attn = (1 + w) * attn - w * uniform
    return attn


class _Stats:
    """Running sums of the per-layer measurements over samples."""

    def __init__(self):
        self.grid: torch.Tensor | None = None
        self.freq: dict[int, list] = {}  # layer → [sum over samples (grid,), count]
        self.tokens: dict[int, list] = {}  # layer → [cosine sum, energy-ratio sum, count]
        self.spectra: dict[int, list[torch.Tensor]] = {}  # layer → per-sample singular spectra

    def add_attention(self, layer: int, h: torch.Tensor, valid: torch.Tensor | None) -> None:
        """``h`` (B, heads, n, n); ``valid`` (B, n) bool or None (every token real: one batched call)."""
        samples = [h] if valid is None else [h[b][:, valid[b]][:, :, valid[b]].unsqueeze(0) for b in range(len(h))]
        for hb in samples:
            resp = frequency_response(hb).mean(dim=1).cpu()  # (samples, n): mean over heads
            if self.grid is None:
                n = resp.shape[-1]
                self.grid = torch.arange(n // 2 + 1, dtype=torch.float64) / n
            acc = self.freq.setdefault(layer, [torch.zeros(len(self.grid), dtype=torch.float64), 0])
            acc[0] += sum(_half_on_grid(r, self.grid) for r in resp)
            acc[1] += len(resp)

    def add_tokens(self, layer: int, x: torch.Tensor, valid: torch.Tensor | None) -> None:
        """``x`` (B, n, d) layer outputs."""
        acc = self.tokens.setdefault(layer, [0.0, 0.0, 0])
        samples = [x] if valid is None else [x[b][valid[b]].unsqueeze(0) for b in range(len(x))]
        for xb in samples:
            xb = xb.double()
            acc[0] += float(cosine_similarity(xb).sum())
            acc[1] += float(hf_energy_ratio(xb).sum())
            acc[2] += len(xb)
            self.spectra.setdefault(layer, []).extend(singular_spectrum(xb).cpu())

    def summary(self) -> dict:
        layers = sorted(set(self.freq) | set(self.tokens))
        out = []
        for i in layers:
            row = {"layer": i}
            if i in self.freq:
                resp = (self.freq[i][0] / self.freq[i][1]).tolist()
                row |= {
                    "frequency_response": resp,
                    "dc_gain": resp[0],
                    "hf_gain": sum(resp[1:]) / max(len(resp) - 1, 1),
                }
            if i in self.tokens:
                cos, ratio, n = self.tokens[i]
                row |= {"cosine_similarity": cos / n, "hf_energy_ratio": ratio / n}
            out.append(row)
        singular = []
        if self.spectra:
            spectra = self.spectra[max(self.spectra)]
            k = min(len(s) for s in spectra)
            singular = torch.stack([s[:k] for s in spectra]).mean(dim=0).tolist()
        grid = self.grid.tolist() if self.grid is not None else []
        return {"normalized_frequency": grid, "layers": out, "last_layer_singular_values": singular}


def _hf_capture_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kw):
    """The ``gfsa_analysis`` attention implementation: record ``H``, then attend as ``gfsa`` does."""
    from gfsa.nn.adapters.hf import gfsa_attention_forward

    capture: Capture | None = getattr(module, "_gfsa_capture", None)
    if capture is not None and capture.recording:
        g = getattr(module, "gfsa", None)
        active = g is not None and (g.shared_layers is None or g.calls in g.shared_layers)
        causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
        causal = bool(causal and attention_mask is None and query.shape[2] > 1)
        attn = attention_probs(query.float(), key.float(), attention_mask, causal, scaling)
        capture.attention(module, _effective_attention(module, attn, attention_mask, causal, active))
    return gfsa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kw
    )


def _timm_pre_hook(module, args, kwargs):
    capture: Capture | None = getattr(module, "_gfsa_capture", None)
    if capture is None or not capture.recording:
        return
    x = args[0] if args else kwargs["x"]
    B, N, _ = x.shape
    q, k, _ = module.qkv(x).reshape(B, N, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    mask = kwargs.get("attn_mask") if kwargs else None
    capture.attention(
        module, _effective_attention(module, attention_probs(q.float(), k.float(), mask, False, module.scale))
    )


def _block_hook(module, args, output):
    capture: Capture | None = getattr(module, "_gfsa_capture", None)
    if capture is not None and capture.recording:
        capture.tokens(output[0] if isinstance(output, tuple) else output)


class Capture:
    """Hooks on a model's attention modules and blocks that feed :class:`_Stats` while ``recording``.

    ``model`` is what :func:`gfsa.patch` receives (``gfsa.zoo.backbones.patch_target``). Use as a context
    manager, or :meth:`attach`/:meth:`detach`; call :meth:`batch` with each batch before its forward.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.family = family(model)
        from gfsa.nn.patching import find_adapter

        layers = find_adapter(model).attention_layers(model)
        self.attn_modules = [m for layer in layers for m, cross in layer.modules if not cross]
        names = {id(m): n for n, m in model.named_modules()}
        blocks: dict[str, nn.Module] = {}
        for m in self.attn_modules:
            match = _BLOCK.match(names[id(m)])
            if match is None:
                raise UnsupportedModelError(
                    f"gfsa analyze cannot find the block of {names[id(m)]}; supported: {SUPPORTED}"
                )
            blocks.setdefault(match.group(1), model.get_submodule(match.group(1)))
        self.blocks = list(blocks.values())
        self.stats = _Stats()
        self.recording = False
        self._valid: torch.Tensor | None = None
        self._handles: list = []
        self._attn_impl: str | None = None
        self._n_attn = self._n_block = 0

    def attach(self) -> Capture:
        for m in self.attn_modules + self.blocks:
            m._gfsa_capture = self
        for b in self.blocks:
            self._handles.append(b.register_forward_hook(_block_hook))
        if self.family == "timm":
            for m in self.attn_modules:
                self._handles.append(m.register_forward_pre_hook(_timm_pre_hook, with_kwargs=True))
        else:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

            AttentionInterface.register("gfsa_analysis", _hf_capture_forward)
            AttentionMaskInterface.register("gfsa_analysis", sdpa_mask)
            self._attn_impl = self.model.config._attn_implementation
            self.model.set_attn_implementation("gfsa_analysis")
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self.attn_modules + self.blocks:
            m.__dict__.pop("_gfsa_capture", None)
        if self._attn_impl is not None:
            self.model.set_attn_implementation(self._attn_impl)
            self._attn_impl = None
        self.recording = False

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def batch(self, batch: dict | None, record: bool = True) -> None:
        """Announce the next forward's batch (its ``attention_mask`` marks the real tokens)."""
        self.recording = record
        self._n_attn = self._n_block = 0
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        self._valid = None if mask is None or bool(mask.all()) else mask.reshape(-1, mask.shape[-1]).bool()

    def attention(self, module: nn.Module, h: torch.Tensor) -> None:
        self.stats.add_attention(self._n_attn, h.detach(), self._valid)
        self._n_attn += 1

    def tokens(self, x: torch.Tensor) -> None:
        self.stats.add_tokens(self._n_block, x.detach(), self._valid)
        self._n_block += 1

    def summary(self) -> dict:
        return self.stats.summary()


def family(model: nn.Module) -> str:
    """``timm`` or ``hf`` for models the analysis supports; a one-line error otherwise."""
    mods = [cls.__module__ for cls in type(model).__mro__]
    if any(m.startswith("timm.") for m in mods):
        from timm.layers import Attention
        from timm.models.vision_transformer import VisionTransformer

        if isinstance(model, VisionTransformer) and all(isinstance(b.attn, Attention) for b in model.blocks):
            return "timm"
    if any(m.startswith("transformers.") for m in mods) and getattr(model.config, "model_type", None) in HF_TYPES:
        return "hf"
    raise UnsupportedModelError(f"gfsa analyze supports {SUPPORTED}, not {type(model).__name__}")


def coefficients(model: nn.Module) -> dict:
    """Learned per-head coefficients by module: GFSA's ``w0, w1, wK`` and AttnScale's ``ω``."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, GFSACoefficients):
            out[name] = {c: getattr(m, c).detach().cpu().tolist() for c in ("w0", "w1", "wK")}
        omega = getattr(getattr(m, "attnscale", None), "omega", None)
        if omega is not None:
            out[f"{name}.attnscale"] = {"omega": omega.detach().cpu().tolist()}
    return out


# --------------------------------------------------------------------------------------------------
# the measurements during training


def _callback_class():
    """The Lightning callback, defined on first use so that importing this module does not import Lightning."""
    import lightning as L

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

    return AnalysisCallback


def __getattr__(name: str):
    if name == "AnalysisCallback":  # defined on first use: importing gfsa.ops.analysis does not import Lightning
        cls = _callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


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


# --------------------------------------------------------------------------------------------------
# gfsa analyze


class AnalyzeError(ValueError):
    """Bad input to ``gfsa analyze``: one line that names the fix."""


def locate(path: str | Path) -> tuple[Path, dict, Path]:
    """(run dir, record, checkpoint) for a run directory or a checkpoint file in one."""
    from gfsa.runner import results as R

    path = Path(path)
    if not path.exists():
        raise AnalyzeError(f"{path} does not exist: pass a run directory (with result.json) or its checkpoint")
    ckpt = path if path.is_file() else path / "checkpoints" / "last.ckpt"
    run_dir = path if path.is_dir() else (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
    record = R.load_record(run_dir)
    if record is None or "config" not in record:
        raise AnalyzeError(f"no readable result.json in {run_dir}: gfsa analyze needs a finished run (its config)")
    if not ckpt.is_file():
        raise AnalyzeError(f"no checkpoint {ckpt}: train the run with checkpoint=true (the default) to analyze it")
    return run_dir, record, ckpt


def baseline_of(run_dir: Path, record: dict) -> Path | None:
    """The run's baseline directory beside it (same backbone/task folder), if it was trained."""
    from gfsa.runner import results as R

    if record.get("variant") == "baseline":
        return None
    candidate = run_dir.parent / R.run_dir(R.baseline_config(record["config"]), root="").name
    return candidate if (candidate / R.RECORD).is_file() else None


def measure(run_dir: Path, record: dict, ckpt: Path, batches: int) -> dict:
    """Rebuild the run (``gfsa.runner.train.prepare``), load its checkpoint and measure ``batches`` val batches."""
    from gfsa.runner.train import Prepared, prepare
    from gfsa.zoo.backbones import patch_target

    cfg = dict(record["config"])
    with tempfile.TemporaryDirectory() as tmp:  # a results dir without this run's record: prepare builds it
        cfg["paths"] = {**(cfg.get("paths") or {}), "results_dir": tmp}
        prepared = prepare(cfg)
    assert isinstance(prepared, Prepared)
    net = patch_target(prepared.model)
    family(net)  # fail before loading anything big
    from gfsa.runner.requeue import checkpoint_problem

    problem = checkpoint_problem(ckpt, prepared.recipe)
    if problem:
        raise AnalyzeError(
            f"cannot analyze {ckpt}: it is {problem}; train the run again (resume=restart) or pass another run"
        )
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    missing, _ = prepared.recipe.load_state_dict(state["state_dict"], strict=False)
    missing = [k for k in missing if k.startswith("model.")]
    if missing:
        raise AnalyzeError(f"{ckpt} does not fit this run's model (missing {missing[0]}, …): is it from another run?")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = prepared.model.to(device).eval()
    loader = prepared.task.val_dataloader()
    loader = loader[0] if isinstance(loader, (list, tuple)) else loader
    with torch.no_grad(), Capture(net) as capture:
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in dict(batch).items()}
            inputs.pop("labels", None)
            capture.batch(inputs)
            model(**inputs)
    return {
        "run_dir": str(run_dir),
        "variant": record.get("variant"),
        "backbone": record.get("backbone"),
        "task": record.get("task"),
        "gfsa_layers": (record.get("gfsa") or {}).get("layers", []),
        "batches": batches,
        "coefficients": coefficients(prepared.model),  # names as in the results record
        **capture.summary(),
    }


def plot(results: dict[str, dict], out: Path) -> list[Path]:
    """PNGs in the paper's style: one curve per layer (frequency response), base vs GFSA side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names, strict=True):
        r = results[name]
        rows = [row for row in r["layers"] if "frequency_response" in row]
        cmap = plt.get_cmap("viridis")
        for j, row in enumerate(rows):
            ax.plot(
                r["normalized_frequency"],
                row["frequency_response"],
                color=cmap(j / max(len(rows) - 1, 1)),
                label=f"layer {row['layer'] + 1}",
            )
        ax.set_title(f"{name}: {r['backbone']} on {r['task']}")
        ax.set_xlabel("normalized frequency k/n")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("|λ_k| (mean over heads, samples)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    files.append(out / "frequency_response.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, r in results.items():
        layers = [row["layer"] + 1 for row in r["layers"] if "cosine_similarity" in row]
        axes[0].plot(
            layers,
            [row["cosine_similarity"] for row in r["layers"] if "cosine_similarity" in row],
            marker="o",
            label=name,
        )
        axes[1].plot(
            layers, [row["hf_energy_ratio"] for row in r["layers"] if "hf_energy_ratio" in row], marker="o", label=name
        )
        sv = r["last_layer_singular_values"]
        axes[2].plot(range(1, len(sv) + 1), sv, label=name)
    axes[0].set(title="cosine similarity of tokens", xlabel="layer")
    axes[1].set(title="high/low-frequency energy of tokens", xlabel="layer", yscale="log")
    axes[2].set(title="normalized singular values, last layer", xlabel="index", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    files.append(out / "oversmoothing.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files


def print_summary(results: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="oversmoothing per layer (cos: token cosine similarity, HF/DC: energy ratio, hf gain: mean |λ_k>0|)"
    )
    table.add_column("layer", justify="right")
    for name in results:
        for col in ("cos", "HF/DC", "hf gain"):
            table.add_column(f"{col} ({name})", justify="right")
    n = max(len(r["layers"]) for r in results.values())
    for i in range(n):
        cells = [str(i + 1)]
        for r in results.values():
            row = r["layers"][i] if i < len(r["layers"]) else {}
            cells += [f"{row[k]:.3f}" if k in row else "—" for k in ("cosine_similarity", "hf_energy_ratio", "hf_gain")]
        table.add_row(*cells)
    Console().print(table)


def analyze(path: str, baseline: str | None = None, batches: int = 4, out: str | None = None) -> dict:
    """``gfsa analyze``: JSON and PNGs for a run (and its baseline, found beside it or given)."""
    if batches < 1:
        raise AnalyzeError(f"--batches {batches}: measure at least 1 validation batch")
    run_dir, record, ckpt = locate(path)
    runs = {}
    base_dir = Path(baseline) if baseline else baseline_of(run_dir, record)
    if base_dir is not None:
        b_dir, b_record, b_ckpt = locate(base_dir)
        runs["baseline"] = measure(b_dir, b_record, b_ckpt, batches)
    runs[record.get("variant") or "run"] = measure(run_dir, record, ckpt, batches)
    out_dir = Path(out) if out else run_dir / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.json").write_text(json.dumps(runs, indent=1) + "\n")
    files = plot(runs, out_dir)
    print_summary(runs)
    print(f"wrote {out_dir / 'analysis.json'}, " + ", ".join(str(f) for f in files), file=sys.stdout)
    return runs


def main_cli(argv: list[str]) -> None:
    """Entry for ``gfsa analyze`` (argv after the subcommand); exit 2 with one line for bad input."""
    import argparse

    p = argparse.ArgumentParser(prog="gfsa analyze", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "run", help="a finished run directory (with result.json and checkpoints/last.ckpt) or its checkpoint"
    )
    p.add_argument("--baseline", help="the baseline run to compare with (default: the paired baseline beside the run)")
    p.add_argument("--batches", type=int, default=4, help="validation batches to measure (default 4)")
    p.add_argument("--out", help="output directory (default: <run dir>/analysis)")
    args = p.parse_args(argv)
    from gfsa.utils.errors import ConfigError

    try:
        analyze(args.run, args.baseline, args.batches, args.out)
    except (AnalyzeError, UnsupportedModelError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
