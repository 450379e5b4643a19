"""Storage commitment (PS3.4 Annex J) against Orthanc with commitment on (its report comes on
an association of its own, to our SCP) and against a hostile archive on loopback. Only what
a report from the archive we asked names, for a transaction we started, counts as committed."""

from __future__ import annotations

import json

import pytest
from conftest import NODE_AET, free_port, run_node, start_pacs
from pydicom.uid import generate_uid
from support.commitpeer import CommitPeer
from support.network import _nifti

from node.convert.output import write_series
from node.convert.series import convert_file
from node.net.commitment import CommitmentListener, CommitmentRefused, request_commitment
from node.net.files import read_dicom_file
from node.service.settings import build_destination

pytestmark = pytest.mark.peers  # Orthanc


@pytest.fixture(scope="module")
def committing(tmp_path_factory):
    """An Orthanc that serves storage commitment and reports to our SCP's port."""
    import orthanc as orthanc_script

    scp_port = free_port()
    storage = tmp_path_factory.mktemp("orthanc-commit")
    pacs = start_pacs(storage, overrides={"DicomModalities": {"dicom-node": {
        "AET": NODE_AET, "Host": "127.0.0.1", "Port": scp_port, "AllowEcho": True,
        "AllowStore": True, "AllowFind": True, "AllowStorageCommitment": True}}})
    yield pacs, scp_port
    orthanc_script.stop(storage)


def _config(tmp_path, pacs, scp_port: int, extra: str = ""):
    return pacs.config_toml(tmp_path / "node.toml", extra=extra, node_extra=(
        f'commitment_port = {scp_port}\ncommitment_host = "127.0.0.1"\n'))


