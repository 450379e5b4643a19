"""The delivery's verdict (``delivery.classify``): every combination of instance outcomes and
association failures becomes the one journal state the job moves to, with the reason. No
peer is needed: the outcomes are those the network layer reports (node.net.status)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.net.files import DicomFile
from node.net.scu import InstanceResult
from node.net.status import FailureKind, NetworkFailure, Outcome
from node.service.delivery import Batch, classify
from node.service.journal import JobState

MR = "1.2.840.10008.5.1.4.1.1.4"


def _batch(n: int = 3, chosen_by: str = "") -> Batch:
    files = [DicomFile(Path(f"IM{i:06d}.dcm"), MR, f"1.2.3.{i}", "1.2.840.10008.1.2.1",
                       "1.2", "1.2.3") for i in range(1, n + 1)]
    return Batch(Path("sub-01_T1w.nii.gz"), files, "1.2.3", "1.2", ("a warning",), chosen_by)


def _results(batch: Batch, *outcomes: tuple[Outcome, int | None, str], **flags) -> list:
    return [InstanceResult(f, outcome, status, message, **flags)
            for f, (outcome, status, message) in zip(batch.files, outcomes, strict=False)]


OK = (Outcome.SUCCESS, 0x0000, "Success")


def test_every_instance_delivered_is_done_with_the_counts():
    batch = _batch()
    results = _results(batch, OK, (Outcome.WARNING, 0xB000, "coerced"),
                       (Outcome.DUPLICATE, 0x0111, "duplicate"))
    verdict = classify(batch, results, [], seconds=1.5)
    assert verdict.verdict is JobState.DONE
    assert (verdict.delivered, verdict.instances, verdict.send_seconds) == (3, 3, 1.5)
    assert verdict.instance_rows == [("1.2.3.1", 0, "success"), ("1.2.3.2", 0xB000, "warning"),
                                     ("1.2.3.3", 0x0111, "duplicate")]
    assert (verdict.series_uid, verdict.study_uid, verdict.warnings) == (
        "1.2.3", "1.2", ("a warning",))


def test_instances_delivered_before_count_and_are_not_expected_again():
    batch = _batch()
    verdict = classify(batch, _results(_batch(1), OK), [], already={"1.2.3.2", "1.2.3.3"})
    assert verdict.verdict is JobState.DONE and verdict.delivered == 3


def test_a_failure_status_from_the_peer_fails_the_job_for_good():
    batch = _batch()
    verdict = classify(batch, _results(batch, OK, (Outcome.PERMANENT, 0xA900,
                                                   "0xA900 Data Set does not match SOP Class")),
                       [])
    assert (verdict.verdict, verdict.error_class) == (JobState.FAILED, "permanent")
    assert "0xA900" in verdict.message and verdict.delivered == 1


def test_an_out_of_resources_status_waits_and_retries():
    batch = _batch(2)
    verdict = classify(batch, _results(batch, OK, (Outcome.TRANSIENT, 0xA700, "Out of "
                                                   "Resources")), [])
    assert (verdict.verdict, verdict.error_class) == (JobState.RETRY_WAIT, "transient")
    assert verdict.message == "Out of Resources" and not verdict.alert


def test_a_refused_association_is_an_alert_that_retries():
    batch = _batch(1)
    failure = NetworkFailure(FailureKind.REJECTED, "called AE title not recognised",
                             transient=False)
    verdict = classify(batch, [], [failure])
    assert verdict.verdict is JobState.RETRY_WAIT and verdict.alert
    assert verdict.error_class == "network:association rejected"
    assert verdict.message == "called AE title not recognised"


def test_a_dropped_connection_retries_even_when_instances_carry_its_message():
    """An instance marked permanent only because the association died under it (no status,
    the failure's own message) is the network's fault: retried, not failed."""
    batch = _batch(2)
    failure = NetworkFailure(FailureKind.ABORTED, "peer aborted the association")
    results = _results(batch, OK, (Outcome.PERMANENT, None, "peer aborted the association"),
                       timed_out=False)
    verdict = classify(batch, results, [failure])
    assert (verdict.verdict, verdict.error_class) == (JobState.RETRY_WAIT, "network:aborted")


def test_instances_in_flight_when_the_peer_fell_silent_are_named():
    batch = _batch(2)
    silent = NetworkFailure(FailureKind.TIMEOUT, "no answer in 10 s")
    results = [InstanceResult(batch.files[0], *OK),
               InstanceResult(batch.files[1], Outcome.TRANSIENT, None, "no response",
                              timed_out=True)]
    verdict = classify(batch, results, [silent])
    assert verdict.verdict is JobState.RETRY_WAIT and verdict.timed_out == ("1.2.3.2",)


@pytest.mark.parametrize("chosen_by,fix", [
    ('iod = "seg", labelmap = true', "labelmap = false"),
    ('iod = "enhanced"', 'iod = "image"'),
])
def test_a_peer_without_the_sop_class_fails_with_the_setting_to_change(chosen_by, fix):
    batch = _batch(1, chosen_by)
    failure = NetworkFailure(FailureKind.NO_CONTEXT, "the peer accepted no context for "
                             "Segmentation Storage", transient=False)
    verdict = classify(batch, [], [failure])
    assert (verdict.verdict, verdict.error_class) == (JobState.FAILED, "permanent")
    assert f"the series was made as {chosen_by}" in verdict.message and fix in verdict.message


def test_a_classic_image_without_a_context_fails_without_a_fix_to_name():
    batch = _batch(1)
    failure = NetworkFailure(FailureKind.NO_CONTEXT, "no context for MR Image Storage")
    verdict = classify(batch, [], [failure])
    assert verdict.verdict is JobState.FAILED and verdict.message == (
        "no context for MR Image Storage")


def test_an_instance_without_any_answer_is_never_counted_as_delivered():
    """The network layer promises one result per file; if one were ever missing, the job is
    retried, not done: success is what the peer confirmed."""
    batch = _batch(3)
    verdict = classify(batch, _results(batch, OK, OK), [])
    assert (verdict.verdict, verdict.delivered) == (JobState.RETRY_WAIT, 2)
    assert "1 instance(s) of the series had no answer" in verdict.message
