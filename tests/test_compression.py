"""Compression functions on known inputs."""

import torch

from compressive_rt.ct_reference.compression import (
    ConvCompressor,
    ConvDecoder,
    PoolCompressor,
    select_most_used,
)


def ramp() -> torch.Tensor:
    """[1, 4, 2]: slot t holds (t, -t)."""
    t = torch.arange(4.0)
    return torch.stack([t, -t], dim=-1)[None]


def test_max_pool_takes_the_max_of_each_window_of_c():
    out = PoolCompressor(2, "max_pool")(ramp())
    assert out.tolist() == [[[1.0, 0.0], [3.0, -2.0]]]


def test_mean_pool_averages_each_window_of_c():
    out = PoolCompressor(2, "mean_pool")(ramp())
    assert out.tolist() == [[[0.5, -0.5], [2.5, -2.5]]]


def test_conv_is_a_strided_sum_over_each_window_with_its_weights():
    conv = ConvCompressor(d_model=6, compress_rate=3)
    old_mem = torch.randn(2, 12, 6)  # [B, L, d]
    weight = conv.strided.weight  # [d_out, d_in, c]
    windows = old_mem.reshape(2, 4, 3, 6)  # [B, L/c, c, d_in]
    expected = torch.einsum("oik,btki->bto", weight, windows)
    out = conv(old_mem)
    assert out.shape == (2, 4, 6)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_decoder_spreads_each_slot_over_its_window_of_c_with_its_own_weights():
    decoder = ConvDecoder(d_model=6, compress_rate=3)
    new_cm = torch.randn(2, 4, 6)  # [B, L/c, d]
    weight = decoder.transposed.weight  # [d_in, d_out, c]
    expected = torch.einsum("bti,iok->btko", new_cm, weight).reshape(2, 12, 6)  # [B, L, d]
    torch.testing.assert_close(decoder(new_cm), expected, rtol=1e-5, atol=1e-6)


def test_dilated_conv_stacks_one_layer_per_rate_and_compresses_by_c():
    conv = ConvCompressor(d_model=8, compress_rate=2, dilation_rates=(1, 2, 4))
    assert [layer.dilation for layer in conv.dilated] == [(1,), (2,), (4,)]
    assert conv(torch.randn(3, 16, 8)).shape == (3, 8, 8)


def test_most_used_keeps_the_top_slots_in_time_order_and_ties_go_to_the_older():
    old_mem = torch.arange(8.0)[None, :, None].repeat(2, 1, 1)  # slot t holds value t
    usage = torch.tensor([[3.0, 1.0, 5.0, 3.0, 0.0, 5.0, 3.0, 2.0],  # 5,5 then 3 (0, 3) over 3 (6)
                          [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])  # all tied: the 4 oldest
    kept = select_most_used(old_mem, usage, keep=4)
    assert kept[..., 0].tolist() == [[0.0, 2.0, 3.0, 5.0], [0.0, 1.0, 2.0, 3.0]]
