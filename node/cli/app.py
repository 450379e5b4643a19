"""The ``dicom-node`` command: a thin shell over the library functions.

Imports of numpy/nibabel/pydicom happen inside the commands, so ``dicom-node --help`` and the
console commands start fast. User mistakes print ``dicom-node: error: <file>: <reason>`` and
exit 2; a traceback is always a bug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

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
    from node.errors import DicomNodeError
    from node.service.network import NetworkFailure
    from node.service.operations.batch import convert_batch
    from node.service.settings import load_config

    try:
        config = load_config(args.config)
        profile = config.profile(args.profile)
        overrides = _parse_overrides(args.set or [])
        from node.service.operations.batch import checked_results

        results = checked_results(args.results)
    except DicomNodeError as exc:
        _error(exc.message)
        return EXIT_USAGE
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    if args.sidecar and len(args.inputs) > 1:
        _error("--sidecar names the sidecar of one input; give one INPUT with it")
        return EXIT_USAGE
    if args.output is None and not args.explain:
        _error("convert: name the output folder with -o OUTDIR (or use --explain)")
        return EXIT_USAGE
    try:
        reference = _reference(args, config, None)
    except (DicomNodeError, ValueError) as exc:
        _error(getattr(exc, "message", str(exc)))
        return EXIT_USAGE
    except NetworkFailure as exc:
        _error(f"--study-of: {exc.message}")
        return EXIT_FAILURE
    if args.explain:
        status = _explain(args, profile, config.node.uid_root, overrides, reference, results)
        if config.routes:
            from node.errors import DicomNodeError
            from node.service.operations.routes import explain_route

            for path in args.inputs:
                try:
                    _print_route(explain_route(config, path))
                except DicomNodeError as exc:
                    _error(exc.message)
                    status = EXIT_USAGE
        return status
    return _report(convert_batch(
        args.inputs, args.output, profile, config.node.uid_root, sidecar=args.sidecar,
        overrides=overrides, modality=args.modality, jobs=args.jobs or None,
        overwrite=args.overwrite, reference=reference, iod=args.iod,
        compression=args.compression, source_image=args.source, preview=args.preview,
        labelmap=args.labelmap, results=results))


def _reference(args: argparse.Namespace, config, dest):
    """The exam named by --reference or --study-of (None without them); see
    node.service.attach.exam_for."""
    from node.service.attach import exam_for

    if dest is None and getattr(args, "study_of", None) is not None:
        dest = config.destination(getattr(args, "destination", None))
    return exam_for(config, dest, getattr(args, "reference", None),
                    getattr(args, "study_of", None))


def _explain(args: argparse.Namespace, profile, uid_root: str, overrides,
             reference=None, results: tuple[str, ...] = ()) -> int:
    """convert --explain: every attribute, its value and its source; nothing is written."""
    from node.errors import DicomNodeError
    from node.service.operations.batch import explain, planned_results

    status = EXIT_OK
    for path in args.inputs:
        options = dict(sidecar=args.sidecar, overrides=overrides, modality=args.modality,
                       reference=reference, iod=args.iod, source_image=args.source,
                       labelmap=args.labelmap)
        try:
            rows = explain(path, profile, uid_root, **options)
            made = planned_results(path, profile, uid_root, results=results, **options)
        except DicomNodeError as exc:
            _error(exc.message)
            status = EXIT_USAGE
            continue
        print(f"# {path} (profile {profile.name})")
        width = max(len(r.keyword) for r in rows)
        for r in rows:
            value = r.value if len(r.value) <= 48 else r.value[:45] + "..."
            print(f"{r.tag} {r.keyword:<{width}}  {value!s:<48}  {r.source}")
        if made:
            print("# results, delivered with the series in its study:")
            for line in made:
                print(f"#   {line}")
    return status


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
    """The peer: --host/--port (and --called-aet, default ANY-SCP as in echoscu) if given,
    else a configured destination; --calling-aet and the timeout options apply to either."""
    import dataclasses

    from node.service.settings import build_destination, check_ae_title

    if getattr(args, "aet_deprecated", None) is not None:
        print("dicom-node: warning: --aet is deprecated (it meant the called AE title); use "
              "--called-aet or -aec", file=sys.stderr)
        args.called_aet = args.called_aet or args.aet_deprecated
    positional = getattr(args, "peer", None) or []
    if len(positional) == 2:  # echo HOST PORT, as echoscu takes them
        if args.host is not None or args.port is not None:
            raise ValueError("give the peer as HOST PORT or with --host/--port, not both")
        args.host, port = positional
        try:
            args.port = int(port)
        except ValueError:
            raise ValueError(f"{port!r} is not a port number") from None
    elif len(positional) == 1:
        args.destination = positional[0]
    elif len(positional) > 2:
        raise ValueError("name one configured destination, or HOST PORT")
    if args.host is not None or args.port is not None:
        if args.host is None or args.port is None:
            raise ValueError("--host and --port go together (the called AE title defaults to "
                             "ANY-SCP; set it with --called-aet)")
        dest = build_destination("command line", {
            "host": args.host, "port": args.port, "ae_title": args.called_aet or "ANY-SCP"})
    else:
        dest = config.destination(args.destination)
        dimse = [flag for flag, value in (("--called-aet", args.called_aet),
                                          ("--calling-aet", args.calling_aet),
                                          ("--acse-timeout", args.acse_timeout),
                                          ("--dimse-timeout", args.dimse_timeout))
                 if value is not None]
        if dest.web and dimse:
            raise ValueError(f"{', '.join(dimse)}: {dest.name} is a DICOMweb destination "
                             f"({dest.address}), which has no AE titles or DIMSE timeouts")
        if args.called_aet:
            dest = dataclasses.replace(dest, ae_title=check_ae_title("--called-aet",
                                                                     args.called_aet))
    changes = {k: v for k, v in (("connect_timeout", args.connect_timeout),
                                 ("acse_timeout", args.acse_timeout),
                                 ("dimse_timeout", args.dimse_timeout)) if v is not None}
    if args.calling_aet is not None:
        changes["calling_ae_title"] = check_ae_title("--calling-aet", args.calling_aet)
    return dataclasses.replace(dest, **changes) if changes else dest


def cmd_echo(args: argparse.Namespace) -> int:
    import json

    from node.errors import DicomNodeError
    from node.service.network import NetworkFailure
    from node.service.network import echo_destination as echo
    from node.service.settings import load_config

    try:
        config = load_config(args.config, profiles=False)
        dest = _destination(args, config)
    except (DicomNodeError, ValueError) as exc:
        _error(getattr(exc, "message", str(exc)))
        return EXIT_USAGE
    try:
        result = echo(dest, config.node.ae_title)
    except NetworkFailure as exc:
        if args.json:
            print(json.dumps({"destination": dest.address, "ok": False, "kind": exc.kind.value,
                              "error": exc.message, "transient": exc.transient}, indent=2))
        _error(f"echo: {exc.message}")
        return EXIT_FAILURE
    if args.json:
        print(json.dumps({"destination": result.destination, "ok": True,
                          "association_ms": round(result.association_ms, 2),
                          "echo_ms": round(result.echo_ms, 2),
                          "implementation": result.implementation,
                          "service": result.service}, indent=2))
        return EXIT_OK
    association = ("" if result.service != "C-ECHO"
                   else f" (association {result.association_ms:.1f} ms)")
    print(
        f"echo {result.destination}: success, {result.service} round trip "
        f"{result.echo_ms:.1f} ms{association}"
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

    from node.errors import DicomNodeError
    from node.service.network import NetworkFailure
    from node.service.operations.push import push
    from node.service.settings import load_config

    try:
        config = load_config(args.config, profiles=False)  # profiles only for NIfTI inputs
        dest = _destination(args, config)
        overrides = _parse_overrides(args.set or [])
    except (DicomNodeError, ValueError) as exc:
        _error(getattr(exc, "message", str(exc)))
        return EXIT_USAGE

    def profile():
        return load_config(args.config).profile(args.profile)

    def gathered(g) -> _Progress:
        for warning in g.warnings:
            log.warning("%s", warning)
        for problem in g.problems:
            _error(f"{problem.message} (skipped)")
        return _Progress(len(g.files), sys.stderr.isatty() and not args.json)

    commit = args.commit or dest.commitment
    if commit and dest.web:
        _error(f"--commit: {dest.name} is a DICOMweb destination; storage commitment is DIMSE "
               "(PS3.4 J)")
        return EXIT_USAGE
    try:
        reference = _reference(args, config, dest)
        result = push(args.paths, dest, config.node.ae_title, profile, config.node.uid_root,
                      jobs=args.jobs or None, verify=args.verify, on_gathered=gathered,
                      reference=reference, commit=commit, overrides=overrides,
                      modality=args.modality,
                      listen=_commitment_listen(config))
    except (DicomNodeError, ValueError) as exc:  # the profile, the reference
        _error(getattr(exc, "message", str(exc)))
        return EXIT_USAGE
    except NetworkFailure as exc:
        _error(f"--study-of: {exc.message}")
        return EXIT_FAILURE
    return _render_push(args, result)


def _commitment_listen(config) -> tuple:
    """Where push's storage commitment SCP listens: host, port and its TLS files."""
    return config.node.commitment_host, config.node.commitment_port, config.commitment_tls()


