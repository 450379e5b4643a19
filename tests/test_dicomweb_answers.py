"""What a STOW-RS answer says of each instance (PS3.18 10.5.3), read from DICOM JSON and XML
as servers write them and as they should never write them; Retry-After; batching; and the
settings of a DICOMweb destination (bad ones refused with the key and the fix)."""

from __future__ import annotations

import email.utils
import json
import time
from pathlib import Path

import pytest
from conftest import run_node

from node.net.dicomweb import _Part, _retry_after, batches, read_answer
from node.net.files import DicomFile
from node.net.status import Outcome
from node.service.settings import build_destination


def _item(uid: str, reason: tuple[str, int] | None = None) -> dict:
    item = {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.4"]},
            "00081155": {"vr": "UI", "Value": [uid]}}
    if reason:
        item[reason[0]] = {"vr": "US", "Value": [reason[1]]}
    return item


def _answer(stored=(), failed=()) -> bytes:
    return json.dumps({"00081199": {"vr": "SQ", "Value": list(stored)},
                       "00081198": {"vr": "SQ", "Value": list(failed)}}).encode()


def test_each_instance_gets_the_verdict_of_its_own_entry():
    said = read_answer(_answer(
        stored=[_item("1.1"), _item("1.2", ("00081196", 0xB000))],
        failed=[_item("1.3", ("00081197", 0xA700)), _item("1.4", ("00081197", 0xC000)),
                _item("1.5", ("00081197", 0x0111)), _item("1.6", ("00081197", 0x0122)),
                _item("1.7")]))
    assert {uid: v[0] for uid, v in said.items()} == {
        "1.1": Outcome.SUCCESS, "1.2": Outcome.WARNING, "1.3": Outcome.TRANSIENT,
        "1.4": Outcome.PERMANENT, "1.5": Outcome.DUPLICATE, "1.6": Outcome.PERMANENT,
        "1.7": Outcome.TRANSIENT}
    assert said["1.5"][2].endswith("the archive holds this instance already")
    assert said["1.3"][1] == 0xA700 and "0xA700" in said["1.3"][2]
    assert said["1.7"][2] == "failed without a Failure Reason"


def test_an_instance_listed_as_stored_and_as_failed_is_not_stored():
    said = read_answer(_answer(stored=[_item("1.1")], failed=[_item("1.1", ("00081197",
                                                                             0x0110))]))
    assert said["1.1"][0] is Outcome.TRANSIENT and not said["1.1"][0].delivered


def test_the_xml_answer_reads_like_the_json_one():
    xml = b"""<?xml version="1.0" encoding="utf-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.9</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US"><Value number="1">43264</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.8</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>"""
    said = read_answer(xml)
    assert said["1.8"][0] is Outcome.SUCCESS
    assert said["1.9"][:2] == (Outcome.PERMANENT, 0xA900)


@pytest.mark.parametrize("body", [
    b"", b"   ", b"<html>Bad gateway</html>", b"OK", b"{", b'{"00081199": {"Value": 3}}',
    b'{"00081199": {"Value": ["1.2"]}}', b"[1, 2]", b'"text"',
    b'{"00081198": {"Value": [{"00081155": {"Value": ["1.2"]}, "00081197": {"Value": [99999]}}]}}',
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
    b"[" * 100000, b"<x><y></x>", b'<?xml version="1.0"?><NativeDicomModel><DicomAttribute '
    b'tag="00081199"><Item><DicomAttribute tag="00081155"></Item></NativeDicomModel>',
])
def test_an_answer_that_is_not_one_raises_and_so_confirms_nothing(body):
    with pytest.raises((ValueError, RecursionError)):
        read_answer(body)


def test_an_answer_without_sequences_confirms_nothing():
    assert read_answer(b'{"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}}') == {}


def test_retry_after_in_seconds_or_as_a_date_and_a_backoff_without_one():
    assert _retry_after("7", 0) == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after(later, 0) <= 31
    assert _retry_after(None, 0) == 1.0 and _retry_after("soon", 3) == 8.0
    assert _retry_after(None, 40) == 32.0  # bounded


