"""Linear-time GFSA (Efficient Attention) vs softmax GFSA: forward+backward time and peak memory vs length.

Why: on a linear Transformer, ``A·X = ρ_q(Q)·(ρ_k(K)ᵀ·X)`` costs O(n·d²), so GFSA stays linear in the
sequence length (the paper's appendix reports Efficient Attention + GFSA 11.82× faster than softmax
attention + GFSA on LRA). Two sections, both timed side by side:

- operator: ``gfsa_linear_attention`` against plain Efficient Attention, SDPA, our softmax GFSA
  (``impl=auto``) and the official softmax formulation (explicit ``A @ A``);
- model: a training step of the LRA encoders (``backbone=efficient_attention`` / ``lra_transformer``,
  conf defaults: 2 layers, width 64, 2 heads) on token sequences of each length.

    python benchmarks/linear.py                        # n = 1024 … 8192, the LRA encoders' attention shape
    python benchmarks/linear.py --lengths 2048 --out linear.json
    python benchmarks/linear.py --fast                 # smoke test
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from rich.table import Table

import gfsa
from gfsa.nn.functional import gfsa_attention, gfsa_linear_attention
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
    fmt_spread,
    interleaved,
    official_gfsa_attention,
    peak_bytes,
    ratio,
    setup,
    time_ratio,
    use_official_formulation,
)
from gfsa.zoo.backbones.efficient_attention import LRAEncoder

OPS = ("linear", "linear_gfsa", "sdpa", "softmax_gfsa", "softmax_gfsa_official")
MODELS = ("efficient", "efficient_gfsa", "softmax", "softmax_gfsa", "softmax_gfsa_official")


def softmax_bytes(impl: str, B: int, H: int, n: int, d: int) -> int:
    """Estimated fp32 peak of the softmax variants (to skip what would not fit); linear ones are O(n·d)."""
    nd, nn = B * H * n * d * 4, B * H * n * n * 4
    return int({"sdpa": 10 * nd, "softmax_gfsa": 14 * nd, "softmax_gfsa_official": 7.7 * nn + 10 * nd}.get(impl, 0))


class OpBench:
    def __init__(self, args, n: int):
        self.device, self.dtype = torch.device(args.device), DTYPES[args.dtype]
        gen = torch.Generator().manual_seed(n)
        shape = (args.batch, args.heads, n, args.head_dim)
        self.q, self.k, self.v, self.g = (
            torch.randn(*shape, generator=gen).to(self.device, self.dtype) for _ in range(4)
        )
        for t in (self.q, self.k, self.v):
            t.requires_grad_()
        self.wK = (0.1 * torch.randn(args.heads, generator=gen)).to(self.device).requires_grad_()
        self.K = args.K
        self.input_bytes = 4 * self.q.numel() * self.q.element_size()
        self.official = Counted(official_gfsa_attention)

    def forward(self, impl: str):
        q, k, v, wK, K = self.q, self.k, self.v, self.wK, self.K
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if impl == "linear":
                return gfsa_linear_attention(q, k, v, 0.0, 1.0, 0.0, 1)
            if impl == "linear_gfsa":
                return gfsa_linear_attention(q, k, v, 0.0, 1.0, wK, K)
            if impl == "sdpa":
                return F.scaled_dot_product_attention(q, k, v)
            if impl == "softmax_gfsa":
                return gfsa_attention(q, k, v, 0.0, 1.0, wK, K)
            return self.official(q, k, v, 0.0, 1.0, wK, K)

    def step(self, impl: str) -> None:
        self.forward(impl).backward(self.g)
        for t in (self.q, self.k, self.v, self.wK):
            t.grad = None


def run_ops(args, n: int, out) -> dict:
    bench = OpBench(args, n)
    cells = {}
    for impl in OPS:
        est = softmax_bytes(impl, args.batch, args.heads, n, args.head_dim)
        cells[impl] = {
            "skipped": f"est. {est / 2**30:.1f} GiB > --max-mem-gb" if est > args.max_mem_gb * 2**30 else None
        }
    active = [i for i in OPS if not cells[i]["skipped"]]
    for impl in active:
        bench.step(impl)
        cells[impl]["peak_mib"] = (bench.input_bytes + peak_bytes(lambda i=impl: bench.step(i), bench.device)) / MIB
    timed = interleaved({i: lambda i=i: bench.step(i) for i in active}, args.repeats, args.warmup, bench.device)
    for impl, cell in timed.items():
        cells[impl].update(cell)
    if "softmax_gfsa_official" in active:
        cells["softmax_gfsa_official"]["calls"] = check_official_ran(bench.official, f"operator n={n}")
    row = {
        "n": n,
        "impls": cells,
        "ratios": {
            "official_over_linear_gfsa_time": time_ratio(cells["softmax_gfsa_official"], cells["linear_gfsa"]),
            "softmax_gfsa_over_linear_gfsa_time": time_ratio(cells["softmax_gfsa"], cells["linear_gfsa"]),
            "linear_gfsa_over_linear_time": time_ratio(cells["linear_gfsa"], cells["linear"]),
        },
    }
    out.log(f"operator n={n}: " + ", ".join(f"{i} {c['time_ms']:.1f} ms" for i, c in cells.items() if "time_ms" in c))
    return row


class ModelBench:
    """LRA encoders (conf defaults) on random token ids, GFSA on all layers, one training step (fwd+bwd+AdamW)."""

    def __init__(self, args, n: int):
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        vocab, classes = 17, 10
        self.ids = torch.randint(2, vocab, (args.model_batch, n), device=self.device)
        self.mask = torch.ones_like(self.ids)
        self.labels = torch.randint(0, classes, (args.model_batch,), device=self.device)
        self.models, self.opts, self.official = {}, {}, {}
        for name in MODELS:
            kind = "efficient" if name.startswith("efficient") else "softmax"
            model = LRAEncoder(vocab, classes, n, kind=kind, dim=64, depth=2, num_heads=2, mlp_dim=128, dropout=0.0)
            if "gfsa" in name:
                gfsa.patch(model, layers="all", K=args.K, wK=0.1)
            if name.endswith("official"):  # the same patched model, GFSA through the official code (counted)
                self.official[name] = use_official_formulation(model)
            self.models[name] = model.to(self.device)
            self.opts[name] = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(self, name: str) -> None:
        loss = F.cross_entropy(self.models[name](self.ids, self.mask), self.labels)
        loss.backward()
        self.opts[name].step()
        self.opts[name].zero_grad(set_to_none=True)


def run_models(args, n: int, out) -> dict:
    cells = {}
    active = [m for m in MODELS if not (m == "softmax_gfsa_official" and n > args.model_official_max)]
    bench = ModelBench(args, n)
    for name in MODELS:
        cells[name] = {"skipped": None if name in active else f"n > --model-official-max {args.model_official_max}"}
    for name in active:
        bench.step(name)
        cells[name]["peak_mib"] = peak_bytes(lambda m=name: bench.step(m), bench.device) / MIB
    timed = interleaved({m: lambda m=m: bench.step(m) for m in active}, args.repeats, args.warmup, bench.device)
    for name, cell in timed.items():
        cells[name].update(cell)
    for name, kernel in bench.official.items():
        if name in active:
            cells[name]["calls"] = check_official_ran(kernel, f"model n={n}")
    row = {
        "n": n,
        "models": cells,
        "ratios": {
            "official_over_efficient_gfsa_time": time_ratio(cells["softmax_gfsa_official"], cells["efficient_gfsa"]),
            "softmax_gfsa_over_efficient_gfsa_time": time_ratio(cells["softmax_gfsa"], cells["efficient_gfsa"]),
        },
    }
    out.log(f"model n={n}: " + ", ".join(f"{m} {c['time_ms']:.0f} ms" for m, c in cells.items() if "time_ms" in c))
    return row


def growth(rows: list[dict], section: str, name: str, key: str) -> dict[str, float | None]:
    """How ``name``'s time and memory grow from the first length to each later one (4× n: 4 if linear)."""
    first = rows[0][section][name]
    return {str(r["n"]): ratio(r[section][name].get(key), first.get(key)) for r in rows[1:]}


