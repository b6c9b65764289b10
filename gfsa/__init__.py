"""GFSA: graph-filter-based self-attention (Choi et al., NeurIPS 2024), as a reproduction suite.

The public API imports only torch; trainers, Hydra configs and model zoos load on demand.
"""

from gfsa.functional import gfsa_attention, gfsa_filter
from gfsa.layers import LayerSpecError, select_layers
from gfsa.patch import added_parameters, gfsa_parameters, patch, patched_layers

__version__ = "0.1.0"
__all__ = [
    "LayerSpecError",
    "added_parameters",
    "gfsa_attention",
    "gfsa_filter",
    "gfsa_parameters",
    "patch",
    "patched_layers",
    "select_layers",
]
