"""Byte-level data: documents, a deterministic train/validation split, and the Transformer-XL
style training streams (B contiguous streams, consecutive segments, so memory carries over).

The default corpus is the Python standard library's own `.py` files, so nothing is downloaded.
"""

from __future__ import annotations

import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compressive_rt.errors import CtrtError

VALIDATION_EVERY = 20  # every 20th document (sorted order) is held out for validation
_SKIPPED_STDLIB_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib"}


def default_corpus_files() -> list[Path]:
    """The standard library's `.py` files in sorted order, without site-packages and tests."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [path for path in sorted(root.rglob("*.py"))
            if not _SKIPPED_STDLIB_DIRS.intersection(path.relative_to(root).parts[:-1])]


def corpus_files(data: str | Path | None) -> list[Path]:
    """Files of a corpus: the default corpus for None, a file, or all files under a folder."""
    if data is None:
        files = default_corpus_files()
        if not files:
            raise CtrtError("found no standard-library .py files for the default corpus; "
                            "pass --data PATH")
        return files
    path = Path(data)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise CtrtError(f"data folder {path} holds no files")
        return files
    raise CtrtError(f"data path {path} does not exist (give a text file or a folder)")


def read_documents(data: str | Path | None) -> list[bytes]:
    """Every file of the corpus as one document of bytes (empty files skipped)."""
    return [content for _, content in read_named_documents(data)]


def read_named_documents(data: str | Path | None) -> list[tuple[Path, bytes]]:
    """read_documents' documents with the file each came from."""
    documents = []
    for path in corpus_files(data):
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise CtrtError(f"cannot read {path}: {exc.strerror}") from exc
        if content:
            documents.append((path, content))
    if not documents:
        raise CtrtError(f"corpus {data} holds no bytes")
    return documents


def split_documents(documents: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split by document: every VALIDATION_EVERY-th to validation (at least one,
    the last, when there are fewer). A single document is split 95/5 by bytes instead.
    Returns (train, validation) as uint8 token arrays."""
    if len(documents) == 1:
        text = documents[0]
        cut = len(text) - max(2, len(text) // 20)
        if cut < 2:
            raise CtrtError(f"a single document of {len(text)} bytes is too short to split")
        return _tokens([text[:cut]]), _tokens([text[cut:]])
    held_out = held_out_indices(len(documents))
    train = [doc for i, doc in enumerate(documents) if i not in held_out]
    validation = [doc for i, doc in enumerate(documents) if i in held_out]
    return _tokens(train), _tokens(validation)


def unread_held_out_document(data: str | Path | None, read_bytes: int,
                             min_bytes: int = 2) -> tuple[str, np.ndarray]:
    """(what it is, its tokens): a held-out document that starts at or after byte `read_bytes`
    of the validation split, so that nothing which read at most that prefix (validation during
    training, an evaluation) has seen it: the first of at least `min_bytes`, else the longest.
    A single-document corpus gives the rest of its held-out tail."""
    named = read_named_documents(data)
    validation = split_documents([content for _, content in named])[1]
    unread = []
    if len(named) == 1:
        start = len(named[0][1]) - len(validation) + read_bytes
        unread.append((f"{named[0][0]} from byte {start}", validation[read_bytes:].tobytes()))
    else:
        offset = 0
        for index in sorted(held_out_indices(len(named))):
            path, content = named[index]
            if offset >= read_bytes:
                unread.append((str(path), content))
            offset += len(content)
    unread = [(name, content) for name, content in unread if len(content) >= 2]
    if not unread:
        raise CtrtError(f"the corpus holds {len(validation)} held-out bytes and the first "
                        f"{read_bytes} were read already, so no held-out document is left "
                        f"unread; give --data a larger corpus")
    name, content = next((doc for doc in unread if len(doc[1]) >= min_bytes),
                         max(unread, key=lambda doc: len(doc[1])))
    return name, np.frombuffer(content, dtype=np.uint8)


def held_out_indices(n_documents: int) -> set[int]:
    """Indices of the validation documents among n_documents >= 2 (see split_documents)."""
    return set(range(VALIDATION_EVERY - 1, n_documents, VALIDATION_EVERY)) or {n_documents - 1}


def _tokens(documents: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(documents), dtype=np.uint8)


@dataclass
class SegmentStreams:
    """B contiguous streams over the training tokens; batch k holds segment k of every stream.

    Each batch is [B, L+1] (inputs and the shifted targets overlap by one token). After the last
    whole segment the streams start again from their beginning (`position` returns to 0).
    """

    tokens: np.ndarray  # [n] uint8
    batch: int
    seg_len: int
    position: int = 0  # index of the next segment within every stream

    def __post_init__(self) -> None:
        self.stream_len = (len(self.tokens) - 1) // self.batch
        self.segments_per_stream = self.stream_len // self.seg_len
        if self.segments_per_stream < 1:
            raise CtrtError(
                f"training data of {len(self.tokens)} bytes is too short for batch {self.batch} "
                f"x segment {self.seg_len} (+1); use more data or a smaller --batch")

    def next_batch(self) -> torch.Tensor:
        """[B, L+1] int64 tokens of the next segment of every stream."""
        if self.position >= self.segments_per_stream:
            self.position = 0
        starts = np.arange(self.batch) * self.stream_len + self.position * self.seg_len
        rows = np.stack([self.tokens[s:s + self.seg_len + 1] for s in starts])  # [B, L+1]
        self.position += 1
        return torch.from_numpy(rows.astype(np.int64))


@torch.no_grad()
def scored_stream_length(n_tokens: int, seg_len: int, batch: int = 1,
                         max_segments: int | None = None) -> int:
    """Tokens each of bits_per_byte's streams predicts; its streams are contiguous from the
    first token, so it reads the first batch * this + 1 tokens."""
    stream_len = (n_tokens - 1) // batch
    if stream_len < 1:
        raise CtrtError(f"{n_tokens} bytes are too few to score in {batch} stream(s)")
    return stream_len if max_segments is None else min(stream_len, max_segments * seg_len)


def bits_per_byte(model: torch.nn.Module, tokens: np.ndarray, batch: int = 1,
                  max_segments: int | None = None) -> float:
    """Stream `tokens` through the model segment by segment with memory (from empty), split
    into `batch` contiguous streams, and return the mean cross-entropy in bits per byte.

    Only the first `max_segments` segments of each stream are scored when given; the last
    segment may be shorter than L.
    """
    seg_len = model.config.seg_len
    stream_len = scored_stream_length(len(tokens), seg_len, batch, max_segments)
    rows = torch.from_numpy(np.stack([
        tokens[b * stream_len:(b + 1) * stream_len + 1] for b in range(batch)]).astype(np.int64))
    was_training = model.training
    model.eval()
    memory = model.init_memory(batch)
    total_nats = 0.0
    for start in range(0, stream_len, seg_len):
        end = min(start + seg_len, stream_len)
        out = model(rows[:, start:end], memory)
        memory = out.memory
        total_nats += torch.nn.functional.cross_entropy(
            out.logits.reshape(-1, out.logits.shape[-1]), rows[:, start + 1:end + 1].reshape(-1),
            reduction="sum").item()
    model.train(was_training)
    return total_nats / (batch * stream_len) / math.log(2)
