"""The slot pool: which buffer row holds which stream. Pure bookkeeping; the Session moves the
state when the pool says so.

Streams occupy rows [0, k) of every buffer, packed: removing a stream moves the last row into
its hole, and a call's streams are swapped into the front rows, so a call on r streams runs the
contiguous rows [0, r). Stream ids never change; rows do.
"""

from __future__ import annotations

from compressive_rt.errors import RuntimeInputError


class SlotPool:
    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.row_streams: list[int] = []  # row -> stream id, rows [0, k)
        self.rows: dict[int, int] = {}  # stream id -> row
        self._next_id = 0

    def __len__(self) -> int:
        return len(self.row_streams)

    def row(self, stream_id: int) -> int:
        try:
            return self.rows[stream_id]
        except (KeyError, TypeError):
            raise RuntimeInputError(
                f"no stream {stream_id!r} in this session (streams: {list(self.rows)})") from None

    def check_free(self) -> None:
        if len(self.row_streams) == self.max_streams:
            raise RuntimeInputError(
                f"all {self.max_streams} stream slots are in use: remove a stream or open the "
                f"session with a larger max_streams")

    def add(self) -> tuple[int, int]:
        """A new stream in the next free row: (stream id, row)."""
        self.check_free()
        row = len(self.row_streams)
        stream_id, self._next_id = self._next_id, self._next_id + 1
        self.row_streams.append(stream_id)
        self.rows[stream_id] = row
        return stream_id, row

    def remove(self, stream_id: int) -> tuple[int, int]:
        """Free the stream's row: returns (last, hole); when they differ, the caller moves the
        state of row `last` into row `hole` (the pool has already moved its stream there)."""
        hole = self.row(stream_id)
        last = len(self.row_streams) - 1
        moved = self.row_streams.pop()
        del self.rows[stream_id]
        if hole != last:
            self.row_streams[hole] = moved
            self.rows[moved] = hole
        return last, hole

    def to_front(self, stream_ids: list[int]) -> list[tuple[int, int]]:
        """Swaps that bring these streams into rows [0, r) (r = how many), applied to the pool;
        the caller swaps the state of each returned (row a, row b) pair in the same order.

        Rows are swapped rather than running the prefix up to the highest row: a swap copies
        two streams' state once, far less than computing idle rows; when every stream takes
        part (decoding, scoring equal lengths) nothing moves."""
        count = len(stream_ids)
        rows = self.rows
        outside = [s for s in stream_ids if rows[s] >= count]
        if not outside:
            return []
        taking_part = set(stream_ids)
        holes = [row for row in range(count) if self.row_streams[row] not in taking_part]
        swaps = []
        for stream_id, hole in zip(outside, holes, strict=True):
            row = rows[stream_id]
            other = self.row_streams[hole]
            self.row_streams[hole], self.row_streams[row] = stream_id, other
            rows[stream_id], rows[other] = hole, row
            swaps.append((row, hole))
        return swaps
