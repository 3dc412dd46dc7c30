"""Snapshot format version 2 (runtime/snapshot.py): bytes as well as files, last logits carried,
version 1 still read, and a reader that refuses crafted archives with bounded memory.

The crafted archives are the attack of issue 19: an uploaded snapshot whose `mem` member is
deflated and declares a 1 GiB array made the version 1 reader allocate and fill 1 GiB before it
refused the shape. tracemalloc sees numpy's allocations, so its peak bounds what a refusal cost.
"""

import io
import json
import struct
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.lib import format as npy

from compressive_rt.runtime.session import RuntimeInputError, Session
from compressive_rt.runtime.snapshot import LAST_LOGITS, META, META_MAX_BYTES, engine_identity

TOKENS = (np.arange(45, dtype=np.int32) * 7) % 256  # 45 = 5 * 8 + 5: mem and cmem full
PEAK_LIMIT = 8 << 20  # a refusal may cost the valid state (a few KiB here) and the record


@pytest.fixture(scope="module")
def fed(engine):
    """(engine dir, snapshot bytes, the state and last logits of a stream after TOKENS)."""
    _, engine_dir = engine("conv")
    session = Session(engine_dir)
    stream = session.add_stream()
    session.feed({stream: TOKENS})
    return (engine_dir, session.snapshot(stream), session.stream_state(stream),
            session.last_logits(stream).copy())


def members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    npy.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def declared(shape: tuple[int, ...], descr: str, data: bytes) -> bytes:
    """An npy member whose header declares (shape, descr) over whatever `data` is."""
    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def archive_of(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A zip of (member name, member bytes, compression) in order, duplicates allowed."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, content, compression in entries:
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
    return buffer.getvalue()


def refusal_peak(session: Session, data: bytes, match: str | None = None) -> int:
    """Restore `data` into the session, expect a refusal; returns the peak bytes it allocated."""
    tracemalloc.start()
    try:
        with pytest.raises(RuntimeInputError, match=match):
            session.restore(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bytes_and_files_restore_alike_and_continue_with_the_uninterrupted_logits(fed, tmp_path):
    engine_dir, data, state, last_logits = fed
    session = Session(engine_dir, max_streams=2)
    path = tmp_path / "s.npz"
    path.write_bytes(data)
    from_bytes, from_file = session.restore(data), session.restore(path)
    uninterrupted = Session(engine_dir)
    alone = uninterrupted.add_stream()
    uninterrupted.feed({alone: TOKENS})
    for stream in (from_bytes, from_file):
        assert session.position(stream) == 45
        restored = session.stream_state(stream)
        assert all(np.array_equal(restored[name], state[name]) for name in state)
        np.testing.assert_array_equal(session.last_logits(stream), last_logits)
    expected = uninterrupted.feed({alone: [3, 1, 4]})[alone]
    got = session.feed({from_bytes: [3, 1, 4], from_file: [3, 1, 4]})
    np.testing.assert_array_equal(got[from_bytes], expected)
    np.testing.assert_array_equal(got[from_file], expected)


def test_a_stream_never_fed_snapshots_without_last_logits(fed):
    engine_dir = fed[0]
    session = Session(engine_dir)
    data = session.snapshot(session.add_stream())
    names = [name for name, _ in members(data)]
    meta = json.loads(np.load(io.BytesIO(dict(members(data))[f"{META}.npy"])).tobytes())
    assert f"{LAST_LOGITS}.npy" not in names and meta["last_logits"] is False
    restored = Session(engine_dir).restore(data)
    assert restored == 0


def test_a_restored_unfed_stream_has_no_last_logits(fed):
    engine_dir = fed[0]
    session = Session(engine_dir, max_streams=2)
    data = session.snapshot(session.add_stream())
    restored = session.restore(data)
    with pytest.raises(RuntimeInputError, match=f"stream {restored} has not been fed"):
        session.last_logits(restored)


def test_a_version_1_snapshot_still_loads(fed):
    engine_dir, _, state, _ = fed
    session = Session(engine_dir)
    meta = {"format": "compressive-rt-stream-snapshot", "format_version": 1, "position": 45,
            "config": session.manifest.config, "engine": engine_identity(session.manifest)}
    buffer = io.BytesIO()
    np.savez(buffer, **{META: np.array(json.dumps(meta))}, **state)  # how version 1 wrote it
    stream = session.restore(buffer.getvalue())
    assert session.position(stream) == 45
    restored = session.stream_state(stream)
    assert all(np.array_equal(restored[name], state[name]) for name in state)
    with pytest.raises(RuntimeInputError, match="has not been fed"):
        session.last_logits(stream)  # version 1 carried no logits


def test_the_issue_19_archive_is_refused_before_any_allocation(fed):
    """A deflated `mem` that declares (and inflates to) a 1 GiB float32 array: 1 MiB on disk."""
    engine_dir, data = fed[:2]
    session = Session(engine_dir)
    victim = session.add_stream()
    session.feed({victim: TOKENS[:9]})
    before = session.stream_state(victim)
    gib_shape = (1 << 28,)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, content in members(data):
            if name != "mem.npy":
                archive.writestr(name, content, compress_type=zipfile.ZIP_STORED)
        with archive.open("mem.npy", "w", force_zip64=True) as member:
            member.write(declared(gib_shape, "<f4", b""))
            zeros = bytes(1 << 24)
            for _ in range((4 << 28) // len(zeros)):
                member.write(zeros)
    crafted = buffer.getvalue()
    assert len(crafted) < 8 << 20
    # either check refuses it first: the archive is larger than any snapshot of this engine, and
    # its mem member is deflated
    assert refusal_peak(session, crafted, "more than a snapshot of this engine can hold|"
                                          "member 'mem.npy' is compressed") < PEAK_LIMIT
    after = session.stream_state(victim)
    assert all(np.array_equal(after[name], before[name]) for name in before)
    assert session.streams == [victim]


def with_directory_of(data: bytes, entries: int, declared_entries: int,
                      zip64: bool = False) -> bytes:
    """The snapshot archive `data` with its zip directory replaced by `entries` entries of a
    one-byte name (47 bytes each), its end record declaring `declared_entries` (the 16-bit
    field: zipfile ignores it and parses as many entries as the directory's size covers).
    zip64: the true numbers in a zip64 end record (zipfile trusts it), the classic record
    declaring 5 entries in 100 bytes."""
    end = data.rfind(b"PK\x05\x06")
    directory_at = struct.unpack_from("<L", data, end + 16)[0]
    entry = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
                        0, 0, 0) + b"a"
    directory = entry * entries
    if not zip64:
        return data[:directory_at] + directory + struct.pack(
            "<4s4H2LH", b"PK\x05\x06", 0, 0, declared_entries, declared_entries,
            len(directory), directory_at, 0)
    record64_at = directory_at + len(directory)
    record64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                           len(directory), directory_at)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, record64_at, 1)
    classic = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 5, 5, 100, directory_at, 0)
    return data[:directory_at] + directory + record64 + locator + classic


