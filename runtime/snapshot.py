"""Stream snapshots: one stream's whole state in an .npz archive (a file written atomically, or
bytes), read back only after every check passes. The reader is safe for untrusted bytes.

Format version 3 (an uncompressed numpy .npz: one `<name>.npy` member per array, npy 1.0
headers, little-endian, C order; loaded without pickle):
  __meta__     a 1-D uint8 array holding UTF-8 JSON (version 1: a 0-d unicode array):
                 format          "compressive-rt-stream-snapshot"
                 format_version  3 (1 and 2 are still read)
                 position        tokens the stream had consumed (int in [0, 2**53))
                 config          the engine's model config (manifest "config")
                 engine          identity of the engine that wrote it (`engine_identity`):
                                 contract_version (the manifest's format_version),
                                 checkpoint_sha256 (or null when the engine was exported from an
                                 in-memory model), the sha256 of each graph and (from version 3)
                                 precision (the manifest's "precision")
                 last_logits     (from version 2) whether the member last_logits is present
  one array per state tensor, the stream's row of it (its batch axis removed) in logical order,
  whatever the runtime's buffer layout: float32 [N, ...] for mem, cmem, mem_k, mem_v, usage,
  seg_h, seg_k, seg_v; int32 scalars for mem_len, cmem_len, seg_len. Every version holds the
  same arrays (the contract's state_specs without the batch axis).
  last_logits  float32 [V]: the logits after the stream's last token, present exactly when the
               stream had been fed (since it was created, reset or restored without logits), so
               a restored stream continues with the logits an uninterrupted one has.

Restore compatibility (`check_restore_compatible`, one rule for Session.restore and for moving
a store's streams to another engine): a snapshot restores into an engine when its engine
identity equals the engine's, or when both name the same non-null checkpoint_sha256, the same
config and the same precision; then the graphs and the contract version may differ (a snapshot
of a contract v2 engine goes into the v3 engine re-exported from its checkpoint: its arrays are
the same tensors, laid out per layer as they are restored, exactly). The cached key/value
projections were computed with the checkpoint's weights at that precision, so anything else is
refused. Identities of versions 1 and 2 record no precision: they count as the export default,
fp32, unless the caller names the precision of the engine that wrote them. Counts follow from the
position (every commit appends L slots to mem; once mem is full each commit moves L/c
compressed slots into cmem), so a snapshot whose counts disagree with its position is refused
too.

Reading untrusted bytes: before any array data is read, the archive's size is bounded by what
this engine's state can take, and from the zip directory and each member's npy header every
member's name (no duplicate, extra or missing member), compression (stored only), stored and
uncompressed sizes (equal, and equal to header + shape x itemsize), dtype and shape are checked
against the expected state, and the JSON record is bounded (1 MiB, nested at most 16 deep). The
zip directory itself is bounded before zipfile parses it: its end record must declare no more
entries than the state has members, in no more bytes than they need. So the reader allocates at
most the state it expects, whatever an archive declares.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy

from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.contract import COUNTS, Dims
from compressive_rt.runtime.files import atomic_write
from compressive_rt.runtime.json_depth import nesting_depth
from compressive_rt.runtime.manifest import Manifest
from compressive_rt.runtime.zip_directory import (
    DIRECTORY_ENTRY_MAX,
    MOST_TAIL_BYTES,
    directory_size,
)

SNAPSHOT_FORMAT = "compressive-rt-stream-snapshot"
SNAPSHOT_FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
UNRECORDED_PRECISION = "fp32"  # identities before snapshot format 3: the export default
META = "__meta__"
LAST_LOGITS = "last_logits"
META_MAX_BYTES = 1 << 20  # the JSON record: a config and a few hashes need a few KiB
META_MAX_DEPTH = 16  # the record nests 3 deep; parsing a deeper one recurses (json_depth.py)
MAX_POSITION = 1 << 53  # positions are exact JSON numbers in every client (doubles) below it
MEMBER_OVERHEAD = 1 << 12  # zip headers + npy header per member, far above what numpy writes
ARCHIVE_SLACK = 1 << 16

Expected = Mapping[str, tuple[tuple[int, ...], np.dtype]]


@dataclass(frozen=True)
class StreamSnapshot:
    """A validated snapshot: the stream's row of every state tensor, its position and, when it
    had been fed, its last logits [V]."""

    state: dict[str, np.ndarray]
    position: int
    last_logits: np.ndarray | None


def engine_identity(manifest: Manifest) -> dict:
    """Who wrote a snapshot: contract version, checkpoint, graphs, precision (see
    `check_restore_compatible`)."""
    checkpoint = manifest.data.get("checkpoint") or {}
    return {"contract_version": manifest.data.get("format_version"),
            "checkpoint_sha256": checkpoint.get("sha256"),
            "graphs": {name: entry.get("sha256")
                       for name, entry in sorted(manifest.data["entry_points"].items())},
            "precision": manifest.data.get("precision")}


def check_restore_compatible(identity: object, config: object, manifest: Manifest,
                             label: str = "the snapshot",
                             precision: str | None = None) -> None:
    """Raise RuntimeInputError unless a snapshot written by the engine `identity` with model
    config `config` (its __meta__ "engine" and "config") restores into the engine of
    `manifest`: equal identities, or the same non-null checkpoint_sha256, config and precision
    (then graphs and contract version may differ). `precision` names the writing engine's
    precision for an identity that records none (snapshot formats 1 and 2); without it such
    an identity counts as fp32, the export default. `label` starts the messages."""
    ours = engine_identity(manifest)
    theirs = f"snapshot engine {_short(identity)}; this engine {_short(ours)}"
    if config != manifest.config:
        raise RuntimeInputError(f"{label} was taken with another model config than this "
                                f"engine's: {theirs}")
    if identity == ours:
        return
    if not isinstance(identity, dict):
        raise RuntimeInputError(f"{label} names no engine identity: {theirs}")
    checkpoint = identity.get("checkpoint_sha256")
    if checkpoint is None or checkpoint != ours["checkpoint_sha256"]:
        raise RuntimeInputError(
            f"{label} was taken with another engine (other weights or graphs; its memory "
            f"projections do not fit this one) and names "
            f"{'another checkpoint' if checkpoint else 'no checkpoint'}: {theirs}")
    written = identity.get("precision") or precision or UNRECORDED_PRECISION
    if written != ours["precision"]:
        raise RuntimeInputError(
            f"{label} was taken with a {written} engine of this checkpoint; this engine is "
            f"{ours['precision']} (its memory projections differ): restore it into a "
            f"{written} engine ({theirs})")


def _write_archive(f: BinaryIO, manifest: Manifest, state: Mapping[str, np.ndarray],
                   position: int, last_logits: np.ndarray | None) -> None:
    meta = {"format": SNAPSHOT_FORMAT, "format_version": SNAPSHOT_FORMAT_VERSION,
            "position": int(position), "config": manifest.config,
            "engine": engine_identity(manifest), "last_logits": last_logits is not None}
    arrays = {META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **state}
    if last_logits is not None:
        arrays[LAST_LOGITS] = np.asarray(last_logits, dtype=np.float32)
    np.savez(f, **arrays)


def encode_snapshot(manifest: Manifest, state: Mapping[str, np.ndarray], position: int,
                    last_logits: np.ndarray | None = None) -> bytes:
    """One stream's state as snapshot bytes (format version 3)."""
    buffer = io.BytesIO()
    _write_archive(buffer, manifest, state, position, last_logits)
    return buffer.getvalue()


