"""Greedy decoding with the eager reference, without a key/value cache.

Each new token re-runs the partial segment (up to L tokens) over the memory, exactly as the
reference scores text; at a segment boundary that same call rotates the memory. This is the
baseline the runtime's cached decoding is compared with (tokens and speed)."""

from __future__ import annotations

import torch

from compressive_rt.ct_reference.model import CompressiveTransformer


@torch.no_grad()
def greedy_generate(model: CompressiveTransformer, prompt: torch.Tensor,
                    max_new_tokens: int) -> torch.Tensor:
    """prompt [B, P] token ids -> generated ids [B, max_new_tokens]."""
    seg_len = model.config.seg_len
    memory = model.init_memory(prompt.shape[0])
    tokens = prompt
    while tokens.shape[1] > seg_len:  # whole segments of the prompt (the last one stays)
        memory = model(tokens[:, :seg_len], memory).memory
        tokens = tokens[:, seg_len:]
    generated = []
    for _ in range(max_new_tokens):
        out = model(tokens, memory)
        if tokens.shape[1] == seg_len:
            memory, tokens = out.memory, tokens[:, :0]
        next_token = out.logits[:, -1].argmax(dim=-1, keepdim=True)  # [B, 1]
        generated.append(next_token)
        tokens = torch.cat([tokens, next_token], dim=1)
    return torch.cat(generated, dim=1) if generated else prompt[:, :0]
