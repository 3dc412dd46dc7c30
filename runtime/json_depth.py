"""How deeply a JSON text nests, measured on its bytes before it is parsed.

Python's json module and everything that walks what it returns (pydantic, repr, ==) recurse
once per level, so a small text nested thousands deep (`[[[[...]]]]`, 10 KB) ends in a
RecursionError wherever it is first walked. Whoever parses untrusted JSON measures its depth
first and refuses a text deeper than it needs. The measure is vectorised (numpy) and linear in
the text's length, with no backtracking whatever the bytes are.
"""

from __future__ import annotations

import numpy as np

QUOTE, BACKSLASH = ord('"'), ord("\\")
OPEN_ARRAY, OPEN_OBJECT, CLOSE_ARRAY, CLOSE_OBJECT = b"[{]}"


def nesting_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in `text` (UTF-8 JSON): 0 for a scalar, 1 for
    `[1, 2]`, 2 for `{"a": [1]}`. Brackets inside strings do not count. For text that is not
    JSON the number is still defined (and bounded by the count of brackets)."""
    data = np.frombuffer(text, dtype=np.uint8)
    if not data.size:
        return 0
    quotes = data == QUOTE  # [n]
    if (data == BACKSLASH).any():  # a quote is escaped when an odd run of backslashes ends
        index = np.arange(data.size)  # right before it
        last_plain = np.maximum.accumulate(np.where(data != BACKSLASH, index, -1))
        backslashes_before = np.zeros(data.size, dtype=np.int64)
        backslashes_before[1:] = index[:-1] - last_plain[:-1]
        quotes &= backslashes_before % 2 == 0
    outside = np.cumsum(quotes, dtype=np.int64) % 2 == 0  # after an even count of quotes
    opens = ((data == OPEN_ARRAY) | (data == OPEN_OBJECT)) & outside
    closes = ((data == CLOSE_ARRAY) | (data == CLOSE_OBJECT)) & outside
    return max(int(np.cumsum(opens.astype(np.int64) - closes).max()), 0)
