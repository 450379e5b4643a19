"""The journal in PostgreSQL: one queue for several nodes (issue "Past one machine").

The same :class:`~node.service.journal.Journal`, on another engine: its SQL is the SQLite
journal's, passed through a connection that translates the few SQLite-only spellings
(placeholders, ``INSERT OR REPLACE``/``OR IGNORE``, ``instr``, two-argument ``MAX``, ``rowid``).
Job state and queue are the same rows, so a claim and its state change are one transaction:
``SELECT ... FOR UPDATE SKIP LOCKED`` lets nodes claim different jobs at the same moment, each
under a lease that its heartbeat renews (the journal's own ``owner``/``lease_until`` columns).

Why not Procrastinate: it keeps its own job table and states; ours (history, instance records,
leases, quarantine) would then live in two places that can disagree. Plain SKIP LOCKED on the
journal's tables keeps job state and queue in one transaction, and the same code runs on
SQLite for one machine.

The password never comes from the config file: ``$PGPASSWORD`` or ``~/.pgpass`` (libpq reads
both). A URL with a password is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from node.service.journal import SCHEMA_VERSION, Journal, JournalError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    sidecar TEXT,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    profile TEXT NOT NULL,
    destination TEXT NOT NULL,
    after TEXT NOT NULL DEFAULT 'move',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error TEXT,
    error_class TEXT,
    alert INTEGER NOT NULL DEFAULT 0,
    series_uid TEXT,
    study_uid TEXT,
    instances INTEGER,
    delivered INTEGER NOT NULL DEFAULT 0,
    quarantine_path TEXT,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    key TEXT,
    owner TEXT,
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    memory BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_attempt);
CREATE INDEX IF NOT EXISTS jobs_identity ON jobs(sha256, destination, profile);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(key) WHERE key IS NOT NULL
    AND state NOT IN ('failed', 'cancelled');
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs(updated);
CREATE TABLE IF NOT EXISTS instances (
    job_id BIGINT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    status INTEGER,
    outcome TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS instance_timeouts (
    job_id BIGINT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS history (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    owner TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS history_job ON history(job_id, at);
CREATE INDEX IF NOT EXISTS history_done ON history(to_state, at);
CREATE TABLE IF NOT EXISTS nodes (
    owner TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    heartbeat DOUBLE PRECISION NOT NULL,
    stopped DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS paused (
    name TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    who TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    who TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS destinations (
    name TEXT PRIMARY KEY,
    checked DOUBLE PRECISION NOT NULL,
    ok INTEGER NOT NULL,
    message TEXT NOT NULL,
    latency_ms DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    study_values TEXT NOT NULL,
    updated DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS study_series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    series_number INTEGER,
    PRIMARY KEY (study_uid, series_uid)
);
"""

#: Conflict targets and columns of the tables the journal writes with INSERT OR REPLACE.
_TABLES = {
    "instances": (("job_id", "sop_instance_uid"), ("job_id", "sop_instance_uid", "status",
                                                   "outcome")),
    "instance_timeouts": (("job_id", "sop_instance_uid"), ("job_id", "sop_instance_uid",
                                                           "count")),
    "studies": (("study_uid",), ("study_uid", "study_values", "updated")),
    "study_series": (("study_uid", "series_uid"), ("study_uid", "series_uid", "series_number")),
    "destinations": (("name",), ("name", "checked", "ok", "message", "latency_ms")),
    "nodes": (("owner",), ("owner", "pid", "host", "version", "started", "heartbeat",
                           "stopped")),
    "paused": (("name",), ("name", "at", "who")),
}
_INSERT_OR = re.compile(r"^\s*INSERT OR (REPLACE|IGNORE) INTO (\w+)\s*(\(([^)]*)\))?", re.S)


def translate(sql: str) -> str:
    """The journal's SQLite SQL in PostgreSQL's spelling."""
    out = sql.replace("%", "%%").replace("?", "%s")
    out = out.replace("instr(", "strpos(").replace("MAX(attempts - 1, 0)",
                                                   "GREATEST(attempts - 1, 0)")
    out = out.replace("ORDER BY at, rowid", "ORDER BY at, id")
    match = _INSERT_OR.match(out)
    if match:
        kind, table, _, columns = match.groups()
        out = "INSERT INTO" + out[match.start(2) - 1:]
        if kind == "IGNORE":
            out += " ON CONFLICT DO NOTHING"
        else:
            keys, all_columns = _TABLES[table]
            cols = [c.strip() for c in columns.split(",")] if columns else list(all_columns)
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in keys)
            out += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
    return out


class JournalUnavailable(JournalError, OSError):
    """The database cannot be reached now (restarting, a partition): a running node retries
    with backoff and loses nothing; a command says so in one line (a JournalError)."""

    def __reduce__(self):
        return (self.__class__, (self.reason,))


