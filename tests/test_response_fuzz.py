"""Property test: whatever bytes a peer sends where a C-STORE response is due, the association
layer ends in an acknowledgement of exactly our request or in a clean NetworkFailure. Never an
exception, never success for a response whose identifiers are not the request's.

Seeded, a few thousand cases: random bytes, and random mutations (flips, cuts, insertions,
duplications, lengths) of a valid C-STORE-RSP PDU built by pynetdicom (an independent encoder).
"""

from __future__ import annotations

import random
import socket
import struct

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from node.net.dimse import C_STORE_RQ, Request, mismatch
from node.net.status import NetworkFailure
from node.net.upper import AcceptedContext, Association
from node.service.settings import build_destination

MR = "1.2.840.10008.5.1.4.1.1.4"
INSTANCE = "1.2.826.0.1.3680043.9.7433.2.17"
REQUEST = Request(context_id=5, command_field=C_STORE_RQ, message_id=7, sop_class_uid=MR,
                  sop_instance_uid=INSTANCE)
DEST = build_destination("fuzz", {"host": "127.0.0.1", "port": 1, "ae_title": "PEER",
                                  "network_timeout": 2, "max_pdu": 16384})


def _valid_response(status: int = 0) -> bytes:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = REQUEST.message_id
    primitive.AffectedSOPClassUID = MR
    primitive.AffectedSOPInstanceUID = INSTANCE
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    out = b""
    for pdv in message.encode_msg(REQUEST.context_id, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdv)
        out += pdu.encode()
    return out


VALID = _valid_response()


def _exchange(data: bytes):
    """Feed ``data`` as the peer's answer; the Message received, or the NetworkFailure."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        assoc = Association(ours, DEST, [AcceptedContext(5, MR, "1.2.840.10008.1.2.1")], 16384)
        try:
            return assoc.receive(1.0, "C-STORE response")
        except NetworkFailure as exc:
            return exc


def _identifiers(message) -> dict[str, object]:
    def us(elem: int):
        raw = message.command.get(elem)
        return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None

    def ui(elem: int):
        raw = message.command.get(elem)
        return None if raw is None else raw.rstrip(b"\0 ").decode("ascii", "replace")

    return {"field": us(0x0100), "responded_to": us(0x0120), "class": ui(0x0002),
            "instance": ui(0x1000), "context": message.context_id}


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        if kind == 0 and b:  # flip a byte
            b[rng.randrange(len(b))] ^= rng.randint(1, 255)
        elif kind == 1 and b:  # cut
            del b[rng.randrange(len(b)):]
        elif kind == 2:  # insert random bytes
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3 and b:  # delete a span
            pos = rng.randrange(len(b))
            del b[pos: pos + rng.randint(1, 8)]
        elif kind == 4:  # the PDU twice
            b += bytes(b)
        elif kind == 5 and len(b) >= 6:  # a lying PDU or PDV length
            where = rng.choice([2, 6]) if len(b) >= 10 else 2
            b[where: where + 4] = struct.pack(">I", rng.choice(
                [0, 1, 2, 0xFFFFFFFF, len(b), rng.randrange(1 << 32)]))
    return bytes(b)


def test_the_valid_response_is_an_acknowledgement():
    message = _exchange(VALID)
    assert not isinstance(message, NetworkFailure), message
    assert mismatch(message, REQUEST) is None
    assert message.status == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_and_mutated_responses_end_cleanly(seed):
    rng = random.Random(seed)
    acknowledged = refused = 0
    for case in range(600):
        data = rng.randbytes(rng.randint(0, 400)) if case % 5 == 0 else _mutate(rng, VALID)
        result = _exchange(data)  # anything but NetworkFailure escaping is a bug
        if isinstance(result, NetworkFailure):
            refused += 1
            continue
        if mismatch(result, REQUEST) is not None:
            refused += 1
            continue
        ids = _identifiers(result)
        # accepted: every identifier it carries is the request's
        assert ids["field"] == 0x8001 and ids["responded_to"] == REQUEST.message_id, (case, ids)
        assert ids["context"] == REQUEST.context_id, (case, ids)
        assert ids["class"] in (None, MR) and ids["instance"] in (None, INSTANCE), (case, ids)
        acknowledged += 1
    assert refused > 400  # the mutations do reach the checks
