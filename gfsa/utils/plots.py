"""Charts written to files: matplotlib's pyplot on the Agg backend (no display needed), imported on first use."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (PNG files on a headless node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
