"""ModelConfig refuses what cannot be a model, saying what to change."""

import pytest

from compressive_rt.ct_reference.config import ConfigError, ModelConfig


@pytest.mark.parametrize("fields, message", [
    ({"d_model": 30, "n_heads": 4}, r"d_model \(30\) must be divisible by n_heads \(4\)"),
    ({"seg_len": 8, "mem_len": 12}, r"mem_len \(12\) must be a multiple of seg_len \(8\)"),
    ({"seg_len": 8, "mem_len": 16, "compress_rate": 3},
     r"seg_len \(8\) must be a multiple of compress_rate \(3\)"),
    ({"cmem_len": 0}, r"cmem_len must be >= 1 when compression is on"),
    ({"compress_fn": "avg_pool"}, r"unknown compress_fn 'avg_pool'; choose one of max_pool"),
])
def test_invalid_config_is_refused_with_its_message(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**fields)


def test_config_round_trips_through_a_dict():
    config = ModelConfig(compress_fn="dilated_conv", dilation_rates=(1, 3))
    assert ModelConfig.from_dict(config.to_dict()) == config
