"""``gfsa bench attention --grid``: fused vs materialized over lengths × head sizes × dtypes × causal/full,
and the ``AUTO_EXPLICIT_MAX_LEN`` table of :mod:`gfsa.nn.dispatch` that follows from it (docs/performance.md).
"""

from __future__ import annotations

import datetime
import itertools

import torch
from rich.table import Table

from gfsa.nn import dispatch
from gfsa.ops.bench.attention import AGREE_TOL, BEHIND_LIMIT, OUT_OF_MEMORY, PATHS, Bench, bench_cells
from gfsa.ops.bench.common import (
    DTYPES,
    Noise,
    environment,
    finish,
    fmt_ms,
    fmt_spread,
    interleaved,
    md_environment,
    md_noise,
    md_table,
    time_ratio,
)


def run_grid_cell(args, n: int, d: int, dtype: str, causal: bool, out, progress: str = "") -> dict:
    """fused vs materialized for one shape, timed side by side, and the path auto takes there."""
    bench = Bench(args, n, head_dim=d, dtype=dtype, causal=causal)
    cells = bench_cells(args, bench, PATHS)
    where = {"n": n, "head_dim": d, "dtype": dtype, "causal": causal}
    skipped = [c["skipped"] for c in cells.values() if c["skipped"]]
    if skipped:
        out.log(f"{progress} n={n} d={d} {dtype}{' causal' if causal else ''}: skipped, {skipped[0]}")
        return {**where, "impls": cells, "skipped": skipped[0]}
    diff = bench.max_abs_diffs(list(PATHS))["materialized"]
    if diff > AGREE_TOL[dtype]:  # recorded, and the rest of the grid still runs (the table ignores the cell)
        reason = f"materialized and fused disagree: max |Δ| {diff:.2e} > {AGREE_TOL[dtype]:g}"
        out.log(f"{progress} n={n} d={d} {dtype}{' causal' if causal else ''}: NOT TIMED, {reason}")
        return {**where, "impls": cells, "skipped": reason, "max_abs_diff": diff}
    timed = interleaved({i: lambda i=i: bench.step(i) for i in PATHS}, args.repeats, args.warmup, bench.device)
    for impl, cell in timed.items():
        cells[impl].update(cell)
    auto = bench.auto_path()
    fused, mat = cells["fused"]["time_ms"], cells["materialized"]["time_ms"]
    row = {
        **where,
        "impls": cells,
        "skipped": None,
        "max_abs_diff": diff,
        "auto_impl": auto,
        "materialized_over_fused": time_ratio(cells["materialized"], cells["fused"]),
        "auto_over_best": cells[auto]["time_ms"] / min(fused, mat),
    }
    out.log(
        f"{progress} n={n} d={d} {dtype}{' causal' if causal else ''}: fused {fused:.1f} ms, materialized {mat:.1f} ms "
        f"(auto: {auto})"
    )
    return row


def faster(spread: dict | None) -> str:
    """Which path is faster, from the range of per-repetition materialized/fused ratios."""
    if spread is None:
        return "—"
    if spread["max"] < 1:
        return "materialized"
    if spread["min"] > 1:
        return "fused"
    return "either (noise)"


def suggest(rows: list[dict], device: str) -> list[dict]:
    """Per (precision, attention, head size): the longest length to give ``materialized`` (0: always fused)
    that keeps the chosen path's worst slowdown against the faster path smallest over the lengths measured
    (ties: the shorter, i.e. fused, which needs less memory)."""
    out = []
    groups = itertools.groupby(
        sorted((r for r in rows if not r["skipped"]), key=lambda r: (r["dtype"], r["causal"], r["head_dim"], r["n"])),
        key=lambda r: (r["dtype"], r["causal"], r["head_dim"]),
    )
    for (dtype, causal, d), group in groups:
        group = list(group)
        ratios = {r["n"]: r["materialized_over_fused"] for r in group}

        candidates = [0, *sorted(ratios)]
        best = min(candidates, key=lambda limit, r=ratios: (round(_worst(r, limit)[0], 2), limit))
        behind, at = _worst(ratios, best)
        out.append(
            {
                "key": [device, dispatch.precision(DTYPES[dtype]), "causal" if causal else "full"],
                "head_dim": d,
                "max_len": best,
                "worst_behind": behind,
                "worst_at": at,
                "within_limit": behind <= BEHIND_LIMIT,
            }
        )
    return out


