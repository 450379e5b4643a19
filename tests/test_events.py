"""Events (issue 25): the outbox in the journal, signed webhooks that survive a failing
receiver and a SIGKILL, batched email over STARTTLS with login, DICOM audit messages (valid
against PS3.15 A.5.1's schema) to Debian's rsyslog over TLS with the journal as the spool,
and receivers that answer 2 GB, never answer, or redirect elsewhere."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import ssl
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.hooks import Listener, Rsyslog, WebhookReceiver, check_signature
from support.node import drop, nifti_bytes, wait_until
from support.pki import make_pki

from node.errors import ConfigError
from node.net.notify import NotifyFailure, post
from node.service.audit_messages import AuditContext
from node.service.events import Sender, payload, signature
from node.service.journal.outbox import Event
from node.service.settings import config_from_dict

SCHEMA = Path(__file__).parent / "data" / "ps3.15-audit-message.rnc"


def _schema():
    import lxml.etree
    import rnc2rng

    return lxml.etree.RelaxNG(lxml.etree.fromstring(
        rnc2rng.dumps(rnc2rng.loads(SCHEMA.read_text())).encode()))


def _valid(schema, message: ET.Element | str) -> bool:
    import lxml.etree

    text = message if isinstance(message, str) else ET.tostring(message, encoding="unicode")
    ok = schema.validate(lxml.etree.fromstring(text.encode()))
    assert ok, (schema.error_log, text)
    return ok


# --- the JSON, its signature, and what it leaves out -----------------------------------------

def test_a_webhook_event_is_signed_and_carries_no_patient_data_unless_asked():
    event = Event("history", 7, 1_700_000_000.25, "job.done", {
        "job": 3, "destination": "pacs", "study_uid": "1.2.3", "delivered": 5,
        "phi": {"source": "/inbox/Doe^John/sub-01_T1w.nii.gz", "detail": "Doe^John"}})
    plain = payload(event, phi=False, node_id="vm:1")
    assert plain["schema"] == "dicom-node.event" and plain["version"] == 1
    assert plain["id"] == "history:7" and plain["time"] == "2023-11-14T22:13:20.250Z"
    assert "Doe" not in json.dumps(plain) and plain["data"]["study_uid"] == "1.2.3"
    assert payload(event, phi=True)["data"]["source"].endswith("sub-01_T1w.nii.gz")
    body = json.dumps(plain).encode()
    header = signature(b"s3cret", body, 1_700_000_001)
    assert check_signature(b"s3cret", body, header)
    assert not check_signature(b"other", body, header)
    assert not check_signature(b"s3cret", body + b" ", header)


@pytest.mark.parametrize("table, named", [
    ({"webhook": [{"url": "http://127.0.0.1:9/h"}]}, "[[webhook]] 'webhook1'.secret_env"),
    ({"webhook": [{"url": "ftp://x/", "secret_env": "S"}]}, "[[webhook]] 'webhook1'.url"),
    ({"webhook": [{"url": "http://127.0.0.1:9/h", "secret_env": "S", "colour": 1}]},
     "[[webhook]] #1: unknown key"),
    ({"email": [{"host": "smtp.example.org", "security": "none", "from": "a@b",
                 "to": ["c@d"]}]}, "[[email]] 'email1'.security: \"none\" sends the login"),
    ({"email": [{"host": "127.0.0.1", "from": "a@b", "to": ["c@d"], "username": "u"}]},
     "[[email]] 'email1'.password_env"),
    ({"email": [{"host": "127.0.0.1", "from": "a@b"}]}, "[[email]] 'email1'.to"),
    ({"audit": [{"host": "127.0.0.1", "transport": "carrier-pigeon"}]},
     "[[audit]] 'audit1'.transport"),
    ({"audit": [{"name": "a", "host": "h"}, {"name": "a", "host": "h"}]},
     "[[audit]] 'a': two receivers have this name"),
    ({"webhook": [{"url": "http://127.0.0.1:9/h", "secret_env": "S", "events": "job.done"}]},
     "[[webhook]] 'webhook1'.events"),
])
def test_receiver_mistakes_are_one_line_naming_the_key(table, named):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(table)
    assert named in caught.value.message and "\n" not in caught.value.message


# --- audit messages against the standard's schema ------------------------------------------

def test_every_audit_message_validates_against_the_ps3_15_schema():
    schema = _schema()
    context = AuditContext("DICOM_NODE", "Example Hospital")
    now = time.time()
    events = [
        Event("event", 1, now, "node.started", {"subject": "vm:1"}),
        Event("event", 2, now, "node.stopped", {"subject": "vm:1"}),
        Event("history", 3, now, "job.done", {"destination": "pacs", "study_uid": "1.2.3",
                                               "delivered": 4, "phi": {"source": "/in/a.nii"}}),
        Event("event", 4, now, "console.login", {"subject": "alice", "outcome": "ok"}),
        Event("event", 5, now, "console.login", {"subject": "mallory", "outcome": "failed"}),
        Event("event", 6, now, "access.refused", {"subject": "mallory", "outcome": "failed"}),
        Event("event", 7, now, "query.find", {"subject": "pacs", "outcome": "ok",
                                              "phi": {"detail": "PatientID=123"}}),
    ]
    for event in events:
        for phi in (False, True):
            message = context.message_for(event, phi)
            assert message is not None and _valid(schema, message)
    assert context.message_for(Event("history", 9, now, "job.sending", {})) is None
    line = context.syslog_line(events[2], context.message_for(events[2]))
    assert line.startswith(b"<85>1 ") and b" dicom-node " in line and b"\xef\xbb\xbf<Audit" in line
    assert b"/in/a.nii" not in line  # no phi: the study by its UID only
    broken = ET.tostring(context.message_for(events[0]), encoding="unicode").replace(
        'EventOutcomeIndicator="0"', 'EventOutcomeIndicator="3"')
    import lxml.etree

    assert not schema.validate(lxml.etree.fromstring(broken.encode()))  # the judge can fail


# --- the outbox on both engines -------------------------------------------------------------

def test_the_outbox_gives_every_event_in_order_from_a_cursor_that_starts_at_the_end(journal):
    early, _ = journal.enqueue(Path("/in/a.nii"), "a" * 64, 1, "bids-mr", "pacs")
    cursor = journal.cursor("webhook:ops")
    assert journal.pending(cursor) == []  # a new receiver starts from now
    job, _ = journal.enqueue(Path("/in/b.nii"), "b" * 64, 1, "bids-mr", "pacs")
    journal.record_event("node.started", "vm:1")
    journal.audit("alice", "console", "pause", "pacs", "paused")
    claimed = journal.claim(owner="vm:1")
    assert claimed.id == early.id
    time.sleep(journal.read_lag_seconds + 0.1)
    events = journal.pending(cursor)
    assert [e.type for e in events] == ["job.queued", "node.started", "operator.pause",
                                        "job.converting"]
    assert [e.data.get("job") for e in events if e.stream == "history"] == [job.id, early.id]
    assert len({e.id for e in events}) == 4
    after = journal.advance(cursor, events[:2], delivered=2)
    assert [e.id for e in journal.pending(after)] == [e.id for e in events[2:]]
    assert journal.backlog_of(after)[0] == 2 and after.delivered == 2


def test_a_receiver_past_its_bound_drops_the_oldest_says_so_and_keeps_the_newest(tmp_path):
    config = config_from_dict({"node": {"state_dir": str(tmp_path / "var")}, "webhook": [{
        "name": "slow", "url": "http://127.0.0.1:9/h", "secret_env": "S", "max_pending": 3}]})
    store = config.open_journal()
    cursor = store.cursor("webhook:slow")
    for n in range(10):
        store.record_event("destination.down", f"d{n}")
    sender = Sender(config, config.receivers[0], "vm:1", None)
    after = sender._bounded(store, cursor)
    left = [e for e in store.pending(after) if e.type == "destination.down"]
    assert [e.data["subject"] for e in left] == ["d7", "d8", "d9"]
    assert after.dropped == 7 and "7 event(s) dropped" in after.last_error
    overflow = [e for e in store.pending(after, 50) if e.type == "receiver.overflow"]
    assert overflow and overflow[0].data["subject"] == "webhook:slow"
    store.close()


# --- receivers that misbehave ---------------------------------------------------------------

def test_a_receiver_that_answers_2_gb_is_read_no_further_than_64_kib():
    peer = Listener("endless")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    try:
        assert post(f"http://127.0.0.1:{peer.port}/h", b"{}", {}, timeout=5) == 200
    finally:
        peer.close()
    assert time.monotonic() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 50 * 1024  # KiB
    assert peer.sent < 2 * 1024**3


def test_a_receiver_that_never_answers_is_given_up_within_the_timeout():
    peer = Listener("silent")
    t0 = time.monotonic()
    try:
        with pytest.raises(NotifyFailure, match="no answer within 1.5 s"):
            post(f"http://127.0.0.1:{peer.port}/h", b"{}", {}, timeout=1.5)
    finally:
        peer.close()
    assert time.monotonic() - t0 < 3


def test_a_redirect_is_never_followed_to_another_address():
    elsewhere = Listener("silent")
    peer = Listener(f"redirect:http://127.0.0.1:{elsewhere.port}/steal")
    try:
        with pytest.raises(NotifyFailure, match="307 \\(a redirect\\), which is not followed"):
            post(f"http://127.0.0.1:{peer.port}/h", b"{}", {}, timeout=3)
        time.sleep(0.3)
        assert peer.connections == 1 and elsewhere.connections == 0
    finally:
        peer.close()
        elsewhere.close()


# --- with a real node -----------------------------------------------------------------------

def _expected_ids(node, kinds=("node.",)) -> set[str]:
    with sqlite3.connect(node.state / "journal.sqlite") as db:
        history = {f"history:{i}" for (i,) in db.execute("SELECT id FROM history")}
        events = {f"event:{i}" for i, k in db.execute("SELECT id, kind FROM events")
                  if k.startswith(kinds)}
    return history | events


@pytest.mark.peers  # Orthanc
def test_webhook_events_survive_a_failing_receiver_and_a_sigkill(pacs, node_factory, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    receiver = WebhookReceiver(b"s3cret", fail_first=4, delay=0.2)
    node = node_factory(pacs.port, destination_toml=f"""
