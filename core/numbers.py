"""Strict parsing of the unsigned integers that come from outside: ids, cursors, timestamps.

Python's `int()` accepts Unicode digits ("²", "٣"), surrounding white space, `_` separators
and a sign, and `str.isdigit()` is true for "²"; neither is what a wire format means by a
number. Everything that turns request text into an integer goes through here.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]{1,20}")

# The largest id PostgreSQL's bigint holds.
MAX_BIGINT = 2**63 - 1


def parse_uint(text: str, *, maximum: int = MAX_BIGINT) -> int | None:
    """`text` as a non-negative integer of ASCII digits no larger than `maximum`, else None."""
    if _DIGITS.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= maximum else None
