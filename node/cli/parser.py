"""The ``dicom-node`` command line: one small function per subcommand, each naming the
command function of :mod:`node.cli.app` it calls. Every option has help text."""

from __future__ import annotations

import argparse
from pathlib import Path

from node import __version__
from node.cli.app import (
    cmd_cancel,
    cmd_check_config,
    cmd_console,
    cmd_convert,
    cmd_echo,
    cmd_ingest,
    cmd_jobs,
    cmd_journal,
    cmd_nodes,
    cmd_pause,
    cmd_push,
    cmd_quarantine,
    cmd_retry,
    cmd_route,
    cmd_status,
    cmd_watch,
    cmd_work,
)
from node.service.states import STATES  # no sqlite3: the console starts fast


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="Move NIfTI data into PACS as correct DICOM.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv: debug)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="node config (TOML); default $DICOM_NODE_CONFIG, then the "
                        "project's config/node.toml (never the current folder's)")
    # the same two options after the subcommand; SUPPRESS keeps a value given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output (-vv: debug)")
    common.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help="node config (TOML)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_convert, _echo, _push, _node_commands, _ingest):
        add(sub, common)
    return parser


def _convert(sub, common: argparse.ArgumentParser) -> None:
    """dicom-node convert"""
    convert = sub.add_parser(
        "convert", parents=[common],
        help="convert NIfTI files to DICOM series on disk",
        description="Convert NIfTI (.nii/.nii.gz, 3D or 4D) to one DICOM series per file.",
    )
    convert.add_argument("inputs", nargs="+", metavar="INPUT", type=Path,
                         help="NIfTI files (.nii, .nii.gz)")
    convert.add_argument("-o", "--output", type=Path, metavar="OUTDIR",
                         help="folder that receives one series folder per input")
    convert.add_argument("--explain", action="store_true",
                         help="print every attribute, its value and where it comes from "
                         "(default, static, sidecar key, file-name entity, --set, fallback, "
                         "header); write nothing")
    convert.add_argument("--profile", help="mapping profile (default: [node].default_profile)")
    convert.add_argument("--sidecar", type=Path, help="BIDS JSON sidecar (default: next to INPUT)")
    convert.add_argument(
        "--set", action="append", metavar="KEYWORD=VALUE", help="override an attribute (repeatable)"
    )
    convert.add_argument("--modality", choices=["MR", "CT", "OT"], type=str.upper,
                         help="override the profile's modality (and so the SOP class)")
    convert.add_argument(
        "-j", "--jobs", type=int, default=0, metavar="N",
        help="conversion processes for a batch (default: one per core)",
    )
    convert.add_argument("--overwrite", action="store_true",
                         help="replace an existing folder of the same name even when it is "
                         "not this input's earlier output")
    convert.add_argument("--iod", choices=["image", "enhanced", "seg", "pmap", "auto"],
                         help="the object: classic single-frame images (the profile's default), "
                         "one enhanced multi-frame instance, a segmentation of a label map, a "
                         "parametric map of a float map; auto: seg for BIDS _dseg/_mask/_probseg")
    convert.add_argument("--source", type=Path, metavar="IMAGE",
                         help="the image NIfTI a seg or pmap refers to (default: the one beside "
                         "it with the same BIDS subject, session, acquisition and run)")
    convert.add_argument("--preview", action="store_true",
                         help="write preview.png into each series folder: three planes of the "
                         "DICOM beside the same planes of the NIfTI, with orientation letters")
    convert.add_argument("--compression", choices=["none", "rle", "jpeg-ls", "jpeg2000"],
                         default="none", help="lossless encoding of the files (default: none)")
    convert.add_argument("--results", type=lambda v: [x.strip() for x in v.split(",") if x],
                         metavar="LIST", help="with a SEG, also make: overlay, measurements, "
                         "report (comma-separated; default: the profile's results)")
    convert.add_argument("--labelmap", action="store_true",
                         help="a seg is a LABELMAP segmentation (Label Map Segmentation "
                         "Storage, for an archive that takes it), not BINARY")
    _attach_options(convert)
    convert.add_argument("--to", dest="destination", metavar="DEST",
                         help="the configured destination that --study-of asks (or its "
                         "query_destination; default: [node].default_destination)")
    convert.set_defaults(func=cmd_convert)


