"""Figures written to files: matplotlib's pyplot on the Agg backend (no display needed), imported on first
use; one house style for every figure of the suite; each figure saved as PNG, PDF and SVG."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("png", "pdf", "svg")  # PNG for Markdown, PDF and SVG (vector, text kept as text) for a paper

# Colour-blind-safe (Okabe–Ito); the baseline is always grey, GFSA always blue, so a variant keeps its
# colour across every figure of a report.
BASELINE_COLOR = "#7f7f7f"
PALETTE = (  # Okabe–Ito, then tab10's others (yellow last: faint on white): told apart on screen and in print
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#9467BD",
    "#8C564B", "#17BECF", "#BCBD22", "#E377C2", "#2CA02C", "#F0E442",
)  # fmt: skip
KNOWN_VARIANTS = ("gfsa", "gfsa_even", "contranorm", "attnscale", "featscale")

STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.alpha": 0.3,
    "svg.fonttype": "none",  # SVG text stays text (editable, searchable)
    "svg.hashsalt": "gfsa",  # stable element ids: the same figure gives the same SVG
    "pdf.fonttype": 42,  # TrueType in PDFs, as publishers ask
    "savefig.dpi": 150,
}


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (files on a headless node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def style():
    """The house style for the figures made inside (pyplot is yielded)."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        yield plt


@dataclass
class Chart:
    """A figure saved in every format of :data:`FORMATS`. The figure is closed in pyplot but its axes and
    artists stay readable: tests check what a figure shows through them, not through pixels."""

    figure: Any  # matplotlib.figure.Figure
    files: list[Path] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # numbers the figure plots that its artists do not keep

    @property
    def png(self) -> Path:
        return self.files[0]


def save(fig, path: str | Path, notes: dict | None = None) -> Chart:
    """Save ``fig`` as ``<stem>.png/.pdf/.svg`` beside ``path`` (any suffix is replaced), with a tight
    bounding box so that no title, label or legend outside the axes is cut; close it in pyplot."""
    path = Path(path)
    stem = path.parent / (path.name[: -len(path.suffix)] if path.suffix.lstrip(".") in FORMATS else path.name)
    stem.parent.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in FORMATS:
        files.append(stem.parent / f"{stem.name}.{fmt}")
        fig.savefig(files[-1], bbox_inches="tight", pad_inches=0.05, metadata=_metadata(fmt))
    pyplot().close(fig)
    return Chart(fig, files, notes or {})


def _metadata(fmt: str) -> dict:
    """No creation dates: the same report written twice gives the same PDF and SVG files."""
    if fmt == "pdf":
        return {"CreationDate": None}
    if fmt == "svg":
        return {"Date": None}
    return {}


def variant_colors(variants) -> dict[str, str]:
    """A colour per variant: baseline grey, the known variants fixed, the others from the palette in order."""
    out = {"baseline": BASELINE_COLOR}
    out |= {v: PALETTE[i] for i, v in enumerate(KNOWN_VARIANTS)}
    rest = [v for v in variant_order(variants) if v not in out]
    free = [c for c in PALETTE if c not in out.values()]
    out |= {v: free[i % len(free)] for i, v in enumerate(rest)}
    return out


def variant_order(variants) -> list[str]:
    """Baseline first, then GFSA and its variants, then compared methods, each group by name."""

    def rank(v: str):
        if v == "baseline":
            return (0, "")
        if v in ("gfsa", "gfsa_even"):
            return (1, v)
        if v.startswith("gfsa"):
            return (2, v)
        return (3, f"{KNOWN_VARIANTS.index(v):02d}" if v in KNOWN_VARIANTS else v)

    return sorted(set(variants), key=rank)


# Where a point's label may go, in points from the point: right, left, above, below; then farther out.
_PLACES = (
    (5, 3, "left", "bottom"),
    (5, -3, "left", "top"),
    (-5, 3, "right", "bottom"),
    (-5, -3, "right", "top"),
    (0, 7, "center", "bottom"),
    (0, -7, "center", "top"),
)
_NEAR = [(dx, dy, ha, va) for dx, dy, ha, va in _PLACES]
_FAR = [(dx * f, dy * f, ha, va) for f in (2.2, 3.4) for dx, dy, ha, va in _PLACES]


def place_labels(ax, points: list[tuple[float, float, str]], avoid=(), **text_kw) -> list:
    """Label points without overlaps. Each label takes the first free place, trying: next to its point
    clear of other labels, points and the ``avoid`` segments (data coordinates ``((x0, y0), (x1, y1))``,
    e.g. error bars); next to it clear of labels and points; farther out clear of labels and points, with
    a thin leader line to the point; else next to it. Places stay inside the axes. Call after the axes'
    limits are final."""
    fig = ax.figure
    fig.canvas.draw()  # the layout and limits the labels are measured against
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        taken.append((px - 4, py - 4, px + 4, py + 4))
    segments = []
    for a, b in avoid:
        (ax0, ay0), (bx0, by0) = ax.transData.transform(a), ax.transData.transform(b)
        segments.append((min(ax0, bx0) - 2, min(ay0, by0) - 2, max(ax0, bx0) + 2, max(ay0, by0) + 2))

    def free(box, boxes) -> bool:
        inside = box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1
        return inside and not any(box.x0 < b[2] and box.x1 > b[0] and box.y0 < b[3] and box.y1 > b[1] for b in boxes)

    def put(x, y, text, place, leader=False):
        dx, dy, ha, va = place
        arrow = {"arrowprops": {"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 0, "shrinkB": 3}}
        return ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                           **(arrow if leader else {}), **text_kw)  # fmt: skip

    labels = []
    for x, y, text in points:
        chosen = None
        for places, boxes, leader in ((_NEAR, taken + segments, False), (_NEAR, taken, False), (_FAR, taken, True)):
            for place in places:
                label = put(x, y, text, place, leader)
                if free(_text_box(label, renderer), boxes):
                    chosen = label
                    break
                label.remove()
            if chosen is not None:
                break
        chosen = chosen or put(x, y, text, _NEAR[0])
        box = _text_box(chosen, renderer)
        taken.append((box.x0, box.y0, box.x1, box.y1))
        labels.append(chosen)
    return labels


def _text_box(label, renderer):
    """The label's text alone (an annotation's own extent includes its leader line)."""
    from matplotlib.text import Text

    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)
