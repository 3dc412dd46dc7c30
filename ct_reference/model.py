"""The Compressive Transformer (Rae et al. 2019) on Transformer-XL relative attention.

Readable reference: every segment recomputes keys and values of the whole memory. The cached
step functions that the engine runs live in `export/step.py` and are proven equal to this.

Memory layout per layer i (the engine contract, docs/DESIGN.md):
  cmem[i] [B, C, d] compressed slots, mem[i] [B, M, d] the last M inputs h^(i) to layer i.
  Valid slots are right-aligned (newest last); mem_len / cmem_len [B] count them, the rest is
  padding masked out of attention. With right alignment the distance from query i of the
  segment to padded key slot j over [cmem, mem, segment] is (C + M + i) - j whatever the
  counts, because cmem only fills once mem is full.

Where this reference departs from the paper and from Sonnet v1 (DeepMind's implementation), and
why (compression.py lists the compression functions' own deviations):
- Relative positions of cmem: distances are counted over the one concatenation
  [cmem, mem, segment] with the layer's single position projection W_r and biases u, v, so a
  compressed slot sits at a distance between the mem slots and what lies beyond them. Sonnet
  gives cmem its own relative-position projection and bias and counts cmem distances in
  compressed slots. One projection keeps one position table per layer, one rel_shift and one
  attention shape in the exported graphs; the paper does not specify the detail. The
  Sonnet convention is not implemented.
- Memory starts empty (counts 0, padding masked out of attention), as in Transformer-XL; the
  paper and Sonnet start with zero vectors that are attended to. Empty memory makes the first
  segments of a document independent of a fictitious zero history and lets the runtime keep
  streams at different fill levels in one batch.
- Block: pre-LN by default (Sonnet's default; the paper's is post-LN, `pre_norm=False`).
  Pre-LN here stores h, the layer input, as memory and normalises keys and values when
  attending (Sonnet stores LN(h)). For mem both give the same attention; for cmem they differ:
  f_c compresses h and its slots are normalised when attended, where Sonnet compresses LN(h)
  and attends to the slots as they are. Storing h keeps one memory definition (the layer
  input) for both block types. `store_normed_memory=True` stores LN(h) as Sonnet does.
- Auxiliary losses: one is chosen by `aux_loss` (the paper and Sonnet train with one; "both"
  is what checkpoints written before the option trained with). The auto-encoding decoder g
  has its own weights (`ae_decoders`), as Sonnet's `conv.transpose()`; it is not exported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from compressive_rt.ct_reference.compression import build_compressor, build_decoder
from compressive_rt.ct_reference.config import ModelConfig


@dataclass
class Memory:
    mem: torch.Tensor  # [N, B, M, d] layer inputs, oldest first, right-aligned
    cmem: torch.Tensor  # [N, B, C, d] compressed slots, oldest first, right-aligned
    mem_len: torch.Tensor  # [B] int64 valid mem slots
    cmem_len: torch.Tensor  # [B] int64 valid cmem slots
    usage: torch.Tensor  # [N, B, M] attention mass each mem slot received (most_used)

    def layers(self, order: list[int] | tuple[int, ...]) -> "Memory":
        """The same memory with layer i holding layer order[i]'s memory."""
        index = list(order)
        return Memory(self.mem[index], self.cmem[index], self.mem_len, self.cmem_len,
                      self.usage[index])

    def detach(self) -> "Memory":
        return Memory(*(t.detach() for t in (self.mem, self.cmem, self.mem_len, self.cmem_len,
                                             self.usage)))

    def select(self, rows: torch.Tensor | slice) -> "Memory":
        """The memory of some streams (batch rows)."""
        return Memory(self.mem[:, rows], self.cmem[:, rows], self.mem_len[rows],
                      self.cmem_len[rows], self.usage[:, rows])


@dataclass
class StepOutput:
    logits: torch.Tensor  # [B, T, V]
    memory: Memory  # rotated and compressed when T == L, else unchanged
    hiddens: torch.Tensor  # [N, B, T, d] what each layer stores as memory: h^(i) or LN(h^(i))
    aux_losses: dict[str, torch.Tensor]


