"""The device buffer plan of a session: every buffer, its bytes, and which tensors share it.

Derived from the engine contract alone (pure Python, no numpy), so a device backend and the
tests agree on it without a GPU:
  - state tensors X (inputs whose next value is the output X_out) get two buffers, X/A and
    X/B; a call reads one set and writes the other, and the next call swaps them (ping-pong);
  - the partial segment (seg_h, seg_k, seg_v) and seg_len are single buffers: `extend` returns
    only the T new rows (new_h/new_k/new_v), which the runtime writes by slice at offset
    seg_len, and `commit` reads the whole partial segment;
  - scratch (tokens, logits, new_h/new_k/new_v) is one buffer per tensor name, sized for the
    largest call (T = L for extend) and shared by `segment` and `extend`: a call with T < L
    uses the buffer's first B*T rows, contiguous as [B, T, ...].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

from runtime.contract import BATCH, OUT_SUFFIX, TOKENS, EntryPoint, TensorSpec

DTYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4, "bool": 1}
SETS = ("A", "B")
NEW_PREFIX, PARTIAL_PREFIX = "new_", "seg_"


@dataclass(frozen=True)
class Buffer:
    name: str  # "mem/A", "seg_k", "logits"
    tensor: str  # the contract tensor stored in it
    dtype: str
    shape: tuple[int, ...]  # at max batch (and T = L for token-sized scratch)
    role: str  # "state" (ping-pong), "partial" (written by slice), "input", "scratch"

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class BufferPlan:
    max_batch: int
    seg_len: int
    buffers: dict[str, Buffer]
    state: tuple[str, ...]  # tensors with two buffers
    aliases: dict[str, str]  # output X_out of call k -> input X of call k+1 (same buffer)
    slice_writes: dict[str, str]  # extend output -> partial buffer it is written into
    contract: Mapping[str, EntryPoint]

    @property
    def total_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers.values())

    def buffer_of(self, tensor: str, parity: int = 0) -> str:
        """The buffer holding input `tensor` when its current set is `parity` (0=A, 1=B)."""
        if tensor.endswith(OUT_SUFFIX) and tensor[:-len(OUT_SUFFIX)] in self.state:
            return f"{tensor[:-len(OUT_SUFFIX)]}/{SETS[1 - parity]}"
        if tensor in self.state:
            return f"{tensor}/{SETS[parity]}"
        return tensor

    def bindings(self, entry: str, parity: int | Mapping[str, int] = 0
                 ) -> tuple[dict[str, str], dict[str, str]]:
        """(inputs, outputs): tensor name -> buffer name for one call of `entry`.

        `parity` gives the current set of every state tensor (one int for all, or per name:
        extend flips only `usage`, so sets can differ between tensors)."""
        def current(name: str) -> int:
            base = name.removesuffix(OUT_SUFFIX)
            return parity if isinstance(parity, int) else parity.get(base, 0)

        spec = self.contract[entry]
        inputs = {t.name: self.buffer_of(t.name, current(t.name)) for t in spec.inputs}
        outputs = {t.name: self.buffer_of(t.name, current(t.name)) for t in spec.outputs}
        return inputs, outputs

    def describe(self) -> str:
        width = max(len(name) for name in self.buffers)
        lines = [f"{name:<{width}}  {b.role:<7}  {b.dtype:<7}  {list(b.shape)}  {b.nbytes:,} B"
                 for name, b in self.buffers.items()]
        lines.append(f"total: {self.total_bytes:,} bytes ({self.total_bytes / 2**20:.1f} MiB) "
                     f"at batch {self.max_batch}")
        return "\n".join(lines)


def _sized(spec: TensorSpec, batch: int, seg_len: int) -> tuple[int, ...]:
    return spec.concrete_shape(batch, seg_len if TOKENS in spec.shape else None)


def buffer_plan(contract: Mapping[str, EntryPoint], max_batch: int) -> BufferPlan:
    """Every device buffer a session of `max_batch` streams needs, from the contract."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    seg_len = contract["segment"].inputs[0].shape[1]  # tokens [B, L]
    inputs = {t.name: t for entry in contract.values() for t in entry.inputs}
    outputs = {t.name: t for entry in contract.values() for t in entry.outputs}
    state = tuple(name for name in inputs if name + OUT_SUFFIX in outputs)
    slice_writes = {name: PARTIAL_PREFIX + name[len(NEW_PREFIX):] for name in outputs
                    if name.startswith(NEW_PREFIX) and
                    PARTIAL_PREFIX + name[len(NEW_PREFIX):] in inputs}
    partial = set(slice_writes.values())
    buffers: dict[str, Buffer] = {}

    def add(name: str, spec: TensorSpec, role: str) -> None:
        shape = _sized(spec, max_batch, seg_len)
        old = buffers.get(name)
        if old is None or prod(shape) > prod(old.shape):
            buffers[name] = Buffer(name, spec.name, spec.dtype, shape, role)

    for name in state:
        for set_name in SETS:
            add(f"{name}/{set_name}", inputs[name], "state")
    for name, spec in inputs.items():
        if name in state:
            continue
        add(name, spec, "partial" if name in partial else "input")
    for name, spec in outputs.items():
        if name.endswith(OUT_SUFFIX) and name[:-len(OUT_SUFFIX)] in state:
            continue
        add(name, spec, "scratch")
    if any(BATCH not in spec.shape for spec in (*inputs.values(), *outputs.values())):
        raise ValueError("every contract tensor must have a batch axis")
    aliases = {name + OUT_SUFFIX: name for name in state}
    return BufferPlan(max_batch=max_batch, seg_len=seg_len, buffers=buffers, state=state,
                      aliases=aliases, slice_writes=slice_writes, contract=contract)


Shape = tuple[int, ...]


def optimization_profiles(contract: Mapping[str, EntryPoint], max_batch: int, opt_batch: int,
                          opt_tokens: int = 1) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """(min, opt, max) shape of every input of every entry point.

    batch runs 1..max_batch (opt: opt_batch); extend's tokens run 1..L (opt: opt_tokens, the
    decode step), where L is the segment length."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, "
                         f"max_batch={max_batch}")
    seg_len = contract["segment"].inputs[0].shape[1]
    if not 1 <= opt_tokens <= seg_len:
        raise ValueError(f"opt_tokens must be in 1..{seg_len} (the segment length), "
                         f"got {opt_tokens}")
    profiles = {}
    for name, entry in contract.items():
        profiles[name] = {
            spec.name: (spec.concrete_shape(1, 1),
                        spec.concrete_shape(opt_batch, opt_tokens),
                        spec.concrete_shape(max_batch, seg_len))
            for spec in entry.inputs}
    return profiles
