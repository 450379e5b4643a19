"""``python -m node`` is the same as the ``dicom-node`` command."""

from node.cli.app import main

raise SystemExit(main())