def _attach_options(p: argparse.ArgumentParser) -> None:
    """--reference / --study-of: the clinical exam the new series join."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--reference", type=Path, metavar="FILE|DIR",
                       help="a DICOM file (or folder) of the patient's exam: the series join "
                       "its study, under its patient")
    group.add_argument("--study-of", metavar="KEY=VALUE[,KEY=VALUE]",
                       help="find the exam with a C-FIND at STUDY level: AccessionNumber=..., "
                       "StudyInstanceUID=..., or PatientID=...,StudyDate=YYYYMMDD")


def _peer_options(p: argparse.ArgumentParser) -> None:
    """How to reach a peer, as DCMTK names it."""
    p.add_argument("--host", help="peer host (with --port: a peer not in the config)")
    p.add_argument("--port", type=int, help="peer port")
    p.add_argument("--called-aet", "-aec", dest="called_aet", metavar="AE",
                   help="the peer's (called) AE title; default the destination's, or "
                   "ANY-SCP with --host")
    p.add_argument("--calling-aet", "-aet", dest="calling_aet", metavar="AE",
                   help="our (calling) AE title; default [node].ae_title")
    p.add_argument("--aet", dest="aet_deprecated", metavar="AE",
                   help="deprecated: the called AE title (use --called-aet)")
    p.add_argument("--connect-timeout", type=float, metavar="S",
                   help="seconds for the TCP connection")
    p.add_argument("--acse-timeout", type=float, metavar="S",
                   help="seconds for the association answer")
    p.add_argument("--dimse-timeout", type=float, metavar="S",
                   help="seconds for each response")


def _echo(sub, common: argparse.ArgumentParser) -> None:
    """dicom-node echo"""
    echo_p = sub.add_parser(
        "echo", parents=[common], help="C-ECHO a destination (QIDO-RS for DICOMweb)",
        description="Check that a destination answers DICOM (C-ECHO; for a DICOMweb "
        "destination a QIDO-RS request, which also proves the credentials).",
    )
    echo_p.add_argument("peer", nargs="*", metavar="DEST | HOST PORT",
                        help="a configured destination (default: [node].default_destination),"
                        " or HOST PORT as in echoscu")
    echo_p.set_defaults(destination=None)
    _peer_options(echo_p)
    echo_p.add_argument("--json", action="store_true", help="print the result as JSON")
    echo_p.set_defaults(func=cmd_echo)


def _push(sub, common: argparse.ArgumentParser) -> None:
    """dicom-node push"""
    push = sub.add_parser(
        "push", parents=[common], help="send NIfTI or DICOM files to a destination",
        description="Send files or folders (recursively) of NIfTI or DICOM with C-STORE. "
        "NIfTI is converted with the profile first. Exit 0 only when every instance was "
        "delivered.",
    )
    push.add_argument("paths", nargs="+", metavar="PATH", type=Path,
                      help="NIfTI or DICOM files, or folders of them")
    push.add_argument("--to", dest="destination", metavar="DEST",
                      help="configured destination (default: [node].default_destination)")
    _peer_options(push)
    push.add_argument("--profile", help="mapping profile for NIfTI inputs")
    push.add_argument("--set", action="append", metavar="KEYWORD=VALUE",
                      help="override an attribute of the NIfTI inputs' series, as in convert "
                      "(repeatable), e.g. --set PatientID=P001 for a file without sub-")
    push.add_argument("--modality", choices=["MR", "CT", "OT"], type=str.upper,
                      help="override the profile's modality for NIfTI inputs")
    push.add_argument("-j", "--jobs", type=int, default=0, metavar="N",
                      help="conversion processes for NIfTI inputs (default: one per core)")
    push.add_argument("--verify", action="store_true",
                      help="then ask the PACS (C-FIND) whether every series is complete")
    push.add_argument("--commit", action="store_true",
                      help="then ask the archive to commit every instance (storage commitment, "
                      "PS3.4 J); its report comes here or to [node].commitment_port")
    push.add_argument("--json", action="store_true", help="print a machine-readable summary")
    _attach_options(push)
    push.set_defaults(func=cmd_push)


def _node_commands(sub, common: argparse.ArgumentParser) -> None:
    """check-config, watch, status, jobs, retry, quarantine, journal"""
    check = sub.add_parser(
        "check-config", parents=[common],
        help="validate the config, show it (secrets masked), echo destinations")
    check.add_argument("--no-echo", action="store_true", help="skip the C-ECHO of destinations")
    check.set_defaults(func=cmd_check_config)

    route = sub.add_parser(
        "route", parents=[common],
        help="which route a file matches, its destinations, in which form, and why",
        description="Say where the node would send each FILE ([[route]] tables, or its "
        "watch's destination) and in which form; nothing is sent. Exit 1 when a file "
        "matches no route (the node would quarantine it).")
    route.add_argument("files", nargs="+", type=Path, metavar="FILE")
    route.add_argument("--json", action="store_true", help="one JSON object per file")
    route.set_defaults(func=cmd_route)

    watch = sub.add_parser("watch", parents=[common],
                           help="run the node: watched folders -> PACS",
                           description="Watch the [[watch]] folders and deliver what arrives.")
    watch.set_defaults(func=cmd_watch)

    status = sub.add_parser("status", parents=[common],
                            help="queue counts, alerts, last errors, echoes")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", parents=[common], help="list jobs from the journal")
    jobs.add_argument("--state", choices=STATES, help="only jobs in this state")
    jobs.add_argument("--limit", type=int, default=0, metavar="N",
                      help="the N most recent jobs (default: all)")
    jobs.add_argument("--json", action="store_true", help="print the jobs as JSON")
    jobs.set_defaults(func=cmd_jobs)

    retry = sub.add_parser("retry", parents=[common], help="queue failed (or waiting) jobs again")
    retry.add_argument("jobs", nargs="*", type=int, metavar="JOB", help="job ids")
    retry.add_argument("--failed", action="store_true", help="every failed job")
    retry.set_defaults(func=cmd_retry)

    quarantine = sub.add_parser("quarantine", parents=[common],
                                help="list, release or delete quarantined inputs")
    quarantine.add_argument("action", choices=["list", "release", "delete"],
                            help="list the quarantined inputs, release one after fixing it, "
                            "or delete one (its files and reason)")
    quarantine.add_argument("item", nargs="?", type=int, metavar="ITEM", help="job id")
    quarantine.add_argument("--json", action="store_true", help="list as JSON")
    quarantine.set_defaults(func=cmd_quarantine)

    cancel = sub.add_parser("cancel", parents=[common],
                            help="cancel waiting, failed or quarantined jobs")
    cancel.add_argument("jobs", nargs="+", type=int, metavar="JOB", help="job ids")
    cancel.set_defaults(func=cmd_cancel)
    for verb, text in (("pause", "stop sending to a destination (its jobs wait)"),
                       ("resume", "send to a paused destination again")):
        p = sub.add_parser(verb, parents=[common], help=text)
        p.add_argument("destination", metavar="DEST", help="a configured destination")
        p.set_defaults(func=cmd_pause)

    console = sub.add_parser("console", parents=[common],
                             help="the web console, alone, against the node's journal")
    console.add_argument("--host", help="address to bind (default [console].host, 127.0.0.1)")
    console.add_argument("--port", type=int, help="port (default [console].port, 8080)")
    console.set_defaults(func=cmd_console)

    journal = sub.add_parser("journal", parents=[common],
                             help="check, back up or migrate the journal")
    journal.add_argument("action", choices=["check", "backup", "migrate"],
                         help="check: SQLite's integrity check; backup: a consistent copy "
                         "while nodes run; migrate: bring the journal's schema up to date "
                         "(with --to: copy this SQLite journal into PostgreSQL)")
    journal.add_argument("target", nargs="?", type=Path, metavar="FILE",
                         help="backup: the new file")
    journal.add_argument("--to", dest="url", metavar="URL",
                         help="migrate: postgresql://user@host:5432/dbname (an empty database)")
    journal.set_defaults(func=cmd_journal)

    work = sub.add_parser("work", parents=[common],
                          help="deliver the journal's jobs without watching folders (a "
                          "cluster node fed by ingest --enqueue-only or other nodes)")
    work.set_defaults(func=cmd_work)

    nodes = sub.add_parser("nodes", parents=[common],
                           help="the nodes that share the journal: id, version, heartbeat, jobs")
    nodes.add_argument("--json", action="store_true", help="print them as JSON")
    nodes.set_defaults(func=cmd_nodes)


def _ingest(sub, common: argparse.ArgumentParser) -> None:
    """dicom-node ingest"""
    ingest = sub.add_parser(
        "ingest", parents=[common], help="archive mode: deliver a whole tree (resumable)",
        description="Enqueue every NIfTI under DIR (files are kept where they are) and deliver "
        "them; run it again after an interruption to resume.",
    )
    ingest.add_argument("directory", type=Path, metavar="DIR", help="the tree to deliver")
    ingest.add_argument("--to", dest="destination", metavar="DEST",
                        help="configured destination (default: the [[route]] tables, else "
                        "[node].default_destination)")
    ingest.add_argument("--urgent", action="store_true",
                        help="its jobs go before any other, even outside schedules")
    ingest.add_argument("--profile", help="mapping profile (default: [node].default_profile)")
    ingest.add_argument("--enqueue-only", action="store_true",
                        help="only fill the journal; a running node delivers")
    ingest.set_defaults(func=cmd_ingest)
