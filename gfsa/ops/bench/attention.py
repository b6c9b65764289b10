"""Forward+backward time and peak memory: SDPA vs GFSA (fused, materialized, auto) vs the official GFSA code,
and (``--grid``) the crossover table of ``impl="auto"``.

Why: GFSA should cost about one extra attention pass and O(n) extra memory, against the official
code's explicit ``A @ A`` (O(n³) time, several n×n temporaries). This measures it, after checking
that the GFSA implementations compute the same thing. ``fused`` runs SDPA's kernels (the CPU flash
kernel directly, two passes sharing one logsumexp); ``materialized`` (no dropout) forms ``A`` per block
of heads and recomputes it in the backward; ``auto`` is whichever of the two gfsa_attention picks for
the shape (its column repeats that one's numbers).

    gfsa bench attention                                  # CPU, fp32, n = 256 … 4096
    gfsa bench attention --lengths 1024 --out bench.json
    gfsa bench attention --causal                         # GPT-2-style causal attention
    gfsa bench attention --device cuda --dtype bf16       # half precision runs under autocast
    gfsa bench attention --grid --out grid.json           # fused vs materialized over lengths, head sizes,
                                                          # dtypes, causal/full: prints AUTO_EXPLICIT_MAX_LEN
    gfsa bench attention --fast                           # smoke test: tiny n, 1 repetition

Peak memory counts the inputs (q, k, v, grad_out); ``extra`` is the part above them. Times are medians
with ± half their min–max range; ratios are medians of side-by-side ratios with their [min–max].
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from rich.table import Table

from gfsa.nn import dispatch
from gfsa.nn.functional import gfsa_attention
from gfsa.ops.bench.common import (
    DTYPES,
    MIB,
    Counted,
    Noise,
    add_common_args,
    check_official_ran,
    console,
    environment,
    finish,
    fmt,
    fmt_ms,
    fmt_spread,
    interleaved,
    md_environment,
    md_noise,
    md_table,
    official_gfsa_attention,
    peak_bytes,
    ratio,
    setup,
    time_ratio,
)

IMPLS = ("sdpa", "fused", "materialized", "official")
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
PATHS = ("fused", "materialized")  # the exact paths auto chooses between
AGREE_TOL = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 2e-2}
BEHIND_LIMIT = 1.10  # auto's path more than 10% slower than the faster path: the table needs changing


def estimate_bytes(impl: str, B: int, H: int, n: int, d: int, itemsize: int) -> int:
    """Peak (inputs included) used to skip cells that would not fit: measured fp32 CPU peaks plus ~10%.

    Measured above the inputs (B=4, H=8, d=64): SDPA 5.1 n×d tensors, fused ≤ 9.2, materialized ≤ 9
    n×d tensors plus a few n×n of one block of heads; official 7.0 n×n matrices per head.
    """
    nd, nn = B * H * n * d * itemsize, B * H * n * n * max(itemsize, 4)  # softmax may run in fp32
    extra = {"sdpa": 6 * nd, "fused": 10 * nd, "materialized": 10 * nd + 4 * n * n * 4, "official": 7.7 * nn + 6 * nd}
    return int(4 * nd + extra[impl])


class Bench:
    """Inputs of one shape and the runners on them."""

    def __init__(self, args, n: int, head_dim: int | None = None, dtype: str | None = None, causal=None):
        self.args, self.n = args, n
        self.head_dim = head_dim or args.head_dim
        self.dtype_name = dtype or args.dtype
        self.causal = args.causal if causal is None else causal
        self.device, self.dtype = torch.device(args.device), DTYPES[self.dtype_name]
        gen = torch.Generator().manual_seed(n)
        shape = (args.batch, args.heads, n, self.head_dim)

        def randn(*s):
            return torch.randn(*s, generator=gen).to(self.device, self.dtype)

        self.q, self.k, self.v = (randn(*shape).requires_grad_() for _ in range(3))
        self.grad_out = randn(*shape)
        # Learnable per-head wK in fp32 as the official models hold it; nonzero so the A² term counts.
        self.wK = (0.1 * torch.randn(args.heads, generator=gen)).to(self.device).requires_grad_()
        self.input_bytes = sum(t.numel() * t.element_size() for t in (self.q, self.k, self.v, self.grad_out, self.wK))
        self.official = Counted(official_gfsa_attention)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def forward(self, impl: str):
        a, c = self.args, self.causal
        with self._autocast():
            if impl == "sdpa":
                return F.scaled_dot_product_attention(self.q, self.k, self.v, is_causal=c)
            if impl == "official":
                return self.official(self.q, self.k, self.v, a.w0, 1.0, self.wK, a.K, is_causal=c)
            return gfsa_attention(self.q, self.k, self.v, a.w0, 1.0, self.wK, a.K, is_causal=c, impl=impl)

    def step(self, impl: str) -> None:
        self.forward(impl).backward(self.grad_out)
        for t in (self.q, self.k, self.v, self.wK):
            t.grad = None

    def auto_path(self) -> str:
        """The path ``impl="auto"`` takes for this training call (with autotune on: measured by one call)."""
        if dispatch.autotune_enabled():
            self.step("auto")
        coefs = (self.args.w0, 1.0, self.wK)
        inputs = (self.q, self.k, self.v, *coefs)
        with self._autocast():
            return dispatch.auto_impl(self.q, 0.0, self.causal, None, coefs, inputs=inputs)

    @torch.no_grad()
    def max_abs_diffs(self, impls: list[str]) -> dict[str, float]:
        """Largest |output − fused output| of each GFSA implementation."""
        ref = self.forward("fused").float()
        return {impl: (self.forward(impl).float() - ref).abs().max().item() for impl in impls if impl != "sdpa"}


def bench_cells(args, bench: Bench, impls) -> dict:
    itemsize = bench.q.element_size()
    cells = {}
    for impl in impls:
        est = estimate_bytes(impl, args.batch, args.heads, bench.n, bench.head_dim, itemsize)
        too_big = est > args.max_mem_gb * 2**30
        skipped = f"est. {est / 2**30:.1f} GiB > --max-mem-gb {args.max_mem_gb:g}" if too_big else None
        cells[impl] = {"est_gib": est / 2**30, "skipped": skipped, "times_ms": [], "time_ms": None, "cpu_times_ms": []}
    return cells


def run_length(args, n: int, out) -> dict:
    bench = Bench(args, n)
    cells = bench_cells(args, bench, IMPLS)
    active = [impl for impl in IMPLS if not cells[impl]["skipped"]]

    diffs = bench.max_abs_diffs(active) if "fused" in active else {}
    agree = all(d <= AGREE_TOL[args.dtype] for d in diffs.values())
    for impl in IMPLS:
        cells[impl]["max_abs_diff"] = diffs.get(impl)
    if not agree:
        raise SystemExit(f"n={n}: GFSA implementations disagree (max |Δ| vs fused: {diffs}); not timing them")

    for impl in active:
        bench.step(impl)  # first call outside the profiler (lazy initialisations)
        extra = peak_bytes(lambda impl=impl: bench.step(impl), bench.device)
        cells[impl].update(extra_mib=extra / MIB, peak_mib=(bench.input_bytes + extra) / MIB)
    timed = interleaved(
        {impl: lambda impl=impl: bench.step(impl) for impl in active}, args.repeats, args.warmup, bench.device
    )
    for impl, cell in timed.items():
        cells[impl].update(cell)
    if "official" in active:
        cells["official"]["calls"] = check_official_ran(bench.official, f"n={n}")

    def peak_ratio(a: str, b: str, key: str = "peak_mib"):
        return ratio(cells[a].get(key), cells[b].get(key))

    auto = bench.auto_path()
    row = {
        "n": n,
        "impls": cells,
        "auto_impl": auto,
        "outputs_agree": agree,
        "ratios": {
            "fused_over_sdpa_time": time_ratio(cells["fused"], cells["sdpa"]),
            "materialized_over_sdpa_time": time_ratio(cells["materialized"], cells["sdpa"]),
            "auto_over_sdpa_time": time_ratio(cells[auto], cells["sdpa"]),
            "official_over_fused_time": time_ratio(cells["official"], cells["fused"]),
            "official_over_auto_time": time_ratio(cells["official"], cells[auto]),
            "fused_over_sdpa_cpu_time": time_ratio(cells["fused"], cells["sdpa"], "cpu_times_ms"),
            "auto_over_sdpa_cpu_time": time_ratio(cells[auto], cells["sdpa"], "cpu_times_ms"),
            "official_over_auto_cpu_time": time_ratio(cells["official"], cells[auto], "cpu_times_ms"),
            "fused_over_sdpa_peak": peak_ratio("fused", "sdpa"),
            "materialized_over_sdpa_peak": peak_ratio("materialized", "sdpa"),
            "auto_over_sdpa_peak": peak_ratio(auto, "sdpa"),
            "fused_over_sdpa_extra": peak_ratio("fused", "sdpa", "extra_mib"),
        },
    }
    done = [f"{impl} {cell['time_ms']:.0f} ms" for impl, cell in cells.items() if cell["time_ms"] is not None]
    out.log(f"n={n}: " + ", ".join(done) + f" (auto: {auto})")
    return row


RATIOS = {  # table column: (numerator, denominator) of side-by-side time ratios
    "fused/sdpa": ("fused", "sdpa"),
    "mat./sdpa": ("materialized", "sdpa"),
    "auto/sdpa": ("auto", "sdpa"),
    "official/auto": ("official", "auto"),
}


def add_spreads(rows: list[dict], noise: Noise) -> None:
    """Each cell's and each table ratio's spread, into the rows (JSON) and ``noise``."""
    for row in rows:
        cells = row["impls"]
        for impl, cell in cells.items():
            cell["spread"] = noise.check(f"n={row['n']} {impl}", cell["times_ms"])
        named = {**cells, "auto": cells[row["auto_impl"]]}
        row["ratio_spread"] = {
            col: noise.ratio(f"n={row['n']} {col}", named[a], named[b]) for col, (a, b) in RATIOS.items()
        }


def _time(cell: dict) -> str:
    return "skipped" if cell["skipped"] else fmt_ms(cell.get("spread"))


def caption_of(config: dict, env: dict) -> str:
    return (
        f"B={config['batch']} H={config['heads']} d={config['head_dim']} K={config['K']}"
        f"{' causal' if config['causal'] else ''} {env['dtype']} {env['device']} ({env['threads']} threads), "
        f"torch {env['torch']}, {config['repeats']} repetitions; auto = the path gfsa_attention(impl='auto') takes"
    )


def tables(rows: list[dict], config: dict, env: dict, noise: Noise) -> list[Table]:
    add_spreads(rows, noise)
    caption = caption_of(config, env)
    t = Table(
        title="Forward+backward time, median ms ±half range; ratios: median of side-by-side ratios \\[min–max]",
        caption=caption,
    )
    cols = ("n", *IMPLS, "auto", *RATIOS, "(CPU time)", "max|Δ|")
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)
    m = Table(title="Peak memory, MiB: inputs included (extra above inputs)", caption=caption)
    for col in ("n", *IMPLS, "fused/sdpa", "mat./sdpa", "auto/sdpa"):
        m.add_column(col, justify="right", no_wrap=True)
    notes = []
    for row in rows:
        cells, r = row["impls"], row["ratios"]
        diffs = [c["max_abs_diff"] for c in cells.values() if c.get("max_abs_diff") is not None]
        t.add_row(
            str(row["n"]),
            *(_time(cells[i]) for i in IMPLS),
            row["auto_impl"][:5] + ".",
            *(fmt_spread(row["ratio_spread"][col], ".1f" if col == "official/auto" else ".2f") for col in RATIOS),
            f"{fmt(r['auto_over_sdpa_cpu_time'], '.2f', '×')} {fmt(r['official_over_auto_cpu_time'], '.1f', '×')}",
            fmt(max(diffs) if diffs else None, ".1e"),
        )
        m.add_row(
            str(row["n"]),
            *(
                "skipped" if cells[i]["skipped"] else f"{cells[i]['peak_mib']:.0f} ({cells[i]['extra_mib']:.0f})"
                for i in IMPLS
            ),
            fmt(r["fused_over_sdpa_peak"], ".2f", "×"),
            fmt(r["materialized_over_sdpa_peak"], ".2f", "×"),
            fmt(r["auto_over_sdpa_peak"], ".2f", "×"),
        )
        notes += [f"n={row['n']} {i}: skipped, {c['skipped']}" for i, c in cells.items() if c["skipped"]]
    if notes:
        t.caption += "\n" + "\n".join(notes)
    return [t, m]


def markdown(result: dict) -> str:
    """The operator tables as Markdown (what `gfsa bench gpu` writes for docs/performance.md)."""
    config, env = result["config"], result["environment"]
    rows = []
    for row in result["rows"]:
        cells, spreads = row["impls"], row["ratio_spread"]
        rows.append(
            [
                row["n"],
                *(_time(cells[i]) for i in IMPLS),
                row["auto_impl"],
                *(fmt_spread(spreads[col], ".1f" if col == "official/auto" else ".2f") for col in RATIOS),
                *(
                    "skipped" if cells[i]["skipped"] else f"{cells[i]['peak_mib']:.0f}"
                    for i in ("sdpa", "fused", "official")
                ),
            ]
        )
    headers = ["n", *(f"{i} ms" for i in IMPLS), "auto", *RATIOS, "peak MiB sdpa", "fused", "official"]
    parts = [
        f"Operator, forward+backward: {caption_of(config, env)}. {md_environment(env)}.",
        "",
        md_table(headers, rows),
    ]
    if config.get("stopped"):
        parts += ["", f"> {config['stopped']}"]
    if md_noise(result):
        parts += ["", md_noise(result)]
    return "\n".join(parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gfsa bench attention", description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 256 512 1024 2048 4096)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--K", type=float, default=3, help="GFSA order (3: Swin/Branchformer/CodeT5 setting)")
    p.add_argument("--w0", type=float, default=-0.01, help="fixed identity coefficient (BERT CoLA preset)")
    p.add_argument("--causal", action="store_true", help="causal attention (GPT-2)")
    p.add_argument("--max-mem-gb", type=float, default=12.0, help="skip cells whose estimated peak exceeds this")
    p.add_argument("--fast", action="store_true", help="smoke test: n = 32, 64 (unless --lengths), one repetition")
    g = p.add_argument_group("crossover grid")
    g.add_argument(
        "--grid",
        action="store_true",
        help="fused vs materialized for every length × head size × dtype × causal/full; prints the suggested "
        "AUTO_EXPLICIT_MAX_LEN (--causal and --dtype are ignored)",
    )
    g.add_argument("--head-dims", type=int, nargs="+", default=[64, 128], help="head sizes of the grid")
    g.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), help="grid dtypes (default fp32 bf16; +fp16 on GPU)")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.fast:
        args.lengths, args.repeats, args.warmup = args.lengths or [32, 64], 1, 1
        if args.grid:
            args.head_dims = [8, 16] if args.head_dims == [64, 128] else args.head_dims
            args.batch, args.heads = 2, 2
    args.lengths = args.lengths or [256, 512, 1024, 2048, 4096]
    cuda = args.device.startswith("cuda")
    args.dtypes = args.dtypes or (["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"])
    if args.K == int(args.K):
        args.K = int(args.K)
    setup(args, p)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = console()
    if args.grid:
        from gfsa.ops.bench.grid import grid_main  # grid.py builds on this module's Bench

        return grid_main(args, out)
    config = {k: getattr(args, k) for k in ("batch", "heads", "head_dim", "K", "w0", "causal", "repeats", "warmup")}
    config.update(
        max_mem_gb=args.max_mem_gb, dtype=args.dtype, device=args.device, autotune=dispatch.autotune_enabled()
    )
    env = environment(args)
    rows = []
    for n in args.lengths:
        try:
            rows.append(run_length(args, n, out))
        except OUT_OF_MEMORY:  # longer sequences would not fit either: report the lengths that did
            config["stopped"] = f"out of memory at n={n}; longer lengths not run"
            out.log(config["stopped"])
            break
    result = {"config": config, "environment": env, "implementations": list(IMPLS), "rows": rows}
    noise = Noise(args.repeats)
    return finish(result, tables(rows, config, env, noise), args, out, noise)


if __name__ == "__main__":
    main()
