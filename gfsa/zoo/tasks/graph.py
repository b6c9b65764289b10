"""Molecular graph benchmarks: ZINC, PCQM4M / PCQM4Mv2 (OGB-LSC) and Peptides (LRGB), graph-level targets.

The loaders are torch_geometric's (``ZINC``, ``LRGBDataset``) and, for OGB-LSC, a small PyG dataset
over OGB's own files and ``ogb.utils.smiles2graph`` (ogb's PyG classes cannot load under torch >= 2.6).
Structural encodings are computed once by a ``pre_transform`` and cached by PyG in a processed
folder named after them (``processed_spd``, ``processed_rwse20``…), so caches of different
encodings sit side by side. Batches are ``{"graph": torch_geometric Batch, "labels": (B, T)}``.
"""

from __future__ import annotations

import csv
import logging
import os
import os.path as osp
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path
from torch.utils.data import DataLoader
from torch_geometric.data import Batch, Data, InMemoryDataset, download_url, extract_zip
from torch_geometric.datasets import ZINC, LRGBDataset
from torch_geometric.transforms import AddRandomWalkPE
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAveragePrecision
from torchmetrics.regression import MeanAbsoluteError

from gfsa.utils.errors import ConfigError, first_line
from gfsa.zoo.formats import UNREACHABLE
from gfsa.zoo.tasks.base import Task, prefixed_directions

log = logging.getLogger(__name__)

ENCODINGS = ("spd", "rwse")


class StructuralEncodings:
    """PyG ``pre_transform``: what the backbones need beyond atoms and bonds, computed once per graph.

    ``spd``: all-pairs shortest-path distances (``spd``, uint8) and next hops (``spd_next``, int16:
    the neighbour of i on a shortest path from i to j, -1 if none), row-major (n·n,), from scipy.
    Graphormer turns them into its spatial and multi-hop edge encodings on the device.
    ``rwse``: random-walk structural encodings (PyG's ``AddRandomWalkPE``) for GPS.
    """

    def __init__(self, encodings, rwse_steps: int = 20):
        self.encodings = tuple(e for e in ENCODINGS if e in set(encodings))
        self.rwse_steps = int(rwse_steps)
        self._rwse = AddRandomWalkPE(self.rwse_steps, attr_name="rwse") if "rwse" in self.encodings else None

    @property
    def tag(self) -> str:
        parts = [f"rwse{self.rwse_steps}" if e == "rwse" else e for e in self.encodings]
        return "_".join(parts) or "plain"

    def __repr__(self) -> str:  # PyG stores it next to the cache and warns when it changes
        return f"StructuralEncodings({list(self.encodings)}, rwse_steps={self.rwse_steps})"

    def __call__(self, data):
        if "spd" in self.encodings:
            data.spd, data.spd_next = shortest_paths(data.edge_index, data.num_nodes)
        if self._rwse is not None:
            data = self._rwse(data)
        return data


