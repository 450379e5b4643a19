"""How the node records a delivery's verdict (``Node._record``): the journal first, then the
source file (moved to done/, quarantined with its reason, or left for a retry), on a real
journal and real files. No peer: the verdicts are those ``delivery.classify`` makes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from node.service.delivery import DeliveryResult
from node.service.journal import JobState
from node.service.node import Node
from node.service.settings import config_from_dict

BASE, CAP = 2.0, 60.0


@pytest.fixture
def node(tmp_path):
    config = config_from_dict({
        "node": {"state_dir": str(tmp_path / "var"), "retry_base_seconds": BASE,
                 "retry_max_seconds": CAP, "max_attempts": 3, "previews": False},
        "destinations": {"pacs": {"host": "127.0.0.1", "port": 11112, "ae_title": "PACS"}},
    })
    made = Node(config, watch=False)
    yield made
    made.shutdown()


def _sending(node: Node, tmp_path: Path, after: str = "move", name: str = "sub-01_T1w"):
    """A job this node holds, in the sending step, for a file (and sidecar) in an inbox."""
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    source, sidecar = inbox / f"{name}.nii.gz", inbox / f"{name}.json"
    source.write_bytes(b"voxels")
    sidecar.write_text("{}")
    job, _ = node.journal.enqueue(source, name.ljust(64, "0")[:64], 6, "bids-mr", "pacs",
                                  after=after, sidecar=sidecar)
    node.journal.claim(owner=node.owner)
    return node.journal.move(job.id, JobState.SENDING, owner=node.owner), source, sidecar


ROWS = [("1.2.3.1", 0, "success"), ("1.2.3.2", 0xB000, "warning")]


def test_done_is_recorded_with_its_instances_and_the_source_moves_to_done(node, tmp_path):
    job, source, sidecar = _sending(node, tmp_path)
    node._record(job, DeliveryResult(JobState.DONE, series_uid="1.2.3", study_uid="1.2",
                                     instances=2, delivered=2, instance_rows=ROWS))
    done = node.journal.get(job.id)
    assert (done.state, done.delivered, done.series_uid, done.instances) == (
        "done", 2, "1.2.3", 2)
    assert done.lease_until == 0 and done.last_error is None
    assert node.journal.delivered_instances(job.id) == {"1.2.3.1", "1.2.3.2"}
    assert not source.exists() and not sidecar.exists()
    moved = sorted(p.name for p in (tmp_path / "var" / "done").rglob("*") if p.is_file())
    assert moved == ["sub-01_T1w.json", "sub-01_T1w.nii.gz"]


def test_after_keep_leaves_a_delivered_source_where_it_is(node, tmp_path):
    job, source, sidecar = _sending(node, tmp_path, after="keep")
    node._record(job, DeliveryResult(JobState.DONE, delivered=1, instances=1))
    assert node.journal.get(job.id).state == "done" and source.exists() and sidecar.exists()


def test_a_transient_failure_waits_with_backoff_and_keeps_the_source(node, tmp_path):
    job, source, _ = _sending(node, tmp_path)
    before = time.time()
    node._record(job, DeliveryResult(JobState.RETRY_WAIT, "association refused",
                                     "network:association rejected", alert=True, delivered=1,
                                     instance_rows=ROWS[:1]))
    waiting = node.journal.get(job.id)
    assert (waiting.state, waiting.last_error, waiting.alert, waiting.delivered) == (
        "retry-wait", "association refused", 1, 1)
    assert before + BASE * 0.5 - 0.1 <= waiting.next_attempt <= time.time() + BASE
    assert waiting.error_class == "network:association rejected"
    assert source.exists() and node.journal.delivered_instances(job.id) == {"1.2.3.1"}


def test_the_last_attempt_fails_the_job_and_says_how_many_were_made(node, tmp_path):
    job, source, _ = _sending(node, tmp_path)
    for _ in range(2):  # attempts 1 and 2 wait; the third is the last (max_attempts = 3)
        node._record(node.journal.get(job.id), DeliveryResult(JobState.RETRY_WAIT, "timeout",
                                                              "network:timeout"))
        node.journal.claim(now=time.time() + CAP + 1, owner=node.owner)
        node.journal.move(job.id, JobState.SENDING, owner=node.owner)
    node._record(node.journal.get(job.id), DeliveryResult(JobState.RETRY_WAIT, "timeout",
                                                          "network:timeout"))
    failed = node.journal.get(job.id)
    assert failed.state == "failed" and failed.attempts == 3
    assert failed.last_error == "gave up after 3 attempts: timeout" and source.exists()


def test_a_permanent_failure_fails_at_once(node, tmp_path):
    job, source, _ = _sending(node, tmp_path)
    node._record(job, DeliveryResult(JobState.FAILED, "0xA900 Data Set does not match",
                                     "permanent"))
    failed = node.journal.get(job.id)
    assert (failed.state, failed.error_class, failed.attempts) == ("failed", "permanent", 1)
    assert source.exists()


def test_bad_input_is_quarantined_with_its_reason(node, tmp_path):
    job, source, sidecar = _sending(node, tmp_path)
    node.journal.move(job.id, JobState.QUEUED, owner=node.owner)  # as a converting job ends
    job = node.journal.claim(owner=node.owner)
    node._record(job, DeliveryResult(JobState.QUARANTINED, "not a readable NIfTI", "input"))
    held = node.journal.get(job.id)
    folder = Path(held.quarantine_path)
    assert (held.state, held.last_error) == ("quarantined", "not a readable NIfTI")
    assert sorted(p.name for p in folder.iterdir()) == [
        "sub-01_T1w.json", "sub-01_T1w.nii.gz", "sub-01_T1w.nii.gz.reason.txt"]
    reason = (folder / "sub-01_T1w.nii.gz.reason.txt").read_text()
    assert "not a readable NIfTI" in reason and f"quarantine release {job.id}" in reason
    assert not source.exists() and not sidecar.exists()


def test_an_instance_that_keeps_silencing_the_peer_fails_the_job_alone(node, tmp_path):
    job, source, _ = _sending(node, tmp_path)
    silent = DeliveryResult(JobState.RETRY_WAIT, "no answer", "network:timeout", delivered=5,
                            timed_out=("1.2.3.9",))
    for attempt in range(3):
        node._record(node.journal.get(job.id), silent)
        if attempt < 2:
            assert node.journal.get(job.id).state == "retry-wait"
            node.journal.claim(now=time.time() + CAP + 1, owner=node.owner)
            node.journal.move(job.id, JobState.SENDING, owner=node.owner)
    failed = node.journal.get(job.id)
    assert (failed.state, failed.error_class) == ("failed", "instance")
    assert "instance 1.2.3.9 left the peer silent 3 times" in failed.last_error


def test_a_node_that_lost_the_lease_records_nothing(node, tmp_path):
    job, source, _ = _sending(node, tmp_path)
    node.journal.recover(now=time.time() + 3600)  # as if our lease ran out
    node.journal.claim(owner="another-node:1")
    node._record(job, DeliveryResult(JobState.DONE, delivered=1, instances=1))
    taken = node.journal.get(job.id)
    assert (taken.state, taken.owner) == ("converting", "another-node:1")
    assert source.exists()  # its after-action never ran
