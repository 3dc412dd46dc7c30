"""The engine's entry points as pure torch functions over explicit state (the engine contract).

Same weights and the same equations as `ct_reference.model`, arranged for inference: keys and
values of the memory are cached (`mem_k`, `mem_v`), so a step projects only the new tokens and
the new compressed slots. Each module's forward takes and returns tensors in the order of
`runtime.contract.entry_points`, which is what `export.onnx_export` traces. Run eagerly they are
also "eager PyTorch with the same caching" for the benchmarks.

Relative positions: r[delta] = W_r R_delta for delta = 0 .. C+M+L-1, gathered per (query, key)
by the distance over the padded concatenation [cmem, mem, partial segment, new tokens]; with
right-aligned memories that equals the distance over the valid slots (see ct_reference.model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ct_reference.model import CompressiveTransformer, Layer, sinusoid_table


class StepCore(nn.Module):
    """Shared pieces: per-layer projections and cached attention."""

    def __init__(self, model: CompressiveTransformer) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.cfg = cfg
        self.n_mem = cfg.cmem_len + cfg.mem_len  # memory keys per layer: C + M
        self.most_used = cfg.compress_fn == "most_used"
        table = sinusoid_table(cfg.context_len, cfg.d_model)  # [C+M+L, d], distance 0 first
        self.register_buffer("rel_table", table, persistent=False)

    def positions(self, layer: Layer) -> torch.Tensor:
        """r [H, C+M+L, dh]: projected encodings indexed by distance."""
        attn = layer.attn
        return attn.pos_proj(self.rel_table).view(-1, attn.n_heads, attn.d_head).transpose(0, 1)

    def project_kv(self, layer: Layer, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, S, d] -> keys, values [B, S, d]"""
        kv_in = layer.kv_input(states)
        return layer.attn.k_proj(kv_in), layer.attn.v_proj(kv_in)

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

    def layer_step(self, layer: Layer, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   q_in: torch.Tensor, distance: torch.Tensor,
                   mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer over cached keys.

        h [B,T,d] layer input, q_in [B,T,d] what queries project from, k/v [B,K,d] every key
        the queries may read, distance [B,1,T,K] int64 clamped to the table, mask [B,1,T,K].
        -> next h [B,T,d], probs [B,H,T,K]
        """
        attn = layer.attn
        batch, n_new, _ = h.shape
        heads, d_head = attn.n_heads, attn.d_head
        q = attn.split_heads(attn.q_proj(q_in))  # [B, H, T, dh]
        keys = k.view(batch, -1, heads, d_head).transpose(1, 2)  # [B, H, K, dh]
        values = v.view(batch, -1, heads, d_head).transpose(1, 2)  # [B, H, K, dh]
        content = (q + attn.u[:, None]) @ keys.transpose(-1, -2)  # [B, H, T, K]
        by_distance = (q + attn.v[:, None]) @ self.positions(layer).transpose(-1, -2)  # [B,H,T,D]
        position = torch.gather(by_distance, 3, distance.expand(-1, heads, -1, -1))  # [B,H,T,K]
        scores = (content + position) / math.sqrt(d_head)
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        read = (probs @ values).transpose(1, 2).reshape(batch, n_new, heads * d_head)
        attn_out = attn.out_proj(read)
        if layer.pre_norm:
            h = h + attn_out
            return h + layer.ff(layer.norm2(h)), probs
        h = layer.norm1(h + attn_out)
        return layer.norm2(h + layer.ff(h)), probs

    def rotate(self, seg_h: torch.Tensor, seg_k: torch.Tensor, seg_v: torch.Tensor,
               mem: torch.Tensor, cmem: torch.Tensor | None, mem_k: torch.Tensor,
               mem_v: torch.Tensor, mem_len: torch.Tensor, cmem_len: torch.Tensor | None,
               usage: torch.Tensor | None, commit: torch.Tensor) -> list[torch.Tensor]:
        """Algorithm 1 for rows with commit True: append the segment, evict, compress.

        seg_h/seg_k/seg_v [N,B,L,d], mem [N,B,M,d], cmem [N,B,C,d], mem_k/mem_v [N,B,C+M,d],
        counts [B] int32, usage [N,B,M], commit [B] bool. Returns the next memory state in
        contract order.
        """
        cfg = self.cfg
        seg_len, n_mem, n_cmem = cfg.seg_len, cfg.mem_len, cfg.cmem_len
        row = commit[None, :, None, None]  # [1, B, 1, 1]
        mem_next = torch.cat([mem, seg_h], dim=2)[:, :, -n_mem:]  # [N, B, M, d]
        k_mem = torch.cat([mem_k[:, :, n_cmem:], seg_k], dim=2)[:, :, -n_mem:]  # [N, B, M, d]
        v_mem = torch.cat([mem_v[:, :, n_cmem:], seg_v], dim=2)[:, :, -n_mem:]
        mem_len_next = torch.where(commit, torch.clamp(mem_len + seg_len, max=n_mem), mem_len)
        outputs = {"mem": torch.where(row, mem_next, mem), "mem_len": mem_len_next}
        if cmem is not None:
            evicts = commit & (mem_len == n_mem)  # [B]
            new_cm, k_new, v_new = [], [], []
            for i, layer in enumerate(self.model.layers):
                old_usage = usage[i, :, :seg_len] if usage is not None else None
                slots = self.model.compressors[i](mem[i, :, :seg_len], old_usage)  # [B, L/c, d]
                k_i, v_i = self.project_kv(layer, slots)
                new_cm.append(slots)
                k_new.append(k_i)
                v_new.append(v_i)
            shift = evicts[None, :, None, None]
            cmem_next = torch.cat([cmem, torch.stack(new_cm)], dim=2)[:, :, -n_cmem:]
            k_cmem = torch.cat([mem_k[:, :, :n_cmem], torch.stack(k_new)], dim=2)[:, :, -n_cmem:]
            v_cmem = torch.cat([mem_v[:, :, :n_cmem], torch.stack(v_new)], dim=2)[:, :, -n_cmem:]
            k_mem = torch.cat([torch.where(shift, k_cmem, mem_k[:, :, :n_cmem]), k_mem], dim=2)
            v_mem = torch.cat([torch.where(shift, v_cmem, mem_v[:, :, :n_cmem]), v_mem], dim=2)
            outputs["cmem"] = torch.where(shift, cmem_next, cmem)
            outputs["cmem_len"] = torch.where(
                evicts, torch.clamp(cmem_len + cfg.cmem_per_segment, max=n_cmem), cmem_len)
        outputs["mem_k"] = torch.where(row, k_mem, mem_k)
        outputs["mem_v"] = torch.where(row, v_mem, mem_v)
        if usage is not None:
            rolled = F.pad(usage, (0, seg_len))[:, :, -n_mem:]  # [N, B, M]
            outputs["usage"] = torch.where(commit[None, :, None], rolled, usage)
        return [outputs[name] for name in ("mem", "cmem", "mem_k", "mem_v", "mem_len",
                                           "cmem_len", "usage") if name in outputs]


def _split_memory(core: StepCore, state: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor | None]:
    """Name the memory-state tensors given in contract order (cmem/cmem_len/usage optional)."""
    names = ["mem", "cmem", "mem_k", "mem_v", "mem_len", "cmem_len", "usage"]
    if core.cfg.cmem_len == 0:
        names = [n for n in names if n not in ("cmem", "cmem_len")]
    if not core.most_used:
        names.remove("usage")
    named: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("mem", "cmem", "mem_k", "mem_v", "mem_len", "cmem_len", "usage"))
    named.update(zip(names, state))
    return named


class SegmentStep(StepCore):
    """tokens [B, L] + memory state + commit [B] -> logits [B, L, V] + next memory state."""

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cfg, model = self.cfg, self.model
        *memory, commit = state
        m = _split_memory(self, tuple(memory))
        seg_len = cfg.seg_len
        valid = self.memory_valid(m["mem_len"], m["cmem_len"])  # [B, C+M]
        pos = torch.arange(seg_len, device=tokens.device)
        causal = pos[None, :] <= pos[:, None]  # [L, L]
        mask = torch.cat([valid[:, None, None, :].expand(-1, 1, seg_len, -1),
                          causal[None, None].expand(valid.shape[0], 1, -1, -1)], dim=-1)
        keys = torch.arange(self.n_mem + seg_len, device=tokens.device)
        distance = (self.n_mem + pos[:, None] - keys[None, :]).clamp(min=0)  # [L, C+M+L]
        distance = distance[None, None].expand(valid.shape[0], 1, -1, -1)
        h = model.embed_tokens(tokens)  # [B, L, d]
        seg_h, seg_k, seg_v, usage = [], [], [], []
        for i, layer in enumerate(model.layers):
            seg_h.append(h)
            kv_in = layer.kv_input(h)
            k_new, v_new = layer.attn.k_proj(kv_in), layer.attn.v_proj(kv_in)
            seg_k.append(k_new)
            seg_v.append(v_new)
            k = torch.cat([m["mem_k"][i], k_new], dim=1)  # [B, C+M+L, d]
            v = torch.cat([m["mem_v"][i], v_new], dim=1)
            h, probs = self.layer_step(layer, h, k, v, kv_in, distance, mask)
            if self.most_used:
                mem_probs = probs[..., cfg.cmem_len:self.n_mem]  # [B, H, L, M]
                read = torch.where(commit[:, None], mem_probs.sum(dim=(1, 2)), 0.0)
                usage.append(m["usage"][i] + read)
        logits = model.project_logits(h)
        next_state = self.rotate(torch.stack(seg_h), torch.stack(seg_k), torch.stack(seg_v),
                                 m["mem"], m["cmem"], m["mem_k"], m["mem_v"], m["mem_len"],
                                 m["cmem_len"], torch.stack(usage) if usage else None, commit)
        return (logits, *next_state)


class ExtendStep(StepCore):
    """T new tokens per stream after seg_len cached ones -> logits + the new cache rows."""

    def forward(self, tokens: torch.Tensor, seg_len: torch.Tensor,
                *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cfg, model = self.cfg, self.model
        has_cmem = cfg.cmem_len > 0
        names = ["mem_k", "mem_v", "mem_len"] + (["cmem_len"] if has_cmem else []) + \
            ["seg_k", "seg_v"] + (["usage", "active"] if self.most_used else [])
        s = dict(zip(names, state))
        batch, n_new = tokens.shape
        valid = self.memory_valid(s["mem_len"], s.get("cmem_len"))  # [B, C+M]
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
        distance = (query_pos[:, :, None] - key_pos[:, None, :]).clamp(
            0, cfg.context_len - 1)[:, None]  # [B, 1, T, K]
        h = model.embed_tokens(tokens)  # [B, T, d]
        new_h, new_k, new_v, usage = [], [], [], []
        for i, layer in enumerate(model.layers):
            new_h.append(h)
            kv_in = layer.kv_input(h)
            k_new, v_new = layer.attn.k_proj(kv_in), layer.attn.v_proj(kv_in)
            new_k.append(k_new)
            new_v.append(v_new)
            k = torch.cat([s["mem_k"][i], s["seg_k"][i], k_new], dim=1)  # [B, C+M+L+T, d]
            v = torch.cat([s["mem_v"][i], s["seg_v"][i], v_new], dim=1)
            h, probs = self.layer_step(layer, h, k, v, kv_in, distance, mask)
            if self.most_used:
                mem_probs = probs[..., cfg.cmem_len:self.n_mem]  # [B, H, T, M]
                read = torch.where(s["active"][:, None], mem_probs.sum(dim=(1, 2)), 0.0)
                usage.append(s["usage"][i] + read)
        outputs = [model.project_logits(h), torch.stack(new_h), torch.stack(new_k),
                   torch.stack(new_v)]
        if self.most_used:
            outputs.append(torch.stack(usage))
        return tuple(outputs)


class CommitStep(StepCore):
    """A full partial segment + memory state + commit [B] -> next memory state."""

    def forward(self, seg_h: torch.Tensor, seg_k: torch.Tensor, seg_v: torch.Tensor,
                *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *memory, commit = state
        m = _split_memory(self, tuple(memory))
        return tuple(self.rotate(seg_h, seg_k, seg_v, m["mem"], m["cmem"], m["mem_k"],
                                 m["mem_v"], m["mem_len"], m["cmem_len"], m["usage"], commit))


STEP_MODULES = {"segment": SegmentStep, "extend": ExtendStep, "commit": CommitStep}


def build_steps(model: CompressiveTransformer) -> dict[str, StepCore]:
    """The three entry points of a model, in eval mode, sharing its weights."""
    model.eval()
    return {name: cls(model).eval() for name, cls in STEP_MODULES.items()}