def _worst(ratios: dict[int, float], limit: int) -> tuple[float, int]:
    """How far behind the faster path the choice "materialized up to ``limit``" is at its worst length
    (``ratios``: materialized/fused time by length), and that length."""
    return max((max(x, 1.0) if n <= limit else max(1 / x, 1.0), n) for n, x in ratios.items())


def table_python(suggested: list[dict], env: dict, config: dict) -> str:
    """The suggested table as the Python of gfsa/nn/dispatch.py's AUTO_EXPLICIT_MAX_LEN."""
    entries: dict[tuple, dict[int, int]] = {}
    for s in suggested:
        entries.setdefault(tuple(s["key"]), {})[s["head_dim"]] = s["max_len"]
    where = env.get("gpu") or f"{env['cpu']}, {env['threads']} threads"
    header = (
        f"# gfsa bench attention --grid on {env['device']} ({where}), torch {env['torch']}, B={config['batch']} "
        f"H={config['heads']}, {config['repeats']} repetitions, {datetime.date.today().isoformat()}"
    )
    lines = [header, "AUTO_EXPLICIT_MAX_LEN = {"]
    for key, row in entries.items():
        lines.append(f"    {key!r}: {{{', '.join(f'{d}: {n}' for d, n in sorted(row.items()))}}},")
    lines.append("}")
    return "\n".join(lines)


def grid_tables(result: dict, noise: Noise) -> list[Table]:
    config, env = result["config"], result["environment"]
    t = Table(
        title="auto's crossover: forward+backward ms (median ±half range), materialized/fused \\[min–max], faster path",
        caption=(
            f"B={config['batch']} H={config['heads']} K={config['K']}, per-head learnable wK, {env['device']} "
            f"({env['threads']} threads), torch {env['torch']}, {config['repeats']} repetitions; "
            f"auto/best > {BEHIND_LIMIT:.2f}: the table sends auto the slower way"
        ),
    )
    for col in ("dtype", "attention", "d", "n", "fused", "materialized", "mat./fused", "faster", "auto", "auto/best"):
        t.add_column(col, justify="right", no_wrap=True)
    for row in result["grid"]:
        what = f"{row['dtype']} {'causal' if row['causal'] else 'full'} d={row['head_dim']} n={row['n']}"
        cells = row["impls"]
        if row["skipped"]:
            t.add_row(row["dtype"], "causal" if row["causal"] else "full", str(row["head_dim"]), str(row["n"]),
                      "skipped", "skipped", "—", "—", "—", row["skipped"])  # fmt: skip
            continue
        for impl in PATHS:
            cells[impl]["spread"] = noise.check(f"{what} {impl}", cells[impl]["times_ms"])
        row["ratio_spread"] = noise.ratio(f"{what} mat./fused", cells["materialized"], cells["fused"])
        row["faster"] = faster(row["ratio_spread"])
        behind = row["auto_over_best"]
        t.add_row(
            row["dtype"],
            "causal" if row["causal"] else "full",
            str(row["head_dim"]),
            str(row["n"]),
            fmt_ms(cells["fused"]["spread"]),
            fmt_ms(cells["materialized"]["spread"]),
            fmt_spread(row["ratio_spread"]),
            row["faster"],
            row["auto_impl"],
            f"{behind:.2f}×" + (" !" if behind > BEHIND_LIMIT else ""),
        )
    s = Table(title="Suggested AUTO_EXPLICIT_MAX_LEN entries (materialized up to max_len tokens, fused above)")
    for col in ("entry", "head size", "max_len", "worst: behind the faster path", "at n"):
        s.add_column(col, justify="right", no_wrap=True)
    for e in result["suggested"]:
        s.add_row(
            str(tuple(e["key"])),
            str(e["head_dim"]),
            str(e["max_len"]),
            f"{e['worst_behind']:.2f}×"
            + ("" if e["within_limit"] else f" (> {BEHIND_LIMIT:.2f}: no single crossover)"),
            str(e["worst_at"]),
        )
    return [t, s]


