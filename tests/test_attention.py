"""Attention reads [cmem, mem, segment] with padding masked and a causal mask on the segment."""

import torch
from support.engines import TINY

from compressive_rt.ct_reference.model import CompressiveTransformer, Memory, attention_mask

T, F = True, False


def test_attention_mask_is_valid_memory_then_causal_segment():
    mask = attention_mask(mem_len=torch.tensor([2, 0]), cmem_len=torch.tensor([1, 0]),
                          n_cmem=2, n_mem=3, seg_len=2)
    assert mask.shape == (2, 1, 2, 7)
    #              cmem    mem        segment
    assert mask[0, 0].tolist() == [[F, T, F, T, T, T, F],
                                   [F, T, F, T, T, T, T]]
    assert mask[1, 0].tolist() == [[F, F, F, F, F, T, F],
                                   [F, F, F, F, F, T, T]]


def full_memory(model: CompressiveTransformer) -> Memory:
    """Memory after 3 segments: mem full (16), cmem holding 4 of 4 slots."""
    memory = model.init_memory(1)
    for _ in range(3):
        memory = model(torch.randint(0, 256, (1, 8)), memory).memory
    return memory


@torch.no_grad()
def test_future_tokens_in_the_segment_do_not_change_earlier_logits():
    model = CompressiveTransformer(TINY).eval()
    memory = full_memory(model)
    tokens = torch.randint(0, 256, (1, 8))
    changed = tokens.clone()
    changed[0, 5] = (tokens[0, 5] + 1) % 256
    before, after = model(tokens, memory).logits, model(changed, memory).logits
    assert torch.equal(before[:, :5], after[:, :5])
    assert not torch.equal(before[:, 5:], after[:, 5:])


@torch.no_grad()
def test_padded_memory_slots_change_nothing():
    model = CompressiveTransformer(TINY).eval()
    memory = model(torch.randint(0, 256, (1, 8)), model.init_memory(1)).memory
    assert memory.mem_len.tolist() == [8] and memory.cmem_len.tolist() == [0]
    tokens = torch.randint(0, 256, (1, 8))
    noisy = Memory(memory.mem.clone(), torch.randn_like(memory.cmem), memory.mem_len,
                   memory.cmem_len, memory.usage)
    noisy.mem[:, :, :8] = torch.randn(2, 1, 8, 32)  # the 8 padding slots of mem
    assert torch.equal(model(tokens, memory).logits, model(tokens, noisy).logits)


@torch.no_grad()
def test_a_valid_compressed_slot_changes_the_logits():
    model = CompressiveTransformer(TINY).eval()
    memory = full_memory(model)
    tokens = torch.randint(0, 256, (1, 8))
    changed = Memory(memory.mem, memory.cmem.clone(), memory.mem_len, memory.cmem_len,
                     memory.usage)
    changed.cmem[0, 0, 0, 0] += 1.0  # one feature of the oldest compressed slot of layer 0
    diff = (model(tokens, memory).logits - model(tokens, changed).logits).abs().max()
    assert diff > 1e-4
