"""GPS (Rampášek et al. 2022): torch_geometric's GPSConv layers (GINE message passing + global attention).

Only the global attention changes: each layer's ``nn.MultiheadAttention`` is replaced by
:class:`GFSAMultiheadAttention`, a subclass with the same parameters and state-dict keys whose
forward calls :func:`gfsa.nn.attention.apply_gfsa` with the dense batch's key-padding mask. GPSConv keeps
calling it as before (it checks ``isinstance(attn, nn.MultiheadAttention)``). Node inputs: atom
embeddings concatenated with the task's random-walk structural encodings (RWSE), as in PyG's
GPS example and GraphGPS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GINEConv, GPSConv, global_add_pool, global_mean_pool

from gfsa.nn.attention import apply_gfsa
from gfsa.utils.errors import ConfigError
from gfsa.zoo.backbones.graphormer import FeatureEmbedding

POOLS = {"add": global_add_pool, "mean": global_mean_pool}


class GFSAMultiheadAttention(nn.MultiheadAttention):
    """Batch-first self-attention through ``apply_gfsa`` (plain SDPA until GFSA is patched in)."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None, **kwargs):
        if need_weights or attn_mask is not None or not self.batch_first:
            raise ValueError("GFSAMultiheadAttention supports batch_first self-attention with a key_padding_mask only")
        B, L, E = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

        def heads(x: torch.Tensor, w, b) -> torch.Tensor:
            return F.linear(x, w, b).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        mask = None if key_padding_mask is None else ~key_padding_mask.bool()[:, None, None, :]
        out = apply_gfsa(self, q, k, v, mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, E)), None


class GPS(nn.Module):
    """GPSConv stack over atom + RWSE inputs, pooled, then an MLP head → ``num_outputs`` values."""

    def __init__(
        self,
        node_feature_dims: list[int],
        edge_feature_dims: list[int],
        num_outputs: int,
        rwse_steps: int,
        channels: int = 64,
        pe_dim: int = 8,
        num_layers: int = 10,
        num_heads: int = 4,
        dropout: float = 0.0,
        attention_dropout: float = 0.5,
        pool: str = "add",
    ):
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"backbone.pool={pool}: choose {' or '.join(POOLS)}")
        self.node_emb = FeatureEmbedding(node_feature_dims, channels - pe_dim)
        self.pe_norm = nn.BatchNorm1d(rwse_steps)
        self.pe_lin = nn.Linear(rwse_steps, pe_dim)
        self.edge_emb = FeatureEmbedding(edge_feature_dims, channels)
        self.convs = nn.ModuleList()
        for _ in range(num_layers):
            mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))
            conv = GPSConv(channels, GINEConv(mlp), heads=num_heads, dropout=dropout)
            conv.attn = GFSAMultiheadAttention(channels, num_heads, dropout=attention_dropout, batch_first=True)
            self.convs.append(conv)
        self.pool = POOLS[pool]
        self.head = nn.Sequential(
            nn.Linear(channels, channels // 2),
            nn.ReLU(),
            nn.Linear(channels // 2, channels // 4),
            nn.ReLU(),
            nn.Linear(channels // 4, num_outputs),
        )

    def gfsa_attention_modules(self) -> list[nn.Module]:
        return [conv.attn for conv in self.convs]

    def forward(self, graph) -> torch.Tensor:
        x = torch.cat([self.node_emb(graph.x), self.pe_lin(self.pe_norm(graph.rwse))], dim=-1)
        edge_attr = self.edge_emb(graph.edge_attr)
        for conv in self.convs:
            x = conv(x, graph.edge_index, graph.batch, edge_attr=edge_attr)
        return self.head(self.pool(x, graph.batch))


def build(cfg, task) -> GPS:
    if "rwse" not in getattr(task, "encodings", []):
        raise ConfigError(f"backbone {cfg.name} needs random-walk encodings: add rwse to task.encodings")
    if int(cfg.channels) % int(cfg.num_heads) or int(cfg.pe_dim) >= int(cfg.channels):
        raise ConfigError(
            f"backbone.channels={cfg.channels} must be divisible by num_heads={cfg.num_heads} and exceed pe_dim={cfg.pe_dim}"
        )
    return GPS(
        node_feature_dims=list(task.node_feature_dims),
        edge_feature_dims=list(task.edge_feature_dims),
        num_outputs=task.num_outputs,
        rwse_steps=task.rwse_steps,
        channels=int(cfg.channels),
        pe_dim=int(cfg.pe_dim),
        num_layers=int(cfg.num_layers),
        num_heads=int(cfg.num_heads),
        dropout=float(cfg.dropout),
        attention_dropout=float(cfg.attention_dropout),
        pool=str(cfg.pool),
    )
