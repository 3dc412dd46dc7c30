"""Compression functions f_c: L evicted memories [B, L, d] -> floor(L/c) slots [B, L/c, d].

What is implemented, and why (Rae et al. 2019, section 3.1 and Table 5; DeepMind's Sonnet v1
`ConvCompressor` / `PoolCompressor`, commit 929191b):

- ``max_pool`` / ``mean_pool``: window = stride = c over time, no parameters, no auxiliary loss.
- ``conv``: Conv1d d -> d with kernel = stride = c, no bias and VALID padding, as the official
  code (``compress_bias`` adds one, as compressive-transformer-pytorch has).
- ``dilated_conv``: for each r in ``dilation_rates`` a Conv1d(kernel 2, dilation r, no bias) +
  ReLU, then the strided convolution above. **Deviation from Sonnet:** Sonnet pads every
  layer of the stack VALID, so each dilated layer shortens the sequence by r and a segment
  yields fewer than L/c slots (and a shape that depends on the rates). The engine needs exactly
  L/c slots per segment at fixed shapes, so here each dilated layer keeps the length with SAME
  padding (r // 2 zeros before, r - r // 2 after); the strided convolution stays VALID.
- ``most_used``: the paper keeps the most used memories; no public code exists, so this is the
  precise definition used here. Usage of a memory slot = the attention probability it received
  from every query of every head while it sat in the FIFO memory (not while it was part of the
  current segment), summed. The paper speaks of the average; all L slots evicted together
  entered memory together and were read by the same queries, so dividing by that count does
  not change which slots win, and the sum is what is stored. The top floor(L/c) evicted slots by
  usage are kept, in time order. Ties go to the older slot, decided by a rank count
  (slot j is kept when fewer than L/c slots beat it), which is deterministic and exports
  without TopK or data-dependent shapes.

The auto-encoding decoder g (``ConvDecoder``, conv and dilated_conv with aux_loss
"autoencoding" or "both") is, as in Sonnet (``conv.transpose()``), a transposed convolution
with kernel = stride = c and its own weights, initialised like the compressor and trained only
by the auto-encoding loss; it maps the slots back to L steps and is compared with old_mem (the
input of the whole stack, also for dilated_conv, as Sonnet does). Inference never runs it, so
the exported graphs do not contain it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compressive_rt.ct_reference.config import ModelConfig


class PoolCompressor(nn.Module):
    def __init__(self, compress_rate: int, kind: str) -> None:
        super().__init__()
        self.compress_rate = compress_rate
        self.kind = kind

    def forward(self, old_mem: torch.Tensor, usage: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, d_model = old_mem.shape
        windows = old_mem.reshape(batch, length // self.compress_rate, self.compress_rate, d_model)
        return windows.amax(dim=2) if self.kind == "max_pool" else windows.mean(dim=2)


class ConvCompressor(nn.Module):
    def __init__(self, d_model: int, compress_rate: int, dilation_rates: tuple[int, ...] = (),
                 bias: bool = False) -> None:
        super().__init__()
        self.compress_rate = compress_rate
        self.dilation_rates = dilation_rates
        self.dilated = nn.ModuleList(
            nn.Conv1d(d_model, d_model, kernel_size=2, dilation=r, bias=False)
            for r in dilation_rates)
        self.strided = nn.Conv1d(d_model, d_model, kernel_size=compress_rate,
                                 stride=compress_rate, bias=bias)

    def forward(self, old_mem: torch.Tensor, usage: torch.Tensor | None = None) -> torch.Tensor:
        x = old_mem.transpose(1, 2)  # [B, d, L]
        for rate, conv in zip(self.dilation_rates, self.dilated):
            x = torch.relu(conv(F.pad(x, (rate // 2, rate - rate // 2))))  # [B, d, L]
        return self.strided(x).transpose(1, 2)  # [B, L/c, d]


class ConvDecoder(nn.Module):
    """g of the auto-encoding loss: a transposed convolution d -> d, kernel = stride = c, with
    its own weights (bias only when the compressor has one, like Sonnet's transpose)."""

    def __init__(self, d_model: int, compress_rate: int, bias: bool = False) -> None:
        super().__init__()
        self.transposed = nn.ConvTranspose1d(d_model, d_model, kernel_size=compress_rate,
                                             stride=compress_rate, bias=bias)

    def forward(self, new_cm: torch.Tensor) -> torch.Tensor:
        """[B, L/c, d] -> [B, L, d]"""
        return self.transposed(new_cm.transpose(1, 2)).transpose(1, 2)


class MostUsedCompressor(nn.Module):
    def __init__(self, compress_rate: int) -> None:
        super().__init__()
        self.compress_rate = compress_rate

    def forward(self, old_mem: torch.Tensor, usage: torch.Tensor | None = None) -> torch.Tensor:
        if usage is None:
            raise ValueError("most_used compression needs the usage of the evicted slots")
        return select_most_used(old_mem, usage, old_mem.shape[1] // self.compress_rate)


def select_most_used(old_mem: torch.Tensor, usage: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the `keep` most used slots of old_mem [B, L, d] by usage [B, L], in time order."""
    length = old_mem.shape[1]
    slot = torch.arange(length, device=old_mem.device)
    older = slot[None, :] < slot[:, None]  # [L(j), L(j')]: j' is older than j
    # beats[b, j, j']: slot j' outranks slot j (more used, or as used and older)
    beats = (usage[:, None, :] > usage[:, :, None]) | (
        (usage[:, None, :] == usage[:, :, None]) & older[None])
    kept = beats.sum(dim=2) < keep  # [B, L]
    # Output position of each kept slot = number of kept slots before it (counted in floats,
    # exact for these small integers, because TensorRT's CumSum is documented for floats).
    out_pos = torch.cumsum(kept.to(old_mem.dtype), dim=1) - 1  # [B, L]
    target = torch.arange(keep, device=old_mem.device, dtype=old_mem.dtype)
    select = (kept[:, None, :] & (out_pos[:, None, :] == target[None, :, None])).to(old_mem.dtype)
    return select @ old_mem  # [B, keep, L] @ [B, L, d] -> [B, keep, d]


def build_compressor(config: ModelConfig) -> nn.Module | None:
    kind = config.compress_fn
    if kind in ("max_pool", "mean_pool"):
        return PoolCompressor(config.compress_rate, kind)
    if kind == "conv":
        return ConvCompressor(config.d_model, config.compress_rate, bias=config.compress_bias)
    if kind == "dilated_conv":
        return ConvCompressor(config.d_model, config.compress_rate, config.dilation_rates,
                              bias=config.compress_bias)
    if kind == "most_used":
        return MostUsedCompressor(config.compress_rate)
    return None


def build_decoder(config: ModelConfig) -> ConvDecoder:
    """The auto-encoding decoder g of one layer (config.trains_decoder)."""
    return ConvDecoder(config.d_model, config.compress_rate, bias=config.compress_bias)
