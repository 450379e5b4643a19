"""Named queries: each engine's SQL lives in its own file (``sql/sqlite.sql``,
``sql/postgresql.sql``), one query per ``-- name: x`` heading, as aiosql and procrastinate keep
theirs. The journal's Python names a query and passes named parameters; it writes no SQL, so a
query re-spelled for one engine cannot break the other."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HERE = Path(__file__).parent
_HEADING = re.compile(r"^-- name: (\w+)\s*$", re.M)


def parse(text: str) -> dict[str, str]:
    """The queries of a file, by name. A name given twice is a mistake in the file."""
    parts = _HEADING.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is named twice")
        queries[name] = body.strip().rstrip(";")
    return queries


@cache
def queries(engine: str) -> dict[str, str]:
    """The named queries of ``engine`` ("sqlite" or "postgresql"), read once per process."""
    return parse((_HERE / "sql" / f"{engine}.sql").read_text(encoding="utf-8"))
