"""What the benchmark scripts share: the official GFSA formulation, side-by-side timing with its spread and
noise warnings, peak memory, output.

Timing is interleaved: every repetition runs each variant once, in rotating order, so a ratio compares
runs made side by side (ratios are medians of per-repetition ratios, shown with the range of those
ratios). Process CPU time is kept next to wall time: with other processes on the cores, wall time moves
and CPU time barely does. :class:`Noise` says when the spread makes a number meaningless (a visible
line under the tables, ``noise`` in the JSON). Peak memory is the most tensor memory alive during one
call: on CUDA the caching allocator's peak, on CPU the profiler's allocation events
(``profile_memory=True``) summed in time order.
"""

from __future__ import annotations

import contextlib
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
from rich.text import Text
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


class Counted:
    """A kernel that counts its calls: each benchmark checks that its official column really ran the
    official formulation (and records how often)."""

    def __init__(self, fn: Callable):
        self.fn, self.calls = fn, 0
        self.__name__ = getattr(fn, "__name__", "kernel")

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def use_official_formulation(model: torch.nn.Module) -> Counted:
    """Route every patched attention module of ``model`` through the official formulation, through the
    library's explicit seam (``GFSACoefficients.kernel``, which ``apply_gfsa`` calls); returns the counter."""
    from gfsa.nn.attention import GFSACoefficients

    kernel = Counted(official_gfsa_attention)
    modules = [m for m in model.modules() if isinstance(m, GFSACoefficients)]
    if not modules:
        raise ValueError("the model has no GFSA-patched attention module to route through the official formulation")
    for m in modules:
        m.kernel = kernel
    return kernel


def check_official_ran(kernel: Counted, what: str) -> int:
    """The official column must come from the official code: stop before reporting it otherwise."""
    if kernel.calls == 0:
        raise SystemExit(f"{what}: the official formulation was never called; its numbers would be ours")
    return kernel.calls


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
    r = ratio_samples(a, b, key)
    return statistics.median(r) if r else None


def ratio_samples(a: dict | None, b: dict | None, key: str = "times_ms") -> list[float]:
    """The per-repetition ratios a/b of two cells timed side by side (empty when either was not timed)."""
    if not a or not b or not a.get(key) or not b.get(key):
        return []
    return [x / y for x, y in zip(a[key], b[key]) if y > 0]


# A number whose repetitions spread by more than this factor (max/min) is noise, not a measurement.
NOISE_SPREAD = 1.3
MIN_REPEATS = 3  # fewer repetitions give no spread to judge a number by
# Defaults of --repeats/--warmup. Why 7: the median of 7 interleaved repetitions stays put when up to 3
# of them are disturbed (another process's burst), and the true median lies within the 7 samples' range
# but with probability 2/2^7 ≈ 1.6%, so the [min–max] shown is a fair error bar. Why 2 warm-ups: the
# first call pays one-time costs (allocator growth, kernel and oneDNN/cuBLAS plan selection, lazy
# imports), the second checks that the caches it filled are in place.
REPEATS, WARMUP = 7, 2


def spread(samples: list[float]) -> dict | None:
    """``{"min", "median", "max", "spread"}`` (spread = max/min) of a cell's or a ratio's repetitions."""
    if not samples:
        return None
    lo, hi = min(samples), max(samples)
    return {"min": lo, "median": statistics.median(samples), "max": hi, "spread": hi / lo if lo > 0 else math.inf}


def busy_load(env: dict) -> float | None:
    """Load on the machine beyond what this benchmark adds itself (its threads on CPU, one on GPU): the
    larger of the load average before it started and after it ended less its own share."""
    start, end = env.get("load_average"), env.get("load_average_end")
    if not start:
        return None
    own = env.get("threads", 1) if str(env.get("device", "cpu")).startswith("cpu") else 1
    return max(start[0], (end[0] - own) if end else 0.0)


def busy_limit(env: dict) -> float:
    """Load above which other processes are competing: half a core, or a tenth of the cores."""
    return max(0.5, 0.1 * (env.get("cores") or 1))


