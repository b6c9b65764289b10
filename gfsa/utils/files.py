"""Files that readers on a shared filesystem see whole, with the owner's umask, in strict JSON; and where
the suite caches what it can rebuild."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def cache_dir(name: str = "") -> Path:
    """The suite's cache folder, or ``name`` in it (not created): ``$GFSA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/gfsa``, else ``~/.cache/gfsa``. Whatever is cached there can be rebuilt."""
    root = os.environ.get("GFSA_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gfsa"
    path = Path(root).expanduser()
    return path / name if name else path


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` can only set it,
    and setting it even briefly races with other threads creating files)."""
    try:
        match = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.MULTILINE)
        if match:
            return int(match.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def unwritable(path: str | Path) -> str | None:
    """Why files cannot be created at ``path`` (None if they can): the nearest existing folder on its
    way decides, before anything is written."""
    path = Path(path).expanduser()
    existing = next((p for p in (path, *path.parents) if os.path.lexists(p)), Path("."))
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        return f"{existing}: {'read-only filesystem' if read_only else 'permission denied'}"
    return None


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` so that readers see the old file or the new one, never a half-written one.

    The temporary file is unique to this process (several processes may write the same path) and is
    removed when the write fails (e.g. a full disk). The result gets the mode a plain ``open`` would
    give (``0o666 & ~umask``), not mkstemp's 0600, so other users of a shared results dir can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def finite(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """``obj`` with every NaN/±inf float replaced by None, and the dotted paths that were replaced.

    JSON has no NaN: Python's ``json`` writes a bare ``NaN`` that strict parsers (jq, JavaScript,
    Go, pandas' ``orient=...``) reject."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where or "."]
    if isinstance(obj, dict):
        out, bad = {}, []
        for k, v in obj.items():
            out[k], b = finite(v, f"{where}.{k}" if where else str(k))
            bad += b
        return out, bad
    if isinstance(obj, (list, tuple)):
        out, bad = [], []
        for i, v in enumerate(obj):
            item, b = finite(v, f"{where}[{i}]")
            out.append(item)
            bad += b
        return out, bad
    return obj, []


def dumps_json(data: Any) -> str:
    """Strict JSON (non-finite numbers are an error here: call :func:`finite` first)."""
    return json.dumps(data, indent=2, allow_nan=False, default=str) + "\n"


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """:func:`atomic_write` of strict JSON; non-finite floats become null (callers that must say so
    use :func:`finite` themselves and record the paths)."""
    clean, _ = finite(data)
    return atomic_write(path, dumps_json(clean))