def sinusoid_table(length: int, d_model: int) -> torch.Tensor:
    """Sinusoidal encodings of relative distances 0..length-1 (Transformer-XL). [length, d]"""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Transformer-XL relative shift.

    x [B, H, T, K] holds at column k the score for distance K - 1 - k; the result holds at
    [i, j] the score for distance (K - T + i) - j (valid where that is >= 0).
    """
    batch, heads, q_len, k_len = x.shape
    padded = F.pad(x, (1, 0)).view(batch, heads, k_len + 1, q_len)
    return padded[:, :, 1:].reshape(batch, heads, q_len, k_len)


def learned_position_rows(mem_len: torch.Tensor, cmem_len: torch.Tensor, seg_len: int,
                          distance: torch.Tensor, table_len: int) -> torch.Tensor:
    """Row of the learned position table for each (query, key) -> int64 like distance.

    The convention of compressive-transformer-pytorch: its table [H, L+M+C, dh] is sliced to
    the keys present and relatively shifted, which reads row (L - 1 + filled) - distance, where
    filled = valid mem + cmem slots of the stream (so the rows move while memory fills).
    mem_len, cmem_len [B]; distance [B or 1, 1, T, K] over the valid concatenation.
    """
    filled = (mem_len + cmem_len).long()[:, None, None, None]  # [B, 1, 1, 1]
    return (seg_len - 1 + filled - distance).clamp(0, table_len - 1)


class RelMultiHeadAttention(nn.Module):
    """score_ij = (q_i + u) . k_j + (q_i + v) . W_r R_{dist(i,j)}, scaled by 1/sqrt(d_head);
    with position_encoding="learned": q_i . k_j + q_i . P[row(i, j)] (no u, v, W_r)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, heads, d_head = config.d_model, config.n_heads, config.d_head
        self.n_heads, self.d_head = heads, d_head
        self.learned_positions = config.position_encoding == "learned"
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=config.attn_out_bias)
        if not self.learned_positions:
            self.pos_proj = nn.Linear(d, d, bias=False)
            self.u = nn.Parameter(torch.zeros(heads, d_head))
            self.v = nn.Parameter(torch.zeros(heads, d_head))
        self.dropout = nn.Dropout(config.dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, H, T, d_head]"""
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, query_in: torch.Tensor, kv_in: torch.Tensor,
                positions: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query_in [B, T, d], kv_in [B, K, d], mask [B, 1, T, K] True where attended;
        positions: the sinusoid table [K, d] (distance K-1 first), or for learned positions
        (table [H, R, dh], rows [B, 1, T, K]) -> out [B, T, d], probs [B, H, T, K]."""
        q = self.split_heads(self.q_proj(query_in))  # [B, H, T, dh]
        k = self.split_heads(self.k_proj(kv_in))  # [B, H, K, dh]
        v = self.split_heads(self.v_proj(kv_in))  # [B, H, K, dh]
        if self.learned_positions:
            table, rows = positions
            content = q @ k.transpose(-1, -2)  # [B, H, T, K]
            by_row = q @ table.transpose(-1, -2)  # [B, H, T, R]
            position = torch.gather(by_row, 3, rows.expand(-1, self.n_heads, -1, -1))
        else:
            r = self.pos_proj(positions).view(-1, self.n_heads, self.d_head).transpose(0, 1)
            content = (q + self.u[:, None]) @ k.transpose(-1, -2)  # [B, H, T, K]
            position = rel_shift((q + self.v[:, None]) @ r.transpose(-1, -2))  # [B, H, T, K]
        scores = (content + position) / math.sqrt(self.d_head)
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        read = self.dropout(probs) @ v  # [B, H, T, dh]
        out = self.out_proj(read.transpose(1, 2).reshape(query_in.shape))
        return out, probs


