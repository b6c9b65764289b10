"""Hub names without network: the run probes the Hugging Face hub once, switches to offline mode when it
cannot reach it, and fails in one line within seconds (huggingface_hub alone retries each file for ~25 s).

Real ``gfsa run`` subprocesses with the offline variables that conftest sets removed; this machine has no
network (the tests download nothing), so the hub is unreachable here as on a cluster node.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gfsa.zoo.demo import text

GFSA = str(Path(sys.executable).with_name("gfsa"))
NOTICE = "the Hugging Face hub (huggingface.co) cannot be reached: hub names load from the local cache only"
PROBE_BUDGET_S = 5.0  # the probe waits at most 3 s; the failure after it is immediate


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hub")
    bert = text.build_checkpoint("bert", root / "bert", text.sentences(100))
    return {"glue": text.write_glue(root / "glue", n_train=8, n_dev=4), "bert": bert}


def _gfsa_run(tmp_path: Path, *overrides: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    args = [GFSA, "run", *overrides, "logger=none", "trainer.accelerator=cpu", f"paths.results_dir={tmp_path / 'r'}"]
    start = time.perf_counter()
    proc = subprocess.run(args, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - start


def _online_env() -> dict:
    """This environment without the offline switches: what a user's shell has."""
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT")
    return {k: v for k, v in os.environ.items() if k not in drop}


CASES = {  # what is asked of the hub; overrides; what the one line names
    "model": (["backbone=bert", "task=glue/cola", "backbone.init=random"], "backbone.pretrained=bert-base-uncased"),
    "dataset": (["backbone=bert", "task=glue/cola"], "cannot load nyu-mll/glue/cola from the Hugging Face hub"),
    "timm weights": (["backbone=vit_mini", "backbone.pretrained=true"], "could not download timm weights"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hub_name_without_network_fails_fast_in_one_line(case, data, tmp_path):
    overrides, needle = CASES[case]
    if case == "model":
        overrides = [*overrides, f"task.data_dir={data['glue']}"]
    if case == "dataset":
        overrides = [*overrides, f"backbone.pretrained={data['bert']}"]
    proc, seconds = _gfsa_run(tmp_path, *overrides, env=_online_env())
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr[-3000:]
    assert NOTICE in proc.stdout  # the switch to offline mode is said once
    assert proc.stdout.count(NOTICE) == 1 and "Retrying" not in proc.stderr
    if case == "model":  # the probe's cost: the same failure with offline mode already set, plus a few seconds
        offline, reference = _gfsa_run(tmp_path, *overrides, env={**_online_env(), "HF_HUB_OFFLINE": "1"})
        assert offline.returncode == 2 and NOTICE not in offline.stdout
        assert seconds < reference + PROBE_BUDGET_S, (seconds, reference)
        assert "huggingface.co cannot be reached, and the local cache does not have it" in lines[0]
    assert seconds < 30, seconds  # without the probe: ~50 s (model), ~25 s (dataset)
