"""Graphormer (Ying et al. 2021) as in its v1 code, which the official GFSA graph experiments extend.

Centrality (degree) encoding on the nodes; a virtual graph token; an attention bias per head made of
the shortest-path spatial encoding and the edge encoding: multi-hop (edge features along a shortest
path, one learned head×head map per hop, averaged over the path length; v1's ``--edge_type multi_hop``)
or single-hop (the features of the edge between two adjacent nodes, v1's other ``edge_type``). The node
embeddings take an optional perturbation (``perturb``), FLAG's adversarial augmentation. The bias, with −inf for
padding keys, is the additive attention mask that :func:`gfsa.nn.attention.apply_gfsa` receives, so GFSA
filters exactly the official ``softmax(QKᵀ/√d + bias)`` (attention dropout before the filter when the
preset sets ``gfsa.dropout_order=before``). Inputs are PyG batches with the task's cached shortest
paths; the dense tensors are built on the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import degree, to_dense_batch

from gfsa.nn.attention import apply_gfsa
from gfsa.utils.errors import ConfigError
from gfsa.zoo.formats import UNREACHABLE


class FeatureEmbedding(nn.Module):
    """Integer node/edge features → one embedding per feature from a shared table (offsets), reduced.

    Index 0 is padding, so feature ``f`` with value ``v`` uses row ``1 + offset[f] + v`` (OGB's and
    Graphormer's ``convert_to_single_emb`` up to the offsets).
    """

    def __init__(self, dims: list[int], dim: int, reduce: str = "sum"):
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0, *dims[:-1]]).cumsum(0) + 1, persistent=False)
        self.embedding = nn.Embedding(sum(dims) + 1, dim, padding_idx=0)
        self.reduce = reduce

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """Table rows of features ``x`` (…, F) or (…,) for a single feature."""
        return (x.unsqueeze(-1) if x.dim() == 1 else x).long() + self.offsets

    def forward(self, x: torch.Tensor, indexed: bool = False) -> torch.Tensor:
        """Reduced embeddings of features ``x``, or of table rows ``x`` when ``indexed``."""
        e = self.embedding(x if indexed else self.index(x))
        return e.sum(-2) if self.reduce == "sum" else e.mean(-2)


def dense_pairs(values: torch.Tensor, ptr: torch.Tensor, n_max: int, fill: int) -> torch.Tensor:
    """Per-graph row-major (n_g·n_g,) values of a batch → (B, n_max, n_max), ``fill`` where padded."""
    counts = ptr[1:] - ptr[:-1]
    squares = counts * counts
    graph = torch.repeat_interleave(torch.arange(len(counts), device=ptr.device), squares)
    start = torch.repeat_interleave(squares.cumsum(0) - squares, squares)
    k = torch.arange(len(graph), device=ptr.device) - start
    n = counts[graph]
    out = values.new_full((len(counts), n_max, n_max), fill).long()
    out[graph, k // n, k % n] = values.long()
    return out


class GraphormerAttention(nn.Module):
    """Multi-head self-attention with an additive per-head bias (v1 names: linear_q/k/v, output_layer)."""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"backbone.hidden_dim={dim} is not divisible by backbone.num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.output_layer = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.linear_q(x)), heads(self.linear_k(x)), heads(self.linear_v(x))
        dropout = self.attention_dropout if self.training else 0.0
        out = apply_gfsa(self, q, k, v, bias.to(q.dtype), scale=self.scale, dropout_p=dropout)
        return self.output_layer(out.transpose(1, 2).reshape(B, L, -1))


class GraphormerLayer(nn.Module):
    """Pre-LN encoder layer: x + attn(LN(x)), then x + FFN(LN(x)) with GELU."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.self_attention_norm = nn.LayerNorm(dim)
        self.self_attention = GraphormerAttention(dim, num_heads, attention_dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.self_attention_norm(x), bias))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class Graphormer(nn.Module):
    """Graph-level Graphormer: the graph token's final state → ``num_outputs`` values."""

    def __init__(
        self,
        node_feature_dims: list[int],
        edge_feature_dims: list[int],
        num_outputs: int,
        num_layers: int = 12,
        hidden_dim: int = 80,
        ffn_dim: int = 80,
        num_heads: int = 8,
        dropout: float = 0.1,
        input_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        num_spatial: int = 40,
        num_degree: int = 64,
        multi_hop_max_dist: int = 20,
        spatial_pos_max: int | None = None,
        edge_type: str = "multi_hop",
    ):
        super().__init__()
        self.num_heads = num_heads
        self.num_spatial = num_spatial
        self.num_degree = num_degree
        self.multi_hop_max_dist = multi_hop_max_dist
        self.spatial_pos_max = spatial_pos_max
        self.edge_type = edge_type
        self.hidden_dim = hidden_dim
        self.atom_encoder = FeatureEmbedding(node_feature_dims, hidden_dim, reduce="sum")
        self.edge_encoder = FeatureEmbedding(edge_feature_dims, num_heads, reduce="mean")
        if edge_type == "multi_hop":  # v1 builds the per-hop maps only for multi-hop edges
            self.edge_dis_encoder = nn.Embedding(multi_hop_max_dist * num_heads * num_heads, 1)
        self.spatial_pos_encoder = nn.Embedding(num_spatial, num_heads, padding_idx=0)
        self.in_degree_encoder = nn.Embedding(num_degree, hidden_dim, padding_idx=0)
        self.out_degree_encoder = nn.Embedding(num_degree, hidden_dim, padding_idx=0)
        self.graph_token = nn.Embedding(1, hidden_dim)
        self.graph_token_virtual_distance = nn.Embedding(1, num_heads)
        self.input_dropout = nn.Dropout(input_dropout)
        self.layers = nn.ModuleList(
            GraphormerLayer(hidden_dim, ffn_dim, num_heads, dropout, attention_dropout) for _ in range(num_layers)
        )
        self.final_ln = nn.LayerNorm(hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, num_outputs)
        self.apply(lambda m: _init_params(m, num_layers))

    def gfsa_attention_modules(self) -> list[nn.Module]:
        return [layer.self_attention for layer in self.layers]

    def attention_bias(self, graph, node_mask: torch.Tensor) -> torch.Tensor:
        """(B, H, N+1, N+1): spatial + virtual-distance + edge encodings, −inf on padding keys."""
        B, N = node_mask.shape
        H = self.num_heads
        spd = dense_pairs(graph.spd, graph.ptr, N, fill=UNREACHABLE)
        nxt = dense_pairs(graph.spd_next, graph.ptr, N, fill=-1)
        spatial = self.spatial_pos_encoder(spd.clamp(max=self.num_spatial - 2) + 1)  # 0 is padding
        bias = spatial.new_zeros(B, H, N + 1, N + 1)
        bias[:, :, 1:, 1:] = spatial.permute(0, 3, 1, 2)
        t = self.graph_token_virtual_distance.weight.view(1, H, 1)
        bias[:, :, 1:, 0] = bias[:, :, 1:, 0] + t
        bias[:, :, 0, :] = bias[:, :, 0, :] + t
        if self.edge_type == "multi_hop":
            edges = self.multi_hop_edges(graph, spd, nxt)
        else:  # v1: edge_encoder(attn_edge_type).mean(-2), zero where two nodes are not adjacent
            edges = self.edge_encoder(self.edge_rows(graph, B, N), indexed=True).permute(0, 3, 1, 2)
        bias[:, :, 1:, 1:] = bias[:, :, 1:, 1:] + edges
        blocked = ~node_mask[:, None, None, :].expand(B, 1, N + 1, N)
        if self.spatial_pos_max is not None:
            blocked = blocked | F.pad(spd >= self.spatial_pos_max, (0, 0, 1, 0))[:, None]
        bias[:, :, :, 1:] = bias[:, :, :, 1:].masked_fill(blocked, float("-inf"))
        return bias

    def multi_hop_edges(self, graph, spd: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """(B, H, N, N): Σ over the first ``multi_hop_max_dist`` hops of the path i ⇝ j of
        ``edge_emb(hop) @ W_hop``, divided by the path length (clipped to the maximum)."""
        B, N, _ = spd.shape
        reachable = spd < UNREACHABLE
        hops = int(min(self.multi_hop_max_dist, int(spd[reachable].max()) if reachable.any() else 0))
        if hops == 0:
            return spd.new_zeros(B, self.num_heads, N, N, dtype=self.edge_dis_encoder.weight.dtype)
        edges = self.edge_rows(graph, B, N)
        b = torch.arange(B, device=spd.device)[:, None, None]
        j = torch.arange(N, device=spd.device)[None, None, :]
        cur = torch.arange(N, device=spd.device)[None, :, None].expand(B, N, N)
        per_hop = self.edge_dis_encoder.weight.view(-1, self.num_heads, self.num_heads)
        summed = 0
        for hop in range(hops):  # walk each shortest path forwards, i → … → j, one hop at a time
            step = nxt[b, cur, j]
            valid = (hop < spd) & reachable & (step >= 0)
            step = step.clamp(min=0)
            rows_hop = torch.where(valid[..., None], edges[b, cur, step], 0)
            summed = summed + self.edge_encoder(rows_hop, indexed=True) @ per_hop[hop]
            cur = torch.where(valid, step, cur)
        length = spd.clamp(min=1, max=self.multi_hop_max_dist).to(summed.dtype)
        return (summed / length[..., None]).permute(0, 3, 1, 2)

    def edge_rows(self, graph, B: int, N: int) -> torch.Tensor:
        """Dense edge-feature table rows (B, N, N, F); 0 (the zero padding row) where there is no edge."""
        src, dst = graph.edge_index
        g = graph.batch[src]
        rows = self.edge_encoder.index(graph.edge_attr)
        edges = rows.new_zeros(B, N, N, rows.shape[-1])
        edges[g, src - graph.ptr[g], dst - graph.ptr[g]] = rows
        return edges

    def perturbation_shape(self, graph) -> tuple[int, int, int]:
        """Shape of FLAG's perturbation of a batch: (graphs, most nodes in a graph, hidden)."""
        counts = graph.ptr[1:] - graph.ptr[:-1]
        return (int(graph.num_graphs), int(counts.max()), self.hidden_dim)

    def forward(self, graph, perturb: torch.Tensor | None = None) -> torch.Tensor:
        """Graph-level outputs; ``perturb`` (:meth:`perturbation_shape`) is added to the node embeddings after
        the atom encoder, as v1's FLAG training does."""
        x, node_mask = to_dense_batch(graph.x, graph.batch)
        deg = degree(graph.edge_index[0], graph.num_nodes, dtype=torch.long)
        deg, _ = to_dense_batch(deg.clamp(max=self.num_degree - 2) + 1, graph.batch)  # 0 is padding
        h = self.atom_encoder(x) + self.in_degree_encoder(deg) + self.out_degree_encoder(deg)
        if perturb is not None:
            h = h + perturb.to(h.dtype)
        h = h * node_mask[..., None]
        h = torch.cat([self.graph_token.weight.expand(h.shape[0], 1, -1), h], dim=1)
        bias = self.attention_bias(graph, node_mask)
        h = self.input_dropout(h)
        for layer in self.layers:
            h = layer(h, bias)
        return self.out_proj(self.final_ln(h)[:, 0])


def _init_params(module: nn.Module, num_layers: int) -> None:
    """Graphormer v1's initialisation: N(0, 0.02/√layers) linear weights, N(0, 0.02) embeddings."""
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(0.0, 0.02 / math.sqrt(num_layers))
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.data.normal_(0.0, 0.02)
        if module.padding_idx is not None:  # v1 overwrote the padding rows too; they stay zero here
            module.weight.data[module.padding_idx].zero_()


EDGE_TYPES = ("multi_hop", "single_hop")


def build(cfg, task) -> Graphormer:
    edge_type = cfg["edge_type"]
    if edge_type not in EDGE_TYPES:
        raise ConfigError(f"backbone.edge_type={edge_type}: choose {' or '.join(EDGE_TYPES)}")
    if "spd" not in getattr(task, "encodings", []):
        raise ConfigError(
            f"backbone {cfg.name} needs shortest paths: add spd to task.encodings (e.g. task.encodings=[spd])"
        )
    return Graphormer(
        node_feature_dims=list(task.node_feature_dims),
        edge_feature_dims=list(task.edge_feature_dims),
        num_outputs=task.num_outputs,
        num_layers=int(cfg.num_layers),
        hidden_dim=int(cfg.hidden_dim),
        ffn_dim=int(cfg.ffn_dim),
        num_heads=int(cfg.num_heads),
        dropout=float(cfg.dropout),
        input_dropout=float(cfg.input_dropout),
        attention_dropout=float(cfg.attention_dropout),
        num_spatial=int(cfg.num_spatial),
        num_degree=int(cfg.num_degree),
        multi_hop_max_dist=int(cfg.multi_hop_max_dist),
        spatial_pos_max=cfg["spatial_pos_max"],
        edge_type=edge_type,
    )
