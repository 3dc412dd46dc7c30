"""Architecture options of ModelConfig: defaults leave the model as it was; bad combinations
are refused with a message that says what to change."""

import pytest

from compressive_rt.ct_reference.config import ConfigError, ModelConfig
from compressive_rt.ct_reference.model import CompressiveTransformer

SMALL = dict(n_layers=3, d_model=16, n_heads=2, d_ff=32, seg_len=4, mem_len=8, cmem_len=2,
             compress_rate=2)


def test_default_options_add_no_parameters():
    names = set(CompressiveTransformer(ModelConfig(**SMALL)).state_dict())
    assert not any(part in name for name in names
                   for part in ("gate", "pos_emb", "embed_in", "embed_out"))
    assert "layers.0.attn.u" in names and "layers.0.attn.pos_proj.weight" in names
    assert "compressors.0.strided.bias" not in names


def test_memory_layers_round_trip_through_a_dict_sorted_and_without_duplicates():
    config = ModelConfig(**SMALL, memory_layers=[2, 0, 2])
    assert config.memory_layers == (0, 2)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_enhanced_recurrence_reads_the_next_memory_layer_and_the_last_reads_the_first():
    config = ModelConfig(**SMALL, memory_layers=[0, 2], enhanced_recurrence=True)
    assert config.memory_read_order == (2, 1, 0)


@pytest.mark.parametrize("changes, message", [
    (dict(memory_layers=[3]), "memory_layers"),
    (dict(residual="gru", pre_norm=False), "pre_norm"),
    (dict(store_normed_memory=True, pre_norm=False), "pre_norm"),
    (dict(enhanced_recurrence=True, compress_fn="most_used"), "enhanced_recurrence"),
    (dict(compress_bias=True, compress_fn="mean_pool"), "compress_bias"),
    (dict(position_encoding="rotary"), "position_encoding"),
    (dict(embed_dim=0), "embed_dim"),
])
def test_invalid_option_is_refused_by_name(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**SMALL, **changes})
