"""The report's own reading of ``conf/`` (YAML only, no Hydra): the backbone and task names a paper
cell composes to, so that only cells whose names occur among the records are composed (slow)."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from gfsa.ops.tables import Cell
from gfsa.utils.resources import conf_dir

CONF_DIR = conf_dir()


@functools.cache
def _yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _choices(defaults: list) -> dict[str, str]:
    """Group choices of a defaults list (``- task: x`` / ``- override /task: x``)."""
    out = {}
    for item in defaults or []:
        if isinstance(item, dict):
            for k, v in item.items():
                out[str(k).replace("override ", "").strip().lstrip("/")] = v
    return out


def _preset_choices(name: str, seen: frozenset = frozenset()) -> dict[str, str]:
    data = _yaml(CONF_DIR / "preset" / f"{name}.yaml")
    out = {}
    for item in data.get("defaults") or []:  # inherited presets first, their overrides after
        if isinstance(item, str) and item.startswith("/preset/") and item not in seen:
            out |= _preset_choices(item[len("/preset/") :], seen | {item})
    return out | _choices(data.get("defaults"))


def cell_names(cell: Cell) -> tuple[str, str] | None:
    """(backbone.name, task.name) a cell composes to, read from conf/ without Hydra; None if unsure.

    Only a pre-filter (cells whose names differ from every record's are not composed): command-line
    group overrides win over an experiment's defaults, which win over config.yaml's."""
    choice = _choices(_yaml(CONF_DIR / "config.yaml").get("defaults"))
    cli = {}
    for o in cell.overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key == "preset":
            choice |= _preset_choices(value)
        elif key in ("backbone", "task"):
            cli[key] = value
        elif key in ("backbone.name", "task.name"):
            return None
    choice |= cli
    names = []
    for group in ("backbone", "task"):
        if group not in choice:
            return None
        names.append(_yaml(CONF_DIR / group / f"{choice[group]}.yaml").get("name", choice[group]))
    return names[0], names[1]
