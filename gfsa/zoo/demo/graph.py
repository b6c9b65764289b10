"""Molecular graph data sets in the files their loaders read, so that they process them instead of
downloading: torch_geometric's ZINC (pickles of molecule dicts) and LRGB Peptides (.pt lists of tuples),
OGB's PCQM4M(v2) (a SMILES CSV with numpy split indices)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

SMILES = [
    "CCO",
    "c1ccccc1",
    "CC(=O)O",
    "CCN(CC)CC",
    "O=C(O)c1ccccc1O",
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "C1CCNCC1",
    "CC#N",
    "OC1=CC=CC=C1",
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "C(C(=O)O)N",
    "CCCCCC",
]
BAD_SMILES = "C1CC(=O"  # unclosed ring and branch: RDKit returns None


def _random_molecule(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A connected graph: a random tree plus one ring-closing bond."""
    edges = [(int(rng.integers(0, i)), i) for i in range(1, n)]
    if n > 3:
        edges.append((0, n - 1))
    return rng.integers(0, 28, size=n), edges


def write_zinc(root: Path, sizes=(24, 8, 8), seed=0) -> Path:
    """``raw/{split}.pickle`` (list of molecule dicts) and ``raw/{split}.index`` as in the ZINC release."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "val", "test"), sizes, strict=True):
        mols = []
        for _ in range(count + 2):  # two molecules outside the subset index
            n = int(rng.integers(4, 12))
            atoms, edges = _random_molecule(rng, n)
            adj = torch.zeros(n, n, dtype=torch.long)
            for a, b in edges:
                adj[a, b] = adj[b, a] = int(rng.integers(1, 4))
            mols.append(
                {
                    "atom_type": torch.tensor(atoms),
                    "bond_type": adj,
                    "logP_SA_cycle_normalized": torch.tensor([float(rng.normal())]),
                }
            )
        (raw / f"{split}.pickle").write_bytes(pickle.dumps(mols))
        (raw / f"{split}.index").write_text(",".join(str(i) for i in range(count)) + "\n")
    return root


def write_peptides(root: Path, name: str, sizes=(24, 8, 8), seed=0) -> Path:
    """``<name>/raw/{split}.pt``: lists of (x[n,9], edge_attr[E,3], edge_index[2,E], y[1,T]) as LRGB ships."""
    from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims

    rng = np.random.default_rng(seed)
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    atom_dims, bond_dims = get_atom_feature_dims(), get_bond_feature_dims()
    targets = 10 if name == "peptides-func" else 11
    for split, count in zip(("train", "val", "test"), sizes, strict=True):
        graphs = []
        for g in range(count):
            n = int(rng.integers(5, 15))
            _, edges = _random_molecule(rng, n)
            ei = torch.tensor(
                [[a for a, b in edges] + [b for a, b in edges], [b for a, b in edges] + [a for a, b in edges]]
            )
            x = torch.tensor(np.stack([rng.integers(0, d, n) for d in atom_dims], 1))
            ea = torch.tensor(np.stack([rng.integers(0, d, len(edges)) for d in bond_dims], 1)).repeat(2, 1)
            if targets == 10:  # every label positive in some graph and negative in another
                y = torch.tensor((rng.random((1, 10)) < 0.5) | (np.arange(10) == g % 10), dtype=torch.float)
                y[0, (g + 5) % 10] = 0.0
            else:
                y = torch.tensor(rng.normal(size=(1, 11)), dtype=torch.float)
            graphs.append((x, ea, ei, y))
        torch.save(graphs, raw / f"{split}.pt")
    return root


def write_pcqm(root: Path, version: str = "pcqm4mv2", bad: bool = True) -> Path:
    """OGB's unpacked zip: ``<folder>/raw/data.csv.gz``, ``<folder>/split_dict.pt`` (numpy arrays), RELEASE file."""
    import pandas as pd  # the graph extra

    folder = root / ("pcqm4m-v2" if version == "pcqm4mv2" else "pcqm4m_kddcup2021")
    (folder / "raw").mkdir(parents=True, exist_ok=True)
    smiles = [*SMILES, BAD_SMILES] if bad else list(SMILES)
    rng = np.random.default_rng(0)
    gaps = rng.uniform(3, 8, len(smiles))
    test_keys = ["test-dev", "test-challenge"] if version == "pcqm4mv2" else ["test"]
    n_test = len(test_keys)
    gaps[-n_test:] = np.nan  # hidden test labels, as released
    pd.DataFrame({"idx": range(len(smiles)), "smiles": smiles, "homolumogap": gaps}).to_csv(
        folder / "raw" / "data.csv.gz", index=False
    )
    n = len(smiles) - n_test
    split = {"train": np.array([*range(n - 4), n - 1]), "valid": np.arange(n - 4, n - 1)}
    split |= {k: np.array([n + i]) for i, k in enumerate(test_keys)}
    if bad:  # the unparseable molecule is in the training split
        split["train"] = np.append(split["train"], len(SMILES))
        gaps[len(SMILES)] = 5.0
    torch.save(split, folder / "split_dict.pt")
    (folder / "RELEASE_v1.txt").write_text("v1\n")
    return root
