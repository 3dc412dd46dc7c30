"""Temporal range: a token inside (M + c*C)*N can reach the last logits, one further back
than N*(M + c*C + L) cannot."""

import torch
from support.engines import TINY

from compressive_rt.ct_reference.model import CompressiveTransformer

N_SEGMENTS = 12  # 96 tokens; TINY: (M + c*C)*N = 48, N*(M + c*C + L) = 64


def last_segment_logits(model: CompressiveTransformer, stream: torch.Tensor) -> torch.Tensor:
    """Logits of the last (full) segment after streaming the whole stream with memory."""
    return model.score(stream)[0][:, -TINY.seg_len:]


def perturbed_at_distance(stream: torch.Tensor, distance: int) -> torch.Tensor:
    """A copy of stream with the token `distance` positions before the last one changed."""
    changed = stream.clone()
    position = stream.shape[1] - 1 - distance
    changed[0, position] = (stream[0, position] + 1) % 256
    return changed


def test_temporal_range_bounds_how_far_back_a_token_reaches():
    assert TINY.temporal_range == 48
    model = CompressiveTransformer(TINY).eval()
    stream = torch.randint(0, 256, (1, N_SEGMENTS * TINY.seg_len))
    reference = last_segment_logits(model, stream)

    inside = last_segment_logits(model, perturbed_at_distance(stream, 40))
    assert (inside[0, -1] - reference[0, -1]).abs().max() > 1e-6

    hard_bound = TINY.n_layers * (TINY.mem_len + TINY.compress_rate * TINY.cmem_len
                                  + TINY.seg_len)
    beyond = last_segment_logits(model, perturbed_at_distance(stream, hard_bound + 1))
    assert torch.equal(beyond, reference)