def test_push_commit_reports_every_instance_committed(committing, tmp_path):
    pacs, scp_port = committing
    src = _nifti(tmp_path, "sub-commit01_T1w", seed=41)
    proc = run_node("push", src, "--config", _config(tmp_path, pacs, scp_port), "--commit",
                    "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["committed"] is True and summary["series"][0]["committed"] == 6
    text = run_node("push", src, "--config", _config(tmp_path, pacs, scp_port), "--commit")
    assert "committed 6/6" in text.stdout and "committed every instance" in text.stdout


def test_an_instance_the_archive_lost_is_reported_not_committed(committing, tmp_path):
    """Deleted from Orthanc after it was stored: the report fails it with 0x0112 (no such
    object instance); a push of the same files sends it again and then all are committed."""
    pacs, scp_port = committing
    series = convert_file(_nifti(tmp_path, "sub-commit02_T1w", seed=42))
    folder = write_series(series, tmp_path / "dicom")
    cfg = _config(tmp_path, pacs, scp_port)
    assert run_node("push", folder, "--config", cfg).returncode == 0
    files = [read_dicom_file(f) for f in sorted(folder.glob("*.dcm"))]
    lost = files[2].sop_instance_uid
    pacs.server.request(f"/instances/{pacs.lookup(lost)}", method="DELETE")
    dest = build_destination("pacs", {"host": "127.0.0.1", "port": pacs.port,
                                      "ae_title": pacs.aet})
    listener = CommitmentListener(NODE_AET, scp_port)
    try:
        transaction = generate_uid()
        listener.expect(transaction, dest, {f.sop_instance_uid for f in files})
        early = request_commitment(dest, NODE_AET, transaction,
                                   [(f.sop_class_uid, f.sop_instance_uid) for f in files])
        result = early or listener.wait(transaction, 30)
    finally:
        listener.close()
    assert result is not None and result.failed == {lost: 0x0112}
    assert result.committed == {f.sop_instance_uid for f in files} - {lost}
    assert "0x0112 no such object instance" in result.describe(lost)
    again = run_node("push", folder, "--config", cfg, "--commit", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["series"][0]["committed"] == 6


def test_push_commit_without_a_report_says_so_and_fails(tmp_path):
    peer = CommitPeer(free_port(), mode="never")
    try:
        dest = build_destination("a", {"host": "127.0.0.1", "port": peer.port,
                                       "ae_title": "ARCHIVE"})
        assert request_commitment(dest, NODE_AET, generate_uid(), [("1.2.3", "1.2.3.4")],
                                  linger=0.5) is None
    finally:
        peer.close()


def _ask(peer: CommitPeer, listener: CommitmentListener, n: int = 3, wait: float = 3.0):
    dest = build_destination("a", {"host": "127.0.0.1", "port": peer.port,
                                   "ae_title": "ARCHIVE"})
    instances = [("1.2.840.10008.5.1.4.1.1.4", f"1.2.826.0.1.{n}.{i}") for i in range(n)]
    transaction = generate_uid()
    listener.expect(transaction, dest, {uid for _, uid in instances})
    early = request_commitment(dest, NODE_AET, transaction, instances, linger=1.5)
    return early or listener.wait(transaction, wait), instances


@pytest.mark.parametrize("mode", ["report", "same", "never", "wrong-uid", "strangers",
                                  "other-aet", "flood"])
def test_only_a_report_of_our_transaction_from_our_archive_counts(mode):
    listener = CommitmentListener(NODE_AET, 0)
    peer = CommitPeer(listener.port, mode=mode)
    try:
        result, instances = _ask(peer, listener)
    finally:
        peer.close()
        listener.close()
    asked = {uid for _, uid in instances}
    if mode in ("report", "same"):
        assert result is not None and result.committed == asked and peer.reports_sent == [0]
    elif mode == "strangers":  # our transaction, but none of our instances: none committed
        assert result is not None and result.committed == frozenset()
        assert all(result.describe(u).endswith("the report did not name it") for u in asked)
    else:
        assert result is None  # nothing committed, whatever was sent
        expected = {"never": [], "wrong-uid": [0x0110], "other-aet": [0x0110],
                    "flood": [0x0110] * 40}[mode]
        assert peer.reports_sent == expected


def test_an_archive_without_commitment_is_refused_with_the_fix():
    peer = CommitPeer(free_port(), mode="refuse")
    try:
        dest = build_destination("a", {"host": "127.0.0.1", "port": peer.port,
                                       "ae_title": "ARCHIVE"})
        with pytest.raises(CommitmentRefused, match="set commitment = false"):
            request_commitment(dest, NODE_AET, generate_uid(), [("1.2.3", "1.2.3.4")])
    finally:
        peer.close()


def test_commitment_is_refused_for_a_dicomweb_destination():
    with pytest.raises(ValueError, match="commitment do not apply to a DICOMweb destination"):
        build_destination("w", {"url": "http://127.0.0.1:1/dicom-web", "commitment": True})


# --- the node ----------------------------------------------------------------------------------

def _node(node_factory, pacs, scp_port: int, name: str, **keys):
    return node_factory(pacs.port, name,
                        destination_toml="commitment = true\ncommitment_timeout = 4\n",
                        commitment_port=scp_port, commitment_host='"127.0.0.1"', **keys)


def _history(node, job_id: int) -> list[str]:
    import sqlite3

    db = sqlite3.connect(node.state / "journal.sqlite")
    try:
        return [s for (s,) in db.execute("SELECT to_state FROM history WHERE job_id = ? "
                                         "ORDER BY id", (job_id,))]
    finally:
        db.close()


def _outcomes(node, job_id: int) -> set[str]:
    import sqlite3

    db = sqlite3.connect(node.state / "journal.sqlite")
    try:
        return {o for (o,) in db.execute("SELECT outcome FROM instances WHERE job_id = ?",
                                         (job_id,))}
    finally:
        db.close()


def test_the_node_moves_a_source_only_once_the_archive_committed_it(committing, node_factory,
                                                                    tmp_path):
    from support.node import drop, nifti_bytes, wait_until

    pacs, scp_port = committing
    node = _node(node_factory, pacs, scp_port, "n1").start()
    source = drop(node.inbox, "sub-commit03_T1w.nii.gz",
                  nifti_bytes(tmp_path, "sub-commit03_T1w.nii.gz", seed=43))
    job = wait_until(lambda: next((j for j in node.jobs() if j["state"] == "done"), None), 60,
                     "the job to be committed")
    wait_until(lambda: not source.exists(), 10, "the source to be moved")
    assert node.stop() == 0
    assert _history(node, job["id"]) == ["queued", "converting", "sending", "committing",
                                         "done"]
    assert _outcomes(node, job["id"]) == {"committed"} and job["commit_uid"]
    assert job["series_uid"] and job["instances"] == job["delivered"] == 5


def test_sigkill_while_committing_keeps_the_source_and_the_node_asks_again(
        committing, node_factory, tmp_path):
    """The first node's SCP is not where Orthanc sends reports: killed while its job waits in
    committing, the source is still there; restarted where Orthanc reports, it finds the
    report overdue, asks again, and only then moves the source."""
    import signal

    from support.node import drop, nifti_bytes, wait_until

    pacs, scp_port = committing
    node = _node(node_factory, pacs, free_port(), "n2").start()
    source = drop(node.inbox, "sub-commit04_T1w.nii.gz",
                  nifti_bytes(tmp_path, "sub-commit04_T1w.nii.gz", seed=44))
    wait_until(lambda: "committing" in node.states(), 60, "the job to wait for its report")
    node.stop(signal.SIGKILL)
    assert source.exists() and node.states() == ["committing"]
    text = node.config.read_text()
    start = text.index("commitment_port = ")
    end = text.index("\n", start)
    node.config.write_text(text[:start] + f"commitment_port = {scp_port}" + text[end:])
    node.start()
    job = wait_until(lambda: next((j for j in node.jobs() if j["state"] == "done"), None), 90,
                     "the job to be committed after the restart")
    wait_until(lambda: not source.exists(), 10, "the source to be moved")
    assert node.stop() == 0
    steps = _history(node, job["id"])
    assert steps[:4] == ["queued", "converting", "sending", "committing"]
    assert "retry-wait" in steps and steps[-2:] == ["committing", "done"]
    assert _outcomes(node, job["id"]) == {"committed"}


def test_an_archive_without_commitment_fails_the_job_and_keeps_the_source(pacs, node_factory,
                                                                          tmp_path):
    from support.node import drop, nifti_bytes, wait_until

    node = _node(node_factory, pacs, free_port(), "n3").start()
    source = drop(node.inbox, "sub-commit05_T1w.nii.gz",
                  nifti_bytes(tmp_path, "sub-commit05_T1w.nii.gz", seed=45))
    job = wait_until(lambda: next((j for j in node.jobs() if j["state"] == "failed"), None),
                     60, "the job to fail")
    assert node.stop() == 0
    assert "commitment = false" in job["last_error"] and source.exists()


def test_the_scp_over_tls_takes_reports_only_from_a_certified_archive(tmp_path):
    import ssl

    from support.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    listener = CommitmentListener(NODE_AET, 0, tls=(str(pki["server"]), str(pki["server_key"]),
                                                    str(pki["ca"])))
    certified = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    certified.load_cert_chain(str(pki["client"]), str(pki["client_key"]))
    results = {}
    try:
        for name, context in (("tls", certified), ("plain", None)):
            peer = CommitPeer(listener.port, tls=context)
            try:
                results[name] = (_ask(peer, listener, wait=2.0)[0], peer.reports_sent)
            finally:
                peer.close()
    finally:
        listener.close()
    assert results["tls"][0] is not None and len(results["tls"][0].committed) == 3
    assert results["plain"][0] is None and results["plain"][1] == [-1]  # no association


def test_an_instance_lost_before_the_commitment_is_resent_and_committed(node_factory,
                                                                        tmp_path):
    """Orthanc loses one instance just after storing it (a Lua hook deletes it, once): the
    report fails it with 0x0112, the job retries, sends that instance again (only it) and
    asks again; the source is moved only then."""
    import orthanc as orthanc_script
    from support.node import drop, nifti_bytes, wait_until

    lua = tmp_path / "lose-one.lua"
    lua.write_text("lost = false\nfunction OnStoredInstance(instanceId, tags, metadata, "
                   "origin)\n  if not lost and tags['InstanceNumber'] == '3' then\n"
                   "    lost = true\n    Delete(instanceId)\n  end\nend\n")
    scp_port = free_port()
    storage = tmp_path / "orthanc-lossy"
    pacs = start_pacs(storage, overrides={"LuaScripts": [str(lua)], "DicomModalities": {
        "dicom-node": {"AET": NODE_AET, "Host": "127.0.0.1", "Port": scp_port,
                       "AllowEcho": True, "AllowStore": True, "AllowFind": True,
                       "AllowStorageCommitment": True}}})
    try:
        node = _node(node_factory, pacs, scp_port, "n4").start()
        source = drop(node.inbox, "sub-commit06_T1w.nii.gz",
                      nifti_bytes(tmp_path, "sub-commit06_T1w.nii.gz", seed=46))
        job = wait_until(lambda: next((j for j in node.jobs() if j["state"] == "done"),
                                      None), 90, "the job to be committed")
        wait_until(lambda: not source.exists(), 10, "the source to be moved")
        assert node.stop() == 0
        steps = _history(node, job["id"])
        assert steps.count("committing") == 2 and "retry-wait" in steps
        assert _outcomes(node, job["id"]) == {"committed"}
        log = node.logtext()
        assert "1 of 5 instance(s) not committed" in log and "0x0112" in log
        series = pacs.series(job["series_uid"])
        assert series is not None and len(series["Instances"]) == 5
    finally:
        orthanc_script.stop(storage)


@pytest.mark.parametrize("mode", ["never", "wrong-uid", "strangers", "other-aet", "flood"])
def test_a_hostile_archive_never_makes_the_node_record_a_commitment_or_move_a_source(
        mode, node_factory, tmp_path):
    """An archive that takes every C-STORE and then reports wrongly (or never): the job is
    never done, no instance is recorded committed, the source stays in the inbox."""
    from support.node import drop, nifti_bytes, wait_until

    scp_port = free_port()
    peer = CommitPeer(scp_port, mode=mode, store=True)
    try:
        node = node_factory(peer.port, "n", destination_toml=(
            "commitment = true\ncommitment_timeout = 2\n"), commitment_port=scp_port,
            commitment_host='"127.0.0.1"')
        text = node.config.read_text().replace('ae_title = "ORTHANC"', 'ae_title = "ARCHIVE"')
        node.config.write_text(text)
        node.start()
        source = drop(node.inbox, "sub-hostile_T1w.nii.gz",
                      nifti_bytes(tmp_path, "sub-hostile_T1w.nii.gz", seed=47))
        job = wait_until(lambda: next((j for j in node.jobs() if j["attempts"] >= 2
                                       and j["state"] == "retry-wait"), None), 60,
                         "two attempts without a commitment")
        assert node.stop() == 0
    finally:
        peer.close()
    assert "done" not in _history(node, job["id"]) and source.exists()
    assert "committed" not in _outcomes(node, job["id"])
    assert job["error_class"] == "commitment"