def test_batches_hold_by_count_and_bytes_and_a_big_instance_goes_alone():
    parts = [_Part(DicomFile(Path(f"/x/{i}"), "1.2", f"1.{i}", "1.2.840.10008.1.2.1"), size)
             for i, size in enumerate([10, 10, 10, 50, 10, 10, 10])]
    sizes = [[p.size for p in b] for b in batches(parts, max_bytes=30, max_count=2)]
    assert sizes == [[10, 10], [10], [50], [10, 10], [10]]
    assert sum(len(b) for b in batches(parts, 10**9, 100)) == 7


# --- settings --------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "words"), [
    ({"url": "dicom-web"}, ".url: 'dicom-web' is not an http(s) URL"),
    ({"url": "https://pacs:70000/dicom-web"}, "not a URL"),
    ({"url": "http://user:pw@pacs/dicom-web"}, "no user name or password in the URL"),
    ({"url": "http://pacs/dicom-web?x=1"}, "has a query"),
    ({"url": "http://pacs/dicom-web", "auth": {"kind": "ntlm"}},
     "auth.kind: write one of none, basic, bearer, oauth2"),
    ({"url": "http://pacs/dicom-web", "auth": {"kind": "basic", "username": "u"}},
     "auth.password_env: kind = \"basic\" needs it"),
    ({"url": "http://pacs/dicom-web", "auth": {"kind": "bearer", "token": "abc"}},
     "auth.token: a secret is never written in the config"),
    ({"url": "http://pacs/dicom-web", "auth": {"kind": "oauth2", "client_id": "c",
                                               "client_secret_env": "S",
                                               "token_url": "not a url"}},
     "auth.token_url.url"),
    ({"url": "http://pacs/dicom-web", "ae_title": "PACS", "dimse_timeout": 3},
     "ae_title, dimse_timeout do not apply to a DICOMweb destination"),
    ({"host": "pacs", "port": 104, "ae_title": "PACS", "batch_bytes": 10},
     "batch_bytes: applies to a DICOMweb destination only"),
    ({"url": "http://pacs/dicom-web", "batch_instances": 0}, "batch_instances"),
])
def test_a_bad_web_destination_is_refused_with_the_key(raw, words):
    with pytest.raises(ValueError, match="destinations.w") as caught:
        build_destination("w", raw)
    assert words in str(caught.value)


def test_check_config_names_a_missing_secret_and_never_shows_one(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nstate_dir = "var"\ndefault_destination = "web"\n'
                   '[destinations.web]\nurl = "https://pacs.example/dicom-web"\n'
                   'auth = { kind = "bearer", token_env = "TEST_WEB_TOKEN" }\n')
    missing = run_node("check-config", "--config", cfg, "--no-echo",
                       env={"TEST_WEB_TOKEN": ""})
    assert missing.returncode != 0
    problems = [line for line in missing.stderr.splitlines() if "error" in line]
    assert problems == [f"dicom-node: error: {cfg}: [destinations.web].auth.token_env: the "
                        "environment variable TEST_WEB_TOKEN is not set; export it with the "
                        "secret"]
    shown = run_node("check-config", "--config", cfg, "--no-echo",
                     env={"TEST_WEB_TOKEN": "tok-SECRET-123"})
    assert shown.returncode == 0, shown.stderr
    assert 'token_env = "TEST_WEB_TOKEN"' in shown.stdout
    assert "tok-SECRET-123" not in shown.stdout + shown.stderr
    assert "ae_title" not in shown.stdout.split("[destinations.web]")[1]


@pytest.mark.parametrize(("destination", "words"), [
    ('url = "https//pacs/dicom-web"', "[destinations.web].url: 'https//pacs/dicom-web' is not "
                                      "an http(s) URL with a host; write it as url = "),
    ('url = "https://pacs/dicom-web"\nauth = { kind = "kerberos" }',
     "[destinations.web].auth.kind: write one of none, basic, bearer, oauth2, not 'kerberos'"),
])
def test_check_config_refuses_a_bad_web_destination_in_one_line(tmp_path, destination, words):
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "var"\n[destinations.web]\n{destination}\n')
    proc = run_node("check-config", "--config", cfg, "--no-echo")
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
