"""Oversmoothing analysis: what each layer's (filtered) attention does to token representations.

``gfsa analyze <run dir>``: rebuild a finished run from its record and ``checkpoints/last.ckpt``, measure a
few validation batches (and its baseline's), write ``analysis.json`` and PNGs, print a table.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from gfsa.nn.patching import UnsupportedModelError
from gfsa.ops.analysis.capture import Capture, coefficients, family
from gfsa.utils.errors import ConfigError, fail
from gfsa.utils.plots import pyplot


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
    from gfsa.runner.config import with_run_defaults
    from gfsa.runner.train import Prepared, prepare
    from gfsa.zoo.backbones import patch_target

    cfg = with_run_defaults(record["config"])
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
    plt = pyplot()
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
    try:
        analyze(args.run, args.baseline, args.batches, args.out)
    except (AnalyzeError, UnsupportedModelError, ConfigError) as e:
        fail(str(e))
