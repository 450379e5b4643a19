"""Operator actions, audited: who did what, on what, and how it ended (the CLI and the
web console alike)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from node.errors import DicomNodeError

if TYPE_CHECKING:
    from node.service.journal import JournalStore


def operator_name() -> str:
    """Who acts at the command line: the OS user (the console uses its login)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container): its number
        return f"uid {os.getuid()}"


def audited(journal: JournalStore, who: str, via: str, action: str, target: str,
            act: Callable[[], Any]) -> Any:
    """Run one operator action and record it (who, what, when, the result) in the journal's
    audit log, whether it succeeds or not."""
    try:
        result = act()
    except DicomNodeError as exc:
        journal.audit(who, via, action, target, f"refused: {exc.reason}")
        raise
    journal.audit(who, via, action, target, "ok" if result is None else _describe(result))
    return result


def _describe(result: Any) -> str:
    if hasattr(result, "state") and hasattr(result, "id"):  # a journal Job
        return f"job {result.id} is {result.state}"
    if isinstance(result, tuple) and len(result) == 2:
        done, refused = result
        return f"requeued {list(done)}" + (f", refused {list(refused)}" if refused else "")
    return str(result)
