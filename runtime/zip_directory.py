"""The size of a zip's central directory, read from its end record before the directory is
parsed.

zipfile parses every directory entry its end record's size covers (a Python object each) when
an archive is opened, before any check of the caller's can run: a few MB of entries cost tens
of MB and seconds. Whoever opens untrusted archives reads the end record (the archive's last
bytes) first and bounds what it declares.
"""

from __future__ import annotations

import struct

END_RECORD = struct.Struct("<4s4H2LH")  # signature, disks, entries (disk, total), size, offset
END_SIGNATURE = b"PK\x05\x06"
ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")  # ..., entries (disk, total), size, offset
ZIP64_LOCATOR_SIZE = 20
ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
ZIP64_END_SIGNATURE = b"PK\x06\x06"
LONGEST_ZIP_COMMENT = (1 << 16) - 1
# the end record, its comment and a zip64 record with its locator: all the tail that matters
MOST_TAIL_BYTES = END_RECORD.size + LONGEST_ZIP_COMMENT + ZIP64_LOCATOR_SIZE + \
    ZIP64_END_RECORD.size
DIRECTORY_ENTRY_MAX = 1 << 10  # 46 bytes + a member's name + extra fields; numpy writes < 100


def directory_size(tail: bytes) -> tuple[int, int]:
    """(entries, bytes) of the directory as zipfile will read it, from `tail` (the archive's
    last MOST_TAIL_BYTES bytes, or all of it); (0, 0) when there is no end record (zipfile
    refuses such an archive itself)."""
    end = tail.rfind(END_SIGNATURE, 0, len(tail) - END_RECORD.size + len(END_SIGNATURE))
    if end < 0:
        return 0, 0
    *_, entries, directory_bytes, _, _ = END_RECORD.unpack_from(tail, end)
    locator = end - ZIP64_LOCATOR_SIZE
    record = locator - ZIP64_END_RECORD.size
    if record >= 0 and tail[locator:locator + 4] == ZIP64_LOCATOR_SIGNATURE and \
            tail[record:record + 4] == ZIP64_END_SIGNATURE:
        # zipfile reads the zip64 record right before its locator and trusts its numbers
        *_, entries, directory_bytes, _ = ZIP64_END_RECORD.unpack_from(tail, record)
    return entries, directory_bytes
