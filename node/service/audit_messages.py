"""DICOM audit messages (PS3.15 A.5) for the node's events, in RFC 5424 syslog lines.

Which event becomes which message (PS3.15 A.5.3):

- ``node.started`` / ``node.stopped``: Application Activity (110100), Application Start
  (110120) / Application Stop (110121); the node as Application Launcher's application.
- ``job.done``: DICOM Instances Transferred (110104), action Read by us as the source, to the
  destination; the study as a participant object (UIDs only: no patient data leaves the node
  unless the receiver has ``phi = true``, then the patient is named by the job's source path).
- ``console.login`` / ``console.logout``: User Authentication (110114), Login (110122) /
  Logout (110123), success or failure.
- ``access.refused``: Security Alert (110113), Node Authentication (110126).
- ``query.*``: Query (110112), the query as base64 (A.5.3.13).

The XML is built with the standard library and checked, in the tests, against the RELAX NG
schema of PS3.15 A.5.1.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import socket
import xml.etree.ElementTree as ET

from node import __version__
from node.service.journal.outbox import Event

#: RFC 5424 PRI: facility 10 (security/authorization, "authpriv"), severity 5 (notice); a
#: failure is severity 4 (warning).
_FACILITY = 10


def _code(parent: ET.Element, tag: str, code: str, system: str, meaning: str) -> ET.Element:
    """A coded value (PS3.15 A.5.1: csd-code, codeSystemName, originalText)."""
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system,
                                       "originalText": meaning})


def _time(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class AuditContext:
    """Who reports: this node (its AE title, host and process) and the site."""

    def __init__(self, ae_title: str, site: str = "", host: str | None = None) -> None:
        self.ae_title = ae_title
        self.site = site
        self.host = host or socket.gethostname()
        self.pid = os.getpid()

    def _message(self, event: Event, code: tuple[str, str], action: str, ok: bool,
                 kind: tuple[str, str] | None = None, why: str | None = None) -> ET.Element:
        root = ET.Element("AuditMessage")
        ident = ET.SubElement(root, "EventIdentification", {
            "EventActionCode": action, "EventDateTime": _time(event.at),
            "EventOutcomeIndicator": "0" if ok else "4"})
        _code(ident, "EventID", code[0], "DCM", code[1])
        if kind is not None:
            _code(ident, "EventTypeCode", kind[0], "DCM", kind[1])
        if why:
            ET.SubElement(ident, "EventOutcomeDescription").text = why[:500]
        return root

    def _us(self, root: ET.Element, requestor: bool, role: tuple[str, str] | None = None
            ) -> None:
        """This node as an active participant (PS3.15 A.5.2.1: the AE title as the
        alternative user id, the process as the user id)."""
        me = ET.SubElement(root, "ActiveParticipant", {
            "UserID": str(self.pid), "AlternativeUserID": f"AETITLES={self.ae_title}",
            "UserName": "dicom-node", "UserIsRequestor": "true" if requestor else "false",
            "NetworkAccessPointID": self.host, "NetworkAccessPointTypeCode": "1"})
        if role is not None:
            _code(me, "RoleIDCode", role[0], "DCM", role[1])

    def _us_to(self, root: ET.Element, peer_name: str | None) -> None:
        """This node as the source, the peer (a destination's name) as the destination, and
        the audit source: the participants of a transfer or a query."""
        self._us(root, True, ("110153", "Source Role ID"))
        peer = ET.SubElement(root, "ActiveParticipant", {
            "UserID": str(peer_name or "unknown"), "UserIsRequestor": "false"})
        _code(peer, "RoleIDCode", "110152", "DCM", "Destination Role ID")
        self._source(root)

    def _source(self, root: ET.Element) -> None:
        attrs = {"AuditSourceID": f"dicom-node@{self.host}"}
        if self.site:
            attrs["AuditEnterpriseSiteID"] = self.site
        source = ET.SubElement(root, "AuditSourceIdentification", attrs)
        ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server

    def application_activity(self, event: Event) -> ET.Element:
        start = event.type == "node.started"
        root = self._message(event, ("110100", "Application Activity"), "E", True,
                             ("110120", "Application Start") if start
                             else ("110121", "Application Stop"))
        self._us(root, False, ("110150", "Application"))
        self._source(root)
        return root

    def instances_transferred(self, event: Event, phi: bool) -> ET.Element:
        d = event.data
        root = self._message(event, ("110104", "DICOM Instances Transferred"), "R", True)
        self._us_to(root, d.get("destination"))
        study = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(d.get("study_uid") or "unknown"),
            "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3",
            "ParticipantObjectDataLifeCycle": "10"})  # Report; Export
        _code(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        ET.SubElement(study, "ParticipantObjectName").text = "Study"  # the schema wants one
        description = ET.SubElement(study, "ParticipantObjectDescription")
        ET.SubElement(description, "SOPClass", {"NumberOfInstances": str(int(
            d.get("delivered") or 0))})
        if phi and d.get("phi", {}).get("source"):
            patient = ET.SubElement(root, "ParticipantObjectIdentification", {
                "ParticipantObjectID": os.path.basename(str(d["phi"]["source"]))[:200],
                "ParticipantObjectTypeCode": "1", "ParticipantObjectTypeCodeRole": "1"})
            _code(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
            ET.SubElement(patient, "ParticipantObjectName").text = "Patient"
        return root

    def user_authentication(self, event: Event) -> ET.Element:
        d = event.data
        login = event.type == "console.login"
        ok = d.get("outcome") == "ok"
        root = self._message(event, ("110114", "User Authentication"), "E", ok,
                             ("110122", "Login") if login else ("110123", "Logout"),
                             None if ok else "refused: wrong or missing credentials")
        ET.SubElement(root, "ActiveParticipant", {
            "UserID": str(d.get("subject") or "unknown")[:200], "UserIsRequestor": "true"})
        self._us(root, False)
        self._source(root)
        return root

    def security_alert(self, event: Event) -> ET.Element:
        d = event.data
        root = self._message(event, ("110113", "Security Alert"), "E", False,
                             ("110126", "Node Authentication"),
                             f"refused access: {d.get('subject') or 'unknown'}")
        self._us(root, False)
        self._source(root)
        return root

    def query(self, event: Event) -> ET.Element:
        d = event.data
        root = self._message(event, ("110112", "Query"), "E", d.get("outcome") == "ok")
        self._us_to(root, d.get("subject"))
        query = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Q/R FIND
            "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "24"})
        _code(query, "ParticipantObjectIDTypeCode", "110181", "DCM", "SOP Class UID")
        text = str(d.get("phi", {}).get("detail") or "") if d.get("phi") else ""
        ET.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(
            text.encode()).decode()
        return root

    def message_for(self, event: Event, phi: bool = False) -> ET.Element | None:
        """The audit message an event makes, or None for events with none."""
        if event.type in ("node.started", "node.stopped"):
            return self.application_activity(event)
        if event.type == "job.done":
            return self.instances_transferred(event, phi)
        if event.type in ("console.login", "console.logout"):
            return self.user_authentication(event)
        if event.type == "access.refused":
            return self.security_alert(event)
        if event.type.startswith("query."):
            return self.query(event)
        return None

    def syslog_line(self, event: Event, message: ET.Element) -> bytes:
        """RFC 5424: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID - XML`` (MSGID
        "DICOM+RFC3881", as IHE ATNA asks), UTF-8 with its byte order mark."""
        failed = message.find("EventIdentification").get("EventOutcomeIndicator") != "0"
        pri = _FACILITY * 8 + (4 if failed else 5)
        xml = ET.tostring(message, encoding="unicode", xml_declaration=False)
        header = (f"<{pri}>1 {_time(event.at)} {self.host[:255]} dicom-node "
                  f"{self.pid} DICOM+RFC3881 [origin software=\"dicom-node\" "
                  f"swVersion=\"{__version__}\"] ")
        return header.encode() + b"\xef\xbb\xbf" + xml.encode()
