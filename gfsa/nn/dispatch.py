"""``impl="auto"``: which exact path of :func:`gfsa.nn.functional.gfsa_attention` to take. By default a
table (the same choice in every process, so reruns are bit-identical); with :func:`autotune` on
(``GFSA_AUTOTUNE=1``, as cudnn.benchmark), the path measured fastest on first use of each kind of call,
kept for the process and optionally in a JSON file (``GFSA_AUTOTUNE_CACHE``). docs/performance.md says
how the table was measured (``gfsa bench attention --grid``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

# ``auto`` without dropout: the explicit-A blocks (``materialized``) up to the length given here, the flash
# kernel (``fused``) above, by (device type, precision, attention) and head size (the nearest listed one).
# A device or precision not listed always takes ``fused`` (GPU: SDPA's flash/memory-efficient kernels).
# Conservative: where the two paths are within noise either is fine; each entry is chosen so that the path
# it picks is not more than ~10% behind the other at the lengths measured. From two runs of
# `gfsa bench attention --grid --threads 2` on a quiet 2-core CPU, 6 Dec 2026 (docs/performance.md):
# causal attention crosses over earlier in fp32 (the flash kernel skips the masked half, explicit blocks do
# not); bf16's explicit blocks win up to 1024 tokens causal or not; fp32 full attention at 2048 tokens is
# within noise for d=64 (fused was 20–50% faster in issue 14's runs, and needs less memory: fused) and
# materialized for d=128 in both runs. A mask that is not causal counts as "full" (neither path skips
# anything). fp16 on CPU (emulated, rarely used) mirrors bf16 unmeasured.
AUTO_EXPLICIT_MAX_LEN: dict[tuple[str, str, str], dict[int, int]] = {
    ("cpu", "fp32", "full"): {64: 1024, 128: 2048},
    ("cpu", "fp32", "causal"): {64: 512, 128: 512},
    ("cpu", "bf16", "full"): {64: 1024, 128: 1024},
    ("cpu", "bf16", "causal"): {64: 1024, 128: 1024},
    ("cpu", "fp16", "full"): {64: 1024, 128: 1024},
    ("cpu", "fp16", "causal"): {64: 1024, 128: 1024},
}
PRECISIONS = {torch.bfloat16: "bf16", torch.float16: "fp16"}  # anything else uses the fp32 entries


def precision(dtype: torch.dtype) -> str:
    return PRECISIONS.get(dtype, "fp32")


def table_impl(query: Tensor, is_causal: bool = False) -> str:
    """The path :data:`AUTO_EXPLICIT_MAX_LEN` gives for this query's device, dtype, head size and length
    (without dropout): the same in every process, so reruns are bit-identical."""
    attention = "causal" if is_causal else "full"
    row = AUTO_EXPLICIT_MAX_LEN.get((query.device.type, precision(compute_dtype(query)), attention))
    if not row:
        return "fused"
    d = query.shape[-1]
    limit = row[min(row, key=lambda h: (abs(math.log2(h / d)), h))]
    return "materialized" if query.shape[-2] <= limit else "fused"


def auto_impl(
    query: Tensor,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    attn_mask: Tensor | None = None,
    coefficients: tuple = (),
    run=None,
    inputs: tuple = (),
) -> str:
    """The path ``impl="auto"`` takes: ``materialized`` with attention dropout (the official dropout
    semantics need A); otherwise, with :func:`autotune` on, the path measured fastest for this kind of
    call (measured now when ``run`` is given and the kind is new); else :func:`table_impl`. Both go by
    the compute dtype (:func:`compute_dtype`: under autocast, fp32 inputs count as the autocast dtype).

    ``run(impl, *inputs)`` computes the call with ``inputs`` (query, key, value, w0, w1, wK) replaced:
    what :func:`gfsa.nn.functional.gfsa_attention` passes so that a new kind can be measured."""
    if dropout_p > 0:
        return "materialized"
    if torch.compiler.is_compiling() or not autotune_enabled() or query.device.type == "meta":
        return table_impl(query, is_causal)  # never measure while torch.compile traces
    key = autotune_key(query, is_causal, attn_mask, coefficients, inputs)
    choice = _choices_for(key, query.device)
    if choice is None and run is not None and not _capturing(query.device):
        choice = _record(key, _measure(run, inputs, key.mode == "train"), query.device)
    return choice["impl"] if choice else table_impl(query, is_causal)


AUTOTUNE_ENV = "GFSA_AUTOTUNE"  # 1/true/yes/on: measure (as autotune(True)) unless autotune() said otherwise
AUTOTUNE_CACHE_ENV = "GFSA_AUTOTUNE_CACHE"  # a JSON file that keeps measured choices across processes
AUTOTUNE_REPEATS = 5  # timed calls of each path, interleaved, after one warm-up call each: medians compared
_CACHE_FORMAT = "gfsa-autotune/1"
_PATHS = ("fused", "materialized")
_autotune: bool | None = None  # None: follow $GFSA_AUTOTUNE
_memory: dict = {}  # AutotuneKey -> choice, for this process
_disk: dict[str, dict] = {}  # cache file -> its entries, read once per process
_warned: set[str] = set()


class AutotuneKey(NamedTuple):
    """What the choice is kept for: calls that share it get the same path (lengths and head sizes in
    power-of-two buckets)."""

    device: str  # device type: cpu, cuda, …
    dtype: str  # the compute dtype (under autocast, the autocast dtype)
    attention: str  # full | mask | causal
    head_dim: int  # next power of two >= the head size
    length: int  # next power of two >= the sequence length
    coefficients: str  # number (plain Python numbers) | tensor (e.g. learnable per-head wK)
    mode: str  # train (forward+backward timed) | infer (forward only)

    def __str__(self) -> str:
        return "|".join(map(str, self))


def autotune(enabled: bool = True) -> bool:
    """Measure (``True``) or look up (``False``) ``auto``'s choice from now on in this process; returns
    the previous setting. Without a call, ``GFSA_AUTOTUNE=1`` in the environment turns measuring on."""
    global _autotune
    previous, _autotune = autotune_enabled(), bool(enabled)
    return previous


def autotune_enabled() -> bool:
    if _autotune is not None:
        return _autotune
    return os.environ.get(AUTOTUNE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def autotune_choices() -> dict[str, dict]:
    """The choices this process has measured or read from the cache file: ``{key: {"impl", "fused_ms",
    "materialized_ms", …}}``."""
    return {str(k): dict(v) for k, v in _memory.items()}


def autotune_reset() -> None:
    """Forget this process's choices (the cache file is read again on next use; it is not changed)."""
    _memory.clear()
    _disk.clear()


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def compute_dtype(query: Tensor) -> torch.dtype:
    """``query``'s dtype, or the autocast dtype that fp32 inputs are computed in (as SDPA under autocast)."""
    device = query.device.type
    if query.dtype == torch.float32 and device != "meta" and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return query.dtype


