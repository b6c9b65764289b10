"""The analysis figures (PNG, PDF and SVG each; no torch): per-layer frequency responses of the baseline
and the run overlaid on a log scale, one panel per layer as the paper's BERT/STS-B figure, with the
layers the run patches marked; all layers of each run in one panel; the oversmoothing measures per layer.
Each takes :func:`gfsa.ops.analysis.measures.over_seeds` results by name (``baseline``, the run's variant)
and draws the mean over seeds with ± the std as a band or error bar."""

from __future__ import annotations

import math
from pathlib import Path

from gfsa.utils.plots import Chart, save, style, variant_colors

PATCHED_TINT = "#0072B214"  # the background of a patched layer's panel (GFSA's blue, nearly transparent)


def _patched(results: dict[str, dict]) -> set[int]:
    """0-based layers patched in any non-baseline run."""
    return {int(i) for name, r in results.items() if name != "baseline" for i in (r.get("gfsa_layers") or [])}


def _seeds(results: dict[str, dict], spread: str = "") -> str:
    """``one seed``, or ``n = 3 seeds`` and what shows their spread."""
    ns = sorted({r.get("n", 1) for r in results.values()})
    if ns == [1]:
        return "one seed"
    n = f"n = {ns[0]} seeds" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]} seeds"
    return f"{n}, {spread}" if spread else n


def _band(ax, x, mean, std, color, floor: float | None = None):
    if not std:
        return
    lo = [m - s for m, s in zip(mean, std, strict=True)]
    if floor is not None:  # a log axis: the band stops above zero
        lo = [max(v, floor) for v in lo]
    ax.fill_between(x, lo, [m + s for m, s in zip(mean, std, strict=True)], color=color, alpha=0.2, lw=0)


def _minor_label(v: float, _=None) -> str:
    """Minor ticks of a log axis labelled at 2 and 5 × 10ᵏ only."""
    return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""


