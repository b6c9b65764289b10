"""Matching records to paper cells.

How a record finds its paper cell: the cell's overrides are composed with Hydra (cached on disk,
keyed by the contents of conf/ and the overrides) and both configs are reduced to
:func:`gfsa.runner.results.canonical` minus the seed and :data:`MATCH_IGNORE` (devices, per-device batch,
precision, …: how a run was executed, not what it computes). A record matches a cell when
``backbone.name`` and ``task.name`` agree and every key present in both configs has the same value
(keys only one side has, e.g. options added to conf/ after a run, are not compared). One record may
fill several cells (MNLI's two dev sets); a record that matches no cell goes to the generic table.
"""

from __future__ import annotations

import hashlib
import json

from gfsa.ops.report.resolve import CONF_DIR
from gfsa.ops.tables import Cell
from gfsa.runner import results as R
from gfsa.utils.errors import first_line
from gfsa.utils.files import atomic_write_json, cache_dir

# How a run was executed, not what it computes: ignored when matching records to paper cells.
MATCH_IGNORE = (
    "seed",
    "checkpoint",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "trainer.deterministic",
    "trainer.benchmark",
    "trainer.enable_checkpointing",
    "task.batch_size",
    "task.eval_batch_size",
    "gfsa.impl",
)


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: node}


def match_view(cfg: dict) -> dict:
    """The flattened config that matching compares (see the module docstring)."""
    flat = _flat(R.canonical(cfg))
    view = {k: v for k, v in flat.items() if not any(k == i or k.startswith(i + ".") for i in MATCH_IGNORE)}
    return view | {"_variant": R.variant_name(cfg)}  # compared always: a group only one side has is skipped


def matches(cell_view: dict, run_view: dict) -> bool:
    for key in ("backbone.name", "task.name", "_variant"):
        if key not in cell_view or cell_view.get(key) != run_view.get(key):
            return False
    return all(run_view[k] == v for k, v in cell_view.items() if k in run_view)


def _conf_digest() -> str:
    h = hashlib.sha1()
    for p in sorted(CONF_DIR.rglob("*.yaml")):
        h.update(str(p.relative_to(CONF_DIR)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cell_views(cells: list[Cell]) -> dict[tuple[str, ...], dict]:
    """Composed and reduced configs of ``cells`` (one per distinct override list), cached on disk."""
    digest = _conf_digest()
    path = cache_dir("cell-configs.json")
    try:
        cache = json.loads(path.read_text())
        cache = cache if cache.get("digest") == digest else {}
    except (OSError, ValueError, AttributeError):
        cache = {}
    views = dict(cache.get("views") or {})
    todo = sorted({c.overrides for c in cells if json.dumps(c.overrides) not in views})
    if todo:
        from hydra import compose, initialize_config_dir
        from hydra.errors import HydraException
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            for overrides in todo:
                try:
                    cfg = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
                    views[json.dumps(overrides)] = match_view(cfg)
                except (HydraException, OmegaConfBaseException) as e:
                    views[json.dumps(overrides)] = {"_error": first_line(e, with_type=False)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"digest": digest, "views": views})
        except OSError:
            pass  # a read-only home: the report still works, only slower next time
    return {c.overrides: views[json.dumps(c.overrides)] for c in cells}
