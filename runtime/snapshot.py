"""Stream snapshots: one stream's whole state in an .npz file, written atomically, read back
only after every check passes.

Format (an uncompressed numpy .npz, loaded without pickle):
  __meta__     a 0-d unicode array holding JSON:
                 format          "compressive-rt-stream-snapshot"
                 format_version  SNAPSHOT_FORMAT_VERSION
                 position        tokens the stream had consumed (int >= 0)
                 config          the engine's model config (manifest "config")
                 engine          identity of the engine that wrote it: contract_version (the
                                 manifest's format_version), checkpoint_sha256 (or null when the
                                 engine was exported from an in-memory model) and the sha256 of
                                 each graph
  one array per state tensor, the stream's row of it (its batch axis removed): float32 for
  mem, cmem, mem_k, mem_v, usage, seg_h, seg_k, seg_v; int32 scalars for mem_len, cmem_len,
  seg_len.

A snapshot restores only into an engine with the same identity: the cached key/value
projections in it were computed with that engine's weights. Counts follow from the position
(every commit appends L slots to mem; once mem is full each commit moves L/c compressed slots
into cmem), so a snapshot whose counts disagree with its position is refused too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.contract import COUNTS, Dims
from compressive_rt.runtime.files import atomic_write
from compressive_rt.runtime.manifest import Manifest

SNAPSHOT_FORMAT = "compressive-rt-stream-snapshot"
SNAPSHOT_FORMAT_VERSION = 1
META = "__meta__"


@dataclass(frozen=True)
class StreamSnapshot:
    """A validated snapshot: the stream's row of every state tensor and its position."""

    state: dict[str, np.ndarray]
    position: int


def engine_identity(manifest: Manifest) -> dict:
    """What a snapshot must match to be restored: contract version, checkpoint, graphs."""
    checkpoint = manifest.data.get("checkpoint") or {}
    return {"contract_version": manifest.data.get("format_version"),
            "checkpoint_sha256": checkpoint.get("sha256"),
            "graphs": {name: entry.get("sha256")
                       for name, entry in sorted(manifest.data["entry_points"].items())}}


def write_snapshot(path: str | Path, manifest: Manifest, state: Mapping[str, np.ndarray],
                   position: int) -> None:
    """Write one stream's state to `path` atomically (temp file in the same folder + rename)."""
    meta = {"format": SNAPSHOT_FORMAT, "format_version": SNAPSHOT_FORMAT_VERSION,
            "position": int(position), "config": manifest.config,
            "engine": engine_identity(manifest)}
    path = Path(path)
    try:
        atomic_write(path, lambda f: np.savez(f, **{META: np.array(json.dumps(meta))}, **state))
    except OSError as exc:
        raise RuntimeInputError(f"cannot write snapshot {path}: {exc.strerror}") from None


