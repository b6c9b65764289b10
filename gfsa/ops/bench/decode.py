"""Per-token decoding time of a GPT-2-small architecture (random init): cached plain attention, cached
GFSA (the cache keeps the rows of A·V beside the keys and values) and GFSA without a cache (every token
runs the whole prefix again), at the context lengths the issue asks for.

Why: GFSA's second pass couples all positions (A²), so without the A·V rows a new token would need the
whole prefix; with them, a token's attention row serves both passes and decoding stays O(n·d) per token.

    gfsa bench decode                          # contexts 256 and 1024 on CPU (fp32)
    gfsa bench decode --device cuda --dtype bf16
    gfsa bench decode --fast                   # smoke test: a 2-layer model, short contexts

At context C: a prompt of C − N tokens, then N greedy tokens (N = --new, default 128, the last one at
position C); per-token time = (time of generate() − time of the prompt's forward) / N, median of
--repeats (default 5: each sample already averages N tokens), variants interleaved, after --warmup
short rounds. Without a cache only --uncached-steps tokens are timed (each is a full forward over ~C
tokens). Ratios are medians of side-by-side ratios with their [min–max] (``?``: noise). Goals
(docs/performance.md): cached GFSA ≤ 1.3× cached plain, and ≥ 10× faster than uncached GFSA at 1024.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.table import Table

import gfsa
from gfsa.ops.bench.common import (
    DTYPES,
    Noise,
    add_common_args,
    console,
    environment,
    finish,
    fmt_spread,
    md_environment,
    md_noise,
    md_table,
    ratio,
    setup,
    sync,
)

GPT2_SMALL = {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}
FAST = {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 1000}


def build(arch: dict, context: int, gfsa_layers: str | None, device, dtype) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    config = tf.GPT2Config(
        **arch,
        n_positions=max(context, 1024),
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = tf.GPT2LMHeadModel(config).eval()
    if gfsa_layers:
        gfsa.patch(model, layers=gfsa_layers, K=3, wK=0.1)
    return model.to(device=device, dtype=dtype)


def _generate(model, prompt: torch.Tensor, new: int, use_cache: bool) -> None:
    model.generate(
        prompt,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=0,
        attention_mask=torch.ones_like(prompt),
    )


def per_token_ms(model, prompt: torch.Tensor, new: int, use_cache: bool, device) -> float:
    """Decoding time per new token, the prompt's own forward (prefill) taken out."""
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        model(prompt, use_cache=use_cache)
        sync(device)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        _generate(model, prompt, new, use_cache)
        sync(device)
        total = time.perf_counter() - t0
    return max(total - prefill, 0.0) / new * 1e3