def write_snapshot(path: str | Path, manifest: Manifest, state: Mapping[str, np.ndarray],
                   position: int, last_logits: np.ndarray | None = None) -> None:
    """Write one stream's state to `path` atomically (temp file in the same folder + rename)."""
    path = Path(path)
    try:
        atomic_write(path, lambda f: _write_archive(f, manifest, state, position, last_logits))
    except OSError as exc:
        raise RuntimeInputError(f"cannot write snapshot {path}: {exc.strerror}") from None


def read_snapshot(source: str | Path | bytes | bytearray | memoryview, manifest: Manifest,
                  expected: Expected) -> StreamSnapshot:
    """Load and check a snapshot (a path, or the archive's bytes) for this engine; `expected`
    maps every state tensor name to the (shape, dtype) of one stream's row. Raises
    RuntimeInputError naming what is wrong; reads no array data before the checks of the
    archive's structure pass."""
    label = f"snapshot {source}" if isinstance(source, (str, Path)) \
        else f"snapshot ({len(source)} bytes)"
    vocab = manifest.config["vocab_size"]
    arrays_expected = {**expected, LAST_LOGITS: ((vocab,), np.dtype(np.float32))}
    with _open_archive(source, label, arrays_expected) as archive:
        meta, arrays = _read_members(archive, label, expected, arrays_expected)
    _check_meta(label, meta, manifest)
    _check_values(label, arrays)
    counts = {name: int(arrays[name]) for name in COUNTS if name in arrays}
    _check_counts(label, counts, manifest.config, meta["position"])
    last_logits = arrays.pop(LAST_LOGITS, None)
    return StreamSnapshot(state=arrays, position=meta["position"], last_logits=last_logits)


