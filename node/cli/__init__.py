"""The ``dicom-node`` command: parse, call one library function, render."""

from node.cli.main import main

__all__ = ["main"]
