"""Which layers get GFSA: a layer-selection spec, normalised once, resolved against a model's depth.

Every entry point (``gfsa.patch``, the run config, ``gfsa layers``, sweeps) goes through
:func:`normalize_spec`, so ``-1``, ``"-1"``, ``[-1]`` and ``"[-1]"`` are one spec everywhere and name
one run directory.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence

SPEC_FORMS = "none | all | selected | even | odd | first:N | last:N | [i, j, ...] (0-based)"
NAMED = ("none", "all", "selected", "even", "odd")
_INT = re.compile(r"^[+-]?\d+$")

Spec = str | list[int]


class LayerSpecError(ValueError):
    """A layer spec that is malformed or does not fit the model."""


def _error(given, why: str, num_layers: int | None = None) -> LayerSpecError:
    where = f" on this {num_layers}-layer model" if num_layers is not None else ""
    return LayerSpecError(f"gfsa.layers={given!r}: {why}; use {SPEC_FORMS}{where}")


def normalize_spec(spec: str | int | Sequence[int] | None, num_layers: int | None = None) -> Spec:
    """The one form of a spec: a named form, ``first:N``/``last:N``, or a sorted list of unique ints.

    ``None``, ``[]`` and ``"[]"`` are ``"none"``; an int or an int string is a one-item list. An empty
    string is an error, not the baseline: ``gfsa.layers=`` on a command line is a typo more often than
    a choice. ``num_layers`` only words the errors."""
    given = spec

    def bad(why: str) -> LayerSpecError:
        return _error(given, why, num_layers)

    if spec is None:
        return "none"
    if isinstance(spec, (bool, float)):
        raise bad("not a layer spec")
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, str):
        s = spec.strip().lower()
        if not s:
            raise bad("empty (the baseline is gfsa.layers=none)")
        if _INT.match(s):
            return [int(s)]
        if s.startswith("[") and s.endswith("]"):
            items = [p.strip() for p in s[1:-1].split(",") if p.strip()]
            if not all(_INT.match(p) for p in items):
                raise bad("list items must be integers")
            return sorted({int(p) for p in items}) or "none"
        if s in NAMED:
            return s
        if s.startswith(("first:", "last:")):
            head, _, count = s.partition(":")
            if not _INT.match(count.strip()):
                raise bad(f"'{count}' is not a layer count")
            n = int(count)
            if n < 1 or (num_layers is not None and n > num_layers):
                raise bad(f"{head}:N needs 1 <= N <= {num_layers if num_layers is not None else 'the depth'}")
            return f"{head}:{n}"
        raise bad("unknown spec")
    try:
        items = list(spec)
    except TypeError:
        raise bad("not a layer spec") from None
    out = set()
    for item in items:
        # operator.index accepts ints (numpy's too) but not 1.5, which int() would silently truncate.
        try:
            if isinstance(item, bool):
                raise TypeError
            out.add(operator.index(item))
        except TypeError:
            raise bad(f"list items must be integers, got {item!r}") from None
    return sorted(out) or "none"


def select_layers(spec: str | int | Sequence[int] | None, num_layers: int) -> list[int]:
    """0-based indices of the layers that get GFSA, sorted and unique.

    ``selected`` is the paper's cheap variant (GFSA_even): the even-numbered layers counting from 1,
    i.e. the 2nd, 4th, … layer = 0-based indices 1, 3, 5, …. ``even``/``odd`` count 0-based
    indices (``even`` = 0, 2, 4, …). A list may use negative indices as Python does.
    """
    if num_layers < 1:
        raise LayerSpecError(f"the model has no attention layers to select from (num_layers={num_layers})")
    s = normalize_spec(spec, num_layers)
    if isinstance(s, list):
        for i in s:
            if not -num_layers <= i < num_layers:
                raise _error(spec, f"index {i} is out of range 0..{num_layers - 1}", num_layers)
        return sorted({i % num_layers for i in s})
    if s.startswith(("first:", "last:")):
        head, _, count = s.partition(":")
        n = int(count)
        return list(range(n)) if head == "first" else list(range(num_layers - n, num_layers))
    return {
        "none": [],
        "all": list(range(num_layers)),
        "selected": list(range(1, num_layers, 2)),
        "even": list(range(0, num_layers, 2)),
        "odd": list(range(1, num_layers, 2)),
    }[s]


def spec_tag(spec: str | int | Sequence[int] | None) -> str:
    """The spec as it appears in a run directory's name: ``selected``, ``last-3``, ``L1_3``, ``L-1``."""
    s = normalize_spec(spec)
    if isinstance(s, list):
        return "L" + "_".join(map(str, s))
    return s.replace(":", "-")
