"""The house rules: one-way imports between the layers, light commands stay light, and a restructuring
changes no result (a small run's record equals the one recorded before it, field by field)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, PYTHON, REPO, compose

from gfsa.runner.train import run

GOLDEN = REPO / "tests" / "data" / "golden_record.json"
# The run golden_record.json was recorded from (at commit edb4135, before the package was split into
# gfsa.nn / zoo / runner / ops), and the record fields that may differ between two runs of it.
GOLDEN_RUN = [*FAST, "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "gfsa.layers=selected"]
GOLDEN_RUN += ["gfsa.wK=0.2", "with_baseline=false"]
VOLATILE = {"timing", "host", "git", "versions", "finished_at"}
# Record fields added since, that describe what the run left rather than what it computed: which
# checkpoint holds the weights of `metrics` and of `best` (best.ckpt beside last.ckpt).
ADDED_FIELDS = {"checkpoints"}
# Config keys renamed on purpose since (they name nothing a run computes): analysis → callbacks. The
# config is compared as what it computes (results.canonical: how a run executes, e.g. run.*, is left out).
RENAMED = {"analysis", "callbacks"}


def test_imports_flow_one_way():
    """import-linter's contracts (pyproject.toml): cli > ops > runner > zoo > nn, the library stands alone,
    utils is pure Python, the light modules import no torch. A new upward import fails here."""
    exe = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(exe)], cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


LIGHT = """
import sys
from gfsa.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert e.code in (0, None), e.code
heavy = sorted(m for m in ("torch", "lightning", "transformers", "timm") if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.fixture(scope="module")
def one_record(tmp_path_factory):
    root = tmp_path_factory.mktemp("light")
    run(compose([*FAST, "gfsa.layers=none"], root))
    return root


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["layers", "selected", "12"],
        ["report", "{root}", "--out", "{out}"],
        ["sweep", "--status", "{sweep}"],
    ],
    ids=["help", "layers", "report", "sweep-status"],
)
def test_light_commands_import_no_torch(args, one_record, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "manifest.json").write_text(json.dumps({"cells": [], "submissions": []}))
    argv = [a.format(root=one_record, out=tmp_path / "report", sweep=sweep) for a in args]
    out = subprocess.run([PYTHON, "-c", LIGHT, *argv], capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout, out.stdout[-2000:]


def test_light_modules_import_no_torch():
    code = "import sys, gfsa, gfsa.runner.results, gfsa.runner.config, gfsa.nn.settings; print('torch' in sys.modules)"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _comparable(record: dict, root: str = "<results>") -> dict:
    from gfsa.runner import results as R

    out = {k: v for k, v in record.items() if k not in VOLATILE | ADDED_FIELDS}
    out["config"] = {k: v for k, v in R.canonical(out["config"]).items() if k not in RENAMED}
    return json.loads(json.dumps(out, sort_keys=True).replace(root, "<results>"))


def test_a_small_run_records_what_it_recorded_before_the_restructuring(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    record = run(compose(GOLDEN_RUN, tmp_path))
    ours, theirs = _comparable(record, str(tmp_path)), _comparable(golden)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:  # field by field, so a difference names its field
        assert ours[key] == theirs[key], key
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_run_directories_of_every_preset_and_option_stay_what_they_were():
    """A run's directory is its identity: an existing results dir must keep matching its configs. A new
    config key that reproduces the old behaviour at some value is registered in results.ADDED_KEYS with
    that value; a preset whose recipe changes on purpose gets its new directory recorded here with a reason."""
    from omegaconf import OmegaConf

    from gfsa.runner import results as R
    from gfsa.runner.config import normalise

    pinned = json.loads((REPO / "tests" / "data" / "run_dirs.json").read_text())
    moved = {}
    for args, rdir in pinned.items():
        cfg = normalise(OmegaConf.to_container(compose([*args.split(), "paths.results_dir=results"]), resolve=True))
        if str(R.run_dir(cfg)) != rdir:
            moved[args] = (rdir, str(R.run_dir(cfg)))
    assert not moved, moved
