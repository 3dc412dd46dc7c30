"""Gradient routing: the LM loss never reaches f_c; each compression loss (chosen by aux_loss)
trains only f_c, and the auto-encoding loss also its decoder g."""

import pytest
import torch
import torch.nn.functional as F
from support.engines import TINY

from compressive_rt.ct_reference.config import ConfigError
from compressive_rt.ct_reference.model import CompressiveTransformer

PARAMETRIC = ["conv", "dilated_conv"]
LOSSES_OF = {"attention": {"attention_reconstruction"}, "autoencoding": {"autoencoding"},
             "both": {"attention_reconstruction", "autoencoding"}, "none": set()}


def fourth_segment(kind: str, aux_loss: str):
    """Model and the output of its 4th segment (mem full, cmem in use, an eviction)."""
    torch.manual_seed(0)
    model = CompressiveTransformer(TINY.replace(compress_fn=kind, aux_loss=aux_loss))
    memory = model.init_memory(2)
    for _ in range(3):
        memory = model(torch.randint(0, 256, (2, 8)), memory).memory
    tokens = torch.randint(0, 256, (2, 9))
    out = model(tokens[:, :8], memory, compute_aux=True)
    lm_loss = F.cross_entropy(out.logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))
    return model, out, lm_loss


def trained(model: CompressiveTransformer) -> set[str]:
    """Top-level groups of parameters that received a non-zero gradient."""
    return {name.split(".")[0] if name.startswith(("compressors.", "ae_decoders."))
            else "network" for name, p in model.named_parameters()
            if p.grad is not None and p.grad.any()}


@pytest.mark.parametrize("kind", PARAMETRIC)
@pytest.mark.parametrize("aux_loss", ["attention", "autoencoding", "both", "none"])
def test_lm_loss_gives_no_gradient_to_the_compressor_or_decoder(kind, aux_loss):
    model, _, lm_loss = fourth_segment(kind, aux_loss)
    lm_loss.backward()
    assert trained(model) == {"network"}


@pytest.mark.parametrize("kind", PARAMETRIC)
@pytest.mark.parametrize("aux_loss", ["attention", "autoencoding", "both", "none"])
def test_aux_loss_option_computes_exactly_its_losses(kind, aux_loss):
    model, out, _ = fourth_segment(kind, aux_loss)
    assert set(out.aux_losses) == LOSSES_OF[aux_loss]
    assert (model.ae_decoders is not None) == (aux_loss in ("autoencoding", "both"))


@pytest.mark.parametrize("kind", PARAMETRIC)
@pytest.mark.parametrize("aux_loss", ["attention", "both"])
def test_attention_reconstruction_trains_only_the_compressor(kind, aux_loss):
    model, out, _ = fourth_segment(kind, aux_loss)
    out.aux_losses["attention_reconstruction"].backward()
    assert trained(model) == {"compressors"}
    assert all(p.grad is not None and p.grad.any() for p in model.compressors.parameters())


@pytest.mark.parametrize("kind", PARAMETRIC)
@pytest.mark.parametrize("aux_loss", ["autoencoding", "both"])
def test_autoencoding_trains_only_the_compressor_and_its_decoder(kind, aux_loss):
    model, out, _ = fourth_segment(kind, aux_loss)
    out.aux_losses["autoencoding"].backward()
    assert trained(model) == {"compressors", "ae_decoders"}
    assert all(p.grad is not None and p.grad.any() for p in model.ae_decoders.parameters())


def test_decoder_has_its_own_weights_initialised_like_the_compressor():
    torch.manual_seed(0)
    model = CompressiveTransformer(TINY.replace(compress_fn="conv", aux_loss="autoencoding",
                                                d_model=256, n_heads=4))
    decoder = model.ae_decoders[0].transposed.weight  # [d, d, c]
    compressor = model.compressors[0].strided.weight  # [d, d, c]
    assert decoder.shape == compressor.shape and not torch.equal(decoder, compressor)
    assert abs(decoder.std().item() - 0.02) < 1e-3 and abs(compressor.std().item() - 0.02) < 1e-3


@pytest.mark.parametrize("kind", ["mean_pool", "max_pool", "most_used"])
def test_compressors_without_parameters_have_no_compression_loss(kind):
    _, out, _ = fourth_segment(kind, "attention")
    assert out.aux_losses == {}


@pytest.mark.parametrize("aux_loss", ["autoencoding", "both"])
def test_autoencoding_without_a_convolutional_compressor_is_refused_with_the_fix(aux_loss):
    with pytest.raises(ConfigError, match=r"only a convolutional compress_fn \(conv, "
                                          r"dilated_conv\).*use aux_loss='attention' or 'none'"):
        TINY.replace(compress_fn="mean_pool", aux_loss=aux_loss)


def test_unknown_aux_loss_names_the_choices():
    with pytest.raises(ConfigError, match="unknown aux_loss 'ae'; choose one of attention, "
                                          "autoencoding, both, none"):
        TINY.replace(compress_fn="conv", aux_loss="ae")