def _render_push(args: argparse.Namespace, result) -> int:
    """The push's summary (text or JSON) and its exit status."""
    import json

    report, summaries = result.report, result.series
    if result.verify_error:
        _error(f"verify: {result.verify_error}")
    if result.commit_error:
        _error(f"commit: {result.commit_error}")
    if args.json:
        print(json.dumps({
            "destination": report.destination,
            "delivered": report.delivered,
            "failed": report.failed,
            "seconds": round(report.seconds, 3),
            "series": [s.as_json() for s in summaries],
            "skipped": [{"path": p.path, "reason": p.reason} for p in result.problems],
            "ignored": result.ignored,
            "interrupted": report.interrupted,
            "association_failures": sorted({f.message for f in report.failures}),
            **({"verified": bool(result.verified)} if args.verify else {}),
            **({"committed": bool(result.committed)} if result.committed is not None else {}),
        }, indent=2))
    else:
        for s in summaries:
            line = (f"{s.series_uid}  sent {s.sent}/{s.instances}"
                    + (f", {s.warnings} with warnings" if s.warnings else "")
                    + (f", {s.failed} FAILED" if s.failed else "") + f"  {s.seconds:.1f} s")
            if args.verify:
                line += (f"  PACS has {s.verified_count}" if s.verified_count is not None
                         else "  PACS has none")
            if s.committed is not None:
                line += f"  committed {s.committed}/{s.instances}"
            print(line)
            for message in s.messages:
                print(f"    {message}")
        rate = report.delivered / report.seconds if report.seconds else 0.0
        if report.interrupted and sys.stderr.isatty():
            sys.stderr.write("\n")  # end the progress line
        print(f"{report.delivered} of {len(report.results)} instances delivered to "
              f"{report.destination} in {report.seconds:.1f} s ({rate:.0f} inst/s)"
              + (f"; {len(result.problems)} inputs skipped" if result.problems else "")
              + (f"; {result.ignored} BIDS metadata files ignored" if result.ignored else ""))
        if args.verify:
            print("verify: every series is complete in the PACS" if result.verified
                  else "verify: INCOMPLETE: the PACS is missing instances")
        if result.committed is not None:
            print("commit: the archive committed every instance" if result.committed
                  else "commit: NOT every instance is committed")
    for failure in sorted({f.message for f in report.failures}):
        if report.ok:  # another association sent what this one could not
            print(f"dicom-node: warning: {failure} (the other associations delivered "
                  "everything)", file=sys.stderr)
        else:
            _error(failure)
    if report.interrupted:
        _error(f"interrupted: {report.delivered} of {len(report.results)} instances were "
               "delivered (acknowledged by the peer); push again to send the rest")
        return 130
    if not result.exit_ok:
        return EXIT_FAILURE
    return EXIT_USAGE if result.problems else EXIT_OK


