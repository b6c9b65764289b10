"""Where the suite's files outside the Python code live: the Hydra config tree (``conf/``), the paper's
tables (``experiments/``) and the Slurm array template (``slurm/``).

A checkout (or an editable install) keeps them at the top of the repository; a wheel ships them inside
the package as ``gfsa/conf``, ``gfsa/experiments`` and ``gfsa/slurm`` (``setup.py`` maps the folders to
those packages). Both are found from the imported ``gfsa`` package itself, never from the working
directory, so ``gfsa run`` works from anywhere. ``GFSA_CONF_DIR`` points runs at another config tree (a
copy you edit, a cluster's own presets) without touching the suite's. Your own Hydra app can compose the
suite's configs as ``pkg://gfsa.conf`` (``initialize_config_module("gfsa.conf")``, ``hydra.searchpath``).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

PACKAGE_DIR = Path(str(files("gfsa")))
# A checkout (or editable install) of the suite; for a wheel, the site-packages folder holding gfsa/.
SOURCE_ROOT = PACKAGE_DIR.parent


def shipped(name: str) -> Path:
    """The folder ``name`` as a wheel installs it (inside the package), else the checkout's top-level one.

    The package is looked at first: a wheel's site-packages may hold another distribution's ``conf/``."""
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else SOURCE_ROOT / name


def conf_dir() -> Path:
    return Path(os.environ.get("GFSA_CONF_DIR") or shipped("conf"))


def experiments_dir() -> Path:
    return shipped("experiments")


def slurm_template() -> Path:
    return shipped("slurm") / "sweep.sbatch"
