"""The journal as operators keep it: schema migrations applied once (and never by a reader),
the upgrade of a journal made by the last release on both engines, a journal from a newer
release refused, an unreachable database reported in one line, shared paths mapped."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, free_port, run_node

from node.service.journal import (
    SCHEMA_VERSION,
    JournalError,
    SqliteStore,
    migrations,
    open_journal_at,
)
from node.service.journal.postgres import close_pool

DATA = ROOT / "tests" / "data"
#: Made by release 0.1.0 (f854158): a job done, one waiting to retry, one quarantined, one
#: queued; instance results, an audit line, a paused destination, an echo, a study.
RELEASE_SQLITE = DATA / "journal-release-0.1.0.sqlite"
RELEASE_PG = DATA / "journal-release-0.1.0.pg.sql"
RELEASE_COUNTS = {"queued": 1, "done": 1, "retry-wait": 1, "quarantined": 1}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(tmp_path: Path, journal: str = "", **node) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "node.toml"
    keys = "".join(f"{k} = {v}\n" for k, v in node.items())
    cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n'
                   + (f'journal = "{journal}"\n' if journal else "") + keys)
    return cfg


def _release_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "var" / "journal.sqlite"
    path.parent.mkdir(parents=True)
    shutil.copy(RELEASE_SQLITE, path)
    return path


def _release_pg(pg_cluster, name: str) -> str:
    from support.pgserver import USER, _as_owner

    url = pg_cluster.fresh_database(name)
    loaded = _as_owner([str(pg_cluster.bin / "psql"), "-h", "127.0.0.1", "-p",
                        str(pg_cluster.port), "-U", USER, "-d", name, "-v", "ON_ERROR_STOP=1",
                        "-q"], input=RELEASE_PG.read_text(encoding="utf-8"))
    # on standard input: psql runs as the postgres user, who may not read a private clone
    assert loaded.returncode == 0, loaded.stderr
    return url


def _assert_release_content(journal) -> None:
    """What release 0.1.0 wrote is all there, and the queue works on it."""
    counts = {k: v for k, v in journal.counts().items() if v}
    assert counts == RELEASE_COUNTS
    done = journal.jobs("done")[0]
    assert (done.delivered, done.series_uid) == (2, "1.2.3")
    assert journal.delivered_instances(done.id) == {"1.2.3.1", "1.2.3.2"}
    assert [h.to_state for h in journal.history(done.id)] == [
        "queued", "converting", "sending", "done"]
    assert journal.audit_log()[0]["action"] == "pause" and "research" in journal.paused()
    assert journal.echoes()[0].name == "pacs"
    journal.resume("research")
    claimed = journal.claim(owner="upgrade:1")
    assert claimed is not None and claimed.state == "converting"


SHARED = ["queue", "studies", "audit", "destinations", "nodes", "migrations", "store", "runner",
          "model"]  # the journal's logic, written once for both engines


def _shared_source(name: str) -> str:
    return (ROOT / "node" / "service" / "journal" / f"{name}.py").read_text(encoding="utf-8")


def test_each_engine_has_the_same_numbered_migrations_and_every_query_the_logic_names():
    import re

    from node.service.journal.queries import queries

    names = {engine: [(m.version, m.name) for m in migrations(engine)]
             for engine in ("sqlite", "postgresql")}
    assert names["sqlite"] == names["postgresql"]
    assert len(names["sqlite"]) == SCHEMA_VERSION >= 2
    called = {q for name in SHARED for q in re.findall(
        r'_(?:execute|one|all|job|jobs|rowcount)\(\s*"(\w+)"', _shared_source(name))}
    assert len(called) > 40
    assert called - set(queries("sqlite")) == set()
    assert called - set(queries("postgresql")) == set()


def test_the_journal_logic_holds_no_sql_of_its_own():
    """Only the engines' files speak SQL: the logic both stores share names its queries, so
    a query re-spelled for one engine cannot break the other."""
    import ast
    import re

    statement = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|PRAGMA)\b", re.I)
    found = [f"{name}.py: {node.value[:60]!r}" for name in SHARED
             for node in ast.walk(ast.parse(_shared_source(name)))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and statement.match(node.value)]
    assert found == []


def test_a_new_journal_records_every_migration_once(tmp_path):
    path = tmp_path / "j.sqlite"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    versions = [v for (v,) in db.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # what 0.1.0 reads
    db.close()
    again = SqliteStore(path)
    try:
        assert again.migrate() == [] and again.db.total_changes == 0  # nothing written
    finally:
        again.close()


def test_the_last_releases_sqlite_journal_is_upgraded_by_journal_migrate(tmp_path):
    path = _release_sqlite(tmp_path)
    cfg = _config(tmp_path)
    before = _digest(path)
    db = sqlite3.connect(path)
    lines = db.execute("SELECT rowid, job_id, to_state, detail FROM history ORDER BY rowid"
                       ).fetchall()
    db.close()
    # a read-only command and a console's journal refuse it, and write nothing
    status = run_node("status", "--config", cfg)
    assert status.returncode == 2 and status.stderr.count("\n") == 1, status.stderr
    assert f"schema is version 1, this dicom-node needs {SCHEMA_VERSION}" in status.stderr
    assert "dicom-node journal migrate" in status.stderr
    with pytest.raises(JournalError, match="journal migrate"):
        open_journal_at(path, create=False)
    assert _digest(path) == before and not path.with_name("journal.sqlite-wal").exists()
    migrated = run_node("journal", "migrate", "--config", cfg)
    assert migrated.returncode == 0, migrated.stderr
    assert f"schema version 1 -> {SCHEMA_VERSION} (applied 0002_history_id" in migrated.stdout
    again = run_node("journal", "migrate", "--config", cfg)
    assert again.returncode == 0 and "up to date" in again.stdout
    db = sqlite3.connect(path)
    assert [r for r in db.execute("SELECT version, name FROM schema_migrations")][:2] == [
        (1, "adopted"), (2, "history_id")]
    assert db.execute("SELECT id, job_id, to_state, detail FROM history ORDER BY id"
                      ).fetchall() == lines  # every line kept, its rowid its id
    indexes = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"history_job", "history_done"} <= indexes
    db.close()
    assert run_node("status", "--config", cfg).returncode == 0
    with open_journal_at(path, create=False) as journal:
        _assert_release_content(journal)


def test_a_node_migrates_at_start_only_when_allowed(tmp_path):
    from node.service.settings import load_config

    path = _release_sqlite(tmp_path)
    refusing = load_config(_config(tmp_path, auto_migrate="false"), profiles=False)
    with pytest.raises(JournalError, match="journal migrate"):
        refusing.open_journal_at_start()
    allowed = load_config(_config(tmp_path), profiles=False)
    journal = allowed.open_journal_at_start()
    try:
        assert journal.schema_state().current
        _assert_release_content(journal)
    finally:
        journal.close()
    fresh = load_config(_config(tmp_path / "new", auto_migrate="false"), profiles=False)
    fresh.open_journal_at_start().close()  # a new journal is made whatever the setting
    assert (tmp_path / "new" / "var" / "journal.sqlite").is_file()
    assert path.is_file()


def test_a_journal_from_a_newer_release_is_refused_with_both_versions(tmp_path):
    path = tmp_path / "j.sqlite"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_migrations VALUES (?, 'future', 0)", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    for create in (True, False):
        with pytest.raises(JournalError, match=f"version {SCHEMA_VERSION + 1}, newer than this "
                                               f"dicom-node's \\({SCHEMA_VERSION}\\)"):
            SqliteStore(path, create=create)


@pytest.mark.peers  # PostgreSQL
def test_the_last_releases_postgresql_journal_is_upgraded_once(tmp_path, pg_cluster):
    url = _release_pg(pg_cluster, "release_upgrade")
    try:
        with pytest.raises(JournalError, match="journal migrate"):
            open_journal_at(url, create=False)
        cfg = _config(tmp_path, url)
        migrated = run_node("journal", "migrate", "--config", cfg)
        assert migrated.returncode == 0, migrated.stderr
        assert f"schema version 1 -> {SCHEMA_VERSION}" in migrated.stdout
        with open_journal_at(url, create=False) as journal:
            assert journal.migrate() == []
            rows = journal.conn.execute("SELECT version FROM schema_migrations").fetchall()
            assert [v for (v,) in rows] == list(range(1, SCHEMA_VERSION + 1))
            legacy = journal.conn.execute("SELECT version FROM schema_version").fetchall()
            assert legacy == [(SCHEMA_VERSION,)]  # what release 0.1.0 reads: it refuses us
            _assert_release_content(journal)
        journal = open_journal_at(url, create=False)
        journal.conn.execute("INSERT INTO schema_migrations VALUES (%s, 'future', 0)",
                             (SCHEMA_VERSION + 1,))
        journal.close()
        with pytest.raises(JournalError, match="newer than this dicom-node"):
            open_journal_at(url)
    finally:
        close_pool(url)


@pytest.mark.peers  # PostgreSQL
def test_nodes_starting_at_once_migrate_a_postgresql_journal_once(pg_cluster):
    """Four processes open a new PostgreSQL journal at the same moment: the advisory lock
    lets one create the schema; the others find it current."""
    url = pg_cluster.fresh_database("racing_migrations")
    probe = ("import sys\nfrom node.service.journal import open_journal_at\n"
             "j = open_journal_at(sys.argv[1]); j.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", probe, url], stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    with open_journal_at(url, create=False) as journal:
        rows = journal.conn.execute("SELECT version FROM schema_migrations").fetchall()
    close_pool(url)
    assert [v for (v,) in rows] == list(range(1, SCHEMA_VERSION + 1))


def test_path_map_rules_are_checked():
    from node.errors import ConfigError
    from node.service.settings import config_from_dict

    config = config_from_dict({"node": {"path_map": ["/mnt/a=/data/a", "/x=/y/z"]}})
    assert config.local_path("/mnt/a/sub-01/f.nii") == Path("/data/a/sub-01/f.nii")
    assert config.local_path("/mnt/ab/f.nii") == Path("/mnt/ab/f.nii")  # not a prefix match
    assert config.local_path("/x") == Path("/y/z")
    with pytest.raises(ConfigError, match="path_map"):
        config_from_dict({"node": {"path_map": ["relative=/data"]}})


def test_an_unreachable_journal_database_is_one_line_not_a_traceback(tmp_path):
    port = free_port()  # nothing listens there (loopback only)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n'
                   f'journal = "postgresql://dicom_node@127.0.0.1:{port}/x"\n')
    for command in (["jobs"], ["status"], ["nodes"]):
        proc = run_node(*command, "--config", cfg, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert "the journal database is unreachable" in proc.stderr


def test_a_console_request_never_writes_the_schema(tmp_path):
    """The web console (as inside a node, where the node migrates at start) on a journal
    that is behind: its pages say what to do (503, one line), the file is not touched; once
    migrated, the same request answers."""
    import json
    import urllib.error
    import urllib.request

    from node.service.settings import load_config
    from node.web.app import create_app, serve

    path = _release_sqlite(tmp_path)
    before = _digest(path)
    config = load_config(_config(tmp_path), profiles=False)
    port = free_port()
    server = serve(create_app(config), "127.0.0.1", port, block=False)
    url = f"http://127.0.0.1:{port}"
    try:
        for page in ("/api/jobs", "/jobs", "/"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + page, timeout=10)
            assert refused.value.code == 503
            assert "dicom-node journal migrate" in refused.value.read().decode()
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(url + "/healthz", timeout=10)
        assert unhealthy.value.code == 503
        assert json.loads(unhealthy.value.read())["reason"] == (
            "journal unavailable: JournalError")
        assert _digest(path) == before and not path.with_name("journal.sqlite-wal").exists()
        assert run_node("journal", "migrate", "--config", tmp_path / "node.toml").returncode == 0
        with urllib.request.urlopen(url + "/api/jobs", timeout=10) as answer:
            assert json.loads(answer.read())["total"] == 4
    finally:
        server.should_exit = True
