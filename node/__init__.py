"""dicom-node: NIfTI in, PACS-ready DICOM out.

The package follows the flow of data (README "Architecture", ../shared/GUIDE.md section 2):

- ``node.convert``: pure NIfTI -> DICOM (source, geometry, pixels, uids, vr, profile,
  mapping, iods, part10, series);
- ``node.net``: any DICOM file to any peer (destination, upper layer, DIMSE, SCU, status);
- ``node.service``: settings, journal, the one delivery step, watcher, node loop, operations;
- ``node.cli``: the ``dicom-node`` command (parse, call, render).

Arrows point down that list only: ``convert`` and ``net`` never import each other, ``service``
or ``cli``; nothing imports ``cli``. This module and ``node.errors`` are shared by all.
"""

import uuid

__version__ = "0.1.0"
CONVERTER_NAME = "dicom-node"

#: Identifies this implementation in every file meta header and association request
#: (PS3.7 D.3.3.2): a 2.25 UID from a name-based UUID, so it never changes between runs.
IMPLEMENTATION_CLASS_UID = "2.25.{}".format(
    uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-node:uid"),
               "dicom-node implementation class").int
)
#: Sent with it (at most 16 characters).
IMPLEMENTATION_VERSION_NAME = f"DICOMNODE_{__version__}"[:16]
