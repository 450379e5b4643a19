"""Routing with real archives (issue 23): a BIDS tree fans out to two Orthancs and a DCMTK
storescp, each in its own form; a node killed mid fan-out resends nothing; a rate cap holds at
the archive; a closed schedule holds bulk jobs while urgent ones go (an injected clock)."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import orthanc_in
from support.network import storescp
from support.niftigen import affine_from, ramp_data, write_nifti
from support.node import wait_until

pytestmark = pytest.mark.peers

MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"  # Legacy Converted Enhanced MR: iod = "enhanced"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
AFFINE = affine_from(np.diag([1.0, 1.0, 2.0]))


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    """A second Orthanc: the research archive."""
    yield from orthanc_in(tmp_path_factory, "orthanc-research")


def _bids_tree(inbox: Path) -> dict[str, Path]:
    """anat, func, dwi and a derivatives SEG of one subject, written in place."""
    sub = inbox / "sub-r01"
    labels = np.zeros((12, 10, 4), np.uint8)
    labels[3:7, 2:6, 1:3] = 1
    return {
        "anat": write_nifti(sub / "anat" / "sub-r01_T1w.nii.gz",
                            ramp_data((12, 10, 4), "int16", seed=71), AFFINE,
                            sidecar={"Manufacturer": "Siemens", "EchoTime": 0.003}),
        "func": write_nifti(sub / "func" / "sub-r01_task-rest_bold.nii.gz",
                            ramp_data((12, 10, 3, 2), "int16", seed=72), AFFINE,
                            sidecar={"RepetitionTime": 2.0}),
        "dwi": write_nifti(sub / "dwi" / "sub-r01_dwi.nii.gz",
                           ramp_data((12, 10, 3, 2), "int16", seed=73), AFFINE),
        "seg": write_nifti(inbox / "derivatives" / "lesions" / "sub-r01" / "anat"
                           / "sub-r01_desc-lesion_dseg.nii.gz", labels, AFFINE),
    }


def _storescp_files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.rglob("*")) if p.is_file()]


def _orthanc_instances(pacs, series_uid: str) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) of each instance of the series in this Orthanc."""
    series = pacs.series(series_uid)
    if series is None:
        return []
    out = []
    for oid in series["Instances"]:
        out.append((pacs.get_bytes(f"/instances/{oid}/metadata/SopClassUid").decode(),
                    pacs.get_bytes(f"/instances/{oid}/metadata/TransferSyntax").decode()))
    return out