class FeedForward(nn.Module):
    """down(act(up(x))); with GLU up has 2 * d_ff outputs: down(act(first half) * second half)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.glu = config.ff_glu
        self.up = nn.Linear(config.d_model, config.d_ff * (2 if self.glu else 1))
        self.down = nn.Linear(config.d_ff, config.d_model)
        self.act = nn.GELU() if config.ff_activation == "gelu" else nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.glu:
            gate, value = self.up(x).chunk(2, dim=-1)
            return self.down(self.dropout(self.act(gate) * value))
        return self.down(self.dropout(self.act(self.up(x))))


class Mogrifier(nn.Module):
    """Melis et al. 2020: x and h gate each other for 5 rounds (x, h, x, h, x), each gate
    2 * sigmoid of a rank-(d // 4) linear map of the other, before the GRU sees them."""

    rounds = 5

    def __init__(self, d_model: int) -> None:
        super().__init__()
        rank = d_model // 4
        self.gate_x = nn.Sequential(nn.Linear(d_model, rank), nn.Linear(rank, d_model))
        self.gate_h = nn.Sequential(nn.Linear(d_model, rank), nn.Linear(rank, d_model))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for step in range(self.rounds):
            if step % 2 == 0:
                x = 2 * torch.sigmoid(self.gate_x(h)) * x
            else:
                h = 2 * torch.sigmoid(self.gate_h(x)) * h
        return x, h


class GRUGate(nn.Module):
    """Gated residual (Parisotto et al. 2019): h' = GRU cell(input = sublayer output y,
    hidden = h), written out so it exports as plain MatMul/Sigmoid/Tanh."""

    def __init__(self, d_model: int, mogrify: bool) -> None:
        super().__init__()
        self.gru = nn.GRUCell(d_model, d_model)
        self.mogrifier = Mogrifier(d_model) if mogrify else None

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mogrifier is not None:
            y, h = self.mogrifier(y, h)
        gru = self.gru
        in_r, in_z, in_n = F.linear(y, gru.weight_ih, gru.bias_ih).chunk(3, dim=-1)
        hid_r, hid_z, hid_n = F.linear(h, gru.weight_hh, gru.bias_hh).chunk(3, dim=-1)
        reset = torch.sigmoid(in_r + hid_r)
        update = torch.sigmoid(in_z + hid_z)
        candidate = torch.tanh(in_n + reset * hid_n)
        return (1 - update) * candidate + update * h


class Layer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn = RelMultiHeadAttention(config)
        self.ff = FeedForward(config)
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.store_normed = config.store_normed_memory
        gated = config.residual != "add"
        mogrify = config.residual == "mogrifier_gru"
        self.attn_gate = GRUGate(config.d_model, mogrify) if gated else None
        self.ff_gate = GRUGate(config.d_model, mogrify) if gated else None

    def memory_state(self, h: torch.Tensor) -> torch.Tensor:
        """What this layer stores as memory for its input h: LN(h) or h."""
        return self.norm1(h) if self.store_normed else h

    def kv_input(self, states: torch.Tensor) -> torch.Tensor:
        """What keys and values are projected from, per stored state: LN(h) pre-LN, h post-LN
        (memories that already hold LN(h) are used as they are)."""
        return self.norm1(states) if self.pre_norm and not self.store_normed else states

    def forward(self, h: torch.Tensor, memories: torch.Tensor,
                positions: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, T, d], memories [B, C+M, d] -> next h [B, T, d], probs [B, H, T, C+M+T]"""
        kv_in = self.kv_input(torch.cat([memories, self.memory_state(h)], dim=1))  # [B,C+M+T,d]
        query_in = kv_in[:, memories.shape[1]:]
        attn_out, probs = self.attn(query_in, kv_in, positions, mask)
        return self.finish(h, attn_out), probs

    def finish(self, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The block after attention: residual (or gate), feed-forward, norms."""
        if self.pre_norm:
            h = self.residual(self.attn_gate, h, self.dropout(attn_out))
            return self.residual(self.ff_gate, h, self.dropout(self.ff(self.norm2(h))))
        h = self.norm1(h + self.dropout(attn_out))
        return self.norm2(h + self.dropout(self.ff(h)))

    @staticmethod
    def residual(gate: GRUGate | None, h: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return h + update if gate is None else gate(h, update)


def attention_mask(mem_len: torch.Tensor, cmem_len: torch.Tensor, n_cmem: int, n_mem: int,
                   seg_len: int) -> torch.Tensor:
    """[B, 1, T, C+M+T]: valid cmem and mem slots (right-aligned), causal over the segment."""
    slot_c = torch.arange(n_cmem, device=mem_len.device)
    slot_m = torch.arange(n_mem, device=mem_len.device)
    valid_c = slot_c[None, :] >= (n_cmem - cmem_len)[:, None]  # [B, C]
    valid_m = slot_m[None, :] >= (n_mem - mem_len)[:, None]  # [B, M]
    memory_ok = torch.cat([valid_c, valid_m], dim=1)[:, None, None, :]  # [B, 1, 1, C+M]
    pos = torch.arange(seg_len, device=mem_len.device)
    causal = (pos[None, :] <= pos[:, None])[None, None]  # [1, 1, T, T]
    batch = mem_len.shape[0]
    return torch.cat([memory_ok.expand(batch, 1, seg_len, n_cmem + n_mem),
                      causal.expand(batch, 1, seg_len, seg_len)], dim=-1)


class CompressiveTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        embed_dim = config.embed_dim or config.d_model
        self.embed = nn.Embedding(config.vocab_size, embed_dim)
        separate = embed_dim != config.d_model
        self.embed_in = nn.Linear(embed_dim, config.d_model) if separate else None
        self.embed_out = nn.Linear(config.d_model, embed_dim) if separate else None
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) \
            if config.pre_norm and config.final_norm else nn.Identity()
        self.lm_head = None if config.tie_embeddings else nn.Linear(
            embed_dim, config.vocab_size, bias=config.lm_head_bias)
        self.compressors = nn.ModuleList(
            build_compressor(config) for _ in range(config.n_layers)) \
            if config.compress_fn != "none" else None
        if config.position_encoding == "learned":
            self.pos_emb = nn.Parameter(  # [H, C+M+L, dh], shared by the layers
                torch.zeros(config.n_heads, config.context_len, config.d_head))
            self.register_buffer("pos_table", None, persistent=False)
        else:
            self.register_buffer("pos_table", sinusoid_table(config.context_len, config.d_model)
                                 .flip(0), persistent=False)  # [C+M+L, d], distance C+M+L-1 first
        self.read_order = config.memory_read_order
        # g of the auto-encoding loss, per layer: training only, never exported (registered
        # last so that models without it initialise exactly as before).
        self.ae_decoders = nn.ModuleList(
            build_decoder(config) for _ in range(config.n_layers)) \
            if config.trains_decoder else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, param in self.named_parameters():
            if "norm" in name:
                continue
            if name.endswith(".bias"):
                nn.init.zeros_(param)
            else:
                nn.init.normal_(param, std=0.02)

    def init_memory(self, batch: int) -> Memory:
        """Empty memory: zero tensors with counts 0 (nothing is attended)."""
        cfg, device = self.config, self.embed.weight.device
        return Memory(
            mem=torch.zeros(cfg.n_layers, batch, cfg.mem_len, cfg.d_model, device=device),
            cmem=torch.zeros(cfg.n_layers, batch, cfg.cmem_len, cfg.d_model, device=device),
            mem_len=torch.zeros(batch, dtype=torch.long, device=device),
            cmem_len=torch.zeros(batch, dtype=torch.long, device=device),
            usage=torch.zeros(cfg.n_layers, batch, cfg.mem_len, device=device))

    @torch.no_grad()
    def score(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Memory]:
        """Stream tokens [B, n] (any n) segment by segment from empty memory ->
        logits [B, n, V] and the final memory (a trailing partial segment leaves it as is)."""
        seg_len = self.config.seg_len
        memory = self.init_memory(tokens.shape[0])
        chunks = []
        for start in range(0, tokens.shape[1], seg_len):
            out = self(tokens[:, start:start + seg_len], memory)
            memory = out.memory
            chunks.append(out.logits)
        return torch.cat(chunks, dim=1), memory

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if self.config.scale_embeddings:
            x = x * math.sqrt(self.config.d_model)
        return x if self.embed_in is None else self.embed_in(x)

    def project_logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.final_norm(h)
        if self.embed_out is not None:
            h = self.embed_out(h)
        return h @ self.embed.weight.T if self.lm_head is None else self.lm_head(h)

    def positions(self, memory: Memory, seg_len: int,
                  n_memory: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """What attention needs for positions of a partial segment of seg_len tokens after
        n_memory (= C + M) memory slots: the sinusoid table, or (table, rows) if learned."""
        cfg = self.config
        if self.pos_table is not None:
            return self.pos_table[cfg.seg_len - seg_len:]  # [C+M+T, d]
        query = torch.arange(seg_len, device=memory.mem_len.device)
        key = torch.arange(n_memory + seg_len, device=memory.mem_len.device)
        distance = (n_memory + query[:, None] - key[None, :])[None, None]  # [1, 1, T, K]
        rows = learned_position_rows(memory.mem_len, memory.cmem_len, cfg.seg_len, distance,
                                     cfg.context_len)
        return self.pos_emb, rows

    def forward(self, tokens: torch.Tensor, memory: Memory,
                compute_aux: bool = False) -> StepOutput:
        """Score one segment tokens [B, T] (T <= L) with the memory; a full segment (T == L) also
        rotates the memory and compresses what it evicts. Memory carries no gradient."""
        cfg = self.config
        batch, seg_len = tokens.shape
        if seg_len > cfg.seg_len:
            raise ValueError(f"segment of {seg_len} tokens is longer than seg_len={cfg.seg_len}")
        stored = memory.detach()
        # With enhanced recurrence each layer reads (and then rotates) another layer's memory.
        memory = stored.layers(self.read_order) if cfg.enhanced_recurrence else stored
        n_memory = cfg.cmem_len + cfg.mem_len
        mask = attention_mask(memory.mem_len, memory.cmem_len, cfg.cmem_len, cfg.mem_len, seg_len)
        mask_no_memory = mask.clone()
        mask_no_memory[..., :n_memory] = False
        positions = self.positions(memory, seg_len, n_memory)
        h = self.embed_tokens(tokens)  # [B, T, d]
        hiddens, usage = [], []
        for i, layer in enumerate(self.layers):
            hiddens.append(layer.memory_state(h))
            h, probs = layer(h, torch.cat([memory.cmem[i], memory.mem[i]], dim=1), positions,
                             mask if cfg.has_memory(i) else mask_no_memory)
            mem_probs = probs[..., cfg.cmem_len:cfg.cmem_len + cfg.mem_len]  # [B, H, T, M]
            usage.append(memory.usage[i] + mem_probs.detach().sum(dim=(1, 2)))
        logits = self.project_logits(h)
        hiddens_t = torch.stack(hiddens)  # [N, B, T, d]
        if seg_len < cfg.seg_len:  # a partial segment leaves the memory as it was
            return StepOutput(logits=logits, memory=stored, hiddens=hiddens_t, aux_losses={})
        memory, aux = self.update_memory(replace(memory, usage=torch.stack(usage)), hiddens_t,
                                         compute_aux)
        return StepOutput(logits=logits, memory=memory, hiddens=hiddens_t, aux_losses=aux)

    def update_memory(self, memory: Memory, hiddens: torch.Tensor,
                      compute_aux: bool = False) -> tuple[Memory, dict[str, torch.Tensor]]:
        """Algorithm 1 of the paper, per layer and stream, for a full segment hiddens [N,B,L,d].

        old_mem = the oldest L slots of mem (evicted only when mem is full);
        new_cm = f_c(old_mem); mem <- (mem ++ h)[-M:]; cmem <- (cmem ++ new_cm)[-C:].
        """
        cfg = self.config
        hiddens = hiddens.detach()
        seg_len, n_new = cfg.seg_len, cfg.cmem_per_segment
        evicts = memory.mem_len == cfg.mem_len  # [B]
        mem = torch.cat([memory.mem, hiddens], dim=2)[:, :, -cfg.mem_len:]  # [N, B, M, d]
        usage = F.pad(memory.usage, (0, seg_len))[:, :, -cfg.mem_len:]  # [N, B, M]
        mem_len = torch.clamp(memory.mem_len + seg_len, max=cfg.mem_len)
        cmem, cmem_len, aux = memory.cmem, memory.cmem_len, {}
        if self.compressors is not None:
            old_mem = memory.mem[:, :, :seg_len]  # [N, B, L, d]
            old_usage = memory.usage[:, :, :seg_len]  # [N, B, L]
            new_cm = torch.stack([f_c(old_mem[i], old_usage[i])
                                  for i, f_c in enumerate(self.compressors)])  # [N, B, L/c, d]
            shifted = torch.cat([cmem, new_cm.detach()], dim=2)[:, :, -cfg.cmem_len:]
            cmem = torch.where(evicts[None, :, None, None], shifted, cmem)
            cmem_len = torch.where(evicts, torch.clamp(cmem_len + n_new, max=cfg.cmem_len),
                                   cmem_len)
            if compute_aux and bool(evicts.any()):
                aux = self.aux_losses(hiddens[:, evicts], old_mem[:, evicts], new_cm[:, evicts])
        return Memory(mem, cmem, mem_len, cmem_len, usage), aux

    def aux_losses(self, h: torch.Tensor, old_mem: torch.Tensor,
                   new_cm: torch.Tensor) -> dict[str, torch.Tensor]:
        """The compression loss(es) chosen by config.aux_loss, for streams that evicted; they
        train f_c (and the auto-encoding decoder g) only. Empty for compressors without
        parameters (nothing to train) and for aux_loss="none".

        h [N,B,L,d] segment inputs, old_mem [N,B,L,d] evicted, new_cm [N,B,L/c,d] = f_c(old_mem).
        - attention reconstruction (Algorithm 2): content-only attention of the layer's queries
          over old_mem vs over new_cm, no position terms, no mask, with h, old_mem and the
          layer's weights detached; mean squared error of the per-head read vectors before the
          output projection, summed over layers and divided by the layer count.
        - auto-encoding: MSE between old_mem and g(new_cm), averaged over layers the same way.
        """
        cfg = self.config
        if next(self.compressors.parameters(), None) is None:
            return {}
        losses = {}
        if cfg.aux_loss in ("attention", "both"):
            losses["attention_reconstruction"] = torch.stack([
                F.mse_loss(_content_read(layer, h[i], new_cm[i]),
                           _content_read(layer, h[i], old_mem[i]))
                for i, layer in enumerate(self.layers)]).mean()
        if self.ae_decoders is not None:
            losses["autoencoding"] = torch.stack([
                F.mse_loss(decode(new_cm[i]), old_mem[i])
                for i, decode in enumerate(self.ae_decoders)]).mean()
        return losses


def _content_read(layer: Layer, h: torch.Tensor, memories: torch.Tensor) -> torch.Tensor:
    """Per-head read vectors of content-only attention with detached weights. -> [B,H,L,dh]"""
    attn = layer.attn

    def project(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        if layer.pre_norm and not layer.store_normed:
            x = F.layer_norm(x, x.shape[-1:], layer.norm1.weight.detach(),
                             layer.norm1.bias.detach(), layer.norm1.eps)
        return attn.split_heads(x @ linear.weight.detach().T)

    q = project(h, attn.q_proj)  # [B, H, L, dh]
    k = project(memories, attn.k_proj)  # [B, H, S, dh]
    v = project(memories, attn.v_proj)  # [B, H, S, dh]
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(attn.d_head), dim=-1)
    return probs @ v
