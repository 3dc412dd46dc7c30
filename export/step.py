"""The engine's entry points as pure torch functions over explicit state (the engine contract).

Same weights and the same equations as `ct_reference.model`, arranged for inference: keys and
values of the memory are cached (`mem_k`, `mem_v`), so a step projects only the new tokens and
the new compressed slots. Each module's forward takes and returns tensors in the order of
`runtime.contract.entry_points`, which is what `export.onnx_export` traces. Run eagerly they are
also "eager PyTorch with the same caching" for the benchmarks.

Relative positions: r[delta] = W_r R_delta for delta = 0 .. C+M+L-1, gathered per (query, key)
by the distance over the padded concatenation [cmem, mem, partial segment, new tokens]; with
right-aligned memories that equals the distance over the valid slots (see ct_reference.model).
Learned positions (position_encoding="learned") gather rows of one shared table instead, by
distance and the stream's memory fill (`learned_position_rows`).

With enhanced recurrence each layer reads another layer's memory, so `mem_k`/`mem_v` hold the
keys of what each layer reads and `commit` projects them whole (it never reads seg_k/seg_v).

State is per layer (contract v3): each per-layer tensor arrives as N graph inputs and is
handled here as a list of N tensors [B, ...rest], so no graph splits or concatenates state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compressive_rt.ct_reference.model import (
    CompressiveTransformer,
    Layer,
    learned_position_rows,
    sinusoid_table,
)
from compressive_rt.runtime.contract import (
    MEMORY_STATE,
    NEW_ROWS,
    OUT_SUFFIX,
    entry_points,
    graph_tensor_parts,
)

State = dict[str, torch.Tensor | list[torch.Tensor] | None]  # per-layer tensors as N-lists


class StepCore(nn.Module):
    """Shared pieces: per-layer projections and cached attention."""

    def __init__(self, model: CompressiveTransformer) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.cfg = cfg
        self.n_mem = cfg.cmem_len + cfg.mem_len  # memory keys per layer: C + M
        self.most_used = cfg.compress_fn == "most_used"
        self.learned_positions = cfg.position_encoding == "learned"
        contract = entry_points(cfg)
        self.input_names = {name: entry.input_names for name, entry in contract.items()}
        self.output_names = {name: entry.output_names for name, entry in contract.items()}
        if not self.learned_positions:
            # W_r R depends on weights only: project it once when the steps are built (what
            # ONNX constant folding would do), not on every call.
            table = sinusoid_table(cfg.context_len, cfg.d_model)  # [C+M+L, d], distance 0 first
            with torch.no_grad():
                projected = torch.stack([
                    layer.attn.pos_proj(table).view(-1, cfg.n_heads, cfg.d_head).transpose(0, 1)
                    for layer in model.layers])  # [N, H, C+M+L, dh]
            self.register_buffer("rel_positions", projected, persistent=False)

    def positions(self, layer_index: int) -> torch.Tensor:
        """[H, C+M+L, dh]: projected encodings indexed by distance, or the learned table
        indexed by `position_index`."""
        if self.learned_positions:
            return self.model.pos_emb
        return self.rel_positions[layer_index]

    def position_index(self, distance: torch.Tensor, mem_len: torch.Tensor,
                       cmem_len: torch.Tensor | None) -> torch.Tensor:
        """distance [B or 1, 1, T, K] int64 (unclamped) -> index into `positions`, in range."""
        cfg = self.cfg
        if not self.learned_positions:
            return distance.clamp(0, cfg.context_len - 1)
        filled_c = cmem_len if cmem_len is not None else torch.zeros_like(mem_len)
        return learned_position_rows(mem_len, filled_c, cfg.seg_len, distance, cfg.context_len)

    def layer_mask(self, layer_index: int, mask: torch.Tensor) -> torch.Tensor:
        """mask [B,1,T,K] with the memory keys masked for layers that read no memory."""
        if self.cfg.has_memory(layer_index):
            return mask
        keep = torch.arange(mask.shape[-1], device=mask.device) >= self.n_mem  # [K]
        return mask & keep

    def project_kv(self, layer: Layer, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, S, d] -> head-major keys, values [B, H, S, dh]"""
        kv_in = layer.kv_input(states)
        return layer.attn.split_heads(layer.attn.k_proj(kv_in)), \
            layer.attn.split_heads(layer.attn.v_proj(kv_in))

    def memory_valid(self, mem_len: torch.Tensor, cmem_len: torch.Tensor | None) -> torch.Tensor:
        """[B, C+M] True for valid (right-aligned) cmem and mem slots."""
        cfg = self.cfg
        slot_m = torch.arange(cfg.mem_len, device=mem_len.device)
        valid = slot_m[None, :] >= (cfg.mem_len - mem_len)[:, None]  # [B, M]
        if cmem_len is not None:
            slot_c = torch.arange(cfg.cmem_len, device=mem_len.device)
            valid_c = slot_c[None, :] >= (cfg.cmem_len - cmem_len)[:, None]  # [B, C]
            valid = torch.cat([valid_c, valid], dim=1)
        return valid

    def layer_step(self, index: int, h: torch.Tensor, key_parts: list[torch.Tensor],
                   value_parts: list[torch.Tensor], q_in: torch.Tensor, distance: torch.Tensor,
                   mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index` over cached keys, read in place: scores are computed per part of the
        keys and joined (small), so the cache is never concatenated with the new keys.

        h [B,T,d] layer input, q_in [B,T,d] what queries project from, key_parts/value_parts
        [B,H,S_j,dh] every key the queries may read (K = sum S_j), distance [B,1,T,K] int64
        clamped to the table, mask [B,1,T,K]. -> next h [B,T,d], probs [B,H,T,K]
        """
        layer = self.model.layers[index]
        attn = layer.attn
        batch, n_new, _ = h.shape
        heads, d_head = attn.n_heads, attn.d_head
        q = attn.split_heads(attn.q_proj(q_in))  # [B, H, T, dh]
        q_content = q if self.learned_positions else q + attn.u[:, None]
        q_position = q if self.learned_positions else q + attn.v[:, None]
        content = torch.cat([q_content @ keys.transpose(-1, -2) for keys in key_parts],
                            dim=-1)  # [B, H, T, K]
        by_distance = q_position @ self.positions(index).transpose(-1, -2)  # [B, H, T, D]
        position = torch.gather(by_distance, 3, distance.expand(-1, heads, -1, -1))  # [B,H,T,K]
        scores = (content + position) / math.sqrt(d_head)
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        sizes = [values.shape[2] for values in value_parts]
        read = sum(p @ values for p, values in zip(torch.split(probs, sizes, dim=-1),
                                                   value_parts, strict=True))  # [B, H, T, dh]
        read = read.transpose(1, 2).reshape(batch, n_new, heads * d_head)
        return layer.finish(h, attn.out_proj(read)), probs

    def run_layers(self, tokens: torch.Tensor, layer_k: list[list[torch.Tensor]],
                   layer_v: list[list[torch.Tensor]], distance: torch.Tensor, mask: torch.Tensor,
                   layer_usage: list[torch.Tensor] | None) -> tuple:
        """Embed tokens [B, T] and run every layer over its cached keys/values (per part of the
        cache, N tensors [B,H,S,dh], read in order) plus the new tokens' own.

        distance, mask [B,1,T,K]; usage N x [B,M] (most_used) gains the attention the memory
        received. -> logits [B,T,V] and N-lists of stored states [B,T,d], keys, values
        [B,H,T,dh] of the new tokens, next usage [B,M] (or None)."""
        cfg, model = self.cfg, self.model
        h = model.embed_tokens(tokens)  # [B, T, d]
        new_h, new_k, new_v, next_usage = [], [], [], []
        for i, layer in enumerate(model.layers):
            stored = layer.memory_state(h)  # [B, T, d]
            k_new, v_new = self.project_kv(layer, stored)  # [B, H, T, dh]
            new_h.append(stored)
            new_k.append(k_new)
            new_v.append(v_new)
            h, probs = self.layer_step(
                i, h, [*(keys[i] for keys in layer_k), k_new],
                [*(values[i] for values in layer_v), v_new], layer.kv_input(stored), distance,
                self.layer_mask(i, mask))
            if layer_usage is not None:
                mem_probs = probs[..., cfg.cmem_len:self.n_mem]  # [B, H, T, M]
                next_usage.append(layer_usage[i] + mem_probs.sum(dim=(1, 2)))
        return model.project_logits(h), new_h, new_k, new_v, next_usage or None

    def rotate(self, state: State) -> State:
        """Algorithm 1 for every row: append the segment, evict, compress.

        state: per layer seg_h [B,L,d], seg_k/seg_v [B,H,L,dh], mem [B,M,d], cmem [B,C,d],
        mem_k/mem_v [B,H,C+M,dh], usage [B,M] (N-lists); counts [B] int32. Returns the next
        memory state by name.
        """
        cfg = self.cfg
        seg_len, n_cmem = cfg.seg_len, cfg.cmem_len
        mem, cmem, usage = state["mem"], state.get("cmem"), state.get("usage")
        mem_k, mem_v, mem_len = state["mem_k"], state["mem_v"], state["mem_len"]
        if cfg.enhanced_recurrence:  # each layer rotates the memory it read (another layer's)
            order = list(self.model.read_order)
            mem = [mem[j] for j in order]
            cmem = [cmem[j] for j in order] if cmem is not None else None
        mem_next = [shift_in(m, h, dim=1) for m, h in zip(mem, state["seg_h"])]  # N x [B,M,d]
        k_mem = [shift_in(k[:, :, n_cmem:], s, dim=2)  # N x [B, H, M, dh]
                 for k, s in zip(mem_k, state["seg_k"])]
        v_mem = [shift_in(v[:, :, n_cmem:], s, dim=2) for v, s in zip(mem_v, state["seg_v"])]
        outputs = {"mem": mem_next, "mem_len": torch.clamp(mem_len + seg_len, max=cfg.mem_len)}
        if cmem is not None:
            evicts = mem_len == cfg.mem_len  # [B]: only a full memory evicts (0 or L slots)
            shift = evicts[:, None, None]  # [B, 1, 1]
            shift_kv = evicts[:, None, None, None]  # [B, 1, 1, 1]
            outputs["cmem"] = []
            for i, layer in enumerate(self.model.layers):
                old_usage = usage[i][:, :seg_len] if usage is not None else None
                slots = self.model.compressors[i](mem[i][:, :seg_len], old_usage)  # [B,L/c,d]
                k_i, v_i = self.project_kv(layer, slots)  # [B, H, L/c, dh]
                outputs["cmem"].append(torch.where(shift, shift_in(cmem[i], slots, dim=1),
                                                   cmem[i]))  # [B, C, d]
                k_c, v_c = mem_k[i][:, :, :n_cmem], mem_v[i][:, :, :n_cmem]  # [B, H, C, dh]
                k_mem[i] = torch.cat([torch.where(shift_kv, shift_in(k_c, k_i, dim=2), k_c),
                                      k_mem[i]], dim=2)  # [B, H, C+M, dh]
                v_mem[i] = torch.cat([torch.where(shift_kv, shift_in(v_c, v_i, dim=2), v_c),
                                      v_mem[i]], dim=2)
            outputs["cmem_len"] = torch.where(
                evicts, torch.clamp(state["cmem_len"] + cfg.cmem_per_segment, max=n_cmem),
                state["cmem_len"])
        if cfg.enhanced_recurrence:
            # The cache holds keys of what each layer reads next: another layer's new memory,
            # so it is projected whole (commit rewrites the memory anyway).
            reads = [outputs["mem"][j] for j in order]
            if cmem is not None:  # N x [B, C+M, d]
                reads = [torch.cat([outputs["cmem"][j], r], dim=1) for j, r in zip(order, reads)]
            projected = [self.project_kv(layer, reads[i])
                         for i, layer in enumerate(self.model.layers)]
            k_mem = [k for k, _ in projected]
            v_mem = [v for _, v in projected]
        outputs["mem_k"], outputs["mem_v"] = k_mem, v_mem
        if usage is not None:
            outputs["usage"] = [F.pad(u, (0, seg_len))[:, -cfg.mem_len:] for u in usage]  # [B,M]
        return outputs


def shift_in(old: torch.Tensor, new: torch.Tensor, dim: int) -> torch.Tensor:
    """The newest old.shape[dim] entries of old ++ new along dim, without concatenating what
    is dropped: FIFO memories are a multiple of the segment, so whole blocks shift."""
    keep, added = old.shape[dim], new.shape[dim]
    if added >= keep:
        return new.narrow(dim, added - keep, keep)
    return torch.cat([old.narrow(dim, added, keep - added), new], dim=dim)


def gather_layers(names: list[str], tensors: tuple[torch.Tensor, ...]) -> State:
    """Graph tensors in contract order by state name: a per-layer tensor's N inputs (`mem_k.0`
    .. `mem_k.{N-1}`, layer order) as one list; cmem/cmem_len/usage None when absent."""
    named: State = dict.fromkeys(MEMORY_STATE)
    for name, tensor in zip(names, tensors, strict=True):
        base, layer = graph_tensor_parts(name)
        named[base] = tensor if layer is None else [*(named.get(base) or []), tensor]
    return named


def scatter_layers(names: list[str], named: State) -> tuple[torch.Tensor, ...]:
    """The graph tensors `names` (outputs, in contract order) from N-lists by state name."""
    def value(name: str) -> torch.Tensor:
        base, layer = graph_tensor_parts(name)
        base = base.removesuffix(OUT_SUFFIX)
        return named[base] if layer is None else named[base][layer]
    return tuple(value(name) for name in names)


class SegmentStep(StepCore):
    """tokens [B, L] + memory state -> logits [B, L, V] + next memory state."""

    def forward(self, tokens: torch.Tensor, *memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cfg = self.cfg
        m = gather_layers(self.input_names["segment"][1:], memory)
        seg_len = cfg.seg_len
        valid = self.memory_valid(m["mem_len"], m["cmem_len"])  # [B, C+M]
        pos = torch.arange(seg_len, device=tokens.device)
        causal = pos[None, :] <= pos[:, None]  # [L, L]
        mask = torch.cat([valid[:, None, None, :].expand(-1, 1, seg_len, -1),
                          causal[None, None].expand(valid.shape[0], 1, -1, -1)], dim=-1)
        keys = torch.arange(self.n_mem + seg_len, device=tokens.device)
        distance = (self.n_mem + pos[:, None] - keys[None, :])[None, None]  # [1, 1, L, C+M+L]
        distance = self.position_index(distance, m["mem_len"], m["cmem_len"]).expand(
            valid.shape[0], 1, -1, -1)  # [B, 1, L, C+M+L]
        logits, seg_h, seg_k, seg_v, usage = self.run_layers(
            tokens, [m["mem_k"]], [m["mem_v"]], distance, mask, m["usage"])  # N-lists
        next_state = self.rotate({**m, "seg_h": seg_h, "seg_k": seg_k, "seg_v": seg_v,
                                  "usage": usage})
        return (logits, *scatter_layers(self.output_names["segment"][1:], next_state))


class ExtendStep(StepCore):
    """T new tokens per stream after seg_len cached ones -> logits + the new cache rows."""

    def forward(self, tokens: torch.Tensor, seg_len: torch.Tensor,
                *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cfg = self.cfg
        s = gather_layers(self.input_names["extend"][2:], state)  # after tokens, seg_len
        batch, n_new = tokens.shape
        valid = self.memory_valid(s["mem_len"], s["cmem_len"])  # [B, C+M]
        slot = torch.arange(cfg.seg_len, device=tokens.device)
        cached_ok = slot[None, :] < seg_len[:, None]  # [B, L]
        new = torch.arange(n_new, device=tokens.device)
        causal = new[None, :] <= new[:, None]  # [T, T]
        mask = torch.cat([valid[:, None, :].expand(-1, n_new, -1),
                          cached_ok[:, None, :].expand(-1, n_new, -1),
                          causal[None].expand(batch, -1, -1)], dim=-1)[:, None]  # [B,1,T,K]
        query_pos = seg_len[:, None].long() + new[None, :]  # [B, T] position in the segment
        mem_keys = torch.arange(self.n_mem, device=tokens.device) - self.n_mem  # [C+M]
        key_pos = torch.cat([mem_keys.expand(batch, -1), slot.expand(batch, -1),
                             query_pos], dim=1)  # [B, C+M+L+T]
        distance = self.position_index((query_pos[:, :, None] - key_pos[:, None, :])[:, None],
                                       s["mem_len"], s["cmem_len"])  # [B, 1, T, K]
        logits, new_h, new_k, new_v, usage = self.run_layers(
            tokens, [s["mem_k"], s["seg_k"]], [s["mem_v"], s["seg_v"]], distance, mask,
            s["usage"])
        new_rows = {NEW_ROWS["seg_h"]: new_h, NEW_ROWS["seg_k"]: new_k,
                    NEW_ROWS["seg_v"]: new_v, "usage": usage, "logits": logits}
        return scatter_layers(self.output_names["extend"], new_rows)


class CommitStep(StepCore):
    """A full partial segment + memory state -> next memory state."""

    def forward(self, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = gather_layers(self.input_names["commit"], state)
        return scatter_layers(self.output_names["commit"], self.rotate(named))


STEP_MODULES = {"segment": SegmentStep, "extend": ExtendStep, "commit": CommitStep}


def build_steps(model: CompressiveTransformer) -> dict[str, StepCore]:
    """The three entry points of a model, in eval mode, sharing its weights."""
    model.eval()
    return {name: cls(model).eval() for name, cls in STEP_MODULES.items()}