def most_snapshot_bytes(manifest: Manifest, expected: Expected) -> int:
    """The largest archive `read_snapshot` opens for this state (`expected` as there): a bound
    for whoever receives snapshots (a server's upload limit)."""
    vocab = manifest.config["vocab_size"]
    return _most_bytes({**expected, LAST_LOGITS: ((vocab,), np.dtype(np.float32))})


def _most_bytes(arrays_expected: Expected) -> int:
    """An upper bound on the size of a valid archive for this state (version 1's record, UTF-32,
    is the larger one)."""
    data = sum(math.prod(shape) * np.dtype(dtype).itemsize
               for shape, dtype in arrays_expected.values())
    members = len(arrays_expected) + 1
    return data + 4 * META_MAX_BYTES + members * MEMBER_OVERHEAD + ARCHIVE_SLACK


def _open_archive(source: str | Path | bytes | bytearray | memoryview, label: str,
                  arrays_expected: Expected) -> zipfile.ZipFile:
    limit = _most_bytes(arrays_expected)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise RuntimeInputError(f"{label} does not exist")
        if not path.is_file():
            raise RuntimeInputError(f"{label} is not a file")
        size = path.stat().st_size
        opened: str | Path | io.BytesIO = path
    else:
        size = len(source)
        opened = io.BytesIO(source)
    if size > limit:
        raise RuntimeInputError(f"{label} is {size} bytes, more than a snapshot of this engine "
                                f"can hold (at most {limit}): not a snapshot of this engine")
    tail_size = min(size, MOST_TAIL_BYTES)
    if isinstance(opened, io.BytesIO):
        tail = bytes(memoryview(source)[size - tail_size:])
    else:
        with path.open("rb") as f:
            f.seek(size - tail_size)
            tail = f.read(tail_size)
    entries, directory_bytes = directory_size(tail)
    members = len(arrays_expected) + 1
    # twice a snapshot's members: a few wrong members are still refused by name, later
    if entries > 2 * members or directory_bytes > 2 * members * DIRECTORY_ENTRY_MAX:
        raise RuntimeInputError(
            f"{label}: its zip directory declares {entries} entries in {directory_bytes} bytes; "
            f"a snapshot of this engine has {members} members: not a snapshot of this engine")
    try:
        return zipfile.ZipFile(opened)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(source, (str, Path)) and _is_single_npy(Path(source)):
            raise RuntimeInputError(f"{label} is truncated or not a snapshot (a single .npy "
                                    f"array, not an .npz archive)") from None
        raise RuntimeInputError(f"{label} is truncated or not a snapshot "
                                f"({type(exc).__name__}: {exc})") from None


def _is_single_npy(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(npy.MAGIC_PREFIX)) == npy.MAGIC_PREFIX


