"""GMMFormer (v1) parameters at TVR dims counted exactly, module by module, from the release's shapes
(huangmozhi9527/GMMFormer ``src/Models/gmmformer/model.py``, ``model_components.py``; spec §2.0, §2.3):
the 1% check against the measured 12.85 M in ``test_gmmformer`` lets ±128 k parameters through."""

from __future__ import annotations

from trainables.models import Dims, create_backbone
from trainables.models.base import count_parameters

H, Q, V = 384, 768, 3072


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def bert_attention(h: int) -> int:
    """Q, K, V and output Linear(h, h) + LayerNorm(h); no feed-forward block."""
    return 4 * linear(h, h) + 2 * h


def encoder(n_in: int, h: int, positions: int, attentions: int) -> int:
    """LayerNorm(in) + Linear(in, h), a positional table + LayerNorm, then ``attentions`` BertAttentions."""
    return 2 * n_in + linear(n_in, h) + positions * h + 2 * h + attentions * bert_attention(h)


def test_gmmformer_tvr_parameter_count_is_exact():
    model = create_backbone("gmmformer", Dims(video_dim=V, query_dim=Q))
    parts = {
        "query_encoder": encoder(Q, H, 30, 1),
        "query_pool": linear(H, 1, bias=False),
        "clip_encoder": encoder(V, H, 128, 2 * 4),  # 2 GMMBlocks of 4 branches (global + widths 0.5, 1, 5)
        "frame_encoder": encoder(V, H, 128, 2 * 4),
        "frame_pool": linear(H, 1, bias=False),
    }
    for name, expected in parts.items():
        assert count_parameters(getattr(model, name)) == expected, name
    assert count_parameters(model) == sum(parts.values()) == 12_848_256  # the release's measured 12.85 M
