"""The cached step modules (export.step) as a runtime backend: eager PyTorch under the Session.

`runtime.session.Session` is the one scheduler; this backend only runs an entry point on the
buffers the Session binds, so "eager cached steps" and the compiled engines are driven by the
same loop. Buffers are CPU torch tensors; inputs are passed to the step module in the order of
`manifest.contract[entry].inputs` and each output is copied into the buffer bound to its name
(the engine contract's "write into the preallocated outputs"). It lives in export/ because the
runtime never imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.errors import EngineError
from compressive_rt.export.step import build_steps
from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.manifest import Manifest

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.int32): torch.int32,
                np.dtype(np.bool_): torch.bool}


class TorchBackend(Backend):
    name = "torch-eager"

    def __init__(self, manifest: Manifest, model: CompressiveTransformer) -> None:
        super().__init__(manifest)
        if model.config.to_dict() != manifest.config:
            raise EngineError(f"{manifest.engine_dir}: the engine was exported from another "
                              f"model config than the eager model given to the torch backend")
        self.steps = build_steps(model)
        self.contract = manifest.contract

    def new_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=TORCH_DTYPES[np.dtype(dtype)])

    def view(self, buffer: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return buffer.view(-1)[:int(np.prod(shape))].view(shape)

    def layer(self, buffer: torch.Tensor, index: int) -> torch.Tensor:
        return buffer[index]

    def bind(self, entry: str, feeds: dict[str, torch.Tensor], fetches: dict[str, torch.Tensor],
             tokens: int | None = None) -> tuple:
        spec = self.contract[entry]
        return (self.steps[entry], [feeds[name] for name in spec.input_names],
                [fetches[name] for name in spec.output_names])

    def run(self, handle: tuple) -> None:
        step, inputs, outputs = handle
        with torch.inference_mode():
            for out, value in zip(outputs, step(*inputs), strict=True):
                out.copy_(value)

    def to_host(self, buffer: torch.Tensor) -> np.ndarray:
        return buffer.numpy()

    def from_host(self, buffer: torch.Tensor, array: np.ndarray) -> None:
        buffer.copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def write_new_rows(self, dst: torch.Tensor, src: torch.Tensor, offsets: int | np.ndarray,
                       count: int) -> None:
        if isinstance(offsets, int):
            dst[:len(src), :, offsets:offsets + count] = src
            return
        for row, offset in enumerate(offsets.tolist()):
            dst[row, :, offset:offset + count] = src[row]

    def copy_rows(self, dst: torch.Tensor, dst_row: int, src: torch.Tensor, src_row: int,
                  count: int) -> None:
        dst[dst_row:dst_row + count] = src[src_row:src_row + count]

    def get_row(self, buffer: torch.Tensor, row: int) -> np.ndarray:
        return buffer[row].numpy().copy()

    def set_row(self, buffer: torch.Tensor, row: int, values: Any) -> None:
        target = buffer[row]
        target.copy_(torch.as_tensor(np.asarray(values), dtype=buffer.dtype).expand_as(target))

    def copy_last_logits(self, logits: torch.Tensor, index: int, host_out: np.ndarray) -> None:
        np.copyto(host_out[:logits.shape[0]], logits[:, index].numpy())