@pytest.mark.parametrize("declared_entries, zip64", [(80000 & 0xFFFF, False), (5, False),
                                                     (80000, True)])
def test_a_directory_of_80000_entries_is_refused_before_zipfile_parses_it(fed, declared_entries,
                                                                         zip64):
    """3.8 MB, under the size limit of this engine's snapshots (4.3 MB); zipfile would make
    80,000 ZipInfo objects of it (about 40 MB) before any check of the members could run."""
    engine_dir, data = fed[:2]
    crafted = with_directory_of(data, 80000, declared_entries, zip64)
    session = Session(engine_dir)
    match = f"its zip directory declares {declared_entries} entries in 3760000 bytes; a " \
            f"snapshot of this engine has {len(members(data))} members: not a snapshot"
    assert refusal_peak(session, crafted, match) < 1 << 20
    assert session.streams == []


def test_a_deflated_member_is_refused_even_when_it_inflates_to_the_right_shape(fed):
    engine_dir, data = fed[:2]
    entries = [(name, content, zipfile.ZIP_DEFLATED if name == "mem.npy" else zipfile.ZIP_STORED)
               for name, content in members(data)]
    with pytest.raises(RuntimeInputError, match="member 'mem.npy' is compressed \\(method 8\\); "
                                                "snapshots are stored uncompressed"):
        Session(engine_dir).restore(archive_of(entries))


