"""The journal's state machine: every allowed and every forbidden move, claim order, recovery
after a crash, operator requeue and duplicate content; on both backends, SQLite and a real
PostgreSQL (started by the tests, tests/pgserver.py)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.service.journal import ALLOWED, InvalidTransition, JobState, Journal, owner_id
from node.service.pgjournal import close_pool, open_journal_at

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)]


@pytest.fixture(params=BACKENDS)
def location(request, tmp_path):
    """Where a fresh journal lives: a SQLite file, or an empty PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "journal.sqlite"
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.fresh_database(f"j{abs(hash(str(tmp_path))) % 10**9}")


@pytest.fixture
def journal(location):
    j = open_journal_at(location)
    yield j
    j.close()
    close_pool(str(location))


def _job(journal: Journal, n: int = 0, **kw):
    job, created = journal.enqueue(Path(f"/in/f{n}.nii"), f"{n:064x}", 10, "bids-mr", "pacs",
                                   **kw)
    assert created
    return job


def _force(journal: Journal, job_id: int, state: JobState) -> None:
    journal.db.execute("UPDATE jobs SET state = ? WHERE id = ?", (state.value, job_id))


def test_every_state_has_a_rule_and_done_is_final():
    assert set(ALLOWED) == set(JobState)
    assert ALLOWED[JobState.DONE] == frozenset()
    for targets in ALLOWED.values():
        assert targets <= set(JobState)


@pytest.mark.parametrize("old,new", list(itertools.product(JobState, JobState)))
def test_transition_allows_exactly_the_table(journal, old, new):
    job = _job(journal)
    _force(journal, job.id, old)
    if new in ALLOWED[old]:
        moved = journal.transition(job.id, new, last_error="x")
        assert moved.state == new
        assert moved.last_error == "x"
    else:
        with pytest.raises(InvalidTransition, match=f"{old.value} -> {new.value}"):
            journal.transition(job.id, new, last_error="x")
        after = journal.get(job.id)
        assert after.state == old
        assert after.last_error is None  # nothing was written


def test_transition_of_an_unknown_job_or_state_is_refused(journal):
    job = _job(journal)
    with pytest.raises(InvalidTransition):
        journal.transition(job.id + 100, JobState.CONVERTING)
    with pytest.raises(ValueError):
        journal.transition(job.id, "shipped")


def test_the_happy_path_and_its_attempt_count(journal):
    job = _job(journal)
    assert job.state == JobState.QUEUED
    claimed = journal.claim()
    assert (claimed.id, claimed.state, claimed.attempts) == (job.id, "converting", 1)
    journal.transition(job.id, JobState.SENDING)
    done = journal.transition(job.id, JobState.DONE, delivered=5)
    assert (done.state, done.delivered) == ("done", 5)
    assert journal.claim() is None


def test_claim_takes_due_jobs_oldest_first_and_skips_waiting_ones(journal):
    a, b, c = (_job(journal, n) for n in range(3))
    journal.claim(now=0)  # a -> converting
    journal.transition(a.id, JobState.RETRY_WAIT, next_attempt=1000.0)
    assert journal.claim(now=10).id == b.id
    assert journal.claim(now=10).id == c.id
    assert journal.claim(now=10) is None  # a is not due yet
    again = journal.claim(now=1000)
    assert (again.id, again.attempts) == (a.id, 2)


def test_recover_puts_interrupted_jobs_back_and_undoes_their_attempt(journal):
    a, b, c = (_job(journal, n) for n in range(3))
    journal.claim(lease_seconds=60)
    journal.claim(lease_seconds=60)
    journal.transition(b.id, JobState.SENDING)
    assert journal.recover() == []  # this process holds them, their leases run: untouched
    recovered = journal.recover(now=time.time() + 61)  # the leases expired
    assert sorted(j.id for j in recovered) == [a.id, b.id]
    for job_id in (a.id, b.id):
        job = journal.get(job_id)
        assert (job.state, job.attempts, job.owner) == ("queued", 0, None)
    assert journal.get(c.id).state == "queued"