def test_a_bids_tree_reaches_each_archive_in_the_form_its_route_says(
        pacs, research, node_factory, tmp_path):
    received = tmp_path / "archive-files"
    with storescp(received, "ARCHIVE", "+xa") as archive_port:  # takes RLE too
        node = node_factory(pacs.port, destination_toml=f"""
[destinations.research]
host = "127.0.0.1"
port = {research.port}
ae_title = "{research.aet}"
[destinations.archive]
host = "127.0.0.1"
port = {archive_port}
ae_title = "ARCHIVE"
[[route]]
name = "segs"
when = {{ object = "seg", datatype = "derivatives/*" }}
to = [{{ destination = "research", iod = "seg" }}]
[[route]]
name = "anat"
when = {{ datatype = "anat", sidecar = {{ Manufacturer = {{ regex = "(?i)siemens" }} }} }}
to = ["pacs", {{ destination = "research", iod = "enhanced", compression = "jpeg-ls" }}]
[[route]]
name = "dwi"
when = {{ datatype = "dwi" }}
to = ["pacs", {{ destination = "archive", compression = "rle" }}]
[[route]]
name = "func"
when = {{ datatype = "func" }}
to = ["archive"]
""")
        node.start()
        files = _bids_tree(node.inbox)
        wait_until(lambda: len(node.jobs()) == 6 and node.states() == ["done"] * 6, 120,
                   "six jobs (anat x2, dwi x2, func, seg) done")
        jobs = node.jobs()
    by = {(Path(j["source"]).name, j["destination"]): j for j in jobs}
    anat, func, dwi, seg = (files[k].name for k in ("anat", "func", "dwi", "seg"))
    assert set(by) == {(anat, "pacs"), (anat, "research"), (dwi, "pacs"), (dwi, "archive"),
                       (func, "archive"), (seg, "research")}
    # the clinical PACS: classic MR images of the anat and the dwi, nothing else
    for name in (anat, dwi):
        stored = _orthanc_instances(pacs, by[(name, "pacs")]["series_uid"])
        assert len(stored) == by[(name, "pacs")]["instances"] > 1
        assert {c for c, _ in stored} == {MR} and {t for _, t in stored} <= UNCOMPRESSED
    assert pacs.lookup(by[(func, "archive")]["series_uid"]) is None
    assert pacs.lookup(by[(seg, "research")]["series_uid"]) is None
    # the research archive: the anat as one Enhanced MR in JPEG-LS, and the SEG
    assert _orthanc_instances(research, by[(anat, "research")]["series_uid"]) == [
        (ENHANCED_MR, JPEG_LS)]
    assert [c for c, _ in _orthanc_instances(research, by[(seg, "research")]["series_uid"])
            ] == [SEG]
    assert research.lookup(by[(anat, "pacs")]["series_uid"]) is None
    # storescp: the func as it is, the dwi in RLE
    got = {}
    for ds in _storescp_files(received):
        got.setdefault(ds.SeriesInstanceUID, set()).add(
            (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID))
    assert got == {by[(func, "archive")]["series_uid"]: {(MR, "1.2.840.10008.1.2.1")},
                   by[(dwi, "archive")]["series_uid"]: {(MR, RLE)}}
    assert len(_storescp_files(received)) == (by[(func, "archive")]["instances"]
                                              + by[(dwi, "archive")]["instances"])
    # every source left the inbox only once every destination of it was done
    assert not [p for p in node.inbox.rglob("*.nii.gz")]
    done = {p.name for p in (node.state / "done").rglob("*.nii.gz")}
    assert done == {anat, func, dwi, seg}
    route = node.cli("route", "--json", str(node.state / "done"))  # a folder: refused, 1 line
    assert route.returncode == 2 and "no such file" in route.stderr


def _delivered(node, job_id: int) -> int:
    with sqlite3.connect(node.state / "journal.sqlite") as db:
        (n,) = db.execute("SELECT count(*) FROM instances WHERE job_id = ? AND outcome IN "
                          "('success', 'warning', 'duplicate')", (job_id,)).fetchone()
    return int(n)


def test_sigkill_during_a_fan_out_every_destination_gets_each_instance_once(
        pacs, node_factory, tmp_path):
    import signal

    fast_files, slow_files = tmp_path / "fast-files", tmp_path / "slow-files"
    with storescp(fast_files, "FAST", "-tn") as fast, storescp(slow_files, "SLOW", "-tn") as slow:
        node = node_factory(pacs.port, destination_toml=f"""
[destinations.fast]
host = "127.0.0.1"
port = {fast}
ae_title = "FAST"
[destinations.slow]
host = "127.0.0.1"
port = {slow}
ae_title = "SLOW"
max_instances_per_second = 4
[[route]]
name = "both"
to = ["fast", "slow"]
""")
        node.start()
        source = write_nifti(node.inbox / "sub-k01_T1w.nii.gz",
                             ramp_data((10, 8, 16), "int16", seed=5), AFFINE)
        wait_until(lambda: len(node.jobs()) == 2, 30, "two jobs")
        jobs = {j["destination"]: j for j in node.jobs()}
        wait_until(lambda: [j["state"] for j in node.jobs()
                            if j["destination"] == "fast"] == ["done"], 60, "the fast copy")
        wait_until(lambda: _delivered(node, jobs["slow"]["id"]) >= 4, 60,
                   "four instances at the slow archive")
        node.proc.send_signal(signal.SIGKILL)  # while the slow copy waits for its turn
        node.proc.wait(timeout=10)
        assert source.exists()  # not moved: one destination is not done
        node.start()
        wait_until(lambda: node.states() == ["done", "done"], 90, "both copies after restart")
        time.sleep(0.5)  # storescp has written the last file it acknowledged
    for folder in (fast_files, slow_files):
        uids = [ds.SOPInstanceUID for ds in _storescp_files(folder)]
        assert len(uids) == 16 and len(set(uids)) == 16, (folder.name, len(uids))
    assert not source.exists()  # moved once both were done
    assert any(p.name == source.name for p in (node.state / "done").rglob("*"))


