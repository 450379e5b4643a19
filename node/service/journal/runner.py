"""What every part of the journal stands on: run a named query of the store's engine inside
or outside a transaction, and read its rows as plain tuples or typed jobs. The engines
(``sqlite.py``, ``postgres.py``) supply the connection and the transaction; the parts (queue,
studies, audit, destinations, nodes) supply the logic and name their queries."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from operator import itemgetter
from typing import Any

from node.service.journal.model import Job
from node.service.journal.queries import queries

_NAME = itemgetter(0)  # a column's name in a cursor's description


class QueryRunner(ABC):
    #: "sqlite" or "postgresql": which file of named queries this store runs
    engine: str
    #: what messages name: the SQLite file or the PostgreSQL URL
    location: str

    @property
    def _sql(self) -> dict[str, str]:
        """The engine's named queries (read once per process and kept on the store: a step
        looks up several)."""
        found = self.__dict__.get("_queries")
        if found is None:
            found = self.__dict__["_queries"] = queries(self.engine)
        return found

    #: True when the engine's move queries write the move's history line too, in the same
    #: statement (PostgreSQL: a data-modifying WITH). One statement is atomic on its own, so
    #: such a move needs no transaction around it: two round trips to the server fewer, of
    #: the five a move took (BEGIN, UPDATE, INSERT, COMMIT, and the read before).
    moves_write_history: bool = False


    def _move_tx(self) -> AbstractContextManager[None]:
        """The transaction that one move, written on its own, needs (see moves_write_history)."""
        return nullcontext() if self.moves_write_history else self._tx()

    @staticmethod
    def _name_lists(**lists: Sequence[str]) -> dict[str, Any]:
        """Lists of names as the engine's queries take them: SQLite reads JSON text
        (json_each), PostgreSQL arrays (see PostgresStore)."""
        return {key: json.dumps(list(names)) for key, names in lists.items()}

    @abstractmethod
    def _tx(self) -> AbstractContextManager[None]:
        """One committed transaction: every query run inside it commits together or not at
        all (a state change and its history line are never apart)."""

    @abstractmethod
    def _execute(self, name: str, params: dict[str, Any]) -> Any:
        """Run the named query with its parameters; a DB-API cursor."""

    def _one(self, query: str, /, **params: Any) -> tuple | None:
        row = self._execute(query, params).fetchone()
        return None if row is None else tuple(row)

    def _all(self, query: str, /, **params: Any) -> list[tuple]:
        return [tuple(row) for row in self._execute(query, params).fetchall()]

    def _rowcount(self, query: str, /, **params: Any) -> int:
        return int(self._execute(query, params).rowcount)

    def _jobs(self, query: str, /, **params: Any) -> list[Job]:
        cursor = self._execute(query, params)
        rows = cursor.fetchall()
        return [Job.from_row(self._columns(query, cursor, row), row) for row in rows]

    def _job(self, query: str, /, **params: Any) -> Job | None:
        cursor = self._execute(query, params)
        row = cursor.fetchone()
        return None if row is None else Job.from_row(self._columns(query, cursor, row), row)

    def _columns(self, query: str, cursor: Any, row: tuple) -> tuple[str, ...]:
        """The column names of a named query's rows, read from the cursor once per query and
        store (psycopg builds an object per column each time its description is read: the
        client's CPU per job cycle fell by about a tenth without it), and again should a row's
        width change (a migration by a newer node while this one runs)."""
        known = self.__dict__.setdefault("_column_names", {})
        names = known.get(query)
        if names is None or len(names) != len(row):
            names = known[query] = tuple(map(_NAME, cursor.description))
        return names
