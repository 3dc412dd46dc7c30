"""Gradient routing: the LM loss never reaches f_c; the compression losses reach only f_c."""

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY

from ct_reference.model import CompressiveTransformer


def fourth_segment(kind: str):
    """Model and the output of its 4th segment (mem full, cmem in use, an eviction)."""
    model = CompressiveTransformer(TINY.replace(compress_fn=kind))
    memory = model.init_memory(2)
    for _ in range(3):
        memory = model(torch.randint(0, 256, (2, 8)), memory).memory
    tokens = torch.randint(0, 256, (2, 9))
    out = model(tokens[:, :8], memory, compute_aux=True)
    lm_loss = F.cross_entropy(out.logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))
    return model, out, lm_loss


def grad_is_zero(param: torch.nn.Parameter) -> bool:
    return param.grad is None or not param.grad.any()


@pytest.mark.parametrize("kind", ["conv", "dilated_conv"])
def test_lm_loss_gives_no_gradient_to_the_compressor(kind):
    model, _, lm_loss = fourth_segment(kind)
    lm_loss.backward()
    compressor = [n for n, p in model.named_parameters() if n.startswith("compressors.")]
    assert compressor
    assert all(grad_is_zero(p) for n, p in model.named_parameters() if n in compressor)
    assert any(not grad_is_zero(p) for n, p in model.named_parameters() if n not in compressor)


@pytest.mark.parametrize("kind", ["conv", "dilated_conv"])
@pytest.mark.parametrize("loss_name", ["attention_reconstruction", "autoencoding"])
def test_each_compression_loss_trains_only_the_compressor(kind, loss_name):
    model, out, _ = fourth_segment(kind)
    assert set(out.aux_losses) == {"attention_reconstruction", "autoencoding"}
    out.aux_losses[loss_name].backward()
    for name, param in model.named_parameters():
        if name.startswith("compressors."):
            assert not grad_is_zero(param), name
        else:
            assert grad_is_zero(param), name
