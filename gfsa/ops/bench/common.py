"""What the benchmark scripts share: the official GFSA formulation, side-by-side timing, peak memory, output.

Timing is interleaved: every repetition runs each variant once, in rotating order, so a ratio compares
runs made side by side (ratios are medians of per-repetition ratios). Process CPU time is kept next
to wall time: with other processes on the cores, wall time moves and CPU time barely does.
Peak memory is the most tensor memory alive during one call: on CUDA the caching allocator's peak,
on CPU the profiler's allocation events (``profile_memory=True``) summed in time order.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

MIB = 2**20
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def official_gfsa_attention(
    query, key, value, w0, w1, wK, K, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0, **_
):
    """GFSA as the official code writes it (NLP self-attention of jeongwhanchoi/GFSA): ``A`` and ``A @ A``
    formed explicitly, O(n³) FLOPs and several n×n temporaries per head. Same signature as
    :func:`gfsa.nn.functional.gfsa_attention`, so the model benchmark routes patched models through it."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    attention_scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if is_causal:
        n = attention_scores.shape[-1]
        causal = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
        attention_scores = attention_scores.masked_fill(~causal, float("-inf"))
    elif attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attention_scores = attention_scores.masked_fill(~attn_mask, torch.finfo(attention_scores.dtype).min)
        else:
            attention_scores = attention_scores + attn_mask
    attention_probs = F.softmax(attention_scores, dim=-1)
    if dropout_p > 0:  # NLP code: dropout before the filter
        attention_probs = F.dropout(attention_probs, dropout_p)
    attention_probs2 = torch.matmul(attention_probs, attention_probs)
    identity = torch.eye(attention_probs2.shape[2])[None, None, :, :].to(attention_probs.device)  # `I` there
    attention_probsK = attention_probs + (K - 1) * (attention_probs2 - attention_probs)

    def per_head(w):
        return w[None, :, None, None] if isinstance(w, torch.Tensor) and w.dim() == 1 else w

    attention_probs = per_head(w0) * identity + per_head(w1) * attention_probs + per_head(wK) * attention_probsK
    return torch.matmul(attention_probs.to(value.dtype), value)


@contextlib.contextmanager
def official_formulation():
    """Patched models compute GFSA the official way while inside (every patched module's attention goes
    through ``gfsa.nn.attention.gfsa_attention``); benchmark-only, so it stays out of the public API."""
    module = importlib.import_module("gfsa.nn.attention")
    saved = module.gfsa_attention
    module.gfsa_attention = official_gfsa_attention
    try:
        yield
    finally:
        module.gfsa_attention = saved


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler's C++ start/stop log lines, which go straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Most memory allocated above what was alive before, during one call of ``fn``."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with quiet_stderr():
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if e.device_type() == DeviceType.CPU:
            live += e.nbytes()
            peak = max(peak, live)
    return peak


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device) -> dict:
    """``{name: {"times_ms": [...], "cpu_times_ms": [...]}}``: each repetition runs every fn once, rotating."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out = {name: {"times_ms": [], "cpu_times_ms": []} for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            out[name]["times_ms"].append((time.perf_counter() - start) * 1e3)
            out[name]["cpu_times_ms"].append((time.process_time() - cpu_start) * 1e3)
    for cell in out.values():
        cell["time_ms"] = statistics.median(cell["times_ms"])
        cell["cpu_time_ms"] = statistics.median(cell["cpu_times_ms"])
    return out


def time_ratio(a: dict | None, b: dict | None, key: str = "times_ms") -> float | None:
    """Median of per-repetition ratios a/b (None when either was not timed)."""
    if not a or not b or not a.get(key) or not b.get(key):
        return None
    return statistics.median(x / y for x, y in zip(a[key], b[key]))


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec: str = ".0f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def environment(args) -> dict:
    """What the numbers depend on: versions, threads, device, and the load on the machine."""
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(args.device),
        "dtype": getattr(args, "dtype", "fp32"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if str(args.device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return env


def console() -> Console:
    return Console(width=max(Console().width, 160))  # tables stay readable when piped to a file


def add_common_args(p, device: str = "cpu") -> None:
    p.add_argument("--device", default=device)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="bf16/fp16 run under autocast")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (median), after --warmup")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", type=Path, help="write the measurements as JSON here")


def setup(args, parser) -> None:
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)


def finish(result: dict, tables, args, out: Console) -> dict:
    result["environment"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    for table in tables:
        out.print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        out.print(f"wrote {args.out}")
    return result
