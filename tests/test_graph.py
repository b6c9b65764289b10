"""Graph zoo: Graphormer and GPS on ZINC, PCQM4M(v2) and Peptides through the real loaders and run path.

The raw files are written (gfsa/zoo/demo/graph.py) in the formats torch_geometric's ZINC / LRGBDataset and
OGB's PCQM4M releases ship (pickles of molecule dicts, .pt lists of tuples, a SMILES CSV with numpy split
indices), so the loaders process them instead of downloading.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import CONF_DIR, FAST, REPO, compose
from sklearn.metrics import average_precision_score
from torch_geometric.data import Batch, Data

import gfsa
from gfsa.nn.attention import GFSACoefficients
from gfsa.ops.tables import load_table
from gfsa.runner.train import run
from gfsa.utils.errors import ConfigError
from gfsa.zoo.demo.graph import BAD_SMILES, SMILES, write_pcqm, write_peptides, write_zinc

TINY_GRAPHORMER = [
    "backbone.num_layers=2",
    "backbone.hidden_dim=16",
    "backbone.ffn_dim=16",
    "backbone.num_heads=4",
    "backbone.multi_hop_max_dist=5",
]
TINY_GPS = ["backbone.channels=16", "backbone.pe_dim=4", "backbone.num_layers=2", "backbone.num_heads=2"]


# --------------------------------------------------------------------------------------------------
# end to end through gfsa.runner.train.run


def _records(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results_dir.rglob("result.json"))]


def _zinc_preset(data: Path) -> list[str]:
    """The Graphormer ZINC preset on the CPU with every validation, reading ``data`` (no download)."""
    return [
        *FAST,
        "preset=graph/graphormer_zinc",
        f"task.data_dir={data}",
        "task.batch_size=8",
        "task.num_workers=0",
        "task.download=false",
        "trainer.precision=32-true",
        "trainer.check_val_every_n_epoch=1",
    ]


def test_graphormer_zinc_baseline_and_gfsa_end_to_end(tmp_path, results_dir):
    """The paper preset itself (K=2, dropout before the filter, polynomial decay to 1e-9), at a tiny size on CPU."""
    data = write_zinc(tmp_path / "zinc")
    common = [*_zinc_preset(data), *TINY_GRAPHORMER]
    base = run(compose([*common, "gfsa.layers=none"], results_dir))
    record = run(compose([*common, "gfsa.layers=all"], results_dir))
    assert base["variant"] == "baseline" and record["variant"] == "gfsa"
    for r in (base, record):
        assert {"mae", "test_mae", "loss", "test_loss"} <= set(r["metrics"])
        assert r["metrics"]["mae"]["direction"] == "down" and r["selected_by"] == "best"
    assert record["gfsa"]["layers"] == [0, 1] and record["gfsa"]["added_parameters"] == 2 * 4
    assert record["comparison"]["baseline_run"] == base["run_dir"] and record["comparison"]["metric"] == "mae"
    # The encodings were cached by PyG in a folder named after them.
    assert (data / "subset" / "processed_spd" / "train.pt").exists()


def test_gps_peptides_func_end_to_end(tmp_path, results_dir):
    data = write_peptides(tmp_path / "lrgb", "peptides-func")
    record = run(
        compose(
            [
                *FAST,
                "backbone=gps",
                "task=peptides_func",
                f"task.data_dir={data}",
                "task.batch_size=8",
                "task.num_workers=0",
                "task.download=false",
                "gfsa.layers=all",
                "with_baseline=false",
                *TINY_GPS,
            ],
            results_dir,
        )
    )
    assert {"ap", "test_ap"} <= set(record["metrics"]) and record["metrics"]["ap"]["direction"] == "up"
    assert 0.0 <= record["metrics"]["ap"]["value"] <= 1.0
    assert record["gfsa"]["added_parameters"] == 2 * 2


def test_gps_peptides_struct_and_graphormer_on_peptides(tmp_path, results_dir):
    data = write_peptides(tmp_path / "lrgb", "peptides-struct")
    common = [
        *FAST,
        "task=peptides_struct",
        f"task.data_dir={data}",
        "task.batch_size=8",
        "task.num_workers=0",
        "task.download=false",
        "gfsa.layers=all",
    ]
    gps = run(compose([*common, "backbone=gps", *TINY_GPS], results_dir))
    assert {"mae", "test_mae"} <= set(gps["metrics"])
    # Graphormer needs the shortest paths: named in one line, nothing written.
    with pytest.raises(ConfigError, match=r"task.encodings"):
        run(compose([*common, "backbone=graphormer_slim", *TINY_GRAPHORMER], results_dir))
    assert len(_records(results_dir)) == 1
    both = run(
        compose([*common, "backbone=graphormer_slim", "task.encodings=[spd,rwse]", *TINY_GRAPHORMER], results_dir)
    )
    assert both["metrics"]["test_mae"]["value"] >= 0


def test_pcqm4mv2_skips_unparseable_molecules_and_records_them(tmp_path, results_dir, caplog):
    data = write_pcqm(tmp_path / "ogb")
    with caplog.at_level("WARNING"):
        record = run(
            compose(
                [
                    *FAST,
                    "backbone=graphormer",
                    "task=pcqm4mv2",
                    f"task.data_dir={data}",
                    "task.batch_size=4",
                    "task.num_workers=0",
                    "task.download=false",
                    "gfsa.layers=all",
                    "with_baseline=false",
                    *TINY_GRAPHORMER,
                ],
                results_dir,
            )
        )
    assert "skipped 1 molecule(s) that RDKit cannot parse" in caplog.text
    assert record["data"]["skipped_molecules"] == 1
    skipped = Path(record["data"]["skipped_list"]).read_text()
    assert BAD_SMILES in skipped
    assert set(record["metrics"]) == {"mae", "loss"}  # validation only: the test labels are hidden


def test_pcqm4m_v1_layout_loads(tmp_path):
    from gfsa.zoo.tasks.graph import PCQMTask

    data = write_pcqm(tmp_path / "ogb", version="pcqm4m", bad=False)
    cfg = compose(["task=pcqm4m", f"task.data_dir={data}", "task.download=false"]).task
    task = PCQMTask(cfg)
    task.check()
    task.setup("fit")
    assert len(task.splits["train"]) == len(SMILES) - 1 - 3 and len(task.splits["val"]) == 3
    assert task.data_report["skipped_molecules"] == 0
    assert (data / "pcqm4m_kddcup2021" / "processed_spd" / "graphs.pt").exists()


# --------------------------------------------------------------------------------------------------
# bad input: one line, nothing written


def test_missing_raw_files_and_bad_options_fail_before_any_run_dir(tmp_path, results_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = [*FAST, "backbone=graphormer_slim", "task=zinc", *TINY_GRAPHORMER]
    with pytest.raises(ConfigError, match=r"has no raw/train.pickle.*task.download=true"):
        run(compose([*base, f"task.data_dir={empty}", "task.download=false"], results_dir))
    with pytest.raises(ConfigError, match=r"task.encodings=.*unknown \['lappe'\]"):
        run(compose([*base, f"task.data_dir={empty}", "task.encodings=[lappe]"], results_dir))
    with pytest.raises(ConfigError, match=r"task.data_dir is not set"):
        run(compose(base, results_dir))
    assert not any(results_dir.iterdir())


def test_failed_download_is_one_line_naming_the_missing_file(tmp_path, results_dir, monkeypatch):
    """task.download=true without network: PyG's real download attempt fails (here: a refused local port)."""
    from torch_geometric.datasets import ZINC

    monkeypatch.setattr(ZINC, "url", "http://127.0.0.1:9/molecules.zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = compose(
        [*FAST, "backbone=graphormer_slim", "task=zinc", *TINY_GRAPHORMER, f"task.data_dir={empty}"], results_dir
    )
    with pytest.raises(
        ConfigError, match=r"has no raw/train.pickle and downloading it failed \(URLError.*put the zinc files"
    ):
        run(cfg)
    assert not any(results_dir.iterdir())