class _Connection:
    """A psycopg connection that speaks the journal's SQL (see :func:`translate`), and turns
    a lost database into :class:`JournalUnavailable` after reconnecting once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = None
        self.in_transaction = False
        self._connect()

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

    def execute(self, sql: str, args: tuple | list = ()):
        import psycopg

        try:
            return self.conn.execute(translate(sql), tuple(args))
        except psycopg.OperationalError as exc:
            if self.in_transaction:  # the transaction is lost: the caller's step is retried
                raise JournalUnavailable(f"the journal database went away: "
                                         f"{str(exc).strip()[:200]}") from None
            self._connect()  # the server restarted: once more on a new connection
            return self.conn.execute(translate(sql), tuple(args))

    def executemany(self, sql: str, rows) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(translate(sql), [tuple(r) for r in rows])

    def close(self) -> None:
        if self.conn is not None:
            _pool(self.url).putconn(self.conn)
            self.conn = None


_POOLS: dict = {}


def close_pool(url: str) -> None:
    """Close this process's connections to ``url`` (a node shutting down, a test's database)."""
    pool = _POOLS.pop(url, None)
    if pool is not None:
        pool.close()


def _pool(url: str):
    """One connection pool per database and process: the console's requests and a node's
    journal handles borrow connections instead of opening one each time."""
    pool = _POOLS.get(url)
    if pool is None:
        import logging

        from psycopg_pool import ConnectionPool

        # its connection attempts would each log a warning; JournalUnavailable says it once
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

        pool = ConnectionPool(url, min_size=0, max_size=8, open=True, timeout=5, max_idle=60,
                              kwargs={"autocommit": True, "connect_timeout": 5},
                              reconnect_timeout=30, name="dicom-node-journal",
                              check=ConnectionPool.check_connection)  # after a restart
        _POOLS[url] = pool
    return pool


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise JournalError(f"[node].journal {url!r}: write postgresql://user@host:5432/dbname")
    if parts.password:
        raise JournalError("[node].journal: no password in the URL (it would sit in a config "
                           "file); use $PGPASSWORD or ~/.pgpass")
    return url


class PgJournal(Journal):
    """The journal in PostgreSQL (``[node] journal = "postgresql://..."``)."""

    _LOCK_ROW = " FOR UPDATE SKIP LOCKED"
    _LATEST_OUTCOMES = (
        "SELECT DISTINCT ON (destination) destination, updated, state, last_error FROM jobs "
        "WHERE state IN ('done', 'retry-wait', 'failed') ORDER BY destination, updated DESC")

    def __init__(self, url: str, *, create: bool = True) -> None:  # noqa: ARG002 - same API
        self.url = check_url(url)
        self.path = url  # type: ignore[assignment] - what messages name
        self.db = _Connection(url)
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(4711)")  # one schema creator at a time
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.conn.execute(statement)
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise JournalError(f"{url}: the journal's schema is version {row[0]}, newer "
                                   f"than this dicom-node's ({SCHEMA_VERSION}): upgrade it")

    @contextmanager
    def _tx(self) -> Iterator[_Connection]:
        import psycopg

        if self.db.conn is None or self.db.conn.closed or self.db.conn.broken:
            self.db._connect()
        try:
            with self.db.conn.transaction():
                self.db.in_transaction = True
                yield self.db
        except psycopg.OperationalError as exc:
            raise JournalUnavailable(f"the journal database went away: "
                                     f"{str(exc).strip()[:200]}") from None
        finally:
            self.db.in_transaction = False

    def enqueue(self, *args, **kwargs):
        """As the SQLite journal's; two nodes that watch one folder may enqueue the same file
        at the same moment: the unique key lets one insert, the other finds its job."""
        import psycopg

        try:
            return super().enqueue(*args, **kwargs)
        except psycopg.errors.UniqueViolation:
            return super().enqueue(*args, **kwargs)

    @staticmethod
    def _insert_id(db, sql: str, args: tuple) -> int:
        return int(db.execute(sql + " RETURNING id", args).fetchone()[0])

    def integrity_check(self) -> list[str]:
        return []  # PostgreSQL checks its own pages; use its tools (amcheck, pg_dump)

    def backup(self, target) -> None:
        raise JournalError(f"{self.url}: back a PostgreSQL journal up with PostgreSQL's tools "
                           "(pg_dump, or the server's own backups)")


def open_journal_at(location, *, create: bool = True) -> Journal:
    """The journal at ``location``: a postgresql:// URL, or the path of a SQLite file."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PgJournal(text, create=create)
    return Journal(location, create=create)


def migrate(sqlite_path, url: str) -> dict[str, int]:
    """Copy a SQLite journal into an empty PostgreSQL journal (``journal migrate --to``):
    every table, ids kept, the sequences moved past them. Returns rows per table."""
    source = Journal(sqlite_path, create=False)
    target = PgJournal(url)
    counts = {}
    try:
        if target.db.execute("SELECT count(*) FROM jobs").fetchone()[0]:
            raise JournalError(f"{url}: the target journal already holds jobs; migrate into an "
                               "empty database")
        with target._tx() as db:
            for table in ("jobs", "instances", "instance_timeouts", "history", "nodes", "paused",
                          "audit", "destinations", "studies", "study_series"):
                columns = [r[1] for r in source.db.execute(f"PRAGMA table_info({table})")]
                rows = source.db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
                if rows:
                    marks = ", ".join("%s" for _ in columns)
                    with db.conn.cursor() as cur:
                        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                        f"({marks})", rows)
                counts[table] = len(rows)
            for table in ("jobs", "history", "audit"):
                db.conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1))")
    finally:
        source.close()
        target.close()
    return counts

