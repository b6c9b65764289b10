"""Read a W&B offline ``run-<id>.wandb`` file back, to check what the suite logged.

wandb ≥ 0.2x writes it from its Go core and no longer ships a Python reader. The file is a
LevelDB-style log (32 KiB blocks of CRC + length + type framed chunks) of ``wandb_internal``
protobuf records, after a 7-byte header (':W&B', magic 0xBEE1, version).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")  # crc32c, length, type (1 full, 2 first, 3 middle, 4 last)


def records(path: str | Path):
    """Yield the protobuf Records of an offline run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data, 0)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    pos, pending = HEADER.size, b""
    while pos + CHUNK.size <= len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK.size:  # block trailer padding
            pos += room
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += room
            continue
        payload = data[pos + CHUNK.size : pos + CHUNK.size + length]
        pos += CHUNK.size + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec
            pending = b""


def complete_records(path: str | Path, timeout: float = 60.0) -> list:
    """The records once the run's exit record is on disk.

    Why: ``wandb.finish()`` returns when W&B's core service has the exit, but the service (a separate
    process shared by the runs of one Python process) may close the file a moment later; a
    reader that comes too early sees only the 7-byte header.
    """
    deadline = time.monotonic() + timeout
    while True:
        recs = list(records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.2)


def logged(path: str | Path, wait: bool = True) -> tuple[dict, dict]:
    """(run facts, every key logged in history or summary → last value) of an offline run file.

    ``wait=False`` for files of processes that have exited (a preempted attempt may have no exit record).
    """
    run, values = {}, {}
    for rec in complete_records(path) if wait else records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run = {"id": r.run_id, "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags)}
        elif kind in ("history", "summary"):
            for item in getattr(rec, kind).item if kind == "history" else rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                values[key] = json.loads(item.value_json)
    return run, values