def test_a_dead_owners_jobs_are_resumed_at_once_a_live_ones_never(journal):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    a, b = _job(journal, 1), _job(journal, 2)
    journal.claim(owner=owner_id(dead.pid), lease_seconds=3600)
    journal.claim(owner=owner_id(), lease_seconds=3600)
    assert [j.id for j in journal.recover()] == [a.id]
    assert journal.get(b.id).state == "converting"


def test_a_process_that_lost_its_lease_records_nothing(journal):
    job = _job(journal)
    journal.claim(owner="host-a:1", lease_seconds=60)
    with pytest.raises(InvalidTransition, match="lease was lost"):
        journal.transition(job.id, JobState.SENDING, owner="host-b:2")
    assert journal.get(job.id).state == "converting"
    journal.transition(job.id, JobState.SENDING, owner="host-a:1")
    assert [h[2] for h in journal.history(job.id)] == ["queued", "converting", "sending"]


def test_renew_extends_only_the_owners_leases(journal):
    a, b = _job(journal, 1), _job(journal, 2)
    journal.claim(owner="x:1", lease_seconds=10)
    journal.claim(owner="y:2", lease_seconds=10)
    before = journal.get(b.id).lease_until
    assert journal.renew("x:1", lease_seconds=100) == 1
    assert journal.get(a.id).lease_until > before + 50
    assert journal.get(b.id).lease_until == before


def test_requeue_takes_only_failed_and_waiting_jobs(journal):
    jobs = [_job(journal, n) for n in range(4)]
    states = [JobState.FAILED, JobState.RETRY_WAIT, JobState.DONE, JobState.QUARANTINED]
    for job, state in zip(jobs, states, strict=True):
        _force(journal, job.id, state)
    ids = journal.requeue([j.id for j in jobs], states=("failed", "retry-wait"))
    assert ids == [jobs[0].id, jobs[1].id]
    assert [journal.get(j.id).state for j in jobs] == ["queued", "queued", "done", "quarantined"]
    assert journal.requeue(None) == []  # no failed job is left


def test_enqueue_same_content_once_and_requeues_a_failed_one(journal):
    job = _job(journal)
    same, created = journal.enqueue(Path("/in/copy.nii"), f"{0:064x}", 10, "bids-mr", "pacs")
    assert (same.id, created) == (job.id, False)
    other_dest, created = journal.enqueue(Path("/in/f0.nii"), f"{0:064x}", 10, "bids-mr", "b")
    assert created and other_dest.id != job.id
    _force(journal, job.id, JobState.FAILED)
    again, created = journal.enqueue(Path("/in/again.nii"), f"{0:064x}", 10, "bids-mr", "pacs")
    assert (again.id, created, again.state, again.source) == (job.id, True, "queued",
                                                              "/in/again.nii")


def test_a_second_handle_sees_committed_transitions(location):
    """Every transition is committed before it returns (workers use their own handles)."""
    first, second = open_journal_at(location), open_journal_at(location)
    try:
        job = _job(first)
        first.claim()
        assert second.get(job.id).state == "converting"
        second.transition(job.id, JobState.SENDING)
        assert first.get(job.id).state == "sending"
    finally:
        first.close()
        second.close()
        close_pool(str(location))


def test_claim_keeps_the_turn_of_a_job_that_does_not_fit_the_memory_left(journal):
    big, _ = journal.enqueue(Path("/in/big.nii"), "a" * 64, 1, "bids-mr", "pacs", memory=800)
    small, _ = journal.enqueue(Path("/in/small.nii"), "b" * 64, 1, "bids-mr", "pacs",
                               memory=10)
    assert journal.claim(memory=500) is None  # the oldest does not fit: nobody overtakes it
    assert journal.claim(memory=1000).id == big.id
    assert journal.claim(memory=10).id == small.id


def test_a_journal_from_a_newer_dicom_node_is_refused(tmp_path):
    import sqlite3

    from node.service.journal import SCHEMA_VERSION, JournalError

    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(JournalError, match="newer than this dicom-node"):
        Journal(path)