class Noise:
    """What makes a benchmark's numbers meaningless, collected while its tables are built: too few
    repetitions, cells or ratios whose repetitions spread by more than :data:`NOISE_SPREAD` (marked ``?``
    in the tables) and a busy machine. :meth:`report` goes into the JSON, :meth:`lines` under the tables."""

    def __init__(self, repeats: int):
        self.repeats = repeats
        self.noisy: list[str] = []

    def check(self, what: str, samples: list[float]) -> dict | None:
        """The spread of ``samples``, with ``noisy`` set (and remembered) when it is above the limit."""
        s = spread(samples)
        if s is not None:
            s["noisy"] = self.repeats >= MIN_REPEATS and s["spread"] > NOISE_SPREAD
            if s["noisy"]:
                self.noisy.append(what)
        return s

    def ratio(self, what: str, a: dict | None, b: dict | None, key: str = "times_ms") -> dict | None:
        return self.check(what, ratio_samples(a, b, key))

    def report(self, env: dict) -> dict:
        load = busy_load(env)
        busy = load is not None and load > busy_limit(env)
        few = self.repeats < MIN_REPEATS
        warnings = []
        if few:
            warnings.append(
                f"{self.repeats} repetition(s): no spread to judge the numbers by; they are not measurements "
                f"(use --repeats >= {MIN_REPEATS}; default {REPEATS})"
            )
        if self.noisy:
            shown = ", ".join(self.noisy[:6]) + (f", … ({len(self.noisy)} in all)" if len(self.noisy) > 6 else "")
            warnings.append(
                f"noise: {shown} spread by more than {NOISE_SPREAD:g}× (max/min) over the repetitions (marked ?): "
                "those ratios are not measurements; rerun on a quiet machine or with more --repeats"
            )
        if busy:
            warnings.append(
                f"busy machine: load average {load:.2f} beyond this benchmark's own (limit {busy_limit(env):.2f}; "
                f"start {env['load_average'][0]:.2f}, end {(env.get('load_average_end') or [0])[0]:.2f}): "
                "other processes shared the cores"
            )
        return {
            "meaningless": few or bool(self.noisy),
            "busy": busy,
            "noisy": list(self.noisy),
            "spread_limit": NOISE_SPREAD,
            "warnings": warnings,
        }


def fmt_spread(s: dict | None, spec: str = ".2f", suffix: str = "×") -> str:
    """``median [min–max]``, with ``?`` when the spread makes it noise."""
    if s is None:
        return "—"
    mark = "?" if s.get("noisy") else ""
    return f"{s['median']:{spec}}{suffix} [{s['min']:{spec}}–{s['max']:{spec}}]{mark}"


def fmt_ms(s: dict | None, spec: str = ".1f") -> str:
    """``median ±x%`` (half the min–max range), with ``?`` when the spread makes it noise."""
    if s is None:
        return "—"
    half = 50 * (s["max"] - s["min"]) / s["median"] if s["median"] else 0.0
    return f"{s['median']:{spec}} ±{half:.0f}%" + ("?" if s.get("noisy") else "")


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec: str = ".0f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def cpu_name() -> str:
    """The CPU model (Linux: /proc/cpuinfo), else what platform knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(args) -> dict:
    """What the numbers depend on: versions, threads, device, and the load on the machine."""
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(args.device),
        "dtype": getattr(args, "dtype", "fp32"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if str(args.device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return env


def console() -> Console:
    return Console(width=max(Console().width, 200))  # tables stay readable when piped to a file


def add_common_args(p, device: str = "cpu") -> None:
    p.add_argument("--device", default=device)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="bf16/fp16 run under autocast")
    p.add_argument(
        "--repeats", type=int, default=REPEATS, help=f"timed interleaved repetitions (median; default {REPEATS})"
    )
    p.add_argument("--warmup", type=int, default=WARMUP, help=f"untimed rounds first (default {WARMUP})")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", type=Path, help="write the measurements as JSON here")


def setup(args, parser) -> None:
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)


def end_environment(result: dict) -> None:
    result["environment"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None


def finish(result: dict, tables, args, out: Console, noise: Noise | None = None) -> dict:
    """Print the tables, the noise warnings under them, and write the JSON (``noise`` included)."""
    if "load_average_end" not in result["environment"]:
        end_environment(result)
    for table in tables:
        out.print(table)
    if noise is not None:
        result["noise"] = noise.report(result["environment"])
        for line in result["noise"]["warnings"]:
            out.print(Text(f"warning: {line}", style="bold yellow"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        out.print(f"wrote {args.out}")
    return result


def md_table(headers: list[str], rows: list[list[str]], align_first_left: bool = True) -> str:
    """A GitHub Markdown table (what docs/performance.md holds)."""
    sep = [(":---" if i == 0 and align_first_left else "---:") for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def md_environment(env: dict) -> str:
    """One line: device, dtype, threads, torch, and the load average."""
    where = env.get("gpu") or f"{env.get('cpu')} ({env.get('cores')} cores, {env.get('threads')} threads)"
    load = env.get("load_average")
    end = env.get("load_average_end")
    load_text = f"; load average {load[0]:.2f} → {end[0]:.2f}" if load and end else ""
    return f"{where}, {env.get('dtype')}, torch {env.get('torch')}{load_text}"


def md_noise(result: dict) -> str:
    """The noise warnings of a result as Markdown notes (empty when none)."""
    return "\n".join(f"> **warning:** {line}" for line in result.get("noise", {}).get("warnings", []))
