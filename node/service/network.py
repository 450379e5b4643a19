"""The network as the console sees it: echo a destination, and the failure every operation
that talks to a peer may raise. The CLI renders these; it never reaches ``node.net`` itself
(GUIDE section 2), so the network layer can change under it."""

from __future__ import annotations

from node.net.remote import echo
from node.net.scu import EchoResult
from node.net.status import NetworkFailure

__all__ = ["EchoResult", "NetworkFailure", "echo_destination"]


def echo_destination(dest, calling_ae: str) -> EchoResult:
    """C-ECHO ``dest`` (PS3.4 A.4); NetworkFailure with the reason when it does not answer."""
    return echo(dest, calling_ae)