def markdown_grid(result: dict) -> str:
    config, env = result["config"], result["environment"]
    rows = []
    for row in result["grid"]:
        cells = row["impls"]
        head = [row["dtype"], "causal" if row["causal"] else "full", row["head_dim"], row["n"]]
        if row["skipped"]:
            rows.append([*head, "skipped", "skipped", "—", "—", "—", row["skipped"]])
            continue
        rows.append(
            [
                *head,
                fmt_ms(cells["fused"].get("spread")),
                fmt_ms(cells["materialized"].get("spread")),
                fmt_spread(row.get("ratio_spread")),
                row.get("faster", "—"),
                row["auto_impl"],
                f"{row['auto_over_best']:.2f}×" + (" !" if row["auto_over_best"] > BEHIND_LIMIT else ""),
            ]
        )
    headers = [
        "dtype",
        "attention",
        "d",
        "n",
        "fused ms",
        "materialized ms",
        "mat./fused",
        "faster",
        "auto",
        "auto/best",
    ]
    title = (
        f"`impl='auto'` crossover (`gfsa bench attention --grid`), B={config['batch']} H={config['heads']}, "
        f"{config['repeats']} repetitions. {md_environment(env)}."
    )
    parts = [
        title,
        "",
        md_table(headers, rows),
        "",
        "Suggested table:",
        "",
        "```python",
        result["suggested_python"],
        "```",
    ]
    if md_noise(result):
        parts += ["", md_noise(result)]
    return "\n".join(parts)


def grid_main(args, out) -> dict:
    config = {k: getattr(args, k) for k in ("batch", "heads", "K", "w0", "repeats", "warmup", "max_mem_gb")}
    config.update(device=args.device, lengths=args.lengths, head_dims=args.head_dims, dtypes=args.dtypes, grid=True)
    config["autotune"] = dispatch.autotune_enabled()
    env = environment(args)
    env["dtype"] = "/".join(args.dtypes)
    cells = list(itertools.product(args.dtypes, (False, True), args.head_dims, args.lengths))
    rows = []
    for i, (dtype, causal, d, n) in enumerate(cells, 1):
        try:
            rows.append(run_grid_cell(args, n, d, dtype, causal, out, f"({i}/{len(cells)})"))
        except OUT_OF_MEMORY:  # the cell is left out; the other cells still count
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            where = {"n": n, "head_dim": d, "dtype": dtype, "causal": causal}
            rows.append({**where, "impls": {}, "skipped": "out of memory"})
            out.log(f"({i}/{len(cells)}) n={n} d={d} {dtype}{' causal' if causal else ''}: out of memory")
    result = {"config": config, "environment": env, "grid": rows}
    result["suggested"] = suggest(rows, torch.device(args.device).type)
    result["suggested_python"] = table_python(result["suggested"], env, config)
    noise = Noise(args.repeats)
    tabs = grid_tables(result, noise)
    result["auto_within_limit"] = all(r["auto_over_best"] <= BEHIND_LIMIT for r in rows if not r["skipped"])
    result = finish(result, tabs, args, out, noise)
    out.print("\nSuggested table for gfsa/nn/dispatch.py (paste it there; docs/performance.md says how):\n")
    print(result["suggested_python"])
    return result