RATIO_CELLS = {  # ratio key: (numerator, denominator) cells
    "official_over_linear_gfsa_time": ("softmax_gfsa_official", "linear_gfsa"),
    "softmax_gfsa_over_linear_gfsa_time": ("softmax_gfsa", "linear_gfsa"),
    "linear_gfsa_over_linear_time": ("linear_gfsa", "linear"),
    "official_over_efficient_gfsa_time": ("softmax_gfsa_official", "efficient_gfsa"),
    "softmax_gfsa_over_efficient_gfsa_time": ("softmax_gfsa", "efficient_gfsa"),
}


def add_spreads(result: dict, noise: Noise) -> None:
    """The spread of every cell and ratio, into the rows (JSON) and ``noise``."""
    for section, cells_key in (("operator", "impls"), ("model", "models")):
        for r in result[section]:
            cells = r[cells_key]
            for name, cell in cells.items():
                cell["spread"] = noise.check(f"{section} n={r['n']} {name}", cell.get("times_ms", []))
            r["ratio_spread"] = {
                key: noise.ratio(f"{section} n={r['n']} {key}", cells.get(a), cells.get(b))
                for key, (a, b) in RATIO_CELLS.items()
                if key in r["ratios"]
            }


def _time_table(title: str, caption: str, rows: list[dict], cells_key: str, names, digits: str, ratios) -> Table:
    """One row per length: median ms (peak MiB) of each variant, then the ``ratios`` (label, key) with spreads."""
    t = Table(title=title, caption=caption)
    for col in ("n", *names, *(label for label, _ in ratios)):
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        cells = r[cells_key]
        t.add_row(
            str(r["n"]),
            *(
                "skipped" if cells[i]["skipped"] else f"{cells[i]['time_ms']:{digits}} ({cells[i]['peak_mib']:.0f})"
                for i in names
            ),
            *(fmt_spread(r["ratio_spread"][key], ".1f") for _, key in ratios),
        )
    return t


