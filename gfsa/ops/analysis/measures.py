"""The measurements (pure torch; the analytic tests check them) and their running sums per layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


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
    return _half_on_grid_values(freqs, resp[: n // 2 + 1].cpu(), grid)


class LayerStats:
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


SCALARS = ("cosine_similarity", "hf_energy_ratio", "dc_gain", "hf_gain")
CURVES = ("frequency_response",)


def _mean_std(values: list) -> tuple:
    """Mean and sample std of numbers, or pointwise of equal-length lists (std None for one value)."""
    t = torch.tensor(values, dtype=torch.float64)
    std = t.std(dim=0, correction=1).tolist() if len(values) > 1 else None
    return t.mean(dim=0).tolist(), std


def over_seeds(runs: list[dict]) -> dict:
    """Measurements of one config's seeds (:func:`gfsa.ops.analysis.measure` results) combined: per layer
    the mean of each measurement over seeds, its sample std (``<name>_std``; None for one seed) and ``n``;
    curves pointwise, on the first run's frequency grid (others are interpolated onto it)."""
    first = runs[0]
    grid = torch.tensor(first["normalized_frequency"], dtype=torch.float64)
    out_layers = []
    for i, row in enumerate(first["layers"]):
        rows = [r["layers"][i] for r in runs if i < len(r["layers"])]
        out = {"layer": row["layer"], "n": len(rows)}
        for key in SCALARS:
            values = [r[key] for r in rows if key in r]
            if values:
                out[key], out[f"{key}_std"] = _mean_std(values)
        for key in CURVES:
            curves = []
            for run, r in zip(runs, rows, strict=False):
                if key in r:
                    freqs = torch.tensor(run["normalized_frequency"], dtype=torch.float64)
                    curves.append(_half_on_grid_values(freqs, torch.tensor(r[key], dtype=torch.float64), grid))
            if curves:
                out[key], out[f"{key}_std"] = _mean_std([c.tolist() for c in curves])
        out_layers.append(out)
    spectra = [r["last_layer_singular_values"] for r in runs if r["last_layer_singular_values"]]
    k = min((len(s) for s in spectra), default=0)
    singular, singular_std = _mean_std([s[:k] for s in spectra]) if k else ([], None)
    keep = {key: first[key] for key in ("variant", "backbone", "task", "gfsa_layers", "batches") if key in first}
    single = {"run_dir": first["run_dir"], "coefficients": first.get("coefficients", {})} if len(runs) == 1 else {}
    return {
        **keep,
        **single,
        "n": len(runs),
        "seeds": [r.get("seed") for r in runs],
        "run_dirs": [r["run_dir"] for r in runs],
        "normalized_frequency": grid.tolist(),
        "layers": out_layers,
        "last_layer_singular_values": singular,
        "last_layer_singular_values_std": singular_std,
        "runs": runs,
    }


def _half_on_grid_values(freqs: torch.Tensor, values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """A half spectrum given on ``freqs`` (increasing, ⊂ [0, 1/2]), linearly interpolated onto ``grid``."""
    if len(freqs) == len(grid) and torch.allclose(freqs, grid):
        return values
    if len(freqs) == 1:
        return values.expand(len(grid)).clone()
    idx = torch.searchsorted(freqs, grid.clamp(max=freqs[-1])).clamp(1, len(freqs) - 1)
    lo, hi = freqs[idx - 1], freqs[idx]
    t = ((grid - lo) / (hi - lo)).clamp(0, 1)
    return values[idx - 1] * (1 - t) + values[idx] * t
