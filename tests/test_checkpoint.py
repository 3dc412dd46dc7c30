"""Checkpoints: bit-exact round trip; corrupt or mismatched files are clear errors."""

import json

import pytest
import torch
from support.engines import TINY

from compressive_rt.ct_reference.checkpoint import (
    checkpoint_sha256,
    load_model,
    load_optimizer,
    save_checkpoint,
)
from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.errors import CtrtError


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_is_bit_exact(tmp_path, tie):
    model = CompressiveTransformer(TINY.replace(tie_embeddings=tie, compress_fn="conv")).eval()
    save_checkpoint(tmp_path / "ckpt", model, {"step": 7})
    loaded, metadata = load_model(tmp_path / "ckpt")
    assert metadata["step"] == 7
    assert loaded.config == model.config
    assert (loaded.lm_head is None) == tie
    original = model.state_dict()
    assert set(loaded.state_dict()) == set(original)
    assert all(torch.equal(t, original[name]) for name, t in loaded.state_dict().items())
    tokens = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens, model.init_memory(2)).logits,
                           loaded(tokens, loaded.init_memory(2)).logits)


def test_optimizer_moments_round_trip_exactly(tmp_path):
    model = CompressiveTransformer(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randint(0, 256, (1, 8)), model.init_memory(1)).logits.sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "ckpt", model, {}, optimizer)
    _, metadata = load_model(tmp_path / "ckpt")
    restored = torch.optim.Adam(model.parameters(), lr=1e-6)
    load_optimizer(tmp_path / "ckpt", model, restored, metadata["optimizer"])
    before, after = optimizer.state_dict(), restored.state_dict()
    assert after["param_groups"][0]["lr"] == 1e-3
    for index, entry in before["state"].items():
        assert torch.equal(entry["exp_avg"], after["state"][index]["exp_avg"])
        assert torch.equal(entry["exp_avg_sq"], after["state"][index]["exp_avg_sq"])
        assert float(entry["step"]) == float(after["state"][index]["step"])


def test_saving_again_replaces_the_checkpoint_and_changes_its_hash(tmp_path):
    model = CompressiveTransformer(TINY)
    first = checkpoint_sha256(save_checkpoint(tmp_path / "ckpt", model))
    assert checkpoint_sha256(tmp_path / "ckpt") == first
    with torch.no_grad():
        model.embed.weight[0, 0] += 1
    assert checkpoint_sha256(save_checkpoint(tmp_path / "ckpt", model)) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_missing_checkpoint_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CtrtError, match="checkpoint directory .*nowhere does not exist"):
        load_model(tmp_path / "nowhere")


def test_corrupt_weights_file_is_an_error_naming_it(tmp_path):
    save_checkpoint(tmp_path / "ckpt", CompressiveTransformer(TINY))
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CtrtError, match=r"model\.safetensors is not a readable safetensors"):
        load_model(tmp_path / "ckpt")


def test_weights_that_do_not_fit_the_config_name_each_key_and_shape(tmp_path):
    save_checkpoint(tmp_path / "ckpt", CompressiveTransformer(TINY.replace(d_ff=48)))
    config_file = tmp_path / "ckpt" / "config.json"
    config_file.write_text(json.dumps({**TINY.to_dict(), "tie_embeddings": False}))
    with pytest.raises(CtrtError) as error:
        load_model(tmp_path / "ckpt")
    message = str(error.value)
    assert "model.safetensors does not fit" in message
    assert "missing lm_head.weight (expected shape (256, 32))" in message
    assert "layers.0.ff.up.weight has shape (48, 32), expected (64, 32)" in message


def test_bad_config_in_a_checkpoint_names_the_file(tmp_path):
    save_checkpoint(tmp_path / "ckpt", CompressiveTransformer(TINY))
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**TINY.to_dict(), "n_heads": 5}))
    with pytest.raises(CtrtError, match=r"config\.json: d_model \(32\) must be divisible"):
        load_model(tmp_path / "ckpt")


def old_checkpoint(path, compress_fn: str, **changes):
    """A checkpoint as written before aux_loss existed: no such config field, no decoder."""
    torch.manual_seed(0)
    model = CompressiveTransformer(TINY.replace(compress_fn=compress_fn, aux_loss="attention",
                                                **changes)).eval()
    save_checkpoint(path, model)
    config = json.loads((path / "config.json").read_text())
    del config["aux_loss"]
    (path / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("compress_fn", ["conv", "dilated_conv"])
def test_old_checkpoint_loads_as_both_losses_with_the_tied_decoder_it_trained_with(tmp_path,
                                                                                 compress_fn):
    model = old_checkpoint(tmp_path / "ckpt", compress_fn, compress_bias=True)
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.config.aux_loss == "both"
    for i in range(TINY.n_layers):
        decoder = loaded.ae_decoders[i].transposed
        assert torch.equal(decoder.weight, model.compressors[i].strided.weight)
        assert not decoder.bias.any()
    tokens = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens, model.init_memory(2)).logits,
                           loaded(tokens, loaded.init_memory(2)).logits)


def test_old_pooling_checkpoint_loads_with_attention_which_changes_nothing(tmp_path):
    old_checkpoint(tmp_path / "ckpt", "mean_pool")
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.config.aux_loss == "attention" and loaded.ae_decoders is None


def test_autoencoding_checkpoint_saves_and_restores_its_decoder(tmp_path):
    model = CompressiveTransformer(TINY.replace(compress_fn="conv", aux_loss="autoencoding"))
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _ = load_model(tmp_path / "ckpt")
    assert torch.equal(loaded.ae_decoders[1].transposed.weight,
                       model.ae_decoders[1].transposed.weight)


def test_new_autoencoding_checkpoint_without_decoder_weights_names_them(tmp_path):
    save_checkpoint(tmp_path / "ckpt", CompressiveTransformer(TINY.replace(compress_fn="conv")))
    config_file = tmp_path / "ckpt" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "aux_loss": "autoencoding"}))
    with pytest.raises(CtrtError, match=r"missing ae_decoders\.0\.transposed\.weight "
                                        r"\(expected shape \(32, 32, 2\)\)"):
        load_model(tmp_path / "ckpt")
