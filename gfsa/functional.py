"""The stable import path of the GFSA math, ``from gfsa.functional import gfsa_attention, gfsa_filter``:
the code is :mod:`gfsa.nn.functional`."""

from gfsa.nn.functional import *
from gfsa.nn.functional import __all__  # noqa: F401