def read_snapshot(path: str | Path, manifest: Manifest,
                  expected: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> StreamSnapshot:
    """Load and check a snapshot for this engine; `expected` maps every state tensor name to
    the (shape, dtype) of one stream's row. Raises RuntimeInputError naming what is wrong."""
    path = Path(path)
    meta, arrays = _load(path)
    _check_meta(path, meta, manifest)
    _check_tensors(path, arrays, expected)
    counts = {name: int(arrays[name]) for name in COUNTS if name in arrays}
    _check_counts(path, counts, manifest.config, meta["position"])
    return StreamSnapshot(state=arrays, position=meta["position"])


def _load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    if not path.exists():
        raise RuntimeInputError(f"snapshot {path} does not exist")
    if not path.is_file():
        raise RuntimeInputError(f"snapshot {path} is not a file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # noqa: BLE001 - zipfile and numpy raise many types on damage
        # (BadZipFile, ValueError, EOFError, NotImplementedError for a damaged compression
        # method, tokenize.TokenError for a damaged .npy header, ...): all mean a bad file.
        raise RuntimeInputError(f"snapshot {path} is truncated or not a snapshot "
                                f"({type(exc).__name__}: {exc})") from None
    raw = arrays.pop(META, None)
    if raw is None or raw.shape != () or raw.dtype.kind != "U":
        raise RuntimeInputError(f"snapshot {path} is not a compressive-rt stream snapshot "
                                f"(no {META} record)")
    try:
        meta = json.loads(str(raw))
    except ValueError as exc:
        raise RuntimeInputError(f"snapshot {path}: its {META} record is not JSON ({exc})") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != SNAPSHOT_FORMAT:
        raise RuntimeInputError(f"{path} is not a compressive-rt stream snapshot")
    return meta, arrays


def _short(identity: object) -> str:
    """An engine identity in one line: contract version, checkpoint and graph hash prefixes."""
    if not isinstance(identity, dict):
        return f"unknown ({identity!r})"
    checkpoint = identity.get("checkpoint_sha256")
    graphs = identity.get("graphs")
    graphs = graphs if isinstance(graphs, dict) else {}
    return (f"contract v{identity.get('contract_version')}, checkpoint "
            f"{str(checkpoint)[:12] if checkpoint else 'not recorded'}, graphs "
            + " ".join(f"{name} {str(sha)[:12]}" for name, sha in sorted(graphs.items())))


def _check_meta(path: Path, meta: dict, manifest: Manifest) -> None:
    version = meta.get("format_version")
    if version != SNAPSHOT_FORMAT_VERSION:
        raise RuntimeInputError(
            f"snapshot {path} has format_version {version!r}; this runtime reads version "
            f"{SNAPSHOT_FORMAT_VERSION}: take the snapshot again with this runtime")
    ours = engine_identity(manifest)
    theirs = meta.get("engine")
    if not isinstance(theirs, dict) or \
            theirs.get("contract_version") != ours["contract_version"]:
        raise RuntimeInputError(
            f"snapshot {path} was written for another engine contract: snapshot engine "
            f"{_short(theirs)}; this engine {_short(ours)}")
    if meta.get("config") != manifest.config:
        raise RuntimeInputError(
            f"snapshot {path} was taken with another model config than this engine's: "
            f"snapshot engine {_short(theirs)}; this engine {_short(ours)}")
    if theirs != ours:
        raise RuntimeInputError(
            f"snapshot {path} was taken with another engine (other weights or graphs; its "
            f"memory projections do not fit this one): snapshot engine {_short(theirs)}; "
            f"this engine {_short(ours)}")
    position = meta.get("position")
    if type(position) is not int or position < 0:
        raise RuntimeInputError(
            f"snapshot {path}: position must be an integer >= 0, got {position!r}")


def _check_tensors(path: Path, arrays: dict[str, np.ndarray],
                   expected: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    if set(arrays) != set(expected):
        raise RuntimeInputError(f"snapshot {path} holds tensors {sorted(arrays)}, expected "
                                f"{sorted(expected)}")
    for name, (shape, dtype) in expected.items():
        array = arrays[name]
        if array.dtype != dtype:
            raise RuntimeInputError(f"snapshot {path}: tensor {name} has dtype {array.dtype}, "
                                    f"expected {np.dtype(dtype)}")
        if array.shape != shape:
            raise RuntimeInputError(f"snapshot {path}: tensor {name} has shape {array.shape}, "
                                    f"expected {shape}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise RuntimeInputError(f"snapshot {path}: tensor {name} holds NaN or infinity")


def expected_counts(config: Mapping, position: int) -> dict[str, int]:
    """The counts of a stream that has consumed `position` tokens since it was empty."""
    seg_len, mem_len, cmem_len = config["seg_len"], config["mem_len"], config["cmem_len"]
    committed = position // seg_len * seg_len  # tokens rotated into memory
    counts = {"mem_len": min(committed, mem_len), "seg_len": position % seg_len}
    if cmem_len:
        evicted = max(committed - mem_len, 0)
        counts["cmem_len"] = min(evicted // config["compress_rate"], cmem_len)
    return counts


def _check_counts(path: Path, counts: dict[str, int], config: Mapping, position: int) -> None:
    dims = Dims.from_config(config)
    ranges = {"mem_len": (dims.mem_len, f"a multiple of L={dims.seg_len} in [0, M={dims.mem_len}]"),
              "cmem_len": (dims.cmem_len, f"in [0, C={dims.cmem_len}]"),
              "seg_len": (dims.seg_len - 1, f"in [0, L={dims.seg_len})")}
    for name, value in counts.items():
        top, wanted = ranges[name]
        if not 0 <= value <= top or (name == "mem_len" and value % dims.seg_len):
            raise RuntimeInputError(f"snapshot {path}: {name} is {value}, expected {wanted}")
    implied = expected_counts(config, position)
    if counts != implied:
        got = ", ".join(f"{name} {counts[name]}" for name in sorted(counts))
        want = ", ".join(f"{name} {implied[name]}" for name in sorted(implied))
        raise RuntimeInputError(f"snapshot {path}: position {position} implies {want}; the "
                                f"snapshot holds {got}")
