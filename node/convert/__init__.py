"""The converter: NIfTI + sidecar + mapping profile + UID root in, DICOM datasets out.

Pure: it reads the source and returns datasets or files; it knows neither the network nor the
journal, and imports nothing of ``node.net``, ``node.service`` or ``node.cli``.
"""
