"""DICOMweb destinations against Debian's Orthanc DICOMweb plugin (orthanc-dicomweb): STOW-RS
delivery by push and by the node, QIDO-RS verify, echo and attach, logins; and a fault proxy
in front of it (tests/support/webfault.py) for what a server can do wrong. What counts is what
Orthanc holds (its REST API) against what we recorded, per instance: never a success that
Orthanc does not hold."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pydicom
import pytest
from conftest import NODE_AET, run_node
from support.network import _nifti
from support.node import drop, wait_until
from support.webfault import FaultProxy

from node.convert.output import write_series
from node.convert.series import convert_file
from node.net.dicomweb import store
from node.net.files import read_dicom_file
from node.net.status import Outcome
from node.service.settings import build_destination

pytestmark = pytest.mark.peers  # Orthanc with its DICOMweb plugin

PASSWORD_ENV = "DICOM_NODE_TEST_ORTHANC_PASSWORD"


@pytest.fixture
def login(web_pacs, monkeypatch):
    """Orthanc's password in the environment, where a web destination's auth reads it."""
    monkeypatch.setenv(PASSWORD_ENV, web_pacs.password)


@pytest.fixture
def proxy(web_pacs):
    p = FaultProxy(web_pacs.server)
    yield p
    p.close()


def _basic(url: str, extra: str = "") -> str:
    return (f'url = "{url}"\nauth = {{ kind = "basic", username = "dicom-node", '
            f'password_env = "{PASSWORD_ENV}" }}\n{extra}')


def _config(tmp_path: Path, destination: str) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nae_title = "{NODE_AET}"\ndefault_destination = "web"\n'
                   f'state_dir = "{tmp_path / "var"}"\n\n[destinations.web]\n{destination}\n')
    return cfg


def _series_files(tmp_path: Path, name: str, seed: int, shape=(16, 12, 6)) -> list[Path]:
    series = convert_file(_nifti(tmp_path, name, shape=shape, seed=seed))
    folder = write_series(series, tmp_path / f"dicom-{name}")
    return sorted(folder.glob("*.dcm"))


def _held(web_pacs, files: list[Path]) -> set[str]:
    """The SOP Instance UIDs of ``files`` that Orthanc holds."""
    return {u for u in (read_dicom_file(f).sop_instance_uid for f in files)
            if web_pacs.lookup(u)}


def _push(cfg: Path, *paths, extra=()) -> tuple[int, dict]:
    proc = run_node("push", *paths, "--config", cfg, "--json", *extra)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {
        "stderr": proc.stderr}


# --- delivery to the real plugin ---------------------------------------------------------------

def test_push_streams_files_unchanged_and_verify_counts_them(web_pacs, login, tmp_path):
    files = _series_files(tmp_path, "sub-web01_T1w", seed=11)
    cfg = _config(tmp_path, _basic(web_pacs.web_url, "batch_instances = 4"))
    code, summary = _push(cfg, files[0].parent, extra=("--verify",))
    assert code == 0, summary
    assert summary["delivered"] == len(files) == 6 and summary["verified"] is True
    assert summary["series"][0]["pacs_instances"] == 6
    for f in files:  # byte for byte what the spool held: streamed, never re-encoded
        oid = web_pacs.lookup(read_dicom_file(f).sop_instance_uid)
        assert web_pacs.get_bytes(f"/instances/{oid}/file") == f.read_bytes()


def test_push_of_a_nifti_is_pixel_exact_in_orthanc(web_pacs, login, tmp_path):
    src = _nifti(tmp_path, "sub-web02_T2w", seed=12)
    cfg = _config(tmp_path, _basic(web_pacs.web_url))
    code, summary = _push(cfg, src, extra=("--verify",))
    assert code == 0 and summary["verified"] is True, summary
    expected = convert_file(src)
    series = web_pacs.series(expected.uids.series)
    assert series is not None and len(series["Instances"]) == 6
    for oid in series["Instances"]:
        stored = pydicom.dcmread(io.BytesIO(web_pacs.get_bytes(f"/instances/{oid}/file")))
        k = int(stored.InstanceNumber) - 1
        assert (stored.pixel_array == expected.stored[:, :, k].T).all()


def test_echo_proves_the_server_and_the_credentials(web_pacs, login, tmp_path, monkeypatch):
    cfg = _config(tmp_path, _basic(web_pacs.web_url))
    ok = run_node("echo", "--config", cfg)
    assert ok.returncode == 0 and "QIDO-RS" in ok.stdout, ok.stderr
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    refused = run_node("echo", "--config", cfg)
    assert refused.returncode != 0
    assert "refused our credentials (HTTP 401)" in refused.stderr
    assert "not-the-password" not in refused.stderr + refused.stdout
    wrong_path = run_node("echo", "--config", _config(tmp_path, _basic(
        web_pacs.web_url.replace("/dicom-web", "/nothing-here"))), env={
        PASSWORD_ENV: web_pacs.password})
    assert wrong_path.returncode != 0 and "check [destinations.web].url" in wrong_path.stderr


def test_wrong_password_stores_nothing_and_says_so_once(web_pacs, tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    files = _series_files(tmp_path, "sub-web03_T1w", seed=13)
    code, summary = _push(_config(tmp_path, _basic(web_pacs.web_url)), files[0].parent)
    assert code != 0 and summary["delivered"] == 0
    assert summary["association_failures"] == [
        f"{web_pacs.web_url}: the server refused our credentials (HTTP 401); check "
        "[destinations.web].auth"]
    assert _held(web_pacs, files) == set()


def test_attach_finds_the_exam_by_qido_rs(web_pacs, login, tmp_path):
    exam = _series_files(tmp_path, "sub-web04_T1w", seed=14)
    cfg = _config(tmp_path, _basic(web_pacs.web_url))
    assert _push(cfg, exam[0].parent)[0] == 0
    clinical = pydicom.dcmread(exam[0])
    result = _nifti(tmp_path, "sub-web04_desc-lesion_mask", seed=15)
    code, summary = _push(cfg, result, extra=("--study-of",
                                              f"StudyInstanceUID={clinical.StudyInstanceUID}"))
    assert code == 0, summary
    series = web_pacs.series(summary["series"][0]["series_uid"])
    study = web_pacs.get(f"/studies/{series['ParentStudy']}")
    assert study["MainDicomTags"]["StudyInstanceUID"] == clinical.StudyInstanceUID


def test_the_node_delivers_a_dropped_nifti_over_stow_rs(web_pacs, login, node_factory,
                                                         tmp_path):
    from support.node import nifti_bytes

    node = node_factory(0, destination=_basic(web_pacs.web_url)).start()
    data = nifti_bytes(tmp_path, "sub-web05_T1w.nii.gz", seed=16)
    drop(node.inbox, "sub-web05_T1w.nii.gz", data)
    job = wait_until(lambda: next((j for j in node.jobs() if j["state"] == "done"), None),
                     60, "the job to be done")
    series = web_pacs.series(job["series_uid"])
    assert series is not None and len(series["Instances"]) == job["instances"] == 5
    assert node.stop() == 0


# --- a server that misbehaves ------------------------------------------------------------------

def _send(proxy: FaultProxy, files: list[Path], **keys):
    dest = build_destination("web", {"url": proxy.url, "network_timeout": 10, **keys})
    return store(dest, NODE_AET, [read_dicom_file(f) for f in files])


def test_413_splits_the_batch_until_it_fits(web_pacs, proxy, tmp_path):
    files = _series_files(tmp_path, "sub-fault01_T1w", seed=21)
    one = max(f.stat().st_size for f in files)
    proxy.faults.too_large = 2 * one + 1024  # two instances fit, not six
    report = _send(proxy, files)
    assert report.ok and report.delivered == 6
    assert proxy.statuses()[0] == 413 and proxy.statuses().count(200) >= 3
    assert _held(web_pacs, files) == {read_dicom_file(f).sop_instance_uid for f in files}


def test_one_instance_too_large_fails_alone(web_pacs, proxy, tmp_path):
    files = _series_files(tmp_path, "sub-fault02_T1w", seed=22)
    proxy.faults.too_large = 100  # nothing fits
    report = _send(proxy, files[:2])
    assert report.delivered == 0
    assert {r.outcome for r in report.results} == {Outcome.PERMANENT}
    assert "too large" in report.results[0].message
    assert _held(web_pacs, files[:2]) == set()


def test_429_and_503_are_waited_out_as_retry_after_asks(web_pacs, proxy, tmp_path):
    files = _series_files(tmp_path, "sub-fault03_T1w", seed=23)
    proxy.faults.busy = [429, 503]
    t0 = time.monotonic()
    report = _send(proxy, files, batch_instances=100)
    assert report.ok and time.monotonic() - t0 >= 2.0  # Retry-After: 1, twice
    assert proxy.statuses() == [429, 503, 200]


def test_a_long_retry_after_goes_back_to_the_retry_policy(web_pacs, proxy, tmp_path):
    files = _series_files(tmp_path, "sub-fault04_T1w", seed=24)
    proxy.faults.busy, proxy.faults.retry_after = [503], "3600"
    t0 = time.monotonic()
    report = _send(proxy, files[:2])
    assert time.monotonic() - t0 < 10 and report.delivered == 0
    assert {r.outcome for r in report.results} == {Outcome.TRANSIENT}
    assert "busy (Retry-After: 3600)" in report.results[0].message


def test_an_answer_listing_some_counts_only_those(web_pacs, proxy, tmp_path):
    files = _series_files(tmp_path, "sub-fault05_T1w", seed=25)
    proxy.faults.drop = 2
    report = _send(proxy, files, batch_instances=100)
    assert report.delivered == 4 and report.failed == 2
    unlisted = [r for r in report.results if not r.outcome.delivered]
    assert all("does not list this instance" in r.message for r in unlisted)
    assert all(r.outcome is Outcome.TRANSIENT for r in unlisted)  # retried, never done
    # Orthanc stored all six; the two it did not list are resent and then confirmed
    proxy.faults.drop = 0
    again = _send(proxy, [f for f in files if read_dicom_file(f).sop_instance_uid in
                          {r.file.sop_instance_uid for r in unlisted}])
    assert again.ok and again.delivered == 2


@pytest.mark.parametrize("fault", ["list_none", "truncate"])
def test_an_answer_that_confirms_nothing_counts_nothing(web_pacs, proxy, tmp_path, fault):
    files = _series_files(tmp_path, f"sub-fault06{fault.replace('_', '')}_T1w", seed=26)
    setattr(proxy.faults, fault, True)
    report = _send(proxy, files)
    assert report.delivered == 0 and len(report.results) == 6
    assert {r.outcome for r in report.results} == {Outcome.TRANSIENT}
    assert _held(web_pacs, files) == {read_dicom_file(f).sop_instance_uid for f in files}


def test_a_slow_server_is_bounded_by_the_timeout(web_pacs, proxy, tmp_path):
    files = _series_files(tmp_path, "sub-fault07_T1w", seed=27)
    proxy.faults.slow = 5
    t0 = time.monotonic()
    report = _send(proxy, files[:1], network_timeout=1)
    assert time.monotonic() - t0 < 4.5
    assert report.delivered == 0 and "no answer in time" in report.results[0].message


def test_oauth2_token_is_fetched_renewed_and_one_401_refreshes_once(web_pacs, proxy, tmp_path,
                                                                     monkeypatch):
    import node.net.dicomweb as dicomweb

    dicomweb._TOKENS.clear()
    files = _series_files(tmp_path, "sub-fault08_T1w", seed=28)
    proxy.faults.client_id, proxy.faults.client_secret = "node-1", "s3cret-value"
    monkeypatch.setenv("TEST_CLIENT_SECRET", "s3cret-value")
    auth = {"kind": "oauth2", "token_url": proxy.token_url, "client_id": "node-1",
            "client_secret_env": "TEST_CLIENT_SECRET"}
    assert _send(proxy, files[:2], auth=auth).ok
    assert [p for _, p, _, _ in proxy.requests].count("/token") == 1
    proxy.revoke()  # the token stops working mid-run: one 401, one new token, one resend
    report = _send(proxy, files[2:4], auth=auth)
    assert report.ok, [r.message for r in report.results]
    assert proxy.statuses()[-3:] == [401, 200, 200]  # 401, POST /token, the resend
    proxy.faults.token_seconds = 0.5  # short-lived tokens are renewed before they expire
    proxy.revoke()
    assert _send(proxy, files[4:5], auth=auth).ok
    time.sleep(0.6)
    assert _send(proxy, files[5:], auth=auth).ok
    assert _held(web_pacs, files) == {read_dicom_file(f).sop_instance_uid for f in files}
    monkeypatch.setenv("TEST_CLIENT_SECRET", "wrong")
    dicomweb._TOKENS.clear()
    refused = _send(proxy, files[:1], auth=auth)
    message = refused.failures[0].message
    assert refused.delivered == 0 and "refused the client credentials" in message
    assert "wrong" not in message


def test_orthanc_answers_200_for_a_part_it_ignored_and_we_do_not_believe_it(web_pacs, tmp_path):
    """The plugin skips a part whose Content-Type has a transfer-syntax parameter, and says
    200 with nothing listed: exactly why the status code is never trusted."""
    import httpx

    f = _series_files(tmp_path, "sub-fault09_T1w", seed=29)[0]
    body = (b"--B\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
            b"\r\n\r\n" + f.read_bytes() + b"\r\n--B--\r\n")
    rsp = httpx.post(f"{web_pacs.web_url}/studies", content=body, auth=(
        "dicom-node", web_pacs.password), headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=B',
        "Accept": "application/dicom+json"})
    from node.net.dicomweb import read_answer

    assert rsp.status_code == 200
    assert read_answer(rsp.content) == {}  # nothing listed: nothing counted
    assert _held(web_pacs, [f]) == set()


def test_the_node_records_each_instance_and_resends_only_the_unconfirmed(web_pacs, proxy,
                                                                          node_factory,
                                                                          tmp_path):
    """The answer to the first request leaves out two instances that Orthanc stored: the job
    waits to retry with 3 of 5 recorded as delivered, then resends only the other two."""
    import sqlite3

    from support.node import nifti_bytes

    proxy.faults.drop, proxy.faults.drop_times = 2, 1
    node = node_factory(0, destination=f'url = "{proxy.url}"\n').start()
    drop(node.inbox, "sub-web06_T1w.nii.gz", nifti_bytes(tmp_path, "sub-web06_T1w.nii.gz",
                                                         seed=31))
    job = wait_until(lambda: next((j for j in node.jobs() if j["state"] == "done"), None),
                     60, "the job to be done")
    assert node.stop() == 0
    db = sqlite3.connect(node.state / "journal.sqlite")
    history = db.execute("SELECT to_state, detail FROM history WHERE job_id = ? ORDER BY id",
                         (job["id"],)).fetchall()
    steps = [s for s, _ in history]
    outcomes = dict(db.execute("SELECT sop_instance_uid, outcome FROM instances "
                               "WHERE job_id = ?", (job["id"],)))
    db.close()
    assert steps == ["queued", "converting", "sending", "retry-wait", "converting", "sending",
                     "done"]
    assert "does not list this instance as stored" in history[3][1]
    assert len(outcomes) == 5 and set(outcomes.values()) == {"success"}
    sizes = [n for m, p, n, _ in proxy.requests if m == "POST"]
    assert len(sizes) == 2 and sizes[1] < sizes[0]  # the second request carried two of five
    series = web_pacs.series(job["series_uid"])
    assert series is not None and len(series["Instances"]) == 5


def test_a_malformed_file_fails_alone_and_the_rest_is_stored(web_pacs, login, tmp_path):
    files = _series_files(tmp_path, "sub-web07_T1w", seed=32)
    broken = files[2]
    broken.write_bytes(broken.read_bytes()[:-100])  # pixel data cut short
    dest = build_destination("web", {"url": web_pacs.web_url, "batch_instances": 3, "auth": {
        "kind": "basic", "username": "dicom-node", "password_env": PASSWORD_ENV}})
    report = store(dest, NODE_AET, [read_dicom_file(f) for f in files])
    bad = [r for r in report.results if not r.outcome.delivered]
    assert report.delivered == 5 and [r.file.path for r in bad] == [broken]
    assert bad[0].outcome is Outcome.PERMANENT and "malformed" in bad[0].message
    assert _held(web_pacs, files) == {read_dicom_file(f).sop_instance_uid for f in files
                                      if f != broken}


def test_https_is_verified_against_the_ca_the_config_names(web_pacs, tmp_path):
    """DICOMweb over HTTPS (a TLS front on loopback, its certificate from a private CA):
    refused as untrusted without tls.ca (the system's CAs do not know it), delivered with it;
    and a certificate for another host name is refused too."""
    from support.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    front = FaultProxy(web_pacs.server, tls={"cert": pki["server"], "key": pki["server_key"]})
    try:
        assert front.url.startswith("https://127.0.0.1:")
        files = [read_dicom_file(f) for f in _series_files(tmp_path, "sub-web08_T1w", seed=33)]
        untrusted = store(build_destination("web", {"url": front.url}), NODE_AET, files)
        assert untrusted.delivered == 0
        assert "certificate is not trusted" in untrusted.failures[0].message
        assert "set tls.ca" in untrusted.failures[0].message
        assert not untrusted.failures[0].transient  # an operator must act: an alert
        trusted = store(build_destination("web", {"url": front.url,
                                                  "tls": {"ca": str(pki["ca"])}}),
                        NODE_AET, files)
        assert trusted.ok and trusted.delivered == 6
        other = make_pki(tmp_path / "other", name="other")
        stranger = store(build_destination("web", {"url": front.url,
                                                   "tls": {"ca": str(other["ca"])}}),
                         NODE_AET, files[:1])
        assert stranger.delivered == 0 and "not trusted" in stranger.failures[0].message
    finally:
        front.close()


def test_a_refused_compressed_syntax_is_sent_again_decompressed(web_pacs, proxy, tmp_path):
    """A server that takes no JPEG-LS answers 0xC122 for those parts: they are sent again
    decompressed (the same SOP Instance UIDs, every pixel value), as a DIMSE peer without the
    syntax gets them."""
    from node.convert.options import ConversionOptions

    src = _nifti(tmp_path, "sub-fault10_T1w", seed=34)
    series = convert_file(src, None, ConversionOptions(compression="jpeg-ls"))
    files = sorted(write_series(series, tmp_path / "jpegls").glob("*.dcm"))
    assert read_dicom_file(files[0]).transfer_syntax == "1.2.840.10008.1.2.4.80"
    proxy.faults.refuse_compressed = True
    report = _send(proxy, files, batch_instances=4)
    assert report.ok and report.delivered == 6, [r.message for r in report.results]
    assert proxy.statuses().count(409) == 2  # both batches refused whole, then resent
    for f in files:
        oid = web_pacs.lookup(read_dicom_file(f).sop_instance_uid)
        stored = pydicom.dcmread(io.BytesIO(web_pacs.get_bytes(f"/instances/{oid}/file")))
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert (stored.pixel_array == pydicom.dcmread(f).pixel_array).all()


def test_verify_catches_a_server_that_says_stored_and_holds_nothing(web_pacs, proxy,
                                                                    node_factory, tmp_path):
    """A server that lists every instance as stored and keeps none: with verify = true the
    node counts the series (QIDO-RS) and never calls the job done or moves the source."""
    from support.node import nifti_bytes

    proxy.faults.lie = True
    node = node_factory(0, destination=f'url = "{proxy.url}"\nverify = true\n').start()
    source = drop(node.inbox, "sub-web09_T1w.nii.gz", nifti_bytes(tmp_path,
                                                                 "sub-web09_T1w.nii.gz",
                                                                 seed=35))
    job = wait_until(lambda: next((j for j in node.jobs() if j["state"] == "retry-wait"
                                   and j["attempts"] >= 2), None), 60, "two refused attempts")
    assert "verify: the PACS counts 0 of 5 instances" in job["last_error"]
    assert job["delivered"] == 0
    assert "done" not in node.states() and source.exists()
    proxy.faults.lie = False  # an honest server: delivered, counted, done
    wait_until(lambda: "done" in node.states(), 60, "the job to be done")
    assert node.stop() == 0
    assert web_pacs.series(node.jobs()[0]["series_uid"]) is not None