def shortest_paths(edge_index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hop distances and next hops of all pairs, flattened (n·n,), by BFS (scipy's csgraph)."""
    src, dst = edge_index.numpy()
    # Searching the reversed graph from every j gives, for each i, its predecessor on j ⇝ i there,
    # which is i's next hop towards j in the original graph (directed graphs included).
    reverse = csr_matrix((np.ones(len(src)), (dst, src)), shape=(n, n))
    dist_rev, pred_rev = shortest_path(reverse, directed=True, unweighted=True, return_predecessors=True)
    dist, nxt = dist_rev.T, pred_rev.T
    spd = np.where(np.isinf(dist), UNREACHABLE, np.minimum(dist, UNREACHABLE - 1)).astype(np.uint8)
    nxt = np.where(nxt < 0, -1, nxt).astype(np.int16)
    return torch.from_numpy(spd.reshape(-1)), torch.from_numpy(np.ascontiguousarray(nxt).reshape(-1))


class _EncodingCache:
    """Mixin for PyG datasets: the processed folder is named after the pre_transform's encodings."""

    @property
    def processed_dir(self) -> str:
        return f"{super().processed_dir}_{getattr(self.pre_transform, 'tag', 'plain')}"


class _ZINC(_EncodingCache, ZINC):
    pass


class _LRGB(_EncodingCache, LRGBDataset):
    pass


def collate_graphs(items: list) -> dict:
    """PyG Data objects → ``{"graph": Batch, "labels": (B, targets) float}``."""
    graph = Batch.from_data_list(items)
    return {"graph": graph, "labels": graph.y.view(graph.num_graphs, -1).float()}


class GraphTask(Task):
    """Graph-level regression (L1, MAE) or multilabel classification (BCE, average precision).

    Subclasses say where the data lives (``raw_files``) and build the splits (``datasets(root,
    pre_transform)`` → ``{"train": …, "val": …, "test": …}``);
    ``node_feature_dims`` / ``edge_feature_dims`` are the vocabulary sizes of the integer features.
    """

    recipe = "graph"  # the classification recipe (the task's loss, every split of task.eval_splits) + FLAG
    kind = "regression"
    num_outputs = 1
    node_feature_dims: tuple[int, ...] = ()
    edge_feature_dims: tuple[int, ...] = ()
    split_names: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.encodings = list(cfg["encodings"])
        self.rwse_steps = int(cfg["rwse_steps"])
        self.eval_splits = list(cfg["eval_splits"])
        self.eval_batch_size = int(cfg["eval_batch_size"])
        self.flag = dict(cfg["flag"])
        self.primary_metric = "mae" if self.kind == "regression" else "ap"
        self.directions = prefixed_directions(
            {self.primary_metric: "up" if self.kind == "multilabel" else "down", "loss": "down"}, self.eval_splits
        )
        self.data_report: dict = {}

    def raw_files(self) -> list[str]:
        """Files under ``task.data_dir`` that the loader reads (it downloads them when missing)."""
        return []

    def check(self) -> None:
        if not self.eval_splits:
            raise ConfigError("task.eval_splits is empty: name at least one split (the first selects), e.g. [val]")
        bad = [e for e in self.encodings if e not in ENCODINGS]
        if bad:
            raise ConfigError(f"task.encodings={self.encodings}: unknown {bad}; choose from {', '.join(ENCODINGS)}")
        unknown = [s for s in self.eval_splits if s not in self.split_names or s == "train"]
        if unknown:
            raise ConfigError(f"task.eval_splits={self.eval_splits}: unknown {unknown}; choose from val, test")
        f = self.flag
        if f["enabled"] and (int(f["m"]) < 1 or float(f["step_size"]) <= 0 or float(f["mag"]) < 0):
            raise ConfigError(f"task.flag={f}: needs m >= 1, step_size > 0 and mag >= 0 (0: unbounded)")
        root = self.require_data_dir()
        missing = [f for f in self.raw_files() if not (root / f).exists()]
        if missing and not self.cfg["download"]:
            raise ConfigError(
                f"task.data_dir={root} has no {missing[0]}: put the {self.cfg.name} files there or set task.download=true"
            )

    def pre_transform(self) -> StructuralEncodings:
        return StructuralEncodings(self.encodings, self.rwse_steps)

    def load(self) -> None:
        try:
            self.splits = self.datasets(str(self.require_data_dir()), self.pre_transform())
        except OSError as e:  # includes URLError: task.download=true without network
            missing = [f for f in self.raw_files() if not (self.require_data_dir() / f).exists()]
            if not missing:
                raise
            raise ConfigError(
                f"task.data_dir={self.cfg.data_dir} has no {missing[0]} and downloading it failed "
                f"({first_line(e)}): put the {self.cfg.name} files there"
            ) from None
        empty = [s for s in ("train", *self.eval_splits) if len(self.splits[s]) == 0]
        if empty:
            raise ConfigError(f"task.data_dir={self.cfg.data_dir}: the {empty[0]} split has no graphs")

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.splits["train"], True, collate_fn=collate_graphs)

    def val_dataloader(self) -> list[DataLoader]:
        return [
            self.loader(self.splits[s], False, self.eval_batch_size, collate_fn=collate_graphs)
            for s in self.eval_splits
        ]

    def loss(self, logits, labels):
        known = ~torch.isnan(labels)
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(logits[known], labels[known])
        return F.l1_loss(logits[known], labels[known])

    def metric_inputs(self, logits, labels):
        if self.kind == "multilabel":
            return logits.float(), labels.long()
        return logits.float(), labels

    def metrics(self) -> MetricCollection:
        if self.kind == "multilabel":
            return MetricCollection({"ap": MultilabelAveragePrecision(num_labels=self.num_outputs, average="macro")})
        return MetricCollection({"mae": MeanAbsoluteError()})


class ZincTask(GraphTask):
    """ZINC (12k-molecule subset by default; ``task.subset=false`` for 250k), constrained solubility."""

    node_feature_dims = (28,)  # atom types
    edge_feature_dims = (4,)  # bond types 1..3 (0 unused)

    def raw_files(self) -> list[str]:
        return [f"raw/{s}.{ext}" for s in ("train", "val", "test") for ext in ("pickle", "index")]

    def datasets(self, root: str, pre_transform) -> dict:
        subset = bool(self.cfg["subset"])
        return {s: _ZINC(root, subset=subset, split=s, pre_transform=pre_transform) for s in ("train", "val", "test")}


class PeptidesTask(GraphTask):
    """LRGB Peptides-func (10-way multilabel, AP) or Peptides-struct (11 regression targets, MAE)."""

    def __init__(self, cfg):
        self.name = str(cfg["dataset"]).lower()
        if self.name not in ("peptides-func", "peptides-struct"):
            raise ConfigError(f"task.dataset={self.name}: choose peptides-func or peptides-struct")
        self.kind, self.num_outputs = ("multilabel", 10) if self.name == "peptides-func" else ("regression", 11)
        self.node_feature_dims, self.edge_feature_dims = get_atom_feature_dims(), get_bond_feature_dims()
        super().__init__(cfg)

    def raw_files(self) -> list[str]:
        return [f"{self.name}/raw/{s}.pt" for s in ("train", "val", "test")]

    def datasets(self, root: str, pre_transform) -> dict:
        return {s: _LRGB(root, self.name, split=s, pre_transform=pre_transform) for s in ("train", "val", "test")}


class PCQMTask(GraphTask):
    """OGB-LSC PCQM4M / PCQM4Mv2 HOMO-LUMO gap; the validation split is the paper's metric."""

    split_names: ClassVar[dict[str, str]] = {"train": "train", "val": "valid"}

    def __init__(self, cfg):
        self.version = str(cfg["version"])
        if self.version not in OGBLSCMolecules.VERSIONS:
            raise ConfigError(f"task.version={self.version}: choose {' or '.join(OGBLSCMolecules.VERSIONS)}")
        self.node_feature_dims, self.edge_feature_dims = get_atom_feature_dims(), get_bond_feature_dims()
        super().__init__(cfg)

    def raw_files(self) -> list[str]:
        folder = OGBLSCMolecules.VERSIONS[self.version][0]
        return [f"{folder}/raw/data.csv.gz", f"{folder}/split_dict.pt"]

    def datasets(self, root: str, pre_transform) -> dict:
        data = OGBLSCMolecules(root, self.version, pre_transform=pre_transform)
        if data.skipped:
            log.warning(
                "%s: skipped %d molecule(s) that RDKit cannot parse (listed in %s)",
                self.version,
                len(data.skipped),
                data.skipped_path,
            )
        self.data_report = {"skipped_molecules": len(data.skipped), "skipped_list": data.skipped_path}
        split = data.get_idx_split()
        return {ours: data[data.positions(split[theirs])] for ours, theirs in self.split_names.items()}


class OGBLSCMolecules(InMemoryDataset):
    """PCQM4M(v2) as a PyG InMemoryDataset over OGB's release layout and featurisation.

    Reads ``<root>/<folder>/raw/data.csv.gz`` (idx, smiles, homolumogap) and
    ``<root>/<folder>/split_dict.pt``, exactly what OGB's zip unpacks to. ogb's own PyG classes
    cannot load under torch >= 2.6 (``torch.load`` without ``weights_only``) and prompt on stdin.
    Molecules RDKit cannot parse are skipped, never silently: they are listed in
    ``processed_<encodings>/skipped.csv`` and counted in ``skipped``.
    """

    VERSIONS: ClassVar[dict[str, tuple[str, str]]] = {
        "pcqm4m": (
            "pcqm4m_kddcup2021",
            "https://dgl-data.s3-accelerate.amazonaws.com/dataset/OGB-LSC/pcqm4m_kddcup2021.zip",
        ),
        "pcqm4mv2": ("pcqm4m-v2", "https://dgl-data.s3-accelerate.amazonaws.com/dataset/OGB-LSC/pcqm4m-v2.zip"),
    }

    def __init__(self, root: str, version: str, pre_transform=None):
        self.parent = root
        self.folder, self.url = self.VERSIONS[version]
        super().__init__(osp.join(root, self.folder), None, pre_transform)
        self.load(self.processed_paths[0])
        with open(self.skipped_path, newline="") as f:
            self.skipped = [(int(i), smiles) for i, smiles in list(csv.reader(f))[1:]]

    @property
    def raw_file_names(self) -> list[str]:
        return ["data.csv.gz"]

    @property
    def processed_dir(self) -> str:
        return osp.join(self.root, f"processed_{getattr(self.pre_transform, 'tag', 'plain')}")

    @property
    def processed_file_names(self) -> list[str]:
        return ["graphs.pt", "skipped.csv"]

    @property
    def skipped_path(self) -> str:
        return self.processed_paths[1]

    def download(self) -> None:
        path = download_url(self.url, self.parent)
        extract_zip(path, self.parent)
        os.unlink(path)

    def get_idx_split(self) -> dict:
        # OGB saves numpy index arrays, which weights_only loading rejects; it is the dataset's own file.
        split = torch.load(osp.join(self.root, "split_dict.pt"), weights_only=False)
        return {k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in split.items()}

    def positions(self, rows: torch.Tensor) -> torch.Tensor:
        """Dataset positions of CSV rows; skipped rows are dropped (graphs are stored in CSV order)."""
        skipped = torch.tensor(sorted(i for i, _ in self.skipped), dtype=torch.long)
        rows = rows[~torch.isin(rows, skipped)]
        return rows - torch.searchsorted(skipped, rows)

    def process(self) -> None:
        import pandas as pd
        from ogb.utils import smiles2graph
        from rdkit import Chem

        frame = pd.read_csv(self.raw_paths[0])
        graphs, skipped = [], []
        for i, (smiles, gap) in enumerate(zip(frame["smiles"], frame["homolumogap"], strict=True)):
            mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) else None
            if mol is None or mol.GetNumAtoms() == 0:
                skipped.append((i, smiles))
                continue
            g = smiles2graph(smiles)
            data = Data(
                x=torch.from_numpy(g["node_feat"]).long(),
                edge_index=torch.from_numpy(g["edge_index"]).long(),
                edge_attr=torch.from_numpy(g["edge_feat"]).long(),
                y=torch.tensor([gap], dtype=torch.float),
                num_nodes=int(g["num_nodes"]),
            )
            graphs.append(self.pre_transform(data) if self.pre_transform is not None else data)
        self.save(graphs, self.processed_paths[0])
        with open(self.processed_paths[1], "w", newline="") as f:
            csv.writer(f).writerows([("idx", "smiles"), *skipped])
