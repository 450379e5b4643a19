"""The journal in PostgreSQL: one queue for several nodes (``[node] journal = "postgresql://..."``).

Job state and queue are the same rows, so a claim and its state change are one transaction:
``SELECT ... FOR UPDATE SKIP LOCKED`` lets nodes claim different jobs at the same moment, each
under a lease that its heartbeat renews. Its SQL is its own (``sql/postgresql.sql``).

Why not Procrastinate: it keeps its own job table and states; ours (history, instance records,
leases, quarantine) would then live in two places that can disagree. SKIP LOCKED on the
journal's own tables keeps job state and queue in one transaction.

The password never comes from the config file: ``$PGPASSWORD`` or ``~/.pgpass`` (libpq reads
both). A URL with a password is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from node.service.journal.migrations import SchemaState
from node.service.journal.model import JournalError, JournalUnavailable
from node.service.journal.store import SchemaMode, Store


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise JournalError(f"[node].journal {url!r}: write postgresql://user@host:5432/dbname")
    if parts.password:
        raise JournalError("[node].journal: no password in the URL (it would sit in a config "
                           "file); use $PGPASSWORD or ~/.pgpass")
    return url


_POOLS: dict = {}


def close_pool(url: str) -> None:
    """Close this process's connections to ``url`` (a node shutting down, a test's database)."""
    pool = _POOLS.pop(url, None)
    if pool is not None:
        pool.close()


def _pool(url: str):
    """One connection pool per database and process: the console's requests and a node's
    journal handles borrow connections instead of opening one each time.

    The first time, one plain connection is tried first: a database that refuses or cannot
    be reached is said at once (the pool would retry for its whole timeout, which a command
    at a terminal waits through for nothing)."""
    pool = _POOLS.get(url)
    if pool is None:
        import logging

        import psycopg
        from psycopg_pool import ConnectionPool

        try:
            psycopg.connect(url, autocommit=True, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            raise JournalUnavailable(
                f"{url}: the journal database is unreachable (is PostgreSQL running there, "
                f"and the URL right?): {str(exc).strip().splitlines()[0][:200]}") from None

        # its connection attempts would each log a warning; JournalUnavailable says it once
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        pool = ConnectionPool(url, min_size=0, max_size=8, open=True, timeout=5, max_idle=60,
                              kwargs={"autocommit": True, "connect_timeout": 5},
                              reconnect_timeout=30, name="dicom-node-journal",
                              check=ConnectionPool.check_connection)  # after a restart
        _POOLS[url] = pool
    return pool


def _gone(exc: BaseException) -> JournalUnavailable:
    return JournalUnavailable(f"the journal database went away: {str(exc).strip()[:200]}")


class PostgresStore(Store):
    engine = "postgresql"
    moves_write_history = True  # sql/postgresql.sql: move_* insert their history line
    read_lag_seconds = 2.0  # see Outbox.read_lag_seconds

    def __init__(self, url: str, *, create: bool = True,
                 schema: SchemaMode | None = None) -> None:
        """Open the journal at ``url``; with ``create``, bring its schema up to date (several
        nodes starting at once take turns), else refuse one that is not current. ``schema``
        says otherwise (Store._open_schema)."""
        self.url = check_url(url)
        self.location = url
        self.path = url  # what older messages name
        self.conn = None
        self._in_tx = False
        self._connect()
        try:
            self._open_schema(schema or ("migrate" if create else "check"))
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        import psycopg_pool

        if self.conn is not None:  # a broken one goes back: the pool replaces it
            _pool(self.url).putconn(self.conn)
            self.conn = None
        try:
            self.conn = _pool(self.url).getconn(timeout=5)
        except psycopg_pool.PoolTimeout:
            raise JournalUnavailable(f"{self.url}: the journal database is unreachable "
                                     "(is PostgreSQL running there, and the URL right?)") from None

    def close(self) -> None:
        if self.conn is not None:
            _pool(self.url).putconn(self.conn)
            self.conn = None

    @contextmanager
    def _tx(self) -> Iterator[None]:
        import psycopg

        if self.conn is None or self.conn.closed or self.conn.broken:
            self._connect()
        try:
            with self.conn.transaction():
                self._in_tx = True
                yield
        except psycopg.OperationalError as exc:
            raise _gone(exc) from None
        finally:
            self._in_tx = False

    def _execute(self, name: str, params: dict[str, Any]):
        import psycopg

        sql = self._sql[name]
        try:
            return self.conn.execute(sql, params or None)
        except psycopg.OperationalError as exc:
            if self._in_tx:  # the transaction is lost: the caller's step is retried
                raise _gone(exc) from None
            self._connect()  # the server restarted: once more on a new connection
            try:
                return self.conn.execute(sql, params or None)
            except psycopg.OperationalError as again:
                raise _gone(again) from None

    # --- schema ----------------------------------------------------------------------------

    def _schema_state(self) -> SchemaState:
        tables = {name for (name,) in self._all("table_names")}
        recorded = 0
        if "schema_version" in tables:
            recorded = self._one("legacy_version")[0] or 0  # type: ignore[index]
        if "schema_migrations" in tables:
            (logged,) = self._one("latest_migration")  # type: ignore[misc]
            return SchemaState(max(recorded, logged or 0))
        if "jobs" in tables:  # release 0.1.0
            return SchemaState(recorded, unversioned=recorded <= 1)
        return SchemaState(recorded)

    def _lock_schema(self) -> None:
        self._execute("lock_schema", {})

    def _run_script(self, sql: str) -> None:
        self.conn.execute(sql)  # no parameters: the simple protocol runs every statement

    def _adopt_unversioned(self) -> None:
        pass  # release 0.1.0 created every table and column of version 1 in PostgreSQL

    def _mark_version(self, version: int) -> None:
        self._execute("create_legacy_version", {})
        self._execute("insert_legacy_version", {"version": version})
        self._execute("mark_version", {"version": version})

    # --- maintenance -------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        return []  # PostgreSQL checks its own pages; use its tools (amcheck, pg_dump)

    def backup(self, target: Path) -> None:
        raise JournalError(f"{self.url}: back a PostgreSQL journal up with PostgreSQL's tools "
                           "(pg_dump, or the server's own backups)")

    @staticmethod
    def _name_lists(**lists):
        return {key: list(names) for key, names in lists.items()}

    def enqueue(self, *args, **kwargs):
        """As the SQLite store's; two nodes that watch one folder may enqueue the same file
        at the same moment: the unique key lets one insert, the other finds its job."""
        import psycopg

        try:
            return super().enqueue(*args, **kwargs)
        except psycopg.errors.UniqueViolation:
            return super().enqueue(*args, **kwargs)


#: The tables a SQLite journal's content is copied from, in an order that keeps references.
_COPIED = ("jobs", "instances", "instance_timeouts", "history", "nodes", "paused", "audit",
           "events", "receivers", "destinations", "studies", "study_series")


def copy_from_sqlite(sqlite_path: str | Path, url: str) -> dict[str, int]:
    """Copy a SQLite journal into an empty PostgreSQL journal (``journal migrate --to``):
    every table, ids kept, the sequences moved past them. Both are brought to this release's
    schema first. Returns rows per table."""
    from node.service.journal.sqlite import SqliteStore

    source = SqliteStore(sqlite_path)
    target = PostgresStore(url)
    counts = {}
    try:
        if any(target.counts().values()):
            raise JournalError(f"{url}: the target journal already holds jobs; migrate into an "
                               "empty database")
        with target._tx(), target.conn.cursor() as cur:
            for table in _COPIED:
                columns = [r[1] for r in source.db.execute(f"PRAGMA table_info({table})")]
                rows = source.db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
                if rows:
                    marks = ", ".join("%s" for _ in columns)
                    cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                    f"({marks})", rows)
                counts[table] = len(rows)
            for table in ("jobs", "history", "audit", "events"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1))")
    finally:
        source.close()
        target.close()
    return counts
