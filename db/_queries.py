"""Loads the named SQL statements under queries/ once, at import."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load(folder: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(folder.glob("*.sql")):
        parts = _NAME.split(path.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise ValueError(f"{path.name}: query {name} is defined twice")
            found[name] = body.strip().rstrip(";")
    return found


_QUERIES = _load(Path(__file__).parent / "queries")


def one(row: T | None) -> T:
    """The row of a statement that always returns one (an INSERT ... RETURNING, an aggregate)."""
    if row is None:
        raise RuntimeError("the statement returned no row")
    return row


def sql(name: str) -> str:
    """The statement named `name`; a typo fails at import of the module that asks."""
    return _QUERIES[name]
