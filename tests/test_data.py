"""Data: deterministic split by document, contiguous training streams."""

import numpy as np
import pytest

from compressive_rt.ct_reference.data import SegmentStreams, read_documents, split_documents
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
