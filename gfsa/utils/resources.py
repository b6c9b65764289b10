"""Where the suite's files outside the package live: the Hydra config tree (``conf/``), the paper's
tables (``experiments/``) and the Slurm array template (``slurm/``). ``GFSA_CONF_DIR`` points runs at
another config tree (a copy you edit, a cluster's own presets) without touching the suite's."""

from __future__ import annotations

import os
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # a checkout (or editable install) of the suite


def conf_dir() -> Path:
    return Path(os.environ.get("GFSA_CONF_DIR") or SOURCE_ROOT / "conf")


def experiments_dir() -> Path:
    return SOURCE_ROOT / "experiments"


def slurm_template() -> Path:
    return SOURCE_ROOT / "slurm" / "sweep.sbatch"