[[webhook]]
name = "ops"
url = "{receiver.url}"
secret_env = "HOOK_SECRET"
events = ["job.*", "node.*"]
retry_max_seconds = 1
""")
    try:
        node.start()
        for n in range(2):
            drop(node.inbox, f"sub-hook{n}_T1w.nii.gz",
                 nifti_bytes(tmp_path, f"{n}.nii.gz", seed=n))
        # DICOM is not held up by the failing receiver
        wait_until(lambda: node.states() == ["done", "done"], 60, "both jobs")
        wait_until(lambda: receiver.calls >= 3, 30, "the receiver failing")
        node.proc.send_signal(signal.SIGKILL)  # mid-retry: nothing taken is lost
        node.proc.wait(timeout=10)
        node.start()
        expected = _expected_ids(node)
        wait_until(lambda: {e["id"] for e in receiver.received} >= expected, 60,
                   "every event of both runs")
        node.stop()  # its node.stopped goes while it shuts down
        expected = _expected_ids(node)
        wait_until(lambda: {e["id"] for e in receiver.received} >= expected, 10,
                   "node.stopped")
    finally:
        receiver.close()
    status = node.cli("status")
    assert "receiver webhook:ops: backlog 0, delivered" in status.stdout, status.stdout
    got = receiver.received
    assert receiver.bad_signatures == 0
    by_id: dict[str, dict] = {}
    for e in got:  # duplicates only with the same id, and then the same event
        assert by_id.setdefault(e["id"], e) == e
    for job in {e["data"]["job"] for e in got if e["type"].startswith("job.")}:
        seqs = [int(e["id"].split(":")[1]) for e in got
                if e["type"].startswith("job.") and e["data"]["job"] == job]
        firsts = list(dict.fromkeys(seqs))
        assert firsts == sorted(firsts), "in order per job"
        types = [by_id[f"history:{s}"]["type"] for s in firsts]
        assert types[0] == "job.queued" and types[-1] == "job.done", types
    assert all("source" not in e["data"] for e in got)  # phi = false
    assert [e["type"] for e in got].count("node.started") >= 2


@pytest.mark.peers  # Orthanc
def test_failures_and_quarantines_are_mailed_over_starttls_with_login_at_most_once_per_interval(
        pacs, node_factory, tmp_path, monkeypatch):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
    from conftest import free_port

    pki = make_pki(tmp_path / "pki")
    mails: list[tuple[float, str]] = []
    logins: list[bool] = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's
            import email

            mail = email.message_from_bytes(envelope.content)
            mails.append((time.monotonic(), f"Subject: {mail['Subject']}\n"
                          + mail.get_payload(decode=True).decode()))
            return "250 OK"

    def authenticate(server, session, envelope, mechanism, data):
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"node", b"mail-pass")
        logins.append(ok)
        return AuthResult(success=ok)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki["server"], pki["server_key"])
    port = free_port()
    smtp = Controller(Sink(), hostname="127.0.0.1", port=port, tls_context=tls,
                      require_starttls=True, authenticator=authenticate, auth_require_tls=True)
    smtp.start()
    monkeypatch.setenv("SMTP_PASSWORD", "mail-pass")
    node = node_factory(pacs.port, destination_toml=f"""
