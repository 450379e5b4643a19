"""``python -m node`` is the same as the ``dicom-node`` command."""

from node.cli import main

raise SystemExit(main())
