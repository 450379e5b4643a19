"""The ``dicom-node`` command: a thin shell over the library functions.

Imports of numpy/nibabel/pydicom happen inside the commands, so ``dicom-node --help`` and the
console commands start fast. User mistakes print ``dicom-node: error: <file>: <reason>`` and
exit 2; a traceback is always a bug.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from node import __version__

EXIT_OK = 0
EXIT_FAILURE = 1  # e.g. delivery failed
EXIT_USAGE = 2  # bad input, bad config, bad arguments

log = logging.getLogger("node")


def _error(message: str) -> None:
    print(f"dicom-node: error: {message}", file=sys.stderr)


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"dicom-node: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WarningFormatter())
    root = logging.getLogger("node")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def _parse_overrides(items: Sequence[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in items:
        keyword, sep, value = item.partition("=")
        if not sep or not keyword.strip():
            raise ValueError(f"--set {item!r}: write KEYWORD=VALUE, e.g. --set PatientID=P001")
        overrides[keyword.strip()] = value
    return overrides


def cmd_convert(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.errors import DicomNodeError
    from node.nifti import nifti_stem

    try:
        config = load_config(args.config)
        profile = config.profile(args.profile)
        overrides = _parse_overrides(args.set or [])
    except DicomNodeError as exc:
        _error(exc.message)
        return EXIT_USAGE
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    if args.sidecar and len(args.inputs) > 1:
        _error("--sidecar names the sidecar of one input; give one INPUT with it")
        return EXIT_USAGE

    used: set[str] = set()
    names = [_unique_name(nifti_stem(path), used) for path in args.inputs]
    jobs = max(1, min(args.jobs or os.cpu_count() or 1, len(args.inputs)))
    convert = partial(
        _convert_one, out_dir=args.output, config=config, profile=profile, sidecar=args.sidecar,
        overrides=overrides, modality=args.modality,
    )
    if jobs == 1:
        results = map(convert, args.inputs, names)
        return _report(results)
    # conversion is CPU-bound: one process per core for a batch
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return _report(pool.map(convert, args.inputs, names))


def _convert_one(path: Path, name: str, **kwargs):
    """Worker: a SeriesSummary, or the DicomNodeError to report (never raises for bad input)."""
    from node.convert import convert_to_folder
    from node.errors import DicomNodeError

    try:
        return convert_to_folder(path, name=name, **kwargs)
    except DicomNodeError as exc:
        return exc


def _report(results) -> int:
    from node.errors import DicomNodeError

    status = EXIT_OK
    for result in results:
        if isinstance(result, DicomNodeError):
            _error(result.message)
            status = EXIT_USAGE
            continue
        for warning in result.warnings:
            log.warning("%s: %s", result.source, warning)
        print(
            f"{result.series_uid}  {result.sop_class_name}  "
            f"{result.n_instances} instances  {result.folder}",
            flush=True,
        )
    return status


def _unique_name(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="Move NIfTI data into PACS as correct DICOM.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    convert = sub.add_parser(
        "convert",
        help="convert NIfTI files to DICOM series on disk",
        description="Convert NIfTI (.nii/.nii.gz, 3D or 4D) to one DICOM series per file.",
    )
    convert.add_argument("inputs", nargs="+", metavar="INPUT", type=Path)
    convert.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR")
    convert.add_argument("--config", type=Path, help="node config (TOML)")
    convert.add_argument("--profile", help="mapping profile (default: [node].default_profile)")
    convert.add_argument("--sidecar", type=Path, help="BIDS JSON sidecar (default: next to INPUT)")
    convert.add_argument(
        "--set", action="append", metavar="KEYWORD=VALUE", help="override an attribute (repeatable)"
    )
    convert.add_argument("--modality", choices=["MR", "CT", "OT"], type=str.upper)
    convert.add_argument(
        "-j", "--jobs", type=int, default=0, metavar="N",
        help="conversion processes for a batch (default: one per core)",
    )
    convert.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