[[email]]
name = "team"
host = "127.0.0.1"
port = {port}
security = "starttls"
username = "node"
password_env = "SMTP_PASSWORD"
from = "dicom-node@example.org"
to = ["pacs-team@example.org"]
every_minutes = 0.05
retry_max_seconds = 1
tls = {{ ca = "{pki['ca']}" }}
""")
    try:
        node.start()
        bad = nifti_bytes(tmp_path, "bad.nii.gz", seed=3)
        drop(node.inbox, "sub-bad1_T1w.nii.gz", bad[: len(bad) // 2])
        wait_until(lambda: len(mails) == 1, 60, "the first mail")
        for n in (2, 3):
            drop(node.inbox, f"sub-bad{n}_T1w.nii.gz", bad[: len(bad) // 3])
        wait_until(lambda: len(mails) == 2, 60, "one mail for both")
        time.sleep(4)
    finally:
        smtp.stop()
    assert len(mails) == 2 and all(logins) and mails[1][1].count("job.quarantined") == 2
    assert mails[1][0] - mails[0][0] >= 3 * 0.9  # at most one mail per every_minutes
    text = mails[0][1]
    assert "Subject: dicom-node" in text and "job.quarantined" in text
    assert "sub-bad1" not in text  # phi = false: ids and states, no file names


@pytest.mark.peers  # Orthanc, rsyslog
def test_audit_messages_reach_rsyslog_over_tls_and_wait_in_the_journal_while_it_is_down(
        pacs, node_factory, tmp_path):
    pki = make_pki(tmp_path / "pki")
    collector = Rsyslog(tmp_path / "rsyslog", pki).start()
    node = node_factory(pacs.port, destination_toml=f"""
