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

``gfsa analyze <run dir>…`` rebuilds finished runs (one, or the seeds of one config) from their records and
``checkpoints/last.ckpt`` and combines the seeds (mean ± std);
:class:`AnalysisCallback` takes the same measurements during training (``analysis.every_n_epochs``).

- :mod:`.measures`: the measurements, their running sums per layer, their combination over seeds (pure torch);
- :mod:`.capture`: the hooks that feed them (:class:`Capture`), the supported families, the coefficients;
- :mod:`.callback`: :class:`AnalysisCallback` (Lightning; imported only when the class is asked for, so
  importing this package does not import Lightning: ``_target_: gfsa.ops.analysis.AnalysisCallback``);
- :mod:`.figures`: the figures (matplotlib only): per-layer frequency responses, all layers, oversmoothing;
- :mod:`.cli`: ``gfsa analyze`` (:func:`analyze`, :func:`main_cli`).
"""

from gfsa.ops.analysis.capture import HF_TYPES, SUPPORTED, Capture, coefficients, family
from gfsa.ops.analysis.cli import AnalyzeError, analyze, baseline_of, locate, main_cli, measure, print_summary
from gfsa.ops.analysis.figures import plot, plot_all_layers, plot_oversmoothing, plot_per_layer
from gfsa.ops.analysis.measures import (
    LayerStats,
    cosine_similarity,
    frequency_response,
    hf_energy_ratio,
    over_seeds,
    singular_spectrum,
)

_LIGHTNING = ("AnalysisCallback", "log_summary", "scalars")  # in .callback, which imports Lightning


def __getattr__(name: str):
    if name in _LIGHTNING:  # loaded on first use: importing gfsa.ops.analysis does not import Lightning
        from gfsa.ops.analysis import callback

        value = getattr(callback, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HF_TYPES",
    "SUPPORTED",
    "AnalysisCallback",
    "AnalyzeError",
    "Capture",
    "LayerStats",
    "analyze",
    "baseline_of",
    "coefficients",
    "cosine_similarity",
    "family",
    "frequency_response",
    "hf_energy_ratio",
    "locate",
    "log_summary",
    "main_cli",
    "measure",
    "over_seeds",
    "plot",
    "plot_all_layers",
    "plot_oversmoothing",
    "plot_per_layer",
    "print_summary",
    "scalars",
    "singular_spectrum",
]
