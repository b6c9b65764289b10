"""The sweep directory: a manifest of the cells and their submissions, one ``sbatch --array`` script per
submission, logs and exit files; ``--only-missing`` submits only cells without a record that are not
still queued or running."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from gfsa.ops.sweep.cells import Plan, SweepCell
from gfsa.ops.sweep.slurm import sbatch, write_script
from gfsa.ops.sweep.status import MANIFEST, ended, queued
from gfsa.runner import results as R
from gfsa.utils.errors import ConfigError
from gfsa.utils.files import atomic_write_json


def default_dir(p: Plan) -> Path:
    """``<results_dir>/.sweeps/<name>-<hash of the cells' run directories>``: the same cells, the same folder."""
    return p.results_dir / ".sweeps" / f"{p.name}-{R.digest([c.run_dir for c in p.cells], 8)}"


def submit(p: Plan, sweep: Path, only_missing: bool, force: bool = False) -> tuple[str | None, list[SweepCell], int]:
    """Write the manifest and the array script, submit it; returns (job id, submitted cells, cells skipped
    because they are still queued or running). If sbatch fails, what this call wrote is removed."""
    cells = [c for c in p.cells if not (only_missing and ended(c))]
    busy = queued(sweep) if only_missing and not force else set()
    skipped = sum(c.run_dir in busy for c in cells)
    cells = [c for c in cells if c.run_dir not in busy]
    created = next((d for d in reversed([sweep, *sweep.parents]) if not d.exists()), None)
    sweep.mkdir(parents=True, exist_ok=True)
    for d in ("logs", "status"):
        (sweep / d).mkdir(exist_ok=True)
    manifest = json.loads((sweep / MANIFEST).read_text()) if (sweep / MANIFEST).is_file() else {"submissions": []}
    manifest.update(
        schema=1,
        name=p.name,
        results_dir=str(p.results_dir),
        launcher=asdict(p.launcher),
        cells=[asdict(c) for c in p.cells],
    )
    job = None
    if cells:
        script = write_script(p, cells, sweep, len(manifest["submissions"]))
        try:
            job = sbatch(script, p.launcher)
        except ConfigError:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            else:
                script.unlink(missing_ok=True)
            raise
        manifest["submissions"].append(
            {"job_id": job, "script": script.name, "cells": [c.index for c in cells], "at": time.strftime("%FT%T%z")}
        )
    atomic_write_json(sweep / MANIFEST, manifest)
    return job, cells, skipped
