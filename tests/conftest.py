"""Shared fixtures: offline environment, in-process Hydra composition, fast CPU overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# No network in tests: W&B offline, Hugging Face hub offline; quiet W&B.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite trains tiny models on a 2-core machine: intra-op threads gain nothing there, and OpenMP's
# hand-offs stall for milliseconds per op when processes share the cores. Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else "python"

# A few CPU steps: enough to train, validate and write a record.
FAST = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "logger=none",
]


def compose(overrides: list[str], results_dir: Path | None = None):
    """The config ``run.py`` would build for ``overrides`` (Hydra, in process)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    extra = [f"paths.results_dir={results_dir}"] if results_dir is not None else []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=[*overrides, *extra])


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    return d
