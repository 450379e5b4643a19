"""The ``dicom-node`` entry point: parse the command line, run the command, turn a user's
mistake into one line and an exit status. It sits above both the parser and the commands, so
neither imports the other's module back (no import cycle inside ``node.cli``)."""

from __future__ import annotations

from collections.abc import Sequence

from node.cli.app import EXIT_USAGE, _error, _setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    from node.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    from node.errors import DicomNodeError

    try:
        return int(args.func(args))
    except DicomNodeError as exc:  # a user's mistake or a damaged journal: one line, no trace
        _error(exc.message)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