def _config(args: argparse.Namespace, profiles: bool = True):
    """The config. A problem with it is a DicomNodeError, which main() prints as one line
    (exit 2). Read-only commands pass ``profiles=False``: they need no mapping profile, and
    reading profiles loads pydicom."""
    from node.service.settings import load_config

    return load_config(args.config, profiles=profiles)


def _journal(config, create: bool = False):
    """The config's journal. Read-only commands never create one nor write its schema:
    JournalError names the config and the path they looked at."""
    from node.service.journal import JournalError

    try:
        return config.open_journal_at_start() if create else config.open_journal(create=False)
    except JournalError as exc:
        where = config.path or "built-in defaults (no config file found)"
        raise JournalError(f"{exc} [config: {where}]") from None


def cmd_check_config(args: argparse.Namespace) -> int:
    from node.service.network import NetworkFailure
    from node.service.network import echo_destination as echo
    from node.service.settings import check_environment, describe

    config = _config(args)
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


def cmd_route(args: argparse.Namespace) -> int:
    """dicom-node route FILE...: where each file would go, in which form, and why."""
    import json

    from node.errors import DicomNodeError
    from node.service.operations.routes import explain_route

    config = _config(args)
    status = EXIT_OK
    for path in args.files:
        try:
            report = explain_route(config, path)
        except DicomNodeError as exc:
            _error(exc.message)
            status = EXIT_USAGE
            continue
        if args.json:
            print(json.dumps(report.as_json()))
        else:
            _print_route(report)
        if report.refused:
            status = status or EXIT_FAILURE
    return status