def _read_members(archive: zipfile.ZipFile, label: str, expected: Expected,
                  arrays_expected: Expected) -> tuple[dict, dict[str, np.ndarray]]:
    """Check every member's directory entry and npy header, then read the JSON record, then
    the arrays (each into an array of the expected size)."""
    infos = {}
    for info in archive.infolist():
        name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else None
        if name is None or (name != META and name not in arrays_expected):
            raise RuntimeInputError(f"{label} holds an unexpected member {info.filename!r}; "
                                    f"expected {sorted([META, *expected])} (+ {LAST_LOGITS})")
        if name in infos:
            raise RuntimeInputError(f"{label} holds member {info.filename!r} twice")
        if info.compress_type != zipfile.ZIP_STORED:
            raise RuntimeInputError(f"{label}: member {info.filename!r} is compressed (method "
                                    f"{info.compress_type}); snapshots are stored uncompressed")
        if info.flag_bits & 0x1:
            raise RuntimeInputError(f"{label}: member {info.filename!r} is encrypted")
        if info.file_size != info.compress_size:
            raise RuntimeInputError(f"{label}: member {info.filename!r} declares {info.file_size} "
                                    f"bytes but stores {info.compress_size}")
        infos[name] = info
    if META not in infos:
        raise RuntimeInputError(f"{label} is not a compressive-rt stream snapshot (no {META} "
                                f"record)")
    headers = {name: _header(archive, info, label) for name, info in infos.items()}
    meta = _read_meta(archive, infos[META], headers[META], label)
    wanted = set(expected) | ({LAST_LOGITS} if meta.get("last_logits") is True else set())
    if set(infos) - {META} != wanted:
        raise RuntimeInputError(f"{label} holds tensors {sorted(set(infos) - {META})}, expected "
                                f"{sorted(wanted)}")
    for name in wanted:
        shape, dtype = arrays_expected[name]
        got_shape, got_dtype, _ = headers[name]
        if got_dtype != dtype:
            raise RuntimeInputError(f"{label}: tensor {name} has dtype {got_dtype}, expected "
                                    f"{np.dtype(dtype)}")
        if got_shape != tuple(shape):
            raise RuntimeInputError(f"{label}: tensor {name} has shape {got_shape}, expected "
                                    f"{tuple(shape)}")
    return meta, {name: _read_data(archive, infos[name], headers[name], label) for name in wanted}


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str
            ) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of one member, read from its npy header alone; its size
    must be exactly the header plus shape x itemsize."""
    try:
        with archive.open(info) as member:
            if npy.read_magic(member) != (1, 0):
                raise ValueError("not an npy version 1.0 header")
            shape, fortran_order, dtype = npy.read_array_header_1_0(member)
            header_bytes = member.tell()
    except Exception as exc:  # noqa: BLE001 - zipfile and numpy raise many types on damage
        # (BadZipFile, ValueError, EOFError, SyntaxError from a damaged header dict, ...)
        raise RuntimeInputError(f"{label}: member {info.filename!r} has no readable npy header "
                                f"({type(exc).__name__}: {exc})") from None
    if fortran_order or dtype.hasobject:
        raise RuntimeInputError(f"{label}: member {info.filename!r} is not a C-ordered plain "
                                f"array")
    data_bytes = math.prod(shape) * dtype.itemsize
    if info.file_size != header_bytes + data_bytes:
        raise RuntimeInputError(
            f"{label}: member {info.filename!r} holds {info.file_size - header_bytes} bytes of "
            f"data, but its header declares {dtype} {shape} ({data_bytes} bytes)")
    return shape, dtype, header_bytes


def _read_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
               header: tuple[tuple[int, ...], np.dtype, int], label: str) -> np.ndarray:
    shape, dtype, header_bytes = header
    array = np.empty(shape, dtype=dtype)
    target = memoryview(array.reshape(-1).view(np.uint8))
    try:
        with archive.open(info) as member:
            member.read(header_bytes)
            filled = 0
            while filled < len(target):
                read = member.readinto(target[filled:])
                if not read:
                    raise EOFError(f"{len(target) - filled} bytes missing")
                filled += read
            if member.read(1):  # also where zipfile checks the member's CRC
                raise ValueError("data beyond the declared size")
    except Exception as exc:  # noqa: BLE001 - BadZipFile (CRC), EOFError, OSError, ...
        raise RuntimeInputError(f"{label}: member {info.filename!r} is damaged "
                                f"({type(exc).__name__}: {exc})") from None
    return array


def _read_meta(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
               header: tuple[tuple[int, ...], np.dtype, int], label: str) -> dict:
    shape, dtype, _ = header
    utf8 = dtype == np.uint8 and len(shape) == 1 and shape[0] <= META_MAX_BYTES
    utf32 = dtype.kind == "U" and shape == () and dtype.itemsize <= 4 * META_MAX_BYTES
    if not (utf8 or utf32):
        raise RuntimeInputError(f"{label} is not a compressive-rt stream snapshot ({META} must "
                                f"be uint8 JSON of at most {META_MAX_BYTES} bytes, got {dtype} "
                                f"{shape})")
    raw = _read_data(archive, info, header, label)
    try:
        text = raw.tobytes().decode() if utf8 else str(raw)
        depth = nesting_depth(text.encode("utf-8", "surrogatepass"))
        if depth > META_MAX_DEPTH:
            raise ValueError(f"it nests {depth} levels deep, at most {META_MAX_DEPTH}")
        meta = json.loads(text)
    except ValueError as exc:
        raise RuntimeInputError(f"{label}: its {META} record is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != SNAPSHOT_FORMAT:
        raise RuntimeInputError(f"{label} is not a compressive-rt stream snapshot")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or type(version) is not int:
        raise RuntimeInputError(
            f"{label} has format_version {version!r}; this runtime reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS[:-1]))} and {READABLE_VERSIONS[-1]}: take the "
            f"snapshot again with this runtime")
    if (version == 1) != utf32:
        raise RuntimeInputError(f"{label}: a version {version} snapshot holds its {META} record "
                                f"as {'uint8 JSON' if version > 1 else 'a unicode string'}")
    if version == 1:
        meta["last_logits"] = False
    elif type(meta.get("last_logits")) is not bool:
        raise RuntimeInputError(f"{label}: last_logits must be true or false, got "
                                f"{meta.get('last_logits')!r}")
    return meta


def _short(identity: object) -> str:
    """An engine identity in one line: contract version, checkpoint and graph hash prefixes."""
    if not isinstance(identity, dict):
        return f"unknown ({identity!r})"
    checkpoint = identity.get("checkpoint_sha256")
    graphs = identity.get("graphs")
    graphs = graphs if isinstance(graphs, dict) else {}
    return (f"contract v{identity.get('contract_version')}, checkpoint "
            f"{str(checkpoint)[:12] if checkpoint else 'not recorded'}, "
            f"{identity.get('precision') or 'precision not recorded'}, graphs "
            + " ".join(f"{name} {str(sha)[:12]}" for name, sha in sorted(graphs.items())))


def _check_meta(label: str, meta: dict, manifest: Manifest) -> None:
    check_restore_compatible(meta.get("engine"), meta.get("config"), manifest, label)
    position = meta.get("position")
    if type(position) is not int or not 0 <= position < MAX_POSITION:
        raise RuntimeInputError(
            f"{label}: position must be an integer in [0, 2**53), got {position!r}")


def _check_values(label: str, arrays: dict[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise RuntimeInputError(f"{label}: tensor {name} holds NaN or infinity")


def expected_counts(config: Mapping, position: int) -> dict[str, int]:
    """The counts (the contract's mem_len, cmem_len and seg_len tensors) of a stream that has
    consumed `position` tokens since it was empty."""
    dims = Dims.from_config(config)
    L, M, C = dims.seg_len, dims.mem_len, dims.cmem_len  # the sizes: the paper's n_s, n_m, n_cm
    committed = position // L * L  # tokens rotated into memory
    counts = {"mem_len": min(committed, M), "seg_len": position % L}
    if C:
        counts["cmem_len"] = min(max(committed - M, 0) // config["compress_rate"], C)
    return counts


def _check_counts(label: str, counts: dict[str, int], config: Mapping, position: int) -> None:
    dims = Dims.from_config(config)
    ranges = {"mem_len": (dims.mem_len, f"a multiple of L={dims.seg_len} in [0, M={dims.mem_len}]"),
              "cmem_len": (dims.cmem_len, f"in [0, C={dims.cmem_len}]"),
              "seg_len": (dims.seg_len - 1, f"in [0, L={dims.seg_len})")}
    for name, value in counts.items():
        top, wanted = ranges[name]
        if not 0 <= value <= top or (name == "mem_len" and value % dims.seg_len):
            raise RuntimeInputError(f"{label}: {name} is {value}, expected {wanted}")
    implied = expected_counts(config, position)
    if counts != implied:
        got = ", ".join(f"{name} {counts[name]}" for name in sorted(counts))
        want = ", ".join(f"{name} {implied[name]}" for name in sorted(implied))
        raise RuntimeInputError(f"{label}: position {position} implies {want}; the "
                                f"snapshot holds {got}")