def autotune_key(
    query: Tensor, is_causal: bool = False, attn_mask: Tensor | None = None, coefficients=(), inputs=()
) -> AutotuneKey:
    """The kind of call ``query`` (and the other ``inputs``: key, value, coefficients) makes."""
    tensors = [t for t in (query, *inputs, *coefficients) if isinstance(t, Tensor)]
    train = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return AutotuneKey(
        query.device.type,
        str(compute_dtype(query)).removeprefix("torch."),
        "causal" if is_causal else ("mask" if attn_mask is not None else "full"),
        _pow2(query.shape[-1]),
        _pow2(query.shape[-2]),
        "tensor" if any(isinstance(c, Tensor) for c in coefficients) else "number",
        "train" if train else "infer",
    )


def _device_name(device: torch.device) -> str:
    """What the cache file keys choices by besides the AutotuneKey: a file copied to another machine or
    read with other threads does not apply."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def _disk_key(key: AutotuneKey, device: torch.device) -> str:
    return f"{key} @ {_device_name(device)} | torch {torch.__version__}"


def _read_cache(path: str) -> dict[str, dict]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        _warn_once(path, f"{AUTOTUNE_CACHE_ENV}={path}: not read ({e}); measuring instead")
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == _CACHE_FORMAT else None
    if not isinstance(entries, dict):
        _warn_once(path, f"{AUTOTUNE_CACHE_ENV}={path}: not a {_CACHE_FORMAT} file; measuring instead")
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict) and v.get("impl") in _PATHS}


def _choices_for(key: AutotuneKey, device: torch.device) -> dict | None:
    """The choice kept for ``key``: this process's, else the cache file's."""
    if key in _memory:
        return _memory[key]
    path = os.environ.get(AUTOTUNE_CACHE_ENV)
    if path:
        if path not in _disk:
            _disk[path] = _read_cache(path)
        entry = _disk[path].get(_disk_key(key, device))
        if entry is not None:
            _memory[key] = entry
        return entry
    return None


def _record(key: AutotuneKey, times: dict[str, float | None], device: torch.device) -> dict | None:
    """Keep the faster path for ``key`` (None when neither ran: the table decides)."""
    ran = {impl: ms for impl, ms in times.items() if ms is not None}
    if not ran:
        return None
    choice = {"impl": min(ran, key=ran.get), **{f"{i}_ms": times.get(i) for i in _PATHS}}
    choice["repeats"] = AUTOTUNE_REPEATS
    _memory[key] = choice
    path = os.environ.get(AUTOTUNE_CACHE_ENV)
    if path:
        try:  # merged with what other processes wrote meanwhile; replaced atomically
            entries = _read_cache(path)
            entries[_disk_key(key, device)] = choice
            _disk[path] = entries
            target = Path(path).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"format": _CACHE_FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, target)
        except OSError as e:
            _warn_once(path, f"{AUTOTUNE_CACHE_ENV}={path}: not written ({e}); choices kept for this process only")
    return choice


def _warn_once(path: str, message: str) -> None:
    if path not in _warned:
        _warned.add(path)
        warnings.warn(message, stacklevel=3)


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _measure(run, inputs: tuple, train: bool) -> dict[str, float | None]:
    """Median ms of both paths on ``inputs`` (detached copies: no gradient reaches the caller's tensors).
    A path that runs out of memory is left out (the other is taken)."""
    device = inputs[0].device

    def call(impl: str) -> None:
        xs = [t.detach().requires_grad_(train and t.requires_grad) if isinstance(t, Tensor) else t for t in inputs]
        with torch.set_grad_enabled(train):
            out = run(impl, *xs)
            leaves = [x for x in xs if isinstance(x, Tensor) and x.requires_grad]
            if leaves:
                torch.autograd.grad(out, leaves, torch.ones_like(out))

    samples: dict[str, list[float]] = {impl: [] for impl in _PATHS}
    failed: set[str] = set()
    for r in range(1 + AUTOTUNE_REPEATS):  # the first round warms up
        for impl in _PATHS[r % 2 :] + _PATHS[: r % 2]:
            if impl in failed:
                continue
            try:
                _sync(device)
                start = time.perf_counter()
                call(impl)
                _sync(device)
            except _OOM:
                failed.add(impl)
                continue
            if r:
                samples[impl].append((time.perf_counter() - start) * 1e3)
    return {impl: statistics.median(s) if s and impl not in failed else None for impl, s in samples.items()}
