"""The state of a submitted sweep: per cell, done | diverged | running | failed | missing, from its
results record, the Slurm queue and accounting, and the array task's exit file and log."""

from __future__ import annotations

import json
from pathlib import Path

from gfsa.ops.sweep.cells import SweepCell
from gfsa.ops.sweep.slurm import sacct_states, squeue_states
from gfsa.runner import results as R
from gfsa.utils.errors import ConfigError

MANIFEST = "manifest.json"
STATES = ("done", "diverged", "running", "failed", "missing")


def load_manifest(sweep: Path) -> dict:
    try:
        return json.loads((sweep / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{sweep} is not a sweep directory (no readable {MANIFEST})") from None


def queued(sweep: Path) -> set[str]:
    """Run directories of the cells of an earlier submission to ``sweep`` that are still queued or running."""
    if not (sweep / MANIFEST).is_file():
        return set()
    by_index = {c["index"]: c["run_dir"] for c in load_manifest(sweep)["cells"]}
    return {by_index[r["index"]] for r in status(sweep) if r["state"] == "running"}


def ended(cell: SweepCell | dict) -> str | None:
    """``finished`` or ``diverged`` when the cell's run has a record (neither trains again), else None."""
    rec = R.load_record(cell.run_dir if isinstance(cell, SweepCell) else cell["run_dir"])
    return rec.get("status") if rec is not None and rec.get("status") in R.TERMINAL else None


def status(sweep: Path) -> list[dict]:
    """Per cell: state (done | diverged | running | failed | missing) and what it is based on."""
    manifest = load_manifest(sweep)
    latest: dict[int, str] = {}
    for sub in manifest["submissions"]:
        for task, index in enumerate(sub["cells"]):
            latest[index] = f"{sub['job_id']}_{task}"
    jobs = sorted({s["job_id"] for s in manifest["submissions"]})
    queue, acct = squeue_states(jobs), sacct_states(jobs)
    rows = []
    for cell in manifest["cells"]:
        task = latest.get(cell["index"])
        exit_file = sweep / "status" / f"{task}.exit"
        log = sweep / "logs" / f"{task}.out"
        done = ended(cell)
        if done == R.FINISHED:
            state, why = "done", "finished record"
        elif done == R.DIVERGED:
            state, why = "diverged", "recorded as diverged (delete its run dir to train again)"
        elif task is None:
            state, why = "missing", "never submitted"
        elif task in queue:
            state, why = "running", queue[task].lower()
        elif task in acct and acct[task].split()[0] in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED"):
            state, why = "running", acct[task].lower()
        elif task in acct:
            state, why = "failed", f"{acct[task].split()[0].lower()} without a record"
        elif exit_file.is_file():
            state, why = "failed", f"exit {exit_file.read_text().strip()} without a record"
        elif log.is_file():
            state, why = "failed", "ended without a record (see its log)"
        else:
            state, why = "missing", "not in the queue and never started"
        rows.append({"index": cell["index"], "label": cell["label"], "state": state, "why": why, "task": task})
    return rows
