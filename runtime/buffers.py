"""Every buffer of a Session, allocated once for max_streams, and the calls bound over them.

Two banks of each memory-state tensor (ping-pong: a call reads bank p and writes bank 1-p; the
bank flips only after the call succeeded, so a failed call leaves the committed state as it
was), one bank of the partial-segment tensors (written by slice), scratch for the token axis
sized for T = L, and host arrays per row: the partial fill of each row and its last logits.

Per-layer state tensors (contract v3) are layer-major: one buffer [N, S, ...rest] per tensor
and bank, whose layer i, [S, ...rest], is what the graph tensor `X.i` binds; the counts are
[S]. Row moves, swaps, clears and the ping-pong flip run per layer. A call on rows [0, r) binds
views of the first r rows of each layer (contiguous): its cost follows the streams taking part.

Calls are bound once per (entry point, rows, tokens, banks) and kept: the one cache of bound
calls, so a steady-state step looks up a handle and runs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.contract import (
    MEMORY_STATE,
    NEW_ROWS,
    OUT_SUFFIX,
    PARTIAL_STATE,
    PER_LAYER,
    TOKENS,
    Dims,
    TensorSpec,
    graph_tensor_parts,
    layer_name,
    state_specs,
)
from compressive_rt.runtime.manifest import Manifest

FILL_INPUT = "seg_len"  # the contract's name for the partial fill of each row, [B] int32


def blocks(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """A batch-first [B, ..., S, w] shape as [B, n, S, w]: n blocks of S rows of width w."""
    return shape[0], int(np.prod(shape[1:-2])), shape[-2], shape[-1]


class BoundCall(NamedTuple):
    feeds: dict[str, Any]  # input name -> view of a buffer
    fetches: dict[str, Any]  # output name -> view of a buffer
    handle: Any  # what Backend.run takes
    host_tokens: np.ndarray  # where the runtime writes the tokens input: [batch, T]
    host_fills: np.ndarray  # the partial fills of the call's rows: [batch]
    uploads: tuple[tuple[Any, np.ndarray], ...]  # (input, host array) copied in before a run
    new_rows: tuple[tuple[Any, Any], ...]  # extend, per layer: (partial [S, n, L, w], new
    # [batch, n, T, w])


class StateBuffers:
    def __init__(self, backend: Backend, manifest: Manifest, max_streams: int) -> None:
        self.backend = backend
        self.contract = manifest.contract
        dims = self.dims = Dims.from_config(manifest.config)
        specs = self.specs = state_specs(dims)
        self.memory_names = tuple(n for n in MEMORY_STATE if n in specs)
        allocate = backend.allocate
        self.n_layers = dims.n_layers
        # [bank][name] -> the layers of a buffer: N buffers [max_streams, ...rest] of one
        # layer-major buffer [N, max_streams, ...rest] (per-layer tensors) or the one buffer
        # [max_streams] (counts); parity[name]: the bank holding the current value of rows [0, k)
        self.memory = [{n: self._layers(specs[n], max_streams) for n in self.memory_names}
                       for _ in range(2)]
        self.parity = dict.fromkeys(self.memory_names, 0)
        self._banks = tuple(self.parity.values())  # the parities as a cache key
        self.partial = {n: self._layers(specs[n], max_streams) for n in PARTIAL_STATE}
        self.row_state = (*self.memory_names, *PARTIAL_STATE)  # one stream's row of each
        # one row per state tensor: the middle stop when two streams swap rows
        self.row_scratch = {n: self._layers(specs[n], 1) for n in self.row_state}
        self.fill_buffer = allocate(specs[FILL_INPUT], max_streams)
        # [S] tokens in each partial segment; a host backend binds it as the engine input
        self.fills = self.fill_buffer if backend.host_buffers else \
            np.zeros(max_streams, dtype=np.int32)
        seg_len = dims.seg_len
        extend = self.contract["extend"]
        # shared by segment and extend (one call at a time): [max_streams, L, ...]
        self.scratch = {spec.name: allocate(spec, max_streams, seg_len)
                        for spec in (extend.inputs[0], *extend.outputs) if TOKENS in spec.shape}
        self.host_tokens = np.zeros((max_streams, seg_len), dtype=np.int32)  # [S, L]
        self.last_logits = np.zeros((max_streams, dims.vocab_size), dtype=np.float32)  # [S, V]
        # per layer, [S, n, L, w] views of the partial segment: blocks of L rows of width w
        self._partial_blocks = {name: [backend.view(layer, blocks(layer.shape))
                                       for layer in layers]
                                for name, layers in self.partial.items()}
        self._calls: dict[tuple, BoundCall] = {}

    def _layers(self, spec: TensorSpec, rows: int) -> list[Any]:
        """A state tensor's buffer for `rows` streams, as the list of what its graph tensors
        bind: the N layers of one layer-major buffer [N, rows, ...rest], or [the buffer]."""
        if spec.name not in PER_LAYER:
            return [self.backend.allocate(spec, rows)]
        return self.backend.allocate_layers(spec, rows)

    def current(self, name: str) -> list[Any]:
        """The layers of the buffer holding the current value of a state tensor."""
        if name in self.parity:
            return self.memory[self.parity[name]][name]
        return self.partial[name]

    def row_shape(self, name: str) -> tuple[int, ...]:
        """One stream's row of a state tensor, as snapshots hold it: [N, ...rest] or ()."""
        return self.specs[name].concrete_shape(1)[1:]

    def get_row(self, name: str, row: int) -> np.ndarray:
        """A host copy of one stream's row of a state tensor, in logical order [N, ...rest]."""
        layers = [self.backend.get_row(layer, row) for layer in self.current(name)]
        return np.stack(layers) if name in PER_LAYER else layers[0]

    def set_row(self, name: str, row: int, values: np.ndarray | float) -> None:
        """Overwrite one stream's row of a state tensor (values [N, ...rest], () or a scalar)."""
        per_layer = name in PER_LAYER and np.ndim(values) > 0
        for i, layer in enumerate(self.current(name)):
            self.backend.set_row(layer, row, values[i] if per_layer else values)

    # ---- rows --------------------------------------------------------------------------------
    def clear_row(self, row: int) -> None:
        for name in self.row_state:
            self.set_row(name, row, 0)
        self.fills[row] = 0

    def move_row(self, src: int, dst: int) -> None:
        """One stream's whole state from row src to row dst (current banks only)."""
        for name in self.row_state:
            for layer in self.current(name):
                self.backend.copy_rows(layer, dst, layer, src, 1)
        self.fills[dst] = self.fills[src]
        self.last_logits[dst] = self.last_logits[src]

    def swap_rows(self, a: int, b: int) -> None:
        copy = self.backend.copy_rows
        for name in self.row_state:
            for layer, scratch in zip(self.current(name), self.row_scratch[name], strict=True):
                copy(scratch, 0, layer, a, 1)
                copy(layer, a, layer, b, 1)
                copy(layer, b, scratch, 0, 1)
        for host in (self.fills, self.last_logits):
            host[[a, b]] = host[[b, a]]

    def flip(self, names: Iterable[str], batch: int, rows: int) -> None:
        """The call on rows [0, batch) succeeded and wrote the other bank. Whichever is fewer
        moves: the `batch` written rows are copied back into the current bank, or the
        `rows - batch` rows that sat out are copied into the written bank, which becomes
        current (one block copy per tensor and layer either way). So a call of one stream
        among many costs a copy of one stream's state, not of all the others'."""
        copy = self.backend.copy_rows
        flipped = False
        for name in names:
            current = self.parity[name]
            pairs = zip(self.memory[1 - current][name], self.memory[current][name], strict=True)
            if batch < rows - batch:
                for written, kept in pairs:
                    copy(kept, 0, written, 0, batch)
                continue
            if batch < rows:
                for written, kept in pairs:
                    copy(written, batch, kept, batch, rows - batch)
            self.parity[name] = 1 - current
            flipped = True
        if flipped:
            self._banks = tuple(self.parity.values())

    # ---- calls -------------------------------------------------------------------------------
    def call(self, entry: str, batch: int, tokens: int | None = None) -> BoundCall:
        """The call of `entry` on rows [0, batch) over the current banks, bound once."""
        key = (entry, batch, tokens, self._banks)
        bound = self._calls.get(key)
        if bound is None:
            bound = self._calls[key] = self._bind(entry, batch, tokens)
        return bound

    def _bind(self, entry: str, batch: int, tokens: int | None) -> BoundCall:
        spec = self.contract[entry]
        view = self.backend.view

        def buffer_of(name: str) -> Any:
            state, layer = graph_tensor_parts(name)  # `mem_k.3_out` -> mem_k_out, layer 3
            base = state.removesuffix(OUT_SUFFIX)
            if base in self.parity:  # the memory state: outputs to the other bank
                bank = self.parity[base] if base == state else 1 - self.parity[base]
                return self.memory[bank][base][layer or 0]
            if name == FILL_INPUT:
                return self.fill_buffer
            if state in self.partial:
                return self.partial[state][layer]
            return self.scratch[name]

        feeds = {t.name: view(buffer_of(t.name), t.concrete_shape(batch, tokens))
                 for t in spec.inputs}
        fetches = {t.name: view(buffer_of(t.name), t.concrete_shape(batch, tokens))
                   for t in spec.outputs}
        new_rows = []
        for name, new in NEW_ROWS.items():
            for i, partial in enumerate(self._partial_blocks[name]):
                rows = fetches.get(layer_name(new, i))  # [batch, T, d] or [batch, H, T, dh]
                if rows is not None:
                    new_rows.append((partial, view(rows, blocks(rows.shape))))
        host_tokens = self.host_tokens[:batch, :tokens or self.dims.seg_len]
        uploads = []
        if "tokens" in feeds:
            if self.backend.host_buffers:  # the runtime writes the input itself
                host_tokens = feeds["tokens"]
            else:
                uploads.append((feeds["tokens"], host_tokens))
        if FILL_INPUT in feeds and not self.backend.host_buffers:
            uploads.append((feeds[FILL_INPUT], self.fills[:batch]))
        return BoundCall(feeds, fetches, self.backend.bind(entry, feeds, fetches, tokens),
                         host_tokens, self.fills[:batch], tuple(uploads), tuple(new_rows))

    def write_new_rows(self, call: BoundCall, count: int) -> None:
        """extend's new rows into the partial segment of the call's rows, each at its fill
        (one write per tensor and layer), and the fills grow by count."""
        fills = call.host_fills
        first = int(fills[0])
        offsets = first if len(fills) == 1 or (fills == first).all() else fills
        for partial, new in call.new_rows:
            self.backend.write_new_rows(partial, new, offsets, count)
        if offsets is fills:
            fills += count
        else:  # a slice assignment, as the writes above: its code is warm after the call
            fills[:] = first + count