# --------------------------------------------------------------------------------------------------
# encodings, identity at init, metrics


def test_shortest_paths_match_networkx():
    from gfsa.zoo.tasks.graph import UNREACHABLE, shortest_paths

    g = nx.gnm_random_graph(12, 14, seed=3)
    g.add_node(12)  # an isolated node: unreachable from the others
    edges = torch.tensor(list(g.edges)).t()
    edge_index = torch.cat([edges, edges.flip(0)], 1)
    spd, nxt = shortest_paths(edge_index, 13)
    spd, nxt = spd.view(13, 13).long(), nxt.view(13, 13).long()
    lengths = dict(nx.all_pairs_shortest_path_length(g))
    for i in range(13):
        for j in range(13):
            if j not in lengths[i]:
                assert spd[i, j] == UNREACHABLE and nxt[i, j] == -1
                continue
            assert spd[i, j] == lengths[i][j]
            cur, hops = i, 0  # following the next hops reaches j in exactly d steps along edges
            while cur != j:
                assert g.has_edge(cur, int(nxt[cur, j]))
                cur, hops = int(nxt[cur, j]), hops + 1
            assert hops == lengths[i][j]


def _graph_batch(task) -> Batch:
    return Batch.from_data_list([task.splits["val"][i] for i in range(4)])