def _print_route(report) -> None:
    print(f"# {report.path} (watch {report.watch}; {', '.join(report.facts)})")
    for line in report.why:
        print(f"  {line}")
    for copy in report.copies:
        print(f"  -> {copy.describe()}")
    if report.refused:
        print("  -> nowhere: the node quarantines it with the reason \"no route\"")
    else:
        print(f"  priority {report.priority}")


def cmd_watch(args: argparse.Namespace) -> int:
    from node.errors import DicomNodeError
    from node.service.node import Node, NodeStartError
    from node.service.observability import setup_service_logging
    from node.service.settings import check_environment, load_config

    try:
        config = load_config(args.config)
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
    log.info("config: %s", config.path or "built-in defaults")
    from node.web.auth import ConsoleStartError

    try:
        node = Node(config)
        node.install_signals()
        if config.console.enabled:
            try:
                _start_console(config, node)
            except OSError as exc:  # the console's port is taken
                raise ConsoleStartError(str(exc)) from None
        return node.run()
    except (NodeStartError, ConsoleStartError) as exc:
        _error(str(exc))
        return EXIT_USAGE


def cmd_work(args: argparse.Namespace) -> int:
    """work: deliver the journal's jobs, watch no folder (a cluster's extra hands, fed by
    `ingest --enqueue-only` or by the nodes that watch)."""
    from node.errors import DicomNodeError
    from node.service.node import Node, NodeStartError
    from node.service.observability import setup_service_logging
    from node.service.settings import load_config

    try:
        config = load_config(args.config)
    except (DicomNodeError, ValueError) as exc:
        _error(getattr(exc, "message", str(exc)))
        return EXIT_USAGE
    setup_service_logging(config.node.log_format, args.verbose)
    try:
        node = Node(config, watch=False)
        node.install_signals()
        return node.run()
    except NodeStartError as exc:
        _error(str(exc))
        return EXIT_USAGE


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import time

    from node.service.observability import safe
    from node.service.operations.reports import status_report

    config = _config(args, profiles=False)
    with closing(_journal(config)) as journal:
        report = status_report(journal, config)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    now = time.time()
    print(f"config: {report['config'] or 'built-in defaults'}; journal: {report['journal']}")
    for n in report["nodes"]:
        print(f"node: pid {n['pid']} on {n['host']}, dicom-node {n['version']}, up "
              f"{_age(now - n['started'])}, heartbeat {_age(n['heartbeat_age'])} ago")
    if not report["nodes"]:
        print("node: no node running")
    print("jobs: " + ", ".join(f"{state} {n}" for state, n in report["counts"].items()))
    if oldest := report["oldest_waiting"]:
        print(f"oldest waiting: job {oldest['id']} {safe(Path(oldest['source']).name)} "
              f"({oldest['state']}, {_age(now - oldest['created'])})")
    for alert in report["alerts"]:
        print(f"ALERT: job {alert['job']}: {safe(alert['error'])}")
    if report["last_errors"]:
        print("last errors:")
        for e in report["last_errors"]:
            print(f"  job {e['job']} [{e['state']}] {safe(e['error'])}")
    for d in report["destinations"]:
        health = {True: "ok", False: "FAILING", None: "unknown"}[d["ok"]]
        parts = []
        if d["checked"] is not None:
            parts.append(f"echo {'ok' if d['echo_ok'] else 'failed'} ({safe(d['message'])}), "
                         f"{_age(now - d['checked'])} ago")
        if last := d["last_delivery"]:
            parts.append(f"last delivery {last['state']} {_age(now - last['at'])} ago"
                         + (f": {safe(last['error'])}" if last["state"] != "done" and
                            last["error"] else ""))
        if d.get("backlog"):
            parts.append(f"backlog {d['backlog']}")
        if not d.get("schedule", "").startswith("open (no schedule)"):
            parts.append(f"schedule {d.get('schedule')}")
        print(f"destination {d['name']}: {health}" + (f"; {'; '.join(parts)}" if parts else ""))
    for r in report.get("receivers", []):
        waiting = f"backlog {r['backlog']}" + (
            f" (oldest {_age(r['oldest_age'])})" if r["oldest_age"] is not None else "")
        print(f"receiver {r['name']}: {waiting}, delivered {r['delivered']}"
              + (f", ALERT dropped {r['dropped']}" if r["dropped"] else "")
              + (f"; last error: {safe(r['last_error'])}" if r["last_error"] else ""))
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    import json

    from node.service.observability import safe

    config = _config(args, profiles=False)
    with closing(_journal(config)) as journal:
        jobs = journal.jobs(args.state)
    if args.limit:
        jobs = jobs[-args.limit:]
    if args.json:  # "node": the id of the node that holds (or last worked) the job
        print(json.dumps([{**j.as_json(), "node": (j.owner or "").rpartition(":")[0] or None}
                          for j in jobs], indent=2))
        return EXIT_OK
    print(f"{'JOB':>6}  {'STATE':<11} {'TRY':>3}  {'SENT':<11} {'DEST':<10} SOURCE")
    for j in jobs:
        detail = f"{j.delivered}/{j.instances}" if j.instances else ""
        print(f"{j.id:>6}  {j.state:<11} {j.attempts:>3}  {detail:<11} {j.destination:<10} "
              f"{safe(j.source)}" + (f"\n        {safe(j.last_error)}" if j.last_error and
                                     j.state != "done" else ""))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from node.service.operations.jobs import retry

    if not args.jobs and not args.failed:
        _error("name JOB ids or give --failed")
        return EXIT_USAGE
    from node.service.operations.audit import audited, operator_name

    config = _config(args, profiles=False)
    target = "every failed job" if args.failed else ", ".join(map(str, args.jobs))
    with closing(_journal(config)) as journal:
        ids, refused = audited(journal, operator_name(), "cli", "retry", target,
                               lambda: retry(journal, None if args.failed else args.jobs))
    for job_id in refused:
        _error(f"job {job_id}: not failed or waiting (see dicom-node jobs)")
    print(f"requeued {len(ids)} job(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))
    return EXIT_USAGE if refused else EXIT_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    import json

    from node.service.observability import safe

    config = _config(args, profiles=False)
    if args.action == "list":
        with closing(_journal(config)) as journal:
            items = journal.jobs("quarantined")
        if args.json:
            print(json.dumps([{"job": j.id, "source": j.source, "folder": j.quarantine_path,
                               "reason": j.last_error} for j in items], indent=2))
            return EXIT_OK
        for j in items:
            print(f"{j.id:>6}  {safe(j.quarantine_path)}\n        {safe(j.last_error)}")
        return EXIT_OK
    if args.item is None:
        _error(f"quarantine {args.action} ITEM: name the job id (see dicom-node quarantine "
               "list)")
        return EXIT_USAGE
    from node.service.operations import OperationError
    from node.service.operations.audit import audited, operator_name
    from node.service.operations.jobs import delete_quarantined, release

    with closing(_journal(config)) as journal:
        try:
            act = delete_quarantined if args.action == "delete" else release
            job = audited(journal, operator_name(), "cli", f"quarantine {args.action}",
                          f"job {args.item}", lambda: act(journal, args.item))
            if args.action == "delete":
                print(f"deleted job {job.id}: {safe(job.source)} and its reason are gone")
                return EXIT_OK
        except OperationError as exc:
            _error(exc.message)
            return EXIT_USAGE
    print(f"released job {job.id}: {safe(job.source)} is queued again")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """cancel JOB...: waiting, failed or quarantined jobs are cancelled (audited)."""
    from node.service.operations import OperationError
    from node.service.operations.audit import audited, operator_name
    from node.service.operations.jobs import cancel

    config = _config(args, profiles=False)
    status = EXIT_OK
    with closing(_journal(config)) as journal:
        for job_id in args.jobs:
            try:
                audited(journal, operator_name(), "cli", "cancel", f"job {job_id}",
                        lambda job_id=job_id: cancel(journal, job_id))
                print(f"cancelled job {job_id}")
            except OperationError as exc:
                _error(exc.message)
                status = EXIT_USAGE
    return status


def cmd_pause(args: argparse.Namespace) -> int:
    """pause DEST / resume DEST: the node stops (starts again) sending to it (audited)."""
    from node.service.operations.audit import audited, operator_name
    from node.service.operations.destinations import pause, resume

    config = _config(args, profiles=False)
    with closing(_journal(config)) as journal:
        if args.command == "pause":
            said = audited(journal, operator_name(), "cli", "pause", args.destination,
                           lambda: pause(journal, config, args.destination, operator_name()))
        else:
            said = audited(journal, operator_name(), "cli", "resume", args.destination,
                           lambda: resume(journal, config, args.destination))
    print(f"{args.destination}: {said}")
    return EXIT_OK


def cmd_console(args: argparse.Namespace) -> int:
    """console: the web console alone, against the journal of --config's node."""
    import dataclasses

    from node.web.app import create_app, serve
    from node.web.auth import ConsoleStartError

    config = _config(args, profiles=False)
    settings = dataclasses.replace(
        config.console, host=args.host or config.console.host,
        port=args.port or config.console.port)
    config = dataclasses.replace(config, console=settings)
    _journal(config, create=True).close()  # made, and brought up to date, before any request
    try:
        app = create_app(config)
    except ConsoleStartError as exc:
        _error(str(exc))
        return EXIT_USAGE
    print(f"dicom-node console on http://{settings.host}:{settings.port}/ "
          f"(journal {config.node.state_dir}/journal.sqlite)", file=sys.stderr, flush=True)
    try:
        serve(app, settings.host, settings.port)
    except OSError as exc:
        _error(f"the console cannot listen on {settings.host}:{settings.port} ({exc})")
        return EXIT_USAGE
    return EXIT_OK


def _start_console(config, node) -> None:
    """[console] enabled: the web console inside `dicom-node watch`, with the node's own
    health and metrics."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from node.web.app import create_app, serve

    app = create_app(config, health=node.health,
                     metrics_source=lambda: (generate_latest(node.metrics.registry),
                                             CONTENT_TYPE_LATEST))
    serve(app, config.console.host, config.console.port, block=False)
    log.info("console on http://%s:%d/", config.console.host, config.console.port)


def cmd_journal(args: argparse.Namespace) -> int:
    config = _config(args, profiles=False)
    if args.action == "migrate" and args.url:
        from node.service.operations.journal import copy_journal

        source, counts = copy_journal(config, args.url)
        print(f"copied {source} into {args.url}: " + ", ".join(
            f"{n} {table}" for table, n in counts.items()))
        print(f'now set [node] journal = "{args.url}" on every node')
        return EXIT_OK
    if args.action == "migrate":
        from node.service.operations.journal import migrate_journal

        report = migrate_journal(config)
        if not report.applied:
            print(f"{report.location}: schema version {report.after}, up to date")
        else:
            print(f"{report.location}: schema version {report.before} -> {report.after} "
                  f"(applied {', '.join(report.applied)})")
        return EXIT_OK
    with closing(_journal(config)) as journal:
        if args.action == "check":
            problems = journal.integrity_check()
            for problem in problems[:20]:
                _error(f"{journal.path}: {problem}")
            if problems:
                _error(f"{journal.path}: damaged; back it up (dicom-node journal backup FILE) "
                       "or move it aside, and start the node: it makes a new journal")
                return EXIT_FAILURE
            print(f"{journal.path}: ok ({sum(journal.counts().values())} jobs)")
            return EXIT_OK
        if args.target is None:
            _error("journal backup FILE: name the new file")
            return EXIT_USAGE
        journal.backup(args.target)
    print(f"{args.target}: a copy of {config.node.state_dir / 'journal.sqlite'}")
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    """nodes: who shares the journal, and which are gone."""
    import json
    import time

    from node.service.operations.reports import node_report

    config = _config(args, profiles=False)
    with closing(_journal(config)) as journal:
        nodes = node_report(journal, config, time.time())
    if args.json:
        print(json.dumps(nodes, indent=2))
        return EXIT_OK
    if not nodes:
        print("no node has used this journal")
    for n in nodes:
        flag = "GONE" if n["gone"] else ("stopped" if n["stopped"] else "live")
        print(f"{n['node']:<24} pid {n['pid']:<8} {n['version']:<10} heartbeat "
              f"{_age(n['heartbeat_age'])} ago  {n['jobs_in_hand']} job(s) in hand  {flag}")
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    import time

    from node.errors import DicomNodeError
    from node.service.observability import setup_service_logging
    from node.service.operations.ingest import ingest
    from node.service.settings import load_config

    try:
        config = load_config(args.config)
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
    tty = sys.stderr.isatty()
    t0 = time.monotonic()
    result = ingest(
        config, args.directory, dest_name, profile, enqueue_only=args.enqueue_only,
        on_enqueue=(lambda i, n: _bar("enqueue", i, n, t0)) if tty else None,
        on_enqueued=lambda n, pid: print(
            f"ingest: {n} files of {args.directory} in the journal"
            + (f"; the running node (pid {pid}) delivers them" if pid else ""), flush=True),
        on_deliver=(lambda i, n: _bar("deliver", i, n, t0)) if tty else None,
        routed=args.destination is None, priority="urgent" if args.urgent else "normal",
    )
    if not result.states:  # enqueue only, or interrupted before delivery
        return EXIT_OK
    print("ingest: " + ", ".join(f"{k} {v}" for k, v in result.states.items()))
    if not result.ok:
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
