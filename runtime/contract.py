"""The engine contract (version 3): names, shapes and dtypes of every graph input and output.

Defined once here and imported by export, runtime and tests (pure Python: the runtime never
imports torch). Shapes use ints for static sizes and two symbolic names: BATCH (every graph)
and TOKENS (the new-token count of `extend`, 1..L).

A stream's state (per layer N, heads H, dh = d / H), as `state_specs` gives it and as
snapshots hold it (one stream's row: the shape without its batch axis):
  mem [B,N,M,d]     last M layer inputs h^(i), right-aligned, oldest first
  cmem [B,N,C,d]    compressed slots, right-aligned, oldest first
  mem_k, mem_v [B,N,H,C+M,dh]  key / value projections of the [cmem, mem] each layer reads
                    (its own, or another layer's with enhanced recurrence), cached so decoding
                    never re-projects the memory
  mem_len, cmem_len [B] int32  valid slot counts
  usage [B,N,M]     attention mass each mem slot received (most_used compression only)
  seg_h [B,N,L,d], seg_k, seg_v [B,N,H,L,dh]  layer inputs / keys / values of the partial
                    segment
  seg_len [B] int32  tokens in the partial segment

Graphs take and give that state per layer (PER_LAYER: every tensor above with an N axis).
State tensor X of shape [B,N,...rest] is the graph tensors `X.0` .. `X.{N-1}`, each
[B, ...rest] (`layer_name`); the counts are whole tensors. Every layer has every per-layer
tensor, also a layer that reads no memory (`memory_layers`): its mem_k.i / mem_v.i are bound
and masked as in version 2, so the state and the snapshots are the same for every config.
Inputs are ordered state by state as listed in `entry_points` and, within a state tensor,
layer 0 first. A graph's next value of graph tensor X is the output named X + "_out" with the
shape of X (`mem.3_out`, `mem_len_out`), so an output buffer can be bound as the next call's
input (ping-pong).

Why per layer (version 3): version 2 packed the state as [B,N,...] tensors, so every step
Split mem_k / mem_v / seg_k / seg_v into per-layer pieces and Concat the new rows back:
the biggest single nodes of a decode step (issue 28: Split/Concat 11% of extend at b1, 23% at
b8, the two largest nodes Splits copying mem_k and mem_v). Now no graph splits, concatenates
or squeezes state: each layer reads its own inputs in place.

The runtime keeps each per-layer state tensor in one layer-major buffer [N, S, ...rest] (S =
max streams) and binds, for layer i of a call on rows [0, r), the view X[i, :r], which is
contiguous. Against separate per-layer buffers the graphs cannot tell (each binds one
contiguous block either way), and measuring agreed: the default config's extend graph through
ONNX Runtime with the runtime's session options, 2 threads, 80 runs per variant interleaved run
by run on a shared, loaded 2-core machine (load average 6-10), medians of two runs: b1 9.1 and
9.5 ms with views, 9.7 and 14.8 ms with separate buffers (contract v2 12.4 and 16.3 ms); b8 19.8
and 24.1 ms with views, 23.2 and 44.3 ms separate (v2 32.7 and 37.7 ms). No difference beyond
the machine's noise, so the layout is one buffer per state tensor (the simpler one: one
allocation, a stream's layers at one stride).

Every tensor is batch-first within its layer, so one stream's state is one contiguous block of
each layer's tensor. Keys and values are head-major ([.., H, S, dh]), the layout attention
reads, so no graph re-lays the cache out on a call.

Entry points. Every row of a call takes part in it (the runtime packs the streams of a call
into the first rows), so no graph has a per-row mask:
  segment  tokens [B,L] + memory state -> logits [B,L,V] + next memory state (for streams with
           an empty partial segment)
  extend   tokens [B,T] + seg_len + cached projections -> logits [B,T,V] and, per layer i, the
           T new rows new_h.i [B,T,d], new_k.i / new_v.i [B,H,T,dh] that the runtime writes at
           offset seg_len of seg_h.i / seg_k.i / seg_v.i; with most_used also usage.i ->
           usage.i_out
  commit   a full partial segment + memory state -> next memory state
Version 1 was layer-first ([N,B,...]) with commit/active masks, version 2 batch-first packed
[B,N,...]; engines of either are refused by the manifest check (runtime.manifest
.FORMAT_VERSION). Snapshots hold the same arrays in every version (runtime/snapshot.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

BATCH = "batch"
TOKENS = "tokens"
ENTRY_POINTS = ("segment", "extend", "commit")
OUT_SUFFIX = "_out"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float32", "int32" or "bool"
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def concrete_shape(self, batch: int, tokens: int | None = None) -> tuple[int, ...]:
        sizes = {BATCH: batch, TOKENS: tokens}
        shape = tuple(sizes[dim] if isinstance(dim, str) else dim for dim in self.shape)
        if any(dim is None for dim in shape):
            raise ValueError(f"tensor {self.name!r} needs a token count for its shape {self.shape}")
        return shape


@dataclass(frozen=True)
class EntryPoint:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class Dims:
    """The sizes the contract needs, read from a model config (object or dict)."""

    n_layers: int
    d_model: int
    n_heads: int
    vocab_size: int
    seg_len: int
    mem_len: int
    cmem_len: int
    most_used: bool

    @classmethod
    def from_config(cls, config: object) -> Dims:
        get = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k)
        return cls(n_layers=get("n_layers"), d_model=get("d_model"), n_heads=get("n_heads"),
                   vocab_size=get("vocab_size"),
                   seg_len=get("seg_len"), mem_len=get("mem_len"), cmem_len=get("cmem_len"),
                   most_used=get("compress_fn") == "most_used")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def has_cmem(self) -> bool:
        return self.cmem_len > 0


def state_specs(dims: Dims) -> dict[str, TensorSpec]:
    """Every state tensor a stream has, by name."""
    n, b, d = dims.n_layers, BATCH, dims.d_model
    heads, d_head = dims.n_heads, dims.d_head
    f32, i32 = "float32", "int32"
    n_mem = dims.cmem_len + dims.mem_len
    specs = [
        TensorSpec("mem", f32, (b, n, dims.mem_len, d)),
        TensorSpec("cmem", f32, (b, n, dims.cmem_len, d)),
        TensorSpec("mem_k", f32, (b, n, heads, n_mem, d_head)),
        TensorSpec("mem_v", f32, (b, n, heads, n_mem, d_head)),
        TensorSpec("mem_len", i32, (b,)),
        TensorSpec("cmem_len", i32, (b,)),
        TensorSpec("usage", f32, (b, n, dims.mem_len)),
        TensorSpec("seg_h", f32, (b, n, dims.seg_len, d)),
        TensorSpec("seg_k", f32, (b, n, heads, dims.seg_len, d_head)),
        TensorSpec("seg_v", f32, (b, n, heads, dims.seg_len, d_head)),
        TensorSpec("seg_len", i32, (b,)),
    ]
    skip = set()
    if not dims.has_cmem:
        skip |= {"cmem", "cmem_len"}  # no zero-length tensor ever reaches an engine
    if not dims.most_used:
        skip.add("usage")
    return {s.name: s for s in specs if s.name not in skip}


MEMORY_STATE = ("mem", "cmem", "mem_k", "mem_v", "mem_len", "cmem_len", "usage")
PARTIAL_STATE = ("seg_h", "seg_k", "seg_v")
# extend's outputs: the T new rows of each partial-state tensor, written at its offset seg_len
NEW_ROWS = {"seg_h": "new_h", "seg_k": "new_k", "seg_v": "new_v"}
COUNTS = ("mem_len", "cmem_len", "seg_len")  # the int32 [B] valid counts
# the state tensors with a layer axis (axis 1 of the stream state): the graphs see them per layer
PER_LAYER = ("mem", "cmem", "mem_k", "mem_v", "usage", "seg_h", "seg_k", "seg_v")
LAYER_SEPARATOR = "."


def layer_name(name: str, layer: int) -> str:
    """The graph tensor of one layer of a per-layer tensor: `mem_k.3`."""
    return f"{name}{LAYER_SEPARATOR}{layer}"


def graph_tensor_parts(name: str) -> tuple[str, int | None]:
    """`mem_k.3` -> ("mem_k", 3), `mem_k.3_out` -> ("mem_k_out", 3), `mem_len` -> ("mem_len",
    None): which tensor a graph tensor is a layer of."""
    base, separator, rest = name.partition(LAYER_SEPARATOR)
    if not separator:
        return name, None
    digits = rest[:-len(OUT_SUFFIX)] if rest.endswith(OUT_SUFFIX) else rest
    return base + rest[len(digits):], int(digits)


def per_layer(spec: TensorSpec, n_layers: int) -> tuple[TensorSpec, ...]:
    """A state tensor [B, N, ...rest] as the graphs take it: N tensors [B, ...rest] in layer
    order (per-layer tensors), or the tensor itself (the counts)."""
    if spec.name not in PER_LAYER and spec.name not in NEW_ROWS.values():
        return (spec,)
    rest = (spec.shape[0], *spec.shape[2:])
    return tuple(TensorSpec(layer_name(spec.name, i), spec.dtype, rest) for i in range(n_layers))


def out_spec(spec: TensorSpec) -> TensorSpec:
    return TensorSpec(spec.name + OUT_SUFFIX, spec.dtype, spec.shape)


def entry_points(config: object) -> dict[str, EntryPoint]:
    dims = Dims.from_config(config)
    n, b, d = dims.n_layers, BATCH, dims.d_model
    heads, d_head = dims.n_heads, dims.d_head
    state = state_specs(dims)

    def layers(*specs: TensorSpec) -> list[TensorSpec]:
        return [graph for spec in specs for graph in per_layer(spec, n)]

    memory = layers(*(state[name] for name in MEMORY_STATE if name in state))
    usage = layers(state["usage"]) if dims.most_used else []

    segment = EntryPoint(
        "segment",
        inputs=(TensorSpec("tokens", "int32", (b, dims.seg_len)), *memory),
        outputs=(TensorSpec("logits", "float32", (b, dims.seg_len, dims.vocab_size)),
                 *(out_spec(s) for s in memory)))
    readonly = layers(*(state[name] for name in ("mem_k", "mem_v", "mem_len", "cmem_len")
                        if name in state))
    extend = EntryPoint(
        "extend",
        inputs=(TensorSpec("tokens", "int32", (b, TOKENS)), state["seg_len"], *readonly,
                *layers(state["seg_k"], state["seg_v"]), *usage),
        outputs=(TensorSpec("logits", "float32", (b, TOKENS, dims.vocab_size)),
                 *layers(TensorSpec(NEW_ROWS["seg_h"], "float32", (b, n, TOKENS, d)),
                         TensorSpec(NEW_ROWS["seg_k"], "float32", (b, n, heads, TOKENS, d_head)),
                         TensorSpec(NEW_ROWS["seg_v"], "float32", (b, n, heads, TOKENS, d_head))),
                 *(out_spec(s) for s in usage)))
    commit = EntryPoint(
        "commit",
        inputs=(*layers(*(state[name] for name in PARTIAL_STATE)), *memory),
        outputs=tuple(out_spec(s) for s in memory))
    return {"segment": segment, "extend": extend, "commit": commit}