@pytest.mark.parametrize("backbone", ["graphormer_slim", "gps"])
def test_identity_at_init(tmp_path, backbone):
    from gfsa.runner.registry import resolve

    data = write_zinc(tmp_path / "zinc")
    cfg = compose(
        [
            f"backbone={backbone}",
            "task=zinc",
            f"task.data_dir={data}",
            "task.download=false",
            *(TINY_GRAPHORMER if backbone == "graphormer_slim" else TINY_GPS),
        ]
    )
    task = resolve("task", cfg.task.type)(cfg.task)
    task.setup("fit")
    torch.manual_seed(0)
    model = resolve("backbone", cfg.backbone.type)(cfg.backbone, task).eval()
    patched = gfsa.patch(copy.deepcopy(model), layers="all", K=2, dropout_order="before")
    batch = _graph_batch(task)
    with torch.no_grad():
        ref, out = model(batch), patched(batch)
        assert torch.allclose(ref, out, atol=1e-5), (ref - out).abs().max()
        # A nonzero coefficient changes the output: the filter is really in the path.
        for m in patched.modules():
            if isinstance(m, GFSACoefficients):
                m.wK.fill_(0.5)
        assert not torch.allclose(ref, patched(batch), atol=1e-4)
    assert gfsa.patched_layers(patched) == [0, 1]


def test_gps_attention_matches_torch_multihead_attention():
    from gfsa.zoo.backbones.gps import GFSAMultiheadAttention

    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = GFSAMultiheadAttention(16, 4, batch_first=True).eval()
    assert ours.load_state_dict(ref.state_dict()) is not None and ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 4:] = True
    pad[2, 1:] = True
    with torch.no_grad():
        expected, _ = ref(x, x, x, key_padding_mask=pad, need_weights=False)
        got, _ = ours(x, x, x, key_padding_mask=pad, need_weights=False)
    assert torch.allclose(expected, got, atol=1e-5)


def test_multi_hop_edge_encoding_matches_a_per_pair_computation():
    """Graphormer's edge bias on one graph equals Σ_hops emb(edge_hop) @ W_hop / d, computed pair by pair."""
    from gfsa.zoo.backbones.graphormer import Graphormer
    from gfsa.zoo.tasks.graph import StructuralEncodings

    g = nx.path_graph(5)
    g.add_edges_from([(2, 5), (5, 6)])  # a tree: every shortest path is unique
    e = torch.tensor(list(g.edges)).t()
    edge_index = torch.cat([e, e.flip(0)], 1)
    attr = torch.arange(e.shape[1]).repeat(2) % 3 + 1
    n = g.number_of_nodes()
    x = torch.zeros(n, 1, dtype=torch.long)
    data = StructuralEncodings(["spd"])(Data(x=x, edge_index=edge_index, edge_attr=attr))
    batch = Batch.from_data_list([data])
    torch.manual_seed(0)
    max_dist = 3
    model = Graphormer([28], [4], 1, num_layers=1, hidden_dim=8, ffn_dim=8, num_heads=2, multi_hop_max_dist=max_dist)
    spd, nxt = data.spd.view(n, n).long(), data.spd_next.view(n, n).long()
    got = model.multi_hop_edges(batch, spd[None], nxt[None])[0]  # (H, N, N)
    w = model.edge_dis_encoder.weight.view(-1, 2, 2)
    bond = {(int(a), int(b)): int(c) for a, b, c in zip(*edge_index, attr, strict=True)}
    for i in range(n):
        for j in range(n):
            path = nx.shortest_path(g, i, j)
            want = torch.zeros(2)
            for hop, (a, b) in enumerate(itertools.pairwise(path)):
                if hop < max_dist:
                    want += model.edge_encoder(torch.tensor([bond[(a, b)]]))[0] @ w[hop]
            want /= min(max(len(path) - 1, 1), max_dist)
            assert torch.allclose(got[:, i, j], want, atol=1e-6), (i, j)