[[audit]]
name = "siem"
host = "127.0.0.1"
port = {collector.port}
site = "Example Hospital"
retry_max_seconds = 1
tls = {{ ca = "{pki['ca']}" }}
""")
    schema = _schema()

    def transferred() -> list[str]:
        return [m for m in collector.messages() if 'csd-code="110104"' in m]

    try:
        node.start()
        wait_until(lambda: any('csd-code="110120"' in m for m in collector.messages()), 30,
                   "Application Start at the collector")
        drop(node.inbox, "sub-aud1_T1w.nii.gz", nifti_bytes(tmp_path, "a1.nii.gz", seed=41))
        wait_until(lambda: len(transferred()) == 1, 60, "DICOM Instances Transferred")
        collector.stop()
        drop(node.inbox, "sub-aud2_T1w.nii.gz", nifti_bytes(tmp_path, "a2.nii.gz", seed=42))
        wait_until(lambda: node.states() == ["done", "done"], 60, "the second delivery")
        time.sleep(2)  # the node tries, fails, keeps the message in its journal
        collector = Rsyslog(tmp_path / "rsyslog", pki, collector.port).start()
        studies = {j["study_uid"] for j in node.jobs()}
        wait_until(lambda: all(any(uid in m for m in transferred()) for uid in studies), 60,
                   "the message kept while the collector was down")
        node.stop()
        wait_until(lambda: any('csd-code="110121"' in m for m in collector.messages()), 30,
                   "Application Stop")
    finally:
        collector.stop()
    messages = collector.messages()
    for message in messages:
        _valid(schema, message[message.index("<AuditMessage"):])
    assert not any(os.path.basename(str(node.inbox)) in m for m in messages)


def test_an_audit_message_over_udp_is_one_rfc_5424_datagram():
    import socket

    from node.net.notify import SyslogSender

    schema = _schema()
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    context = AuditContext("DICOM_NODE")
    event = Event("event", 1, time.time(), "node.started", {"subject": "vm:1"})
    sender = SyslogSender("127.0.0.1", collector.getsockname()[1], "udp", None)
    try:
        sender.send(context.syslog_line(event, context.message_for(event)))
        datagram, _ = collector.recvfrom(65536)
    finally:
        sender.close()
        collector.close()
    header, _, xml = datagram.partition(b"\xef\xbb\xbf")
    assert header.startswith(b"<85>1 ") and b"DICOM+RFC3881" in header  # authpriv.notice
    assert _valid(schema, xml.decode())
