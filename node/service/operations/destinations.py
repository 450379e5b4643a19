"""Operator actions on a destination: pause, resume, echo now (recorded as the node's own
echoes are)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.service.operations import OperationError

if TYPE_CHECKING:
    from node.service.journal import JournalStore


def pause(journal: JournalStore, config, name: str, who: str) -> str:
    """Stop sending to a destination: its jobs wait (queued) until it is resumed."""
    config.destination(name)  # a ConfigError for a name that is not configured
    return "paused" if journal.pause(name, who) else "was paused already"


def resume(journal: JournalStore, config, name: str) -> str:
    config.destination(name)
    return "resumed" if journal.resume(name) else "was not paused"


def echo_now(journal: JournalStore, config, name: str) -> str:
    """C-ECHO a destination now and record it as the node's own echoes are recorded."""
    from node.net.remote import echo
    from node.net.status import NetworkFailure

    dest = config.destination(name)
    try:
        result = echo(dest, config.node.ae_title)
    except NetworkFailure as exc:
        journal.record_echo(name, False, exc.message)
        raise OperationError(None, f"echo {name}: {exc.message}") from None
    journal.record_echo(name, True, f"{result.echo_ms:.1f} ms", result.echo_ms)
    return f"echo {name}: ok in {result.echo_ms:.1f} ms"
