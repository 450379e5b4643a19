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
from support.journal import force_state

from node.service.journal import (
    ALLOWED,
    InvalidTransition,
    JobState,
    Journal,
    open_journal_at,
    owner_id,
)
from node.service.journal.postgres import close_pool


def _job(journal: Journal, n: int = 0, **kw):
    job, created = journal.enqueue(Path(f"/in/f{n}.nii"), f"{n:064x}", 10, "bids-mr", "pacs",
                                   **kw)
    assert created
    return job


_force = force_state


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


# --- the rest of the store's contract, on both engines ------------------------------------------

def test_a_job_is_typed_and_only_its_changeable_fields_move(journal):
    job = _job(journal)
    assert isinstance(job.state, JobState) and job.state is JobState.QUEUED
    with pytest.raises(ValueError, match="destination cannot be changed"):
        journal.move(job.id, JobState.CANCELLED, destination="elsewhere")
    assert journal.get(job.id).state is JobState.QUEUED  # nothing was written
    entries = journal.history(job.id)
    assert entries[0].to_state == "queued" and entries[0].from_state is None


def test_a_move_on_a_stale_read_writes_nothing_not_even_its_history_line(journal):
    """A move writes only if the job is still as it read it; on PostgreSQL the UPDATE and its
    history line are one statement, so a refused write must leave no line behind either."""
    from node.service.journal.queue import _MovedMeanwhile

    job = _job(journal)
    stale = journal.get(job.id)
    journal.move(job.id, JobState.CANCELLED, detail="x" * 5000)
    with pytest.raises(_MovedMeanwhile), journal._move_tx():
        journal._move(stale, JobState.CANCELLED, detail="from a stale read")
    lines = journal.history(job.id)
    assert [(h.from_state, h.to_state) for h in lines] == [(None, "queued"),
                                                           ("queued", "cancelled")]
    assert lines[-1].detail == "x" * 2000  # a history line keeps at most 2000 characters
    assert journal.get(job.id).state is JobState.CANCELLED


def test_an_expired_lease_is_taken_over_and_its_old_holder_records_nothing(journal):
    job = _job(journal)
    journal.claim(owner="host-a:1", lease_seconds=5)
    assert journal.recover(now=time.time() + 1) == []  # host-a's lease still runs
    taken = journal.recover(now=time.time() + 6)
    assert [j.id for j in taken] == [job.id]
    again = journal.claim(owner="host-b:2")
    assert (again.id, again.owner, again.attempts) == (job.id, "host-b:2", 1)
    with pytest.raises(InvalidTransition, match="lease was lost"):
        journal.move(job.id, JobState.SENDING, owner="host-a:1")
    journal.move(job.id, JobState.SENDING, owner="host-b:2")
    steps = [(h.from_state, h.to_state, h.owner) for h in journal.history(job.id)]
    assert steps == [(None, "queued", None), ("queued", "converting", "host-a:1"),
                     ("converting", "queued", "host-a:1"), ("queued", "converting", "host-b:2"),
                     ("converting", "sending", "host-b:2")]


def test_concurrent_claims_hand_out_each_job_once(location):
    """Four handles claiming at once (threads, each its own connection): every job is claimed
    by exactly one of them (BEGIN IMMEDIATE in SQLite, SKIP LOCKED in PostgreSQL)."""
    import threading

    setup = open_journal_at(location)
    for n in range(40):
        _job(setup, n)
    setup.close()
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        handle = open_journal_at(location, create=False)
        try:
            for _ in range(100):
                job = handle.claim(owner=f"w:{k}")
                if job is None:
                    return
                with lock:
                    claimed.append(job.id)
        finally:
            handle.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    close_pool(str(location))
    assert sorted(claimed) == list(range(1, 41))


def test_a_job_with_the_same_key_is_found_not_duplicated(journal):
    first, created = journal.enqueue(Path("/in/a.nii"), "a" * 64, 1, "bids-mr", "pacs", key="k")
    again, created_again = journal.enqueue(Path("/in/b.nii"), "b" * 64, 1, "bids-mr", "pacs",
                                           key="k")
    assert created and not created_again and again.id == first.id
    journal.move(first.id, JobState.CANCELLED)
    back, created = journal.enqueue(Path("/in/c.nii"), "c" * 64, 1, "bids-mr", "pacs", key="k")
    assert (back.id, created, back.state, back.source) == (first.id, True, "queued", "/in/c.nii")
    assert journal.history(first.id)[-1].detail == "enqueued again"


def test_paused_destinations_wait_and_resume(journal):
    held, _ = journal.enqueue(Path("/in/p.nii"), "1" * 64, 1, "bids-mr", "pacs")
    other, _ = journal.enqueue(Path("/in/q.nii"), "2" * 64, 1, "bids-mr", "archive")
    assert journal.pause("pacs", "alice") is True
    assert journal.pause("pacs", "bob") is False  # paused already: the first pause stands
    assert journal.paused()["pacs"][1] == "alice"
    assert journal.claim().id == other.id
    assert journal.claim() is None  # pacs's job waits
    assert journal.resume("pacs") is True and journal.resume("pacs") is False
    assert journal.claim().id == held.id


def test_the_audit_log_keeps_each_action_newest_first_and_caps_lengths(journal):
    journal.audit("alice", "cli", "pause", "pacs", "paused")
    journal.audit("bob" * 100, "console", "retry", "job 7" * 200, "x" * 5000)
    rows = journal.audit_log()
    assert [r["action"] for r in rows] == ["retry", "pause"]
    assert (len(rows[0]["who"]), len(rows[0]["target"]), len(rows[0]["result"])) == (
        200, 500, 1000)
    assert rows[1] == {"id": rows[1]["id"], "at": rows[1]["at"], "who": "alice", "via": "cli",
                       "action": "pause", "target": "pacs", "result": "paused"}
    assert [r["action"] for r in journal.audit_log(limit=1, offset=1)] == ["pause"]


