"""The paper's tables as data (experiments/*.yaml): every number they set beside ours is one the
repository holds with its source (experiments/paper/reference.yaml and its README)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import yaml
from conftest import REPO

from gfsa.ops.tables import load_tables

SOURCE = REPO / "experiments" / "paper" / "reference.yaml"


def _numbers(node) -> set[float]:
    if isinstance(node, bool):
        return set()
    if isinstance(node, (int, float)):
        return {round(float(node), 6)}
    if isinstance(node, dict):
        return set().union(*(_numbers(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_numbers(v) for v in node)) if node else set()
    return set()


def test_every_paper_number_of_the_tables_is_in_the_reference():
    known = _numbers(yaml.safe_load(SOURCE.read_text()))
    missing = []
    for name, table in load_tables(REPO / "experiments").items():
        for cell in table.cells:
            if cell.paper is not None and round(float(cell.paper), 6) not in known:
                missing.append(f"{name}: {cell.row}/{cell.column}/{cell.variant} = {cell.paper}")
    assert not missing, missing


# the workspace folder the paper's numbers were first copied from (spelled in parts: this file names no path)
OUTSIDE = (str(PurePosixPath(os.pardir, "shared")), str(PurePosixPath("shared", "paper")))


def test_the_repository_names_no_file_outside_it():
    for path in [*REPO.glob("experiments/**/*"), *REPO.glob("docs/*.md"), REPO / "README.md"]:
        if path.is_file():
            text = path.read_text()
            assert not any(o in text for o in OUTSIDE), path
