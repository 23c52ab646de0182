"""The chunked hidden tile scorer (``wsi_mil.mil.heads.fused_scorer``) against autograd's plain path."""

from __future__ import annotations

import pytest
import torch

from wsi_mil.mil import create_head
from wsi_mil.mil.heads import fused_scorer
from wsi_mil.mil.heads.fused_scorer import hidden_tile_scores, use_fused


def reference_scores(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                     b2: torch.Tensor) -> torch.Tensor:
    """The scorer written plainly: (T, D) -> (T, E * O)."""
    e, h, o = w2.shape
    hidden = torch.relu(x @ w1.T + b1).reshape(-1, e, h)
    return (torch.einsum("teh,eho->teo", hidden, w2) + b2).reshape(-1, e * o)


def _weights(d: int, e: int, h: int, o: int, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    shapes = [(e * h, d), (e * h,), (e, h, o), (e, o)]
    return [torch.randn(*s, generator=gen, dtype=dtype).requires_grad_(True) for s in shapes]


@pytest.mark.parametrize("outputs", [1, 3])
def test_values_and_gradients_match_the_plain_path_across_chunks(outputs: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Several chunks (the last one partial): the same scores and the same four weight gradients."""
    monkeypatch.setattr(fused_scorer, "CHUNK_VALUES", 64 * 5 * 8)  # 64 rows per chunk
    x = torch.randn(203, 4, generator=torch.Generator().manual_seed(0))
    weights = _weights(4, 5, 8, outputs, torch.float32)
    upstream = torch.randn(203, 5 * outputs, generator=torch.Generator().manual_seed(1))

    fused = hidden_tile_scores(x, *weights)
    grads_fused = torch.autograd.grad((fused * upstream).sum(), weights)
    plain = reference_scores(x, *weights)
    grads_plain = torch.autograd.grad((plain * upstream).sum(), weights)

    torch.testing.assert_close(fused, plain)
    for a, b in zip(grads_fused, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_backward_passes_gradcheck() -> None:
    """Finite differences in float64 agree with the hand-written backward."""
    x = torch.randn(37, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = _weights(3, 2, 4, 2, torch.float64)
    assert torch.autograd.gradcheck(lambda *w: hidden_tile_scores(x, *w), tuple(weights))


def test_the_fused_path_is_taken_only_where_it_pays() -> None:
    narrow, wide = torch.zeros(2, 9), torch.zeros(2, 5_863)
    assert use_fused(9, 640, narrow)
    assert not use_fused(5_863, 640, wide)  # web-like features: recomputing the first layer would cost more
    assert not use_fused(9, 640, narrow.requires_grad_(True))  # a gradient for the features: autograd's path
    assert not use_fused(9, 640, torch.zeros(2, 9, device="meta"))  # not on CPU: the chunks are sized for its cache


def test_chowder_on_narrow_features_gives_the_plain_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CHOWDER head whose hidden scorer takes the fused path: slide logits, tile scores (0 on padding) and
    every parameter gradient as the plain autograd path gives them."""
    torch.manual_seed(0)
    head = create_head("chowder", 4, 2, tile_hidden=16, n_members=3, r=2).eval()
    mask = torch.arange(12)[None] < torch.tensor([12, 3, 7])[:, None]
    x = torch.randn(3, 12, 4)

    def run(fused: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        monkeypatch.setattr(fused_scorer, "MAX_DIM_SHARE", 1.0 if fused else 0.0)
        head.zero_grad()
        logits = head.member_logits(x, mask)
        logits.sum().backward()
        tiles = head.tile_scores_all(head.prepare(x, mask), mask)
        return logits.detach(), tiles.detach(), [p.grad.clone() for p in head.parameters() if p.grad is not None]

    fused, plain = run(True), run(False)
    torch.testing.assert_close(fused[0], plain[0])
    torch.testing.assert_close(fused[1][mask], plain[1][mask])
    assert torch.all(fused[1][~mask] == 0)
    assert len(fused[2]) == len(plain[2]) > 0
    for a, b in zip(fused[2], plain[2], strict=True):
        torch.testing.assert_close(a, b)