def _log_if_wide(ax, label: str) -> None:
    """A log y axis with plain tick labels (0.5, not 5×10⁻¹) when the data span a decade or more; linear
    otherwise (a log axis inside one decade would have no labelled tick)."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = ax.dataLim.y0, ax.dataLim.y1
    if lo > 0 and hi / lo >= 10:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
        label += " (log)"
    ax.set_ylabel(label)


def _about(results: dict[str, dict]) -> str:
    r = next(iter(results.values()))
    return f"{r.get('backbone')} on {r.get('task')}"


def _floor(results: dict[str, dict]) -> float:
    values = [v for r in results.values() for row in r["layers"] for v in row.get("frequency_response", []) if v > 0]
    return min(values, default=1e-6) / 3


def plot_per_layer(results: dict[str, dict], path: Path) -> Chart:
    """One panel per layer: the frequency response of each run (baseline grey, the run in its colour),
    mean over seeds ± std, log scale; panels of layers the run patches are tinted and titled so."""
    names = list(results)
    colors = variant_colors(names)
    patched = _patched(results)
    n_layers = max(len([row for row in r["layers"] if "frequency_response" in row]) for r in results.values())
    cols = n_layers if n_layers <= 4 else min((4, 3, 5, 6), key=lambda c: -n_layers % c)  # fewest empty panels
    lines = math.ceil(n_layers / cols)
    floor = _floor(results)
    with style() as plt:
        fig = plt.figure(figsize=(2.6 * cols + 0.6, 2.1 * lines + 1.0), layout="constrained")
        axes = fig.subplots(lines, cols, sharex=True, sharey=True, squeeze=False)
        for i in range(lines * cols):
            ax = axes[i // cols][i % cols]
            if i >= n_layers:
                ax.set_visible(False)
                continue
            for name in names:
                r = results[name]
                rows = [row for row in r["layers"] if "frequency_response" in row]
                if i >= len(rows):
                    continue
                row, x = rows[i], r["normalized_frequency"]
                wide = name == "baseline"  # the baseline wide underneath: still seen where the curves coincide
                ax.plot(x, row["frequency_response"], color=colors[name], lw=3.0 if wide else 1.4, zorder=2 if wide else 3,
                        label=name, gid=f"{name}/layer{i}")  # fmt: skip
                _band(ax, x, row["frequency_response"], row.get("frequency_response_std"), colors[name], floor)
            ax.set_yscale("log")
            is_patched = i in patched
            if is_patched:
                ax.set_facecolor(PATCHED_TINT)
            ax.set_title(f"layer {i + 1}" + (" · GFSA" if is_patched else ""),
                         fontweight="bold" if is_patched else "normal", loc="left")  # fmt: skip
            if i % cols == 0:
                ax.set_ylabel("|λ_k| (log)")
            if i // cols == lines - 1 or i + cols >= n_layers:
                ax.set_xlabel("frequency k/n")
                ax.tick_params(labelbottom=True)
        handles = [plt.Line2D([], [], color=colors[n], lw=3.0 if n == "baseline" else 1.4) for n in names]
        labels = list(names)
        if patched:
            handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=PATCHED_TINT, edgecolor="0.6", lw=0.5))
            labels.append("layer with GFSA")
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
        fig.suptitle(f"{_about(results)}: frequency response of the attention per layer (mean over heads and "
                     f"samples)\n{_seeds(results, 'band: ± std over seeds')}")  # fmt: skip
        return save(fig, path, {"layers": n_layers, "patched": sorted(patched), "names": names})


def plot_all_layers(results: dict[str, dict], path: Path) -> Chart:
    """Each run in one panel, every layer a curve coloured by depth (log scale, shared); a run's patched
    layers solid, the others dashed."""
    names = list(results)
    with style() as plt:
        fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names) + 1.4, 3.6), sharey=True, squeeze=False,
                                 layout="constrained")  # fmt: skip
        cmap = plt.get_cmap("viridis")
        for ax, name in zip(axes[0], names, strict=True):
            r = results[name]
            rows = [row for row in r["layers"] if "frequency_response" in row]
            mine = {int(i) for i in (r.get("gfsa_layers") or [])} if name != "baseline" else set()
            for j, row in enumerate(rows):
                on = row["layer"] in mine
                ax.plot(r["normalized_frequency"], row["frequency_response"], color=cmap(j / max(len(rows) - 1, 1)),
                        ls="-" if on or not mine else "--", lw=1.4, gid=f"{name}/layer{j}")  # fmt: skip
            ax.set_yscale("log")
            ax.set_title(
                f"{name}" + (f" (solid: GFSA layers {', '.join(str(i + 1) for i in sorted(mine))})" if mine else "")
            )
            ax.set_xlabel("normalized frequency k/n")
        axes[0][0].set_ylabel("|λ_k| (log; mean over heads, samples, seeds)")
        depth = max(len(r["layers"]) for r in results.values())
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, max(depth, 2)))
        fig.colorbar(sm, ax=axes[0].tolist(), label="layer", ticks=range(1, depth + 1) if depth <= 12 else None)
        fig.suptitle(f"{_about(results)}: frequency response of every layer ({_seeds(results)})")
        return save(fig, path, {"names": names})


def plot_oversmoothing(results: dict[str, dict], path: Path) -> Chart:
    """Per layer: token cosine similarity and high/low-frequency energy; the last layer's normalised singular
    values; mean over seeds ± std; layers with GFSA shaded."""
    names = list(results)
    colors = variant_colors(names)
    patched = _patched(results)
    with style() as plt:
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.7), layout="constrained")
        for k, name in enumerate(names):
            r = results[name]
            dodge = (k - (len(names) - 1) / 2) * 0.08  # error bars of the runs side by side, not on top
            for ax, key in ((axes[0], "cosine_similarity"), (axes[1], "hf_energy_ratio")):
                rows = [row for row in r["layers"] if key in row]
                stds = [row.get(f"{key}_std") for row in rows]
                ax.errorbar(
                    [row["layer"] + 1 + dodge for row in rows],
                    [row[key] for row in rows],
                    yerr=None if None in stds else stds,
                    marker="o",
                    ms=4,
                    capsize=2.5,
                    color=colors[name],
                    label=name,
                    gid=f"{name}/{key}",
                )
            sv = r["last_layer_singular_values"]
            x = list(range(1, len(sv) + 1))
            axes[2].plot(x, sv, color=colors[name], label=name, gid=f"{name}/singular")
            _band(
                axes[2],
                x,
                sv,
                r.get("last_layer_singular_values_std"),
                colors[name],
                floor=min(v for v in sv if v > 0) / 3,
            )
        for ax in axes[:2]:
            for i in sorted(patched):
                ax.axvspan(i + 0.5, i + 1.5, color=PATCHED_TINT, lw=0)
            depth = max(len(r["layers"]) for r in results.values())
            ax.set_xticks(range(1, depth + 1) if depth <= 16 else ax.get_xticks())
        axes[0].set(title="cosine similarity of the tokens", xlabel="layer", ylabel="mean pairwise cosine similarity")
        axes[1].set(title="high/low-frequency energy of the tokens", xlabel="layer")
        axes[2].set(title="singular values of the last layer's tokens", xlabel="index (largest first)")
        _log_if_wide(axes[1], "‖X − 1x̄ᵀ‖² / ‖1x̄ᵀ‖²")
        _log_if_wide(axes[2], "σᵢ / σ₁")
        handles, labels = axes[0].get_legend_handles_labels()
        if patched:
            handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=PATCHED_TINT, edgecolor="0.6", lw=0.5))
            labels.append("layer with GFSA")
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
        fig.suptitle(f"{_about(results)}: oversmoothing per layer (mean over samples; "
                     f"{_seeds(results, 'error bars and band: ± std over seeds')})")  # fmt: skip
        return save(fig, path, {"names": names, "patched": sorted(patched)})


def plot(results: dict[str, dict], out: Path) -> list[Chart]:
    """Every analysis figure into ``out``: frequency_response (per layer), frequency_response_all_layers,
    oversmoothing."""
    return [
        plot_per_layer(results, out / "frequency_response"),
        plot_all_layers(results, out / "frequency_response_all_layers"),
        plot_oversmoothing(results, out / "oversmoothing"),
    ]