def test_a_file_larger_than_any_snapshot_of_the_engine_is_refused_unopened(fed, tmp_path):
    engine_dir = fed[0]
    path = tmp_path / "big.npz"
    with path.open("wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of zeros
    with pytest.raises(RuntimeInputError, match="more than a snapshot of this engine can hold"):
        Session(engine_dir).restore(path)


MUTATIONS = ("shape", "huge", "deflate", "duplicate", "extra", "missing", "dtype", "meta_size")


def crafted_archives(data: bytes) -> st.SearchStrategy:
    """Archives made of a valid snapshot's members with one to three mutations, each of which a
    valid snapshot cannot have, and sometimes truncated."""
    valid = members(data)
    originals = {name: np.load(io.BytesIO(content), allow_pickle=False) for name, content in valid}
    names = sorted(originals)

    @st.composite
    def archives(draw) -> tuple[bytes, list]:
        entries = [(name, content, zipfile.ZIP_STORED) for name, content in valid]
        applied = []
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(MUTATIONS))
            name = draw(st.sampled_from(names))
            index = next((i for i, entry in enumerate(entries) if entry[0] == name), None)
            array = originals[name]
            if kind == "extra":
                extra = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10))
                entries.append((f"{extra}.npy", npy_bytes(np.zeros(3, np.float32)),
                                zipfile.ZIP_STORED))
            elif kind == "meta_size":
                size = draw(st.integers(META_MAX_BYTES + 1, 1 << 34))
                entries = [entry for entry in entries if entry[0] != f"{META}.npy"]
                entries.append((f"{META}.npy", declared((size,), "|u1", b"{}"),
                                zipfile.ZIP_STORED))
            elif index is None:  # removed by an earlier mutation
                continue
            elif kind == "missing":
                entries = [entry for entry in entries if entry[0] != name]
            elif kind == "duplicate":
                entries.append(entries[index])
            elif kind == "deflate":
                entries[index] = (name, entries[index][1], zipfile.ZIP_DEFLATED)
            else:
                if kind == "shape":
                    shape = draw(st.lists(st.integers(1, 40), max_size=4).filter(
                        lambda s: tuple(s) != array.shape))
                    content = npy_bytes(np.zeros(shape, array.dtype))
                elif kind == "huge":
                    exponent = draw(st.integers(31, 40))
                    content = declared((1 << exponent,), array.dtype.str, array.tobytes())
                else:
                    descr = draw(st.sampled_from(["<f8", ">f4", "<i8", "|u1", "<f2", "<i4"])
                                 .filter(lambda d: np.dtype(d) != array.dtype))
                    content = npy_bytes(np.zeros(array.shape, descr))
                entries[index] = (name, content, entries[index][2])
            applied.append((kind, name))
        archive = archive_of(entries)
        if not applied or draw(st.integers(0, 3)) == 0:
            cut = draw(st.integers(0, len(archive) - 1))
            archive = archive[:cut]
            applied.append(("truncate", cut))
        return archive, applied

    return archives()


def test_crafted_archives_are_refused_with_bounded_memory(fed):
    engine_dir, data = fed[:2]
    session = Session(engine_dir, max_streams=2)
    victim = session.add_stream()
    session.feed({victim: TOKENS[:13]})
    before = session.stream_state(victim)

    @given(crafted_archives(data))
    def refused(case):
        archive, applied = case
        peak = refusal_peak(session, archive)
        assert peak < PEAK_LIMIT, applied
        assert session.streams == [victim]

    refused()
    after = session.stream_state(victim)
    assert all(np.array_equal(after[name], before[name]) for name in before)


def test_a_flipped_byte_is_refused_or_changes_nothing_the_snapshot_holds(fed):
    engine_dir, data, state, last_logits = fed
    session = Session(engine_dir)

    @given(st.integers(0, len(data) - 1), st.integers(1, 255))
    def refused_or_identical(offset, flip):
        damaged = bytearray(data)
        damaged[offset] ^= flip
        try:
            stream = session.restore(bytes(damaged))
        except RuntimeInputError:
            return
        restored = session.stream_state(stream)
        try:
            assert all(np.array_equal(restored[name], state[name]) for name in state)
            np.testing.assert_array_equal(session.last_logits(stream), last_logits)
            assert session.position(stream) == 45
        finally:
            session.remove_stream(stream)

    refused_or_identical()