def test_metrics_match_reference_implementations(tmp_path):
    from gfsa.zoo.tasks.graph import PeptidesTask, ZincTask

    rng = np.random.default_rng(0)
    preds, labels = rng.normal(size=(40, 10)), (rng.random((40, 10)) < 0.4).astype(float)
    labels[0], labels[1] = 1.0, 0.0  # every label has both classes
    task = PeptidesTask(compose(["task=peptides_func"]).task)
    ap = task.metrics()
    for chunk in np.array_split(np.arange(40), 3):  # several updates, as over validation batches
        ap.update(*task.metric_inputs(torch.tensor(preds[chunk]), torch.tensor(labels[chunk])))
    assert ap.compute()["ap"].item() == pytest.approx(average_precision_score(labels, preds, average="macro"), abs=1e-5)

    zinc = ZincTask(compose(["task=zinc"]).task)
    mae = zinc.metrics()
    y, p = rng.normal(size=(30, 1)), rng.normal(size=(30, 1))
    mae.update(*zinc.metric_inputs(torch.tensor(p), torch.tensor(y)))
    assert mae.compute()["mae"].item() == pytest.approx(np.abs(p - y).mean(), abs=1e-6)
    assert zinc.loss(torch.tensor(p), torch.tensor(y)).item() == pytest.approx(np.abs(p - y).mean(), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# presets and paper cells compose


def _graph_tables():
    return sorted((REPO / "experiments").glob("graph*.yaml"))


def test_every_graph_preset_and_cell_composes():
    presets = sorted((CONF_DIR / "preset" / "graph").glob("*.yaml"))
    assert len(presets) == 6
    for path in presets:
        cfg = compose([f"preset=graph/{path.stem}"])
        assert cfg.gfsa.layers == "all" and cfg.task.type in ("zinc", "pcqm", "peptides")
    zinc = compose(["preset=graph/graphormer_zinc"])
    assert (zinc.gfsa.K, zinc.gfsa.dropout_order, zinc.optim.lr, zinc.optim.warmup_steps) == (2, "before", 2e-4, 40000)
    assert zinc.optim.schedule == "polynomial" and zinc.optim.schedule_kwargs.lr_end == 1e-9
    assert (zinc.task.batch_size, zinc.trainer.max_steps, zinc.backbone.hidden_dim) == (256, 400000, 80)
    cells = [c for t in _graph_tables() for c in load_table(t).cells]
    assert len(cells) == 12
    for cell in cells:
        cfg = compose(list(cell.overrides))
        assert (cfg.gfsa.layers == "none") == (cell.variant == "baseline")
        assert cell.paper is not None


def test_single_hop_edge_encoding_is_the_edge_between_adjacent_nodes():
    """v1's other edge type: edge_encoder(attn_edge_type).mean(-2), zero for pairs that share no edge."""
    from gfsa.zoo.backbones.graphormer import Graphormer
    from gfsa.zoo.tasks.graph import StructuralEncodings

    g = nx.cycle_graph(5)
    e = torch.tensor(list(g.edges)).t()
    edge_index = torch.cat([e, e.flip(0)], 1)
    attr = torch.arange(e.shape[1]).repeat(2) % 3 + 1
    data = StructuralEncodings(["spd"])(
        Data(x=torch.zeros(5, 1, dtype=torch.long), edge_index=edge_index, edge_attr=attr)
    )
    batch = Batch.from_data_list([data, data])
    torch.manual_seed(0)
    model = Graphormer([28], [4], 1, num_layers=1, hidden_dim=8, ffn_dim=8, num_heads=2, edge_type="single_hop").eval()
    assert not hasattr(model, "edge_dis_encoder")  # v1 builds the per-hop maps only for multi-hop
    node_mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        full = model.attention_bias(batch, node_mask)
        table = model.edge_encoder.embedding.weight.clone()
        model.edge_encoder.embedding.weight.zero_()
        edges = full - model.attention_bias(batch, node_mask)  # the edge term alone
        model.edge_encoder.embedding.weight.copy_(table)
    bond = {(int(a), int(b)): int(c) for a, b, c in zip(*edge_index, attr, strict=True)}
    for i, j in itertools.product(range(5), repeat=2):
        want = model.edge_encoder(torch.tensor([bond[(i, j)]]))[0] if (i, j) in bond else torch.zeros(2)
        assert torch.allclose(edges[:, :, 1 + i, 1 + j], want.expand(2, 2), atol=1e-6), (i, j)
    assert model(batch).shape == (2, 1)


def test_flag_gives_the_weight_gradients_of_the_official_loop(tmp_path):
    """flag_loss, back-propagated once, equals flag_bounded's m backward calls (same draws, same ascent)."""
    from gfsa.runner.registry import resolve
    from gfsa.zoo.recipes.graph import flag_loss

    data = write_zinc(tmp_path / "zinc")
    cfg = compose(
        ["backbone=graphormer_slim", "task=zinc", f"task.data_dir={data}", "task.download=false", *TINY_GRAPHORMER]
    )
    task = resolve("task", cfg.task.type)(cfg.task)
    task.setup("fit")
    torch.manual_seed(0)
    model = resolve("backbone", cfg.backbone.type)(cfg.backbone, task).eval()  # eval: no dropout draws
    batch = _graph_batch(task)
    labels = batch.y.view(-1, 1).float()
    m, step, mag = 3, 1e-3, 1e-3

    torch.manual_seed(1)  # the official loop (Graphormer's flag_bounded), written out
    shape = model.perturbation_shape(batch)
    perturb = (torch.rand(shape) * 2 - 1) * mag / shape[-1] ** 0.5
    perturb.requires_grad_()
    loss = task.loss(model(batch, perturb=perturb), labels) / m
    for _ in range(m - 1):
        loss.backward()
        data_ = perturb.detach() + step * torch.sign(perturb.grad.detach())
        norm = torch.norm(data_, dim=-1).detach()
        exceed = (norm > mag).to(data_)
        data_ = (data_ * (mag / norm * exceed + (1 - exceed)).unsqueeze(-1)).detach()
        perturb.data = data_.data
        perturb.grad[:] = 0
        loss = task.loss(model(batch, perturb=perturb), labels) / m
    loss.backward()
    official = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    torch.manual_seed(1)
    flag_loss(model, {"graph": batch}, labels, task.loss, m, step, mag).backward()
    ours = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ours.keys() == official.keys() and official
    for n, want in official.items():
        assert torch.allclose(ours[n], want, atol=1e-6, rtol=1e-5), n
    # the perturbation is in the path: a different one gives other gradients
    model.zero_grad()
    torch.manual_seed(2)
    flag_loss(model, {"graph": batch}, labels, task.loss, m, step, 1.0).backward()
    assert not all(torch.allclose(p.grad, official[n]) for n, p in model.named_parameters() if p.grad is not None)


def test_flag_and_single_hop_run_and_are_off_in_every_preset(tmp_path, results_dir):
    data = write_zinc(tmp_path / "zinc")
    for preset in ("graphormer_zinc", "graphormer_pcqm4m", "graphormer_pcqm4mv2", "gps_zinc", "gps_peptides_func"):
        cfg = compose([f"preset=graph/{preset}"])
        assert cfg.task.flag.enabled is False
        assert cfg.backbone.get("edge_type", "multi_hop") == "multi_hop"
    common = [*_zinc_preset(data), "with_baseline=false"]
    record = run(
        compose(
            [*common, *TINY_GRAPHORMER, "gfsa.layers=all", "task.flag.enabled=true", "backbone.edge_type=single_hop"],
            results_dir,
        )
    )
    assert record["status"] == "finished" and record["config"]["task"]["flag"]["enabled"] is True
    with pytest.raises(ConfigError, match="task.flag.enabled=true perturbs the node embeddings of Graphormer"):
        run(
            compose(
                [*common, "backbone=gps", *TINY_GPS, "task.encodings=[rwse]", "task.flag.enabled=true"], results_dir
            )
        )
    with pytest.raises(ConfigError, match="backbone.edge_type=two_hop: choose multi_hop or single_hop"):
        run(compose([*common, *TINY_GRAPHORMER, "backbone.edge_type=two_hop"], results_dir))