def run_context(args, context: int, out) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    arch = FAST if args.fast else GPT2_SMALL
    new = min(args.new, context // 2)
    prompt = torch.randint(1, arch["vocab_size"], (1, context - new), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(device)
    models = {
        "plain_cached": (build(arch, context, None, device, dtype), True, new),
        "gfsa_cached": (build(arch, context, "all", device, dtype), True, new),
        "gfsa_uncached": (build(arch, context, "all", device, dtype), False, args.uncached_steps),
    }
    times = {name: [] for name in models}
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(args.warmup):
            for name, (model, cached, steps) in models.items():
                per_token_ms(model, prompt[:, : max(8, prompt.shape[1] // 4)], min(steps, 4), cached, device)
        for r in range(args.repeats):
            order = list(models)[r % 3 :] + list(models)[: r % 3]
            for name in order:
                model, cached, steps = models[name]
                times[name].append(per_token_ms(model, prompt, steps, cached, device))
    ms = {name: statistics.median(t) for name, t in times.items()}
    row = {
        "context": context,
        "prompt": context - new,
        "new_tokens": new,
        "uncached_tokens": args.uncached_steps,
        "per_token_ms": ms,
        "per_token_ms_all": times,
        "spread": {name: (min(t), max(t)) for name, t in times.items()},
        # None where the denominator came out 0 (generate() no slower than the prompt's forward: noise)
        "gfsa_cached_over_plain_cached": ratio(ms["gfsa_cached"], ms["plain_cached"]),
        "uncached_over_cached_gfsa": ratio(ms["gfsa_uncached"], ms["gfsa_cached"]),
    }
    out.print(
        f"context {context}: plain cached {ms['plain_cached']:.1f} ms/token, GFSA cached {ms['gfsa_cached']:.1f}, "
        f"GFSA uncached {ms['gfsa_uncached']:.1f}"
    )
    return row


VARIANTS = ("plain_cached", "gfsa_cached", "gfsa_uncached")
RATIOS = {  # (numerator, denominator) of per-repetition ratios
    "gfsa_cached_over_plain_cached": ("gfsa_cached", "plain_cached"),
    "uncached_over_cached_gfsa": ("gfsa_uncached", "gfsa_cached"),
}
HEADERS = ["context", "plain, cached", "GFSA, cached", "GFSA, no cache", "cached GFSA / plain", "no cache / cached"]


def add_spreads(rows: list[dict], noise: Noise) -> None:
    for r in rows:
        samples = {name: {"times_ms": t} for name, t in r["per_token_ms_all"].items()}
        for name, t in r["per_token_ms_all"].items():
            noise.check(f"context {r['context']} {name}", t)
        r["ratio_spread"] = {
            key: noise.ratio(f"context {r['context']} {key}", samples[a], samples[b]) for key, (a, b) in RATIOS.items()
        }


def _cells(r: dict) -> list[str]:
    ms, lo_hi = r["per_token_ms"], r["spread"]
    return [
        *(f"{ms[k]:.1f} [{lo_hi[k][0]:.1f}–{lo_hi[k][1]:.1f}]" for k in VARIANTS),
        fmt_spread(r["ratio_spread"]["gfsa_cached_over_plain_cached"]),
        fmt_spread(r["ratio_spread"]["uncached_over_cached_gfsa"], ".1f"),
    ]


def table(rows: list[dict], config: dict, noise: Noise) -> Table:
    add_spreads(rows, noise)
    title = (
        f"Decoding, GPT-2-small architecture ({config['device']}, {config['dtype']}): ms per new token, "
        "median \\[min–max]; ratios: median of side-by-side ratios \\[min–max]"
    )
    t = Table(title=title)
    for col in HEADERS:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["context"]), *_cells(r))
    return t


def markdown(result: dict) -> str:
    """The decoding table as Markdown (what `gfsa bench gpu` writes for docs/performance.md)."""
    config = result["config"]
    title = (
        f"Decoding, GPT-2-small architecture ({config['arch']}), ms per new token, median [min–max] of "
        f"{config['repeats']} repetitions; ratios: side by side. {md_environment(result['environment'])}."
    )
    parts = [title, "", md_table(HEADERS, [[r["context"], *_cells(r)] for r in result["rows"]])]
    if md_noise(result):
        parts += ["", md_noise(result)]
    return "\n".join(parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gfsa bench decode", description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--contexts", type=int, nargs="+", help="context lengths (default 256 1024)")
    p.add_argument("--new", type=int, default=128, help="new tokens timed per cached run (the last at the context)")
    p.add_argument("--uncached-steps", type=int, default=4, help="new tokens timed without a cache")
    p.add_argument("--fast", action="store_true", help="smoke test: a 2-layer model, contexts 32 and 64")
    p.set_defaults(repeats=5, warmup=1)
    args = p.parse_args(argv)
    setup(args, p)
    args.contexts = args.contexts or ([32, 64] if args.fast else [256, 1024])
    if args.fast:
        args.new, args.repeats, args.uncached_steps = 4, 1, 2
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = console()
    config = {"device": args.device, "dtype": args.dtype, "repeats": args.repeats, "new": args.new}
    config["arch"] = "fast" if args.fast else "gpt2-small"
    env = environment(args)  # the load average before the runs
    rows = [run_context(args, c, out) for c in args.contexts]
    result = {"config": config, "environment": env, "rows": rows}
    noise = Noise(args.repeats)
    return finish(result, [table(rows, config, noise)], args, out, noise)


if __name__ == "__main__":
    main()
