"""Which layers get GFSA: a layer-selection spec resolved against a model's depth."""

from __future__ import annotations

import operator
from collections.abc import Sequence

SPEC_FORMS = "none | all | selected | even | odd | first:N | last:N | [i, j, ...] (0-based)"


class LayerSpecError(ValueError):
    """A layer spec that does not fit the model."""


def select_layers(spec: str | int | Sequence[int] | None, num_layers: int) -> list[int]:
    """0-based indices of the layers that get GFSA, sorted and unique.

    ``selected`` is the paper's cheap variant (GFSA_even): the even-numbered layers counting from 1,
    i.e. the 2nd, 4th, … layer = 0-based indices 1, 3, 5, …. ``even``/``odd`` count 0-based
    indices (``even`` = 0, 2, 4, …). A list may use negative indices as Python does.
    """
    if num_layers < 1:
        raise LayerSpecError(f"the model has no attention layers to select from (num_layers={num_layers})")

    given = spec  # `spec` is rebound while parsing; errors quote what the user wrote

    def bad(why: str) -> LayerSpecError:
        return LayerSpecError(f"gfsa.layers={given!r}: {why}; use {SPEC_FORMS} on this {num_layers}-layer model")

    if spec is None:
        return []
    if isinstance(spec, bool):
        raise bad("not a layer spec")
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s.startswith("[") and s.endswith("]"):
            try:
                spec = [int(p) for p in s[1:-1].split(",") if p.strip()]
            except ValueError:
                raise bad("list items must be integers") from None
        elif s in ("none", ""):
            return []
        elif s == "all":
            return list(range(num_layers))
        elif s == "selected":
            return list(range(1, num_layers, 2))
        elif s == "even":
            return list(range(0, num_layers, 2))
        elif s == "odd":
            return list(range(1, num_layers, 2))
        elif s.startswith(("first:", "last:")):
            head, _, count = s.partition(":")
            try:
                n = int(count)
            except ValueError:
                raise bad(f"'{count}' is not a layer count") from None
            if not 1 <= n <= num_layers:
                raise bad(f"{head}:N needs 1 <= N <= {num_layers}")
            return list(range(n)) if head == "first" else list(range(num_layers - n, num_layers))
        else:
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
            i = operator.index(item)
        except TypeError:
            raise bad(f"list items must be integers, got {item!r}") from None
        if not -num_layers <= i < num_layers:
            raise bad(f"index {i} is out of range 0..{num_layers - 1}")
        out.add(i % num_layers)
    return sorted(out)
