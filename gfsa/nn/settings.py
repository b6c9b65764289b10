"""GFSA's settings as one typed, validated object: what ``gfsa.patch`` takes and the ``gfsa`` config
group holds. Built once where the values enter (a call of ``gfsa.patch``, a run's config), checked
there, then passed down. Pure Python: sweeps check hundreds of cells without torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gfsa.nn.layers import Spec, normalize_spec

COEFFICIENTS = ("w0", "w1", "wK")
IMPLS = ("auto", "fused", "materialized")
DROPOUT_ORDERS = ("before", "after")
CROSS_ATTENTION = ("plain", "pad")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _from_text(v: Any) -> Any:
    """A number written as text (``gfsa.wK='0.5'`` on a command line) is that number."""
    return float(v) if isinstance(v, str) and _NUMBER.match(v.strip()) else v


def check_K(K: Any) -> float:
    """The filter order: a number >= 1 (K=1 is first order; the paper uses 2..10)."""
    if isinstance(K, bool) or not isinstance(K, (int, float)) or not K >= 1 or not math.isfinite(K):
        raise ValueError(f"gfsa.K={K!r}: K must be a number >= 1 (K=1 is first order; the paper uses 2..10)")
    return int(K) if float(K).is_integer() else float(K)


def _coefficient(name: str, v: Any) -> float:
    v = _from_text(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"gfsa.{name}={v!r}: expected a finite number")
    return float(v)


def _choice(name: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise ValueError(f"gfsa.{name}={v!r}: choose one of {', '.join(choices)}")
    return v


@dataclass(frozen=True)
class GFSASettings:
    """What ``gfsa.patch`` does: ``H = w0·I + w1·A + wK·(A + (K−1)(A² − A))`` on the ``layers`` chosen.

    ``w0, w1, wK`` are initial values (0, 1, 0: the model is unchanged at init) and ``learn`` names the
    learnable ones (the official code learns only wK). ``impl``: fused | materialized | auto;
    ``dropout_order``: attention dropout before (official NLP/graph code) or after the filter;
    ``cross_attention``: plain (no A²) or pad (the official zero-padding to a square).
    """

    layers: Spec = "all"
    K: float = 3
    w0: float = 0.0
    w1: float = 1.0
    wK: float = 0.0
    learn: tuple[str, ...] = field(default=("wK",))
    impl: str = "auto"
    dropout_order: str = "after"
    cross_attention: str = "plain"

    def __post_init__(self):
        """Normalise every value to one form (so equal settings compare and hash equal) or raise
        ValueError naming the option."""
        layers = normalize_spec(self.layers)
        learn = [self.learn] if isinstance(self.learn, str) else list(self.learn or ())
        unknown = [c for c in learn if c not in COEFFICIENTS]
        if unknown:
            raise ValueError(f"gfsa.learn={list(learn)}: unknown {unknown}; choose from {', '.join(COEFFICIENTS)}")
        values = {
            "layers": tuple(layers) if isinstance(layers, list) else layers,
            "K": check_K(_from_text(self.K)),
            **{c: _coefficient(c, getattr(self, c)) for c in COEFFICIENTS},
            "learn": tuple(c for c in COEFFICIENTS if c in learn),
            "impl": _choice("impl", self.impl, IMPLS),
            "dropout_order": _choice("dropout_order", self.dropout_order, DROPOUT_ORDERS),
            "cross_attention": _choice("cross_attention", self.cross_attention, CROSS_ATTENTION),
        }
        for k, v in values.items():
            object.__setattr__(self, k, v)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GFSASettings:
        """From the ``gfsa`` config group (every key required: its defaults live in conf/gfsa/)."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"the gfsa config group lacks {', '.join(missing)}: see conf/gfsa/default.yaml")
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ValueError(f"gfsa.{unknown[0]}: not a GFSA setting; the settings are {', '.join(names)}")
        return cls(**{n: values[n] for n in names})

    def to_config(self) -> dict:
        """Plain values for a config (lists, not tuples): what a results record stores."""
        out = asdict(self)
        out["layers"] = list(self.layers) if isinstance(self.layers, tuple) else self.layers
        out["learn"] = list(self.learn)
        return out

    def layer_spec(self) -> str | list[int]:
        return list(self.layers) if isinstance(self.layers, tuple) else self.layers
