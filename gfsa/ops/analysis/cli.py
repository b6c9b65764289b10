"""Oversmoothing analysis: what each layer's (filtered) attention does to token representations.

``gfsa analyze <run dir>…``: rebuild finished runs (the seeds of one config) from their records and
``checkpoints/last.ckpt``, measure a few validation batches of each (and of each one's baseline), write
``analysis.json`` and the figures (mean over seeds ± std), print a table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gfsa.nn.patching import UnsupportedModelError
from gfsa.ops.analysis.capture import Capture, coefficients, family
from gfsa.ops.analysis.figures import plot
from gfsa.ops.analysis.measures import over_seeds
from gfsa.utils.errors import ConfigError, fail


class AnalyzeError(ConfigError):
    """Bad input to ``gfsa analyze``: one line that names the fix."""


def locate(path: str | Path) -> tuple[Path, dict, Path]:
    """(run dir, record, ``last.ckpt``) for a run directory or a checkpoint file in one."""
    from gfsa.runner.restore import locate as locate_run

    return locate_run(path, "last")


def baseline_of(run_dir: Path, record: dict) -> Path | None:
    """The run's baseline directory beside it (same backbone/task folder), if it was trained."""
    from gfsa.runner import results as R

    if record.get("variant") == "baseline":
        return None
    candidate = run_dir.parent / R.run_dir(R.baseline_config(record["config"]), root="").name
    return candidate if (candidate / R.RECORD).is_file() else None


def measure(run_dir: Path, record: dict, ckpt: Path, batches: int) -> dict:
    """Rebuild the run (``gfsa.runner.train.prepare``), load its checkpoint and measure ``batches`` val batches."""
    from gfsa.runner.restore import restore
    from gfsa.zoo.backbones import patch_target

    prepared = restore(record, ckpt, check=lambda p: family(patch_target(p.model)))
    net = patch_target(prepared.model)
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
        "seed": record.get("seed"),
        "backbone": record.get("backbone"),
        "task": record.get("task"),
        "gfsa_layers": (record.get("gfsa") or {}).get("layers", []),
        "batches": batches,
        "coefficients": coefficients(prepared.model),  # names as in the results record
        **capture.summary(),
    }


def _pm(row: dict, key: str) -> str:
    if key not in row:
        return "—"
    std = row.get(f"{key}_std")
    return f"{row[key]:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def print_summary(results: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    ns = sorted({r.get("n", 1) for r in results.values()})
    table = Table(
        title="oversmoothing per layer (cos: token cosine similarity, HF/DC: energy ratio, hf gain: mean |λ_k>0|)",
        caption="mean over samples; "
        + ("one seed" if ns == [1] else f"over seeds: mean ± sample std, n = {'/'.join(map(str, ns))} seeds")
        + "; *: a layer with GFSA",
    )
    table.add_column("layer", justify="right")
    for name in results:
        for col in ("cos", "HF/DC", "hf gain"):
            table.add_column(f"{col} ({name})", justify="right")
    patched = {int(i) for name, r in results.items() if name != "baseline" for i in (r.get("gfsa_layers") or [])}
    n = max(len(r["layers"]) for r in results.values())
    for i in range(n):
        cells = [f"{i + 1}{'*' if i in patched else ''}"]
        for r in results.values():
            row = r["layers"][i] if i < len(r["layers"]) else {}
            cells += [_pm(row, k) for k in ("cosine_similarity", "hf_energy_ratio", "hf_gain")]
        table.add_row(*cells)
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)  # a pipe or log: no wrapped cells


def _same_config(records: list[tuple[Path, dict]]) -> None:
    from gfsa.runner import results as R

    keys = {R.run_key({**rec["config"], "seed": None}) for _, rec in records}
    if len(keys) > 1:
        dirs = ", ".join(str(d) for d, _ in records)
        raise AnalyzeError(f"the runs {dirs} differ in more than the seed: pass the seeds of one config")
    seeds = [rec.get("seed") for _, rec in records]
    if len(set(seeds)) < len(seeds):
        raise AnalyzeError(f"seed {max(seeds, key=seeds.count)} is passed twice: pass each seed's run once")


def analyze(
    paths: str | list[str], baseline: str | None = None, batches: int = 4, out: str | None = None
) -> dict[str, dict]:
    """``gfsa analyze``: JSON and figures for the seeds of a run (and their baselines, found beside each
    run or given); returns ``{"baseline": …, <variant>: …}`` as :func:`over_seeds` combines them."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if batches < 1:
        raise AnalyzeError(f"--batches {batches}: measure at least 1 validation batch")
    if baseline and len(paths) > 1:
        raise AnalyzeError("--baseline goes with one run: several runs each use the baseline beside them")
    located = [locate(p) for p in paths]
    _same_config([(run_dir, record) for run_dir, record, _ in located])
    bases = []
    for run_dir, record, _ in located:
        base_dir = Path(baseline) if baseline else baseline_of(run_dir, record)
        bases.append(None if base_dir is None else locate(base_dir))
    if any(b is not None for b in bases) and any(b is None for b in bases):
        missing = next(str(d) for (d, _, _), b in zip(located, bases, strict=True) if b is None)
        raise AnalyzeError(
            f"no baseline beside {missing}: train it (gfsa.layers=none, same seed) or analyze the runs that have one"
        )
    runs: dict[str, list[dict]] = {}
    if bases[0] is not None:
        runs["baseline"] = [measure(d, rec, ck, batches) for d, rec, ck in bases]
    name = located[0][1].get("variant") or "run"
    runs[name if name not in runs else f"{name} (run)"] = [measure(d, rec, ck, batches) for d, rec, ck in located]
    combined = {k: over_seeds(v) for k, v in runs.items()}
    out_dir = Path(out) if out else located[0][0] / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.json").write_text(json.dumps(combined, indent=1) + "\n")
    charts = plot(combined, out_dir)
    print_summary(combined)
    formats = ",".join(p.suffix[1:] for p in charts[0].files)
    print(f"wrote {out_dir}: analysis.json, " + ", ".join(f"{c.png.stem}.{{{formats}}}" for c in charts))
    return combined


def main_cli(argv: list[str]) -> None:
    """Entry for ``gfsa analyze`` (argv after the subcommand); exit 2 with one line for bad input."""
    import argparse

    p = argparse.ArgumentParser(prog="gfsa analyze", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "runs",
        nargs="+",
        metavar="run",
        help="finished run directories (with result.json and checkpoints/last.ckpt) or their checkpoints: "
        "one run, or the seeds of one config (figures and table show the mean over seeds ± std)",
    )
    p.add_argument(
        "--baseline", help="with one run: the baseline run to compare with (default: the paired baseline beside it)"
    )
    p.add_argument("--batches", type=int, default=4, help="validation batches to measure (default 4)")
    p.add_argument("--out", help="output directory (default: <run dir>/analysis)")
    args = p.parse_args(argv)
    try:
        analyze(args.runs, args.baseline, args.batches, args.out)
    except (AnalyzeError, UnsupportedModelError, ConfigError) as e:
        fail(str(e))