def tables(result: dict, env: dict, noise: Noise) -> list[Table]:
    add_spreads(result, noise)
    c = result["config"]
    caption = f"{env['dtype']} {env['device']} ({env['threads']} threads), torch {env['torch']}, K={c['K']}"
    op = _time_table(
        "Operator forward+backward, median ms (peak MiB, inputs included)",
        f"B={c['batch']} H={c['heads']} d={c['head_dim']}, {caption}",
        result["operator"],
        "impls",
        OPS,
        ".1f",
        [
            ("official/linear GFSA", "official_over_linear_gfsa_time"),
            ("ours softmax/linear GFSA", "softmax_gfsa_over_linear_gfsa_time"),
        ],
    )
    mt = _time_table(
        "LRA encoder training step, median ms (peak MiB)",
        f"batch {c['model_batch']}, 2 layers, width 64, 2 heads, GFSA on all layers; {caption}",
        result["model"],
        "models",
        MODELS,
        ".0f",
        [
            ("official/efficient GFSA", "official_over_efficient_gfsa_time"),
            ("ours softmax/efficient GFSA", "softmax_gfsa_over_efficient_gfsa_time"),
        ],
    )
    g = Table(title=f"Linear GFSA growth vs n={result['operator'][0]['n']} (linear: 4× n → 4×)", caption=caption)
    for col in ("n", "operator time", "operator memory", "model time", "model memory"):
        g.add_column(col, justify="right", no_wrap=True)
    gr = result["growth"]
    for n in gr["operator_time"]:
        g.add_row(
            n,
            *(
                fmt(gr[k].get(n), ".2f", "×")
                for k in ("operator_time", "operator_memory", "model_time", "model_memory")
            ),
        )
    return [op, mt, g]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gfsa bench linear", description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 1024 2048 4096 8192)")
    # The operator defaults are the attention of the LRA encoders (conf defaults: width 64, 2 heads).
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--K", type=float, default=3)
    p.add_argument("--model-batch", type=int, default=8, help="batch of the LRA encoder section")
    p.add_argument("--model-official-max", type=int, default=2048, help="longest n for the official model variant")
    p.add_argument("--max-mem-gb", type=float, default=12.0, help="skip operator cells estimated above this")
    p.add_argument("--fast", action="store_true", help="smoke test: n = 64, 128, 256, one repetition")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.fast:
        args.lengths, args.repeats, args.warmup = args.lengths or [64, 128, 256], 1, 0
        args.batch, args.heads, args.model_batch = 2, 2, 2
    args.lengths = args.lengths or [1024, 2048, 4096, 8192]
    if args.K == int(args.K):
        args.K = int(args.K)
    setup(args, p)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = console()
    env = environment(args)
    keys = ("batch", "heads", "head_dim", "K", "model_batch", "repeats", "warmup")
    result = {"config": {k: getattr(args, k) for k in keys}, "environment": env}
    result["operator"] = [run_ops(args, n, out) for n in args.lengths]
    result["model"] = [run_models(args, n, out) for n in args.lengths]
    result["growth"] = {
        "operator_time": growth(result["operator"], "impls", "linear_gfsa", "time_ms"),
        "operator_memory": growth(result["operator"], "impls", "linear_gfsa", "peak_mib"),
        "model_time": growth(result["model"], "models", "efficient_gfsa", "time_ms"),
        "model_memory": growth(result["model"], "models", "efficient_gfsa", "peak_mib"),
    }
    noise = Noise(args.repeats)
    return finish(result, tables(result, env, noise), args, out, noise)


if __name__ == "__main__":
    main()
