"""Errors a user can act on.

Every error raised for bad input or bad configuration carries the file it is about and a
reason in plain words; the CLI prints it as one line (``dicom-node: error: <file>: <reason>``)
and the node puts the input in quarantine with the same text. A traceback means a bug in
dicom-node, never a user mistake.
"""

from __future__ import annotations

from pathlib import Path


class DicomNodeError(Exception):
    """Base class: a problem with the input or the configuration, not a bug."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = str(path) if path is not None else None
        self.reason = reason
        super().__init__(self.message)

    def __reduce__(self):  # picklable across conversion worker processes
        return (self.__class__, (self.path, self.reason))

    @property
    def message(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class InputError(DicomNodeError):
    """The input file (NIfTI or its sidecar) cannot be converted as it is."""


class MappingError(InputError):
    """A metadata value from a profile, sidecar, file name or override is invalid for its tag."""


class ConfigError(DicomNodeError):
    """The node configuration or a mapping profile is invalid."""
