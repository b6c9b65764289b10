"""``gfsa demo-data``: the offline examples. The command writes every domain's data and tiny checkpoints
and prints its commands; the first command of every domain then trains for real (a baseline and a GFSA
run): one through the ``gfsa`` console script exactly as printed, the others composed in process."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose

from gfsa.ops.demo_data import DOMAINS
from gfsa.runner.train import run_job

GFSA = str(Path(sys.executable).with_name("gfsa"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([GFSA, "demo-data", str(root)], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands: dict[str, list[list[str]]] = {}
    domain = None
    for line in proc.stdout.splitlines():
        if line.startswith("## "):
            domain = line[3:]
        elif line.startswith("gfsa run "):
            commands.setdefault(domain, []).append(shlex.split(line))
    return {"root": root, "stdout": proc.stdout, "stderr": proc.stderr, "commands": commands}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GFSA_CACHE_DIR", str(tmp_path / "cache"))  # ListOps and speech tokenizers


def _records(results: Path, task: str) -> dict[str, dict]:
    found = [json.loads(p.read_text()) for p in results.rglob("result.json")]
    return {r["variant"]: r for r in found if r["task"] == task}


def test_every_domain_is_written_with_runnable_commands(demo):
    assert list(demo["commands"]) == [d.name for d in DOMAINS]  # nothing skipped: the dev extras are installed
    assert "skipped" not in demo["stdout"] and "it/s" not in demo["stderr"]  # no progress bars
    root = demo["root"]
    for path in (
        "checkpoints/bert/config.json",
        "checkpoints/gpt2/tokenizer_config.json",
        "glue/CoLA/train.tsv",
        "glue/MNLI/dev_mismatched.tsv",
        "ptb/ptb.train.txt",
        "wikitext103/wiki.valid.tokens",
        "devign/test.jsonl",
        "bigclonebench/data.jsonl",
        "zinc/raw/train.pickle",
        "lrgb/peptides-struct/raw/val.pt",
        "ogb/pcqm4m-v2/raw/data.csv.gz",
        "LibriSpeech/dev-clean/101/2001/101-2001.trans.txt",
    ):
        assert (root / path).is_file(), path
    assert len(list((root / "imagenet" / "train").iterdir())) == 100  # the ImageNet-100 classes
    for domain, commands in demo["commands"].items():
        for argv in commands:
            assert argv[:2] == ["gfsa", "run"] and f"paths.results_dir={root / 'results'}" in argv, domain
    again = subprocess.run([GFSA, "demo-data", str(root)], check=False, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.splitlines()[1:] == demo["stdout"].splitlines()[1:]


def test_printed_command_runs_through_the_console_script(demo, tmp_path):
    """The text domain's first command, as a user pastes it (with HF offline and W&B unused)."""
    argv = demo["commands"]["text"][0]
    env = {**os.environ, "GFSA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [GFSA, *argv[1:]], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bert on cola" in proc.stdout and "baseline" in proc.stdout  # the comparison table
    records = _records(demo["root"] / "results", "cola")
    assert set(records) == {"baseline", "gfsa"} and records["gfsa"]["comparison"]["metric"] == "mcc"


@pytest.mark.parametrize("domain", [d.name for d in DOMAINS if d.name != "text"])
def test_first_command_of_each_domain_trains(demo, domain, tmp_path):
    argv = demo["commands"][domain][0]
    results = tmp_path / "results"  # not the shared one: each test finds only its own records
    overrides = [a for a in argv[2:] if not a.startswith("paths.results_dir=")]
    cfg = compose([*overrides, "with_baseline=true"], results)  # what `auto` means for a single `gfsa run`
    run_job(cfg)
    records = _records(results, cfg.task.name)
    assert set(records) == {"baseline", "gfsa"}, domain
    gfsa = records["gfsa"]
    assert gfsa["status"] == "finished" and gfsa["gfsa"]["added_parameters"] > 0
    assert gfsa["comparison"]["baseline_run"] == records["baseline"]["run_dir"]
    metric = gfsa["comparison"]["metric"]
    assert all(math.isfinite(r["metrics"][metric]["value"]) for r in records.values())


def test_unwritable_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run(
        [GFSA, "demo-data", str(blocker / "demo")], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is not a folder" in proc.stderr
