"""The ``dicom-node`` command: parse, call one library function, render."""

from node.cli.app import main

__all__ = ["main"]
