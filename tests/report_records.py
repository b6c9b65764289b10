"""Results records shaped like the paper's tables, for the report's statistics and figures: every cell of
the chosen tables run over several seeds (values near the paper's numbers, with seed noise), LRA ListOps
runs with step time and peak memory, and vit_mini/digits runs with gfsa.layers none/selected/all.

The records are what gfsa.runner.train writes (the config each cell's overrides compose to, the pairing
keys, metrics with directions, timing); only the numbers are generated. Values come from a seeded
generator, so ``expected`` (the per-seed values written) lets tests recompute every statistic.
"""

from __future__ import annotations

import random
from pathlib import Path

from conftest import compose
from omegaconf import OmegaConf

from gfsa.ops.tables import Table
from gfsa.runner import results as R

STEP = {"baseline": 1.0, "gfsa": 1.35, "gfsa_even": 1.1}  # step time relative to the baseline's
LRA = {  # backbone → (baseline accuracy, step seconds, peak MB) and what GFSA changes
    "lra_transformer": (0.37, 0.42, 5200.0),
    "efficient_attention": (0.36, 0.035, 610.0),
}


def record(cfg: dict, metrics: dict[str, tuple[float, str]], timing: dict, primary: str, best: bool = False) -> dict:
    """A finished record of ``cfg`` (as gfsa.runner.train writes it) with the given metrics and timing."""
    entries = {k: {"value": v, "direction": d} for k, (v, d) in metrics.items()}
    return {
        "schema": R.SCHEMA,
        "status": "finished",
        "run_dir": str(R.run_dir(cfg)),
        "backbone": cfg["backbone"]["name"],
        "task": cfg["task"]["name"],
        "variant": R.variant_name(cfg),
        "seed": cfg["seed"],
        "pair_key": R.pair_key(cfg),
        "primary_metric": primary,
        "selected_by": "best" if best else "last",
        "metrics": entries,
        "best": entries if best else {},
        "gfsa": {"layers": [], "added_parameters": 0 if R.is_baseline(cfg) else 48},
        "timing": timing,
        "config": cfg,
        "finished_at": "2026-01-02T00:00:00",
    }


def _config(overrides: list[str], root: Path, seed: int) -> dict:
    cfg = OmegaConf.to_container(compose(list(overrides), root), resolve=True)
    cfg["seed"] = seed  # nothing in conf/ interpolates the seed: one composition serves every seed
    return cfg


def write_table_records(root: Path, table: Table, seeds, rows=None, columns=None, noise=0.005, rng=None) -> dict:
    """Records for every cell of ``table`` (optionally only ``rows``/``columns``) and seed; one record per
    distinct override list (MNLI's two cells share a run); ``noise``: the relative std of a value over seeds.
    Returns ``{(row, column, variant): {seed: value}}``
    in table units."""
    rng = rng or random.Random(0)
    runs: dict[tuple, list] = {}
    for cell in table.select(rows, columns):
        runs.setdefault(cell.overrides, []).append(cell)
    expected: dict = {}
    base_time = {}
    for overrides, cells in runs.items():
        cfg0 = None
        for seed in seeds:
            cfg = dict(cfg0 or _config(list(overrides), root, seed), seed=seed)
            cfg0 = cfg0 or cfg
            metrics = {}
            for cell in cells:
                paper = cell.paper if cell.paper is not None else 50.0
                value = round(paper / table.scale * (1 + rng.gauss(0, noise)), 6)
                metrics[cell.metric] = (value, table.direction)
                expected.setdefault((cell.row, cell.column, cell.variant), {})[seed] = value * table.scale
            t0 = base_time.setdefault((cells[0].row, cells[0].column), 0.2 + 0.05 * len(base_time))
            step = t0 * STEP.get(cells[0].variant, 1.2) * (1 + rng.gauss(0, 0.03))
            timing = {"step_time_s": round(step, 5), "peak_memory_mb": 1000.0, "memory_kind": "cuda_max_allocated"}
            R.write_record(R.run_dir(cfg), record(cfg, metrics, timing, cells[0].metric))
    return expected


LISTOPS = ["task=listops", "task.generate.num_train=64", "task.max_tokens=2000"]


def write_listops_records(root: Path, seeds, rng=None) -> dict:
    """LRA ListOps runs (best validation accuracy, step time, CUDA peak memory) of the softmax and the
    Efficient Attention encoders, baseline and GFSA on every layer. Returns ``{(backbone, variant): [per-seed
    (acc, step_s, mb)]}``."""
    rng = rng or random.Random(1)
    out: dict = {}
    for backbone, (acc, step, mb) in LRA.items():
        for layers, gain, cost, extra in (("none", 0.0, 1.0, 0.0), ("all", 0.012, 1.6, 0.35)):
            cfg0 = _config([*LISTOPS, f"backbone={backbone}", f"gfsa.layers={layers}"], root, 0)
            for seed in seeds:
                cfg = dict(cfg0, seed=seed)
                a = round(acc + gain + rng.gauss(0, 0.004), 5)
                t = round(step * cost * (1 + rng.gauss(0, 0.04)), 5)
                m = round(mb * (1 + extra) * (1 + rng.gauss(0, 0.01)), 1)
                timing = {"step_time_s": t, "peak_memory_mb": m, "memory_kind": "cuda_max_allocated"}
                R.write_record(R.run_dir(cfg), record(cfg, {"acc": (a, "up")}, timing, "acc", best=True))
                out.setdefault((backbone, R.variant_name(cfg)), []).append((a, t, m))
    return out


def write_layer_records(root: Path, seeds, rng=None) -> dict:
    """vit_mini on digits (3 epochs) with gfsa.layers none / selected / all. Returns ``{layers: [per-seed
    (acc, step_s)]}``."""
    rng = rng or random.Random(2)
    out: dict = {}
    for layers, acc, cost in (("none", 0.80, 1.0), ("selected", 0.815, 1.12), ("all", 0.82, 1.4)):
        cfg0 = _config(["trainer.max_epochs=3", f"gfsa.layers={layers}"], root, 0)
        for seed in seeds:
            cfg = dict(cfg0, seed=seed)
            a, t = round(acc + rng.gauss(0, 0.006), 5), round(0.01 * cost * (1 + rng.gauss(0, 0.03)), 6)
            timing = {"step_time_s": t, "peak_memory_mb": 300.0, "memory_kind": "process_max_rss"}
            R.write_record(R.run_dir(cfg), record(cfg, {"acc": (a, "up")}, timing, "acc"))
            out.setdefault(layers, []).append((a, t))
    return out
