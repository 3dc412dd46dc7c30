"""Algorithm 1: FIFO memory and compressed memory after k segments, by hand."""

import torch
from support.engines import TINY

from compressive_rt.ct_reference.model import CompressiveTransformer, Memory


def pool_pairs(x: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, L, d] -> [B, L/2, d] by hand: window = stride = 2."""
    a, b = x[:, 0::2], x[:, 1::2]
    return torch.maximum(a, b) if kind == "max_pool" else (a + b) / 2


def expected_state(segment_hiddens: list[torch.Tensor], layer: int, kind: str):
    """Per Algorithm 1 with M=16, L=8, C=4, c=2: mem = the last 16 inputs; each segment that
    leaves mem (from the third segment on) adds 4 pooled slots; cmem keeps the newest 4."""
    history = torch.cat([h[layer] for h in segment_hiddens], dim=1)  # [B, k*L, d]
    mem = history[:, -16:]
    evicted = segment_hiddens[:max(0, len(segment_hiddens) - 2)]
    pooled = [pool_pairs(h[layer], kind) for h in evicted]
    cmem = torch.cat(pooled, dim=1)[:, -4:] if pooled else history[:, :0]
    return mem, cmem


def run_and_check(kind: str) -> None:
    model = CompressiveTransformer(TINY.replace(compress_fn=kind)).eval()
    memory = model.init_memory(2)
    assert memory.mem_len.tolist() == [0, 0] and memory.cmem_len.tolist() == [0, 0]
    seen = []
    expected_counts = [(8, 0), (16, 0), (16, 4), (16, 4), (16, 4)]
    with torch.no_grad():
        for k, (mem_len, cmem_len) in enumerate(expected_counts, start=1):
            out = model(torch.randint(0, 256, (2, 8)), memory)
            memory = out.memory
            seen.append(out.hiddens)
            assert memory.mem_len.tolist() == [mem_len] * 2, f"after {k} segments"
            assert memory.cmem_len.tolist() == [cmem_len] * 2, f"after {k} segments"
            for layer in range(2):
                mem, cmem = expected_state(seen, layer, kind)
                assert torch.equal(memory.mem[layer][:, 16 - mem_len:], mem)
                assert torch.equal(memory.cmem[layer][:, 4 - cmem_len:], cmem)


def test_mean_pool_memory_follows_algorithm_1_from_empty_through_evictions():
    run_and_check("mean_pool")


def test_max_pool_memory_follows_algorithm_1_from_empty_through_evictions():
    run_and_check("max_pool")


def test_streams_with_different_memory_fill_rotate_independently():
    model = CompressiveTransformer(TINY.replace(compress_fn="max_pool")).eval()
    n, d = TINY.n_layers, TINY.d_model
    # row 0: mem full (16) and cmem holding 2 slots; row 1: one segment in mem, cmem empty
    memory = Memory(mem=torch.randn(n, 2, 16, d), cmem=torch.randn(n, 2, 4, d),
                    mem_len=torch.tensor([16, 8]), cmem_len=torch.tensor([2, 0]),
                    usage=torch.zeros(n, 2, 16))
    with torch.no_grad():
        out = model(torch.randint(0, 256, (2, 8)), memory)
    new = out.memory
    assert new.mem_len.tolist() == [16, 16]
    assert new.cmem_len.tolist() == [4, 0]
    for layer in range(n):
        h = out.hiddens[layer]  # [B, 8, d]
        assert torch.equal(new.mem[layer, 0], torch.cat([memory.mem[layer, 0, 8:], h[0]]))
        assert torch.equal(new.mem[layer, 1], torch.cat([memory.mem[layer, 1, 8:], h[1]]))
        evicted = memory.mem[layer, 0:1, :8]  # the oldest segment of row 0
        # (2 old slots ++ 4 new)[-4:] keeps only the 4 new ones
        assert torch.equal(new.cmem[layer, 0], pool_pairs(evicted, "max_pool")[0])
        assert torch.equal(new.cmem[layer, 1], memory.cmem[layer, 1])


def test_partial_segment_leaves_memory_contents_unrotated():
    model = CompressiveTransformer(TINY).eval()
    memory = model.init_memory(1)
    with torch.no_grad():
        memory = model(torch.randint(0, 256, (1, 8)), memory).memory
        after_partial = model(torch.randint(0, 256, (1, 5)), memory).memory
    assert torch.equal(after_partial.mem, memory.mem)
    assert torch.equal(after_partial.mem_len, memory.mem_len)
    assert torch.equal(after_partial.cmem_len, memory.cmem_len)