def test_a_rate_cap_holds_at_the_archive(pacs, node_factory):
    node = node_factory(pacs.port, destination_toml="max_instances_per_second = 5\n")
    node.start()
    write_nifti(node.inbox / "sub-rate01_T1w.nii.gz", ramp_data((8, 8, 21), "int16", seed=9),
                AFFINE)
    wait_until(lambda: node.states() == ["done"], 60, "the capped series")
    (job,) = node.jobs()
    series = pacs.series(job["series_uid"])
    stamps = sorted(
        dt.datetime.strptime(pacs.get_bytes(f"/instances/{oid}/metadata/ReceptionDate")
                             .decode()[:15], "%Y%m%dT%H%M%S")
        for oid in series["Instances"])
    assert len(stamps) == 21
    # 21 instances at 5 a second take at least 4 s; no second holds more than 5 (+1 for a
    # window that straddles two turns; Orthanc records whole seconds)
    assert (stamps[-1] - stamps[0]).total_seconds() >= 3
    per_second: dict = {}
    for s in stamps:
        per_second[s] = per_second.get(s, 0) + 1
    assert max(per_second.values()) <= 6, per_second


def test_a_closed_schedule_holds_bulk_jobs_while_urgent_ones_go(pacs, tmp_path):
    """In-process node with an injected clock: Monday 10:00 UTC, the archive opens at 19:00."""
    from node.service.node import Node
    from node.service.settings import config_from_dict

    inbox = tmp_path / "inbox"
    config = config_from_dict({
        "node": {"state_dir": str(tmp_path / "var"), "timezone": "UTC", "metrics_port": 0,
                 "workers": 2, "retry_base_seconds": 0.5, "echo_interval_seconds": 3600},
        "destinations": {"bulk": {"host": "127.0.0.1", "port": pacs.port, "ae_title": pacs.aet,
                                  "schedule": ["mon-fri 19:00-07:00", "sat-sun"]}},
        "watch": [{"path": str(inbox)}],
        "route": [{"name": "stat", "when": {"acq": "stat"}, "to": ["bulk"],
                   "priority": "urgent"},
                  {"name": "rest", "to": ["bulk"]}],
    })
    bulk = write_nifti(inbox / "sub-s01_T1w.nii.gz", ramp_data((8, 8, 3), "int16", seed=1),
                       AFFINE)
    urgent = write_nifti(inbox / "sub-s01_acq-stat_T1w.nii.gz",
                         ramp_data((8, 8, 3), "int16", seed=2), AFFINE)
    node = Node(config, watch=False)
    monday = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC).timestamp()
    node.clock = lambda: monday
    watch = config.watches[0]
    bulk_job, urgent_job = node.enqueue_file(bulk, watch), node.enqueue_file(urgent, watch)
    assert (bulk_job.priority, urgent_job.priority) == (0, 1)
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 120

    def step() -> bool:
        """The node's loop asks after each pass (in its own thread, with its journal)."""
        assert time.monotonic() < deadline, f"timed out: {seen}"
        state = {j: node.journal.get(j.id).state for j in (bulk_job, urgent_job)}
        if "urgent" not in seen:
            if state[urgent_job] == "done":
                seen["urgent"] = time.monotonic()
                assert state[bulk_job] == "queued"
        elif "open" not in seen and time.monotonic() - seen["urgent"] > 2.0:
            assert state[bulk_job] == "queued"  # many passes later: the bulk job stays
            node.clock = lambda: monday + 9.5 * 3600  # 19:30: the window opens
            seen["open"] = time.monotonic()
        return state[bulk_job] == "done"

    assert node.run(until=step) == 0
    journal = config.open_journal(create=False)
    assert pacs.lookup(journal.get(urgent_job.id).series_uid) is not None
    assert pacs.lookup(journal.get(bulk_job.id).series_uid) is not None
    order = [j.id for j in journal.jobs("done")]
    history = {j: journal.history(j) for j in order}
    journal.close()
    done_at = {j: next(h.at for h in history[j] if h.to_state == "done") for j in order}
    assert done_at[urgent_job.id] < done_at[bulk_job.id]
