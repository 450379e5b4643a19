"""``python -m node`` is the same as the ``dicom-node`` command."""

from node.cli.main import main

raise SystemExit(main())
