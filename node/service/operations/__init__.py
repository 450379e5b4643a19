"""What an operator can ask for, as library functions the CLI and the console call, one module
per kind of work:

- ``batch``: convert a batch of files into folders (``convert``), explain one
- ``gather``, ``push``: prepare inputs and send them by hand (``push``), verify by count
- ``ingest``: archive mode, a whole tree enqueued and delivered
- ``jobs``: release, delete from quarantine, retry, cancel
- ``destinations``: pause, resume, echo now
- ``reports``: the status and node reports
- ``audit``: who did what (every operator action goes through :func:`audit.audited`)
- ``journal``: the journal's schema (migrate) and its copy into PostgreSQL

``dicom-node`` only parses arguments, calls one function and renders what it returns. Bad input
is returned or raised as a :class:`~node.errors.DicomNodeError` (one line naming the file and
the reason), never printed here.
"""

from __future__ import annotations

from node.errors import DicomNodeError


class OperationError(DicomNodeError):
    """An operator's request that cannot be done as asked (unknown job, wrong state)."""
