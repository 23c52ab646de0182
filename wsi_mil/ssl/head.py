"""The SimCLR projection head: an MLP from backbone features to the contrastive space."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden_dim -> ... -> out_dim`` (Linear, BatchNorm, ReLU between layers).

    ``n_layers`` linear layers in all (SimCLR v1: 2). The last layer has no bias, followed by a
    BatchNorm without affine parameters, as in SimCLR v2, which keeps the output centred.
    forward: (B, in_dim) -> (B, out_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, n_layers: int = 2) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SimCLRModel(nn.Module):
    """Backbone (timm, ``num_classes=0``: (B, 3, H, W) -> (B, D)) followed by the projection head.

    forward: (B, 3, H, W) -> (B, proj_dim). The backbone alone is what the encoder folder keeps.
    """

    def __init__(self, backbone: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
