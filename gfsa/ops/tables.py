"""The paper's tables as data (``experiments/*.yaml``): each cell is one run config plus the
paper's number for it. Sweeps expand cells into runs; reports put our results beside the paper's.

Pure Python + PyYAML (no Hydra, no torch). File format (see experiments/README.md)::

    title: GLUE dev, base models (paper Table 2)
    direction: up                 # up | down: is a higher number better
    improvement: relative         # how the paper prints gains: relative (%) | absolute (points)
    scale: 100                    # paper units = our metric × scale (accuracy 0.81 → 81.0)
    seeds: [0]                    # default seeds per cell
    cells:
      - {row: bert_base, column: cola, variant: baseline, metric: mcc, paper: 56.79,
         overrides: [preset=glue/bert_base, task=glue/cola, gfsa.layers=none]}

A cell may say ``departs: <why>`` when its run cannot follow the official recipe; reports mark it with †.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gfsa.utils.resources import experiments_dir

EXPERIMENTS_DIR = experiments_dir()
DIRECTIONS = ("up", "down")
IMPROVEMENTS = ("relative", "absolute")


class TableError(ValueError):
    """A malformed experiments table: names the file and the cell."""


@dataclass(frozen=True)
class Cell:
    table: str
    row: str
    column: str
    variant: str
    metric: str
    overrides: tuple[str, ...]
    paper: float | None = None
    seeds: tuple[int, ...] = (0,)
    note: str | None = None
    departs: str | None = None  # how this cell's recipe departs from the official code's (reports mark it †)

    @property
    def id(self) -> str:
        return f"{self.table}:{self.row}/{self.column}/{self.variant}"

    def runs(self) -> list[list[str]]:
        """One override list per seed."""
        return [[*self.overrides, f"seed={s}"] for s in self.seeds]


@dataclass
class Table:
    name: str
    title: str
    direction: str
    improvement: str
    scale: float
    cells: list[Cell] = field(default_factory=list)
    path: Path | None = None

    def select(self, rows=None, columns=None, variants=None) -> list[Cell]:
        return [
            c
            for c in self.cells
            if (not rows or c.row in rows)
            and (not columns or c.column in columns)
            and (not variants or c.variant in variants)
        ]


def load_table(path: str | Path) -> Table:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TableError(f"{path}: cannot read the table ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise TableError(f"{path}: expected a mapping with a 'cells' list")
    name = path.stem
    direction = data.get("direction", "up")
    improvement = data.get("improvement", "relative")
    if direction not in DIRECTIONS or improvement not in IMPROVEMENTS:
        raise TableError(f"{path}: direction must be up|down and improvement relative|absolute")
    seeds = tuple(int(s) for s in data.get("seeds", [0]))
    table = Table(name, str(data.get("title", name)), direction, improvement, float(data.get("scale", 1.0)), path=path)
    seen = set()
    for i, raw in enumerate(data["cells"]):
        missing = [k for k in ("row", "column", "variant", "metric", "overrides") if k not in (raw or {})]
        if missing:
            raise TableError(f"{path}: cell {i} lacks {', '.join(missing)}")
        cell = Cell(
            table=name,
            row=str(raw["row"]),
            column=str(raw["column"]),
            variant=str(raw["variant"]),
            metric=str(raw["metric"]),
            overrides=tuple(str(o) for o in raw["overrides"]),
            paper=None if raw.get("paper") is None else float(raw["paper"]),
            seeds=tuple(int(s) for s in raw.get("seeds", seeds)),
            note=raw.get("note"),
            departs=raw.get("departs"),
        )
        if cell.id in seen:
            raise TableError(f"{path}: duplicate cell {cell.row}/{cell.column}/{cell.variant}")
        seen.add(cell.id)
        table.cells.append(cell)
    return table


def load_tables(root: str | Path = EXPERIMENTS_DIR) -> dict[str, Table]:
    return {p.stem: load_table(p) for p in sorted(Path(root).glob("*.yaml"))}
