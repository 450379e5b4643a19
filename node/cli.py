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
from contextlib import closing
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
    # pynetdicom only encodes and decodes association PDUs for us; we report failures ourselves
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


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


def _destination(args: argparse.Namespace, config):
    """The peer: --host/--port/--aet if given (all three), else a configured destination."""
    from node.config import build_destination

    given = [args.host, args.port, args.aet]
    if any(v is not None for v in given):
        if not all(v is not None for v in given):
            raise ValueError("--host, --port and --aet go together: give all three")
        return build_destination(
            "command line", {"host": args.host, "port": args.port, "ae_title": args.aet}
        )
    return config.destination(args.destination)


def cmd_echo(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.errors import DicomNodeError
    from node.network import NetworkFailure, echo

    try:
        config = load_config(args.config)
        dest = _destination(args, config)
    except (DicomNodeError, ValueError) as exc:
        _error(getattr(exc, "message", str(exc)))
        return EXIT_USAGE
    try:
        result = echo(dest, config.node.ae_title)
    except NetworkFailure as exc:
        _error(f"echo: {exc.message}")
        return EXIT_FAILURE
    print(
        f"echo {result.destination}: success, C-ECHO round trip {result.echo_ms:.1f} ms "
        f"(association {result.association_ms:.1f} ms)"
        + (f", peer implementation {result.implementation}" if result.implementation else "")
    )
    return EXIT_OK


class _Progress:
    """The push's progress bar on a terminal (stderr); silent otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        import time

        self.total, self.done, self.failed = total, 0, 0
        self.enabled = enabled and total > 0
        self.start = time.monotonic()
        self._clock = time.monotonic
        self._last = 0.0

    def __call__(self, result) -> None:
        self.done += 1
        self.failed += not result.outcome.delivered
        now = self._clock()
        if self.enabled and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            rate = self.done / max(now - self.start, 1e-6)
            _bar("push", self.done, self.total, self.start,
                 f"{rate:.0f} inst/s{f', {self.failed} failed' if self.failed else ''}")


def cmd_push(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from node.config import load_config
    from node.errors import DicomNodeError
    from node.network import NetworkFailure, series_instance_counts, store
    from node.push import gather, summarise

    try:
        config = load_config(args.config)
        dest = _destination(args, config)
        profile = config.profile(args.profile)
    except (DicomNodeError, ValueError) as exc:
        _error(getattr(exc, "message", str(exc)))
        return EXIT_USAGE

    with tempfile.TemporaryDirectory(prefix="dicom-node-push-") as spool:
        gathered = gather(args.paths, Path(spool), config, profile, args.jobs or None)
        for warning in gathered.warnings:
            log.warning("%s", warning)
        for problem in gathered.problems:
            _error(f"{problem.message} (skipped)")
        progress = _Progress(len(gathered.files), sys.stderr.isatty() and not args.json)
        report = store(dest, config.node.ae_title, gathered.files, progress)
    summaries = summarise(report)

    verify_ok = True
    if args.verify and summaries:
        try:
            counts = series_instance_counts(
                dest, config.node.ae_title, [(s.study_uid, s.series_uid) for s in summaries]
            )
        except NetworkFailure as exc:
            _error(f"verify: {exc.message}")
            counts, verify_ok = {}, False
        for s in summaries:
            s.verified_count = counts.get(s.series_uid)
            verify_ok &= s.verified_count is not None and s.verified_count >= s.instances

    if args.json:
        print(json.dumps({
            "destination": report.destination,
            "delivered": report.delivered,
            "failed": report.failed,
            "seconds": round(report.seconds, 3),
            "series": [s.as_json() for s in summaries],
            "skipped": [{"path": p.path, "reason": p.reason} for p in gathered.problems],
            "association_failures": sorted({f.message for f in report.failures}),
            **({"verified": verify_ok} if args.verify else {}),
        }, indent=2))
    else:
        for s in summaries:
            line = (f"{s.series_uid}  sent {s.sent}/{s.instances}"
                    + (f", {s.warnings} with warnings" if s.warnings else "")
                    + (f", {s.failed} FAILED" if s.failed else "") + f"  {s.seconds:.1f} s")
            if args.verify:
                line += (f"  PACS has {s.verified_count}" if s.verified_count is not None
                         else "  PACS has none")
            print(line)
            for message in s.messages:
                print(f"    {message}")
        rate = report.delivered / report.seconds if report.seconds else 0.0
        print(f"{report.delivered} of {len(report.results)} instances delivered to "
              f"{report.destination} in {report.seconds:.1f} s ({rate:.0f} inst/s)"
              + (f"; {len(gathered.problems)} inputs skipped" if gathered.problems else ""))
        if args.verify:
            print("verify: every series is complete in the PACS" if verify_ok
                  else "verify: INCOMPLETE: the PACS is missing instances")
    for failure in sorted({f.message for f in report.failures}):
        if report.ok:  # another association sent what this one could not
            print(f"dicom-node: warning: {failure} (the other associations delivered "
                  "everything)", file=sys.stderr)
        else:
            _error(failure)
    if not report.ok or not verify_ok:
        return EXIT_FAILURE
    return EXIT_USAGE if gathered.problems else EXIT_OK


def _load(args: argparse.Namespace):
    from node.config import load_config

    return load_config(args.config)


def _load_or_report(args: argparse.Namespace):
    """The config, or None after printing the one-line error (the caller exits 2)."""
    from node.errors import DicomNodeError

    try:
        return _load(args)
    except DicomNodeError as exc:
        _error(exc.message)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    from node.config import check_environment, describe
    from node.network import NetworkFailure, echo

    config = _load_or_report(args)
    if config is None:
        return EXIT_USAGE
    problems = check_environment(config)
    print(describe(config))
    print()
    status = EXIT_OK
    for problem in problems:
        _error(problem)
        status = EXIT_USAGE
    if not args.no_echo:
        for name, dest in config.destinations.items():
            try:
                result = echo(dest, config.node.ae_title)
                print(f"echo {name} ({dest.address}): ok, {result.echo_ms:.1f} ms")
            except NetworkFailure as exc:
                _error(f"echo {name}: {exc.message}")
                status = status or EXIT_FAILURE
    if status == EXIT_OK:
        print("config OK")
    return status


def cmd_watch(args: argparse.Namespace) -> int:
    from node.config import check_environment
    from node.errors import DicomNodeError
    from node.service import Node, setup_service_logging

    try:
        config = _load(args)
        if not config.watches:
            raise ValueError(f"{config.path or 'built-in defaults'}: no [[watch]] folders: "
                             "add one (see config/node.toml)")
    except (DicomNodeError, ValueError) as exc:
        _error(getattr(exc, "message", str(exc)))
        return EXIT_USAGE
    problems = check_environment(config)
    for problem in problems:
        _error(problem)
    if problems:
        _error("the node does not start on an invalid config (dicom-node check-config)")
        return EXIT_USAGE
    setup_service_logging(config.node.log_format, args.verbose)
    node = Node(config)
    node.install_signals()
    return node.run()


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import time

    from node.service import open_journal

    config = _load_or_report(args)
    if config is None:
        return EXIT_USAGE
    with closing(open_journal(config)) as journal:
        counts = journal.counts()
        oldest = journal.oldest_waiting()
        errors = journal.last_errors()
        alerts = journal.alerts()
        echoes = journal.echoes()
    now = time.time()
    if args.json:
        print(json.dumps({
            "counts": counts,
            "oldest_waiting": oldest.as_json() if oldest else None,
            "alerts": [{"job": j.id, "error": j.last_error} for j in alerts],
            "last_errors": [{"job": j.id, "state": j.state, "error": j.last_error}
                            for j in errors],
            "destinations": [{"name": n, "checked": c, "ok": ok, "message": m}
                             for n, c, ok, m in echoes],
        }, indent=2))
        return EXIT_OK
    print("jobs: " + ", ".join(f"{state} {n}" for state, n in counts.items()))
    if oldest:
        print(f"oldest waiting: job {oldest.id} {Path(oldest.source).name} "
              f"({oldest.state}, {_age(now - oldest.created)})")
    for job in alerts:
        print(f"ALERT: job {job.id}: {job.last_error}")
    if errors:
        print("last errors:")
        for job in errors:
            print(f"  job {job.id} [{job.state}] {job.last_error}")
    for name, checked, ok, message in echoes:
        print(f"destination {name}: {'ok' if ok else 'FAILING'} ({message}), "
              f"checked {_age(now - checked)} ago")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    import json

    from node.journal import STATES
    from node.service import open_journal

    if args.state and args.state not in STATES:
        _error(f"--state {args.state!r}: one of {', '.join(STATES)}")
        return EXIT_USAGE
    config = _load_or_report(args)
    if config is None:
        return EXIT_USAGE
    with closing(open_journal(config)) as journal:
        jobs = journal.jobs(args.state)
    if args.json:
        print(json.dumps([j.as_json() for j in jobs], indent=2))
        return EXIT_OK
    for j in jobs:
        detail = f"{j.delivered}/{j.instances}" if j.instances else ""
        print(f"{j.id:>6}  {j.state:<11} {j.attempts:>3}  {detail:<11} {j.destination:<10} "
              f"{j.source}" + (f"\n        {j.last_error}" if j.last_error and
                               j.state != "done" else ""))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from node.service import open_journal

    if not args.jobs and not args.failed:
        _error("name JOB ids or give --failed")
        return EXIT_USAGE
    config = _load_or_report(args)
    if config is None:
        return EXIT_USAGE
    with closing(open_journal(config)) as journal:
        ids = journal.requeue(None if args.failed else args.jobs,
                              states=("failed", "retry-wait"))
    missing = set(args.jobs or []) - set(ids)
    for job_id in sorted(missing):
        _error(f"job {job_id}: not failed or waiting (see dicom-node jobs)")
    print(f"requeued {len(ids)} job(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))
    return EXIT_USAGE if missing else EXIT_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    import shutil

    from node.nifti import content_digest
    from node.service import open_journal

    config = _load_or_report(args)
    if config is None:
        return EXIT_USAGE
    journal = open_journal(config)
    try:
        if args.action == "list":
            for j in journal.jobs("quarantined"):
                print(f"{j.id:>6}  {j.quarantine_path}\n        {j.last_error}")
            return EXIT_OK
        if args.item is None:
            _error("quarantine release ITEM: name the job id (see dicom-node quarantine list)")
            return EXIT_USAGE
        job = journal.get(args.item)
        if job is None or job.state != "quarantined" or not job.quarantine_path:
            _error(f"job {args.item}: not in quarantine")
            return EXIT_USAGE
        folder = Path(job.quarantine_path)
        for original in (Path(job.source), Path(job.sidecar) if job.sidecar else None):
            if original is not None and (folder / original.name).exists():
                original.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(folder / original.name), original)
        shutil.rmtree(folder, ignore_errors=True)
        source = Path(job.source)
        if not source.exists():
            _error(f"job {job.id}: {source} is missing from quarantine and its original place")
            return EXIT_USAGE
        # the operator vouches for the file as it is now (fixed or not): queue that content
        sidecar = Path(job.sidecar) if job.sidecar and Path(job.sidecar).exists() else None
        journal.transition(job.id, "queued", sha256=content_digest(source, sidecar),
                           size=source.stat().st_size, attempts=0, next_attempt=0,
                           quarantine_path=None)
        print(f"released job {job.id}: {job.source} is queued again")
        return EXIT_OK
    finally:
        journal.close()


def cmd_ingest(args: argparse.Namespace) -> int:
    import time

    from node.config import WatchSettings
    from node.errors import DicomNodeError
    from node.service import Node, setup_service_logging
    from node.watcher import scan

    try:
        config = _load(args)
        dest_name = args.destination or config.node.default_destination
        config.destination(dest_name)
        profile = config.profile(args.profile).name
        if not args.directory.is_dir():
            raise ValueError(f"{args.directory}: not a folder")
    except (DicomNodeError, ValueError) as exc:
        _error(getattr(exc, "message", str(exc)))
        return EXIT_USAGE
    if dest_name is None:
        dest_name = next(iter(config.destinations))
    setup_service_logging(config.node.log_format, args.verbose)
    logging.getLogger("node").setLevel(logging.INFO if args.verbose else logging.WARNING)
    tree = WatchSettings(path=args.directory.resolve(), destination=dest_name, profile=profile,
                         after="keep")  # an archive is read, never moved or deleted
    node = Node(config, watch=False)
    node.install_signals()
    files = list(scan(tree))
    tty = sys.stderr.isatty()
    t0 = time.monotonic()
    job_ids = []
    for i, path in enumerate(files, 1):
        if node.stopping.is_set():
            break
        job = node.enqueue_file(path, tree)
        if job is not None:
            job_ids.append(job.id)
        if tty:
            _bar("enqueue", i, len(files), t0)
    print(f"ingest: {len(job_ids)} files of {args.directory} in the journal", flush=True)
    if args.enqueue_only or node.stopping.is_set():
        node.shutdown()
        return EXIT_OK

    def finished() -> int:
        states = [node.journal.get(i).state for i in job_ids]
        return sum(s in ("done", "failed", "quarantined") for s in states)

    node.start()
    t1 = time.monotonic()
    try:
        while not node.stopping.is_set():
            node.step()
            done = finished()
            if tty:
                _bar("deliver", done, len(job_ids), t1)
            if done == len(job_ids):
                break
            node.idle(0.2)
    finally:
        node.shutdown()
    from node.journal import Journal

    journal = Journal(node.dirs.journal)
    try:
        states = [journal.get(i).state for i in job_ids]
    finally:
        journal.close()
    summary = {s: states.count(s) for s in sorted(set(states))}
    print("ingest: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    if any(s != "done" for s in states):
        print("ingest: see dicom-node jobs --state failed / dicom-node quarantine list")
        return EXIT_FAILURE
    return EXIT_OK


def _bar(label: str, done: int, total: int, t0: float, extra: str = "") -> None:
    """One progress line on stderr, redrawn in place; a newline when done."""
    import time

    elapsed = time.monotonic() - t0
    eta = elapsed / done * (total - done) if done else 0.0
    filled = int(30 * done / total) if total else 30
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
                     f"{extra + ', ' if extra else ''}ETA {_age(eta)}   ")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


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

    def peer_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="node config (TOML)")
        p.add_argument("--host", help="peer host (with --port and --aet: an unconfigured peer)")
        p.add_argument("--port", type=int, help="peer port")
        p.add_argument("--aet", help="peer (called) AE title")

    echo_p = sub.add_parser(
        "echo", help="C-ECHO a destination",
        description="Check that a destination answers DICOM (C-ECHO).",
    )
    echo_p.add_argument("destination", nargs="?", metavar="DEST",
                        help="configured destination (default: [node].default_destination)")
    peer_options(echo_p)
    echo_p.set_defaults(func=cmd_echo)

    push = sub.add_parser(
        "push", help="send NIfTI or DICOM files to a destination",
        description="Send files or folders (recursively) of NIfTI or DICOM with C-STORE. "
        "NIfTI is converted with the profile first. Exit 0 only when every instance was "
        "delivered.",
    )
    push.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    push.add_argument("--to", dest="destination", metavar="DEST",
                      help="configured destination (default: [node].default_destination)")
    peer_options(push)
    push.add_argument("--profile", help="mapping profile for NIfTI inputs")
    push.add_argument("-j", "--jobs", type=int, default=0, metavar="N",
                      help="conversion processes for NIfTI inputs (default: one per core)")
    push.add_argument("--verify", action="store_true",
                      help="then ask the PACS (C-FIND) whether every series is complete")
    push.add_argument("--json", action="store_true", help="print a machine-readable summary")
    push.set_defaults(func=cmd_push)

    check = sub.add_parser(
        "check-config", help="validate the config, show it (secrets masked), echo destinations")
    check.add_argument("--config", type=Path)
    check.add_argument("--no-echo", action="store_true", help="skip the C-ECHO of destinations")
    check.set_defaults(func=cmd_check_config)

    watch = sub.add_parser("watch", help="run the node: watched folders -> PACS",
                           description="Watch the [[watch]] folders and deliver what arrives.")
    watch.add_argument("--config", type=Path, help="node config (TOML)")
    watch.set_defaults(func=cmd_watch)

    status = sub.add_parser("status", help="queue counts, alerts, last errors, echoes")
    status.add_argument("--config", type=Path)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", help="list jobs from the journal")
    jobs.add_argument("--state", help="only jobs in this state")
    jobs.add_argument("--config", type=Path)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)

    retry = sub.add_parser("retry", help="queue failed (or waiting) jobs again")
    retry.add_argument("jobs", nargs="*", type=int, metavar="JOB")
    retry.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument("--config", type=Path)
    retry.set_defaults(func=cmd_retry)

    quarantine = sub.add_parser("quarantine", help="list or release quarantined inputs")
    quarantine.add_argument("action", choices=["list", "release"])
    quarantine.add_argument("item", nargs="?", type=int, metavar="ITEM", help="job id")
    quarantine.add_argument("--config", type=Path)
    quarantine.set_defaults(func=cmd_quarantine)

    ingest = sub.add_parser(
        "ingest", help="archive mode: deliver a whole tree (resumable)",
        description="Enqueue every NIfTI under DIR (files are kept where they are) and deliver "
        "them; run it again after an interruption to resume.",
    )
    ingest.add_argument("directory", type=Path, metavar="DIR")
    ingest.add_argument("--to", dest="destination", metavar="DEST")
    ingest.add_argument("--profile")
    ingest.add_argument("--config", type=Path)
    ingest.add_argument("--enqueue-only", action="store_true",
                        help="only fill the journal; a running node delivers")
    ingest.set_defaults(func=cmd_ingest)
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