def test_study_values_are_shared_and_series_numbers_distinct(journal):
    from node.convert.study import StudyValues

    study = StudyValues.from_json("1.2.3", {"identity_rank": 4, "values": {}, "weak": []})
    _, first = journal.reconcile_study(study, "1.2.3.1")
    _, second = journal.reconcile_study(study, "1.2.3.2")
    _, first_again = journal.reconcile_study(study, "1.2.3.1")
    assert first == first_again and first != second and 1000 <= second <= 9999
    _, named = journal.reconcile_study(study, "1.2.3.3", own_number=5)
    assert named == 5


def test_instances_timeouts_and_notes(journal):
    job = _job(journal)
    journal.record_instances(job.id, [("1.1", 0, "success"), ("1.2", 0xA700, "transient")])
    journal.record_instances(job.id, [("1.2", 0xB000, "warning")])  # the latest wins
    assert journal.delivered_instances(job.id) == {"1.1", "1.2"}
    assert [journal.count_timeout(job.id, "1.3") for _ in range(3)] == [1, 2, 3]
    journal.note(job.id, "its sidecar arrived late")
    assert journal.get(job.id).last_error == "its sidecar arrived late"
    assert journal.history(job.id)[-1].detail == "its sidecar arrived late"


def test_reading_pages_counts_and_outcomes(journal):
    a, b, c = (_job(journal, n) for n in range(3))
    journal.claim(now=0)
    journal.move(a.id, JobState.SENDING)
    journal.move(a.id, JobState.DONE, delivered=3, series_uid="1.2.840.99")
    journal.claim(now=0)
    journal.move(b.id, JobState.RETRY_WAIT, last_error="refused", alert=1, next_attempt=1e12)
    assert journal.counts()["done"] == 1 and journal.counts()["queued"] == 1
    assert [j.id for j in journal.jobs()] == [a.id, b.id, c.id]
    assert [j.id for j in journal.jobs(limit=2)] == [a.id, b.id]
    assert [j.id for j in journal.jobs("queued")] == [c.id]
    assert journal.oldest_waiting().id == b.id
    assert [j.id for j in journal.alerts()] == [b.id]
    assert [j.id for j in journal.last_errors()] == [b.id]
    found, total = journal.find_jobs(text="1.2.840.99")
    assert ([j.id for j in found], total) == ([a.id], 1)
    found, total = journal.find_jobs(state="queued", destination="pacs", limit=1)
    assert ([j.id for j in found], total) == ([c.id], 1)
    assert journal.find_jobs(until=0)[1] == 0 and journal.find_jobs(since=0)[1] == 3
    assert journal.find_by_source(["/in/f1.nii", "/in/f2.nii"]).id == c.id
    assert sum(journal.done_per_bucket(time.time() - 600)) == 1
    outcomes = journal.last_outcomes()
    assert outcomes["pacs"][1] == "retry-wait" and outcomes["pacs"][2] == "refused"


def test_echoes_and_the_node_registry(journal):
    journal.record_echo("pacs", True, "2.0 ms", 2.0)
    journal.record_echo("pacs", False, "refused")  # the latest replaces it
    assert [(e.name, e.ok, e.message) for e in journal.echoes()] == [("pacs", False, "refused")]
    assert journal.echo_latencies() == {"pacs": None}
    me = owner_id()
    journal.register_node(me, "9.9")
    journal.register_node("elsewhere:1", "9.9")
    job = _job(journal)
    journal.claim(owner=me)
    assert journal.renew(me) == 1
    assert journal.jobs_held() == {me: 1}
    assert {n["owner"] for n in journal.running_nodes()} == {me, "elsewhere:1"}
    journal.node_stopped("elsewhere:1")
    assert [n["owner"] for n in journal.running_nodes()] == [me]
    assert {n["owner"] for n in journal.nodes()} == {me, "elsewhere:1"}
    assert journal.get(job.id).owner == me


def test_both_stores_implement_the_one_interface(journal):
    from node.service.journal import JournalStore

    assert isinstance(journal, JournalStore)


def test_a_move_raced_by_another_process_is_checked_again_on_the_job_as_it_now_is(location):
    """Between a move's read and its write another process takes the job back (its lease
    ran out): the move does not write over it; made again on the job as it is now, it is
    refused (the lease was lost). On both engines (a move reads before its transaction)."""
    first, second = open_journal_at(location), open_journal_at(location)
    try:
        job = _job(first)
        first.claim(owner="slow:1", lease_seconds=1)
        read = first._job
        raced = []

        def read_then_race(query, **params):
            found = read(query, **params)
            if query == "job_to_move" and not raced:
                raced.append(second.recover(now=time.time() + 5))  # another process
            return found

        first._job = read_then_race
        with pytest.raises(InvalidTransition, match="lease was lost|queued -> sending"):
            first.move(job.id, JobState.SENDING, owner="slow:1")
        assert journal_state(second, job.id) == ("queued", None)
        assert [h.to_state for h in second.history(job.id)] == [
            "queued", "converting", "queued"]  # nothing was written over the recovery
    finally:
        first.close()
        second.close()
        close_pool(str(location))


def journal_state(journal, job_id: int) -> tuple[str, str | None]:
    job = journal.get(job_id)
    return job.state.value, job.owner
