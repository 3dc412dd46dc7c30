"""Data: deterministic split by document, contiguous training streams."""

import numpy as np
import pytest

from compressive_rt.ct_reference.data import (
    SegmentStreams,
    read_documents,
    scored_stream_length,
    split_documents,
    unread_held_out_document,
)
from compressive_rt.errors import CtrtError


def test_every_twentieth_document_goes_to_validation():
    documents = [bytes([i]) * 3 for i in range(40)]
    train, validation = split_documents(documents)
    assert validation.tolist() == [19] * 3 + [39] * 3
    assert len(train) == 38 * 3 and 19 not in train.tolist()


def test_a_few_documents_still_hold_one_out():
    train, validation = split_documents([b"first", b"second", b"third"])
    assert bytes(train) == b"firstsecond" and bytes(validation) == b"third"


def test_streams_yield_consecutive_overlapping_segments():
    tokens = np.arange(41, dtype=np.uint8)  # 2 streams of 20 predicted tokens each
    streams = SegmentStreams(tokens, batch=2, seg_len=4)
    first, second = streams.next_batch(), streams.next_batch()
    assert first.tolist() == [[0, 1, 2, 3, 4], [20, 21, 22, 23, 24]]
    assert second.tolist() == [[4, 5, 6, 7, 8], [24, 25, 26, 27, 28]]
    for _ in range(3):
        streams.next_batch()
    assert streams.next_batch().tolist() == first.tolist()  # 5 segments per stream, then again


def test_folder_corpus_reads_all_files_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_bytes(b"bx")
    (tmp_path / "a.txt").write_bytes(b"a")
    assert read_documents(tmp_path) == [b"a", b"bx"]


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(CtrtError, match="data path .*missing.txt does not exist"):
        read_documents(tmp_path / "missing.txt")


def test_the_unread_held_out_document_starts_after_the_prefix_already_read(tmp_path):
    # 40 files: files 19 and 39 (0-based, sorted) are held out, 3 bytes each
    for i in range(40):
        (tmp_path / f"{i:02d}.txt").write_bytes(bytes([65 + i % 26]) * 3)
    name, tokens = unread_held_out_document(tmp_path, 0)
    assert name == str(tmp_path / "19.txt") and bytes(tokens) == bytes([65 + 19 % 26]) * 3
    name, tokens = unread_held_out_document(tmp_path, 1)
    assert name == str(tmp_path / "39.txt") and bytes(tokens) == bytes([65 + 39 % 26]) * 3
    with pytest.raises(CtrtError, match="the corpus holds 6 held-out bytes and the first 4 were "
                                        "read already"):
        unread_held_out_document(tmp_path, 4)


def test_the_unread_held_out_document_is_the_first_long_enough_else_the_longest(tmp_path):
    for i in range(60):  # held out: 19 (3 bytes), 39 (5 bytes), 59 (4 bytes)
        (tmp_path / f"{i:02d}.txt").write_bytes(b"x" * {39: 5, 59: 4}.get(i, 3))
    assert unread_held_out_document(tmp_path, 0, min_bytes=4)[0] == str(tmp_path / "39.txt")
    assert unread_held_out_document(tmp_path, 0, min_bytes=9)[0] == str(tmp_path / "39.txt")
    assert unread_held_out_document(tmp_path, 8, min_bytes=9)[0] == str(tmp_path / "59.txt")


def test_a_single_document_corpus_gives_the_unread_rest_of_its_held_out_tail(tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_bytes(bytes(range(200)))  # the last 10 bytes are held out
    name, tokens = unread_held_out_document(corpus, 4)
    assert name == f"{corpus} from byte 194" and bytes(tokens) == bytes(range(194, 200))


def test_bits_per_byte_reads_a_contiguous_prefix_of_its_streams():
    assert scored_stream_length(101, seg_len=8) == 100
    assert scored_stream_length(101, seg_len=8, batch=4) == 25
    assert scored_stream_length(101, seg_len=8, batch=4, max_segments=2) == 16
    with pytest.raises(CtrtError, match="1 bytes are too few to score in 1 stream"):
        scored_stream_length(1, seg_len=8)
