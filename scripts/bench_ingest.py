#!/usr/bin/env python3
"""Benchmark: end-to-end ingestion by the node, against storescu's send-only rate, same run.

50 NIfTI volumes (mixed 3D and 4D, about 2,000 instances) are dropped at once into the watched
folder of a running `dicom-node watch`, with the bundled Orthanc (TCP_NODELAY=1) as destination.
Measured: time from the first drop to the last instance stored in Orthanc (polled over REST),
volumes/min, instances/s, and the node's peak RSS (its process tree, sampled). Then the same
series, converted once by `dicom-node convert`, are sent by DCMTK's storescu to a fresh Orthanc
(send only). Target (issue "The node"): node end-to-end rate >= 0.6x storescu's send-only rate,
peak RSS under 1 GB.

With ``--console`` the node phase runs twice, with the web console off and on (and a client
polling its dashboard every 5 s, as the open page does): target (issue "A web
console"), no measurable cost to the delivery rate.

With ``--nodes N`` (issue "Past one machine") the same inputs are enqueued once into a
PostgreSQL journal (a private cluster started here, fsync on) and delivered by 1, then N
``dicom-node work`` processes sharing it: the total rate of each, and whether this machine's
cores, not the journal, are the limit.

    .venv/bin/python scripts/bench_ingest.py [--work DIR] [--workers N] [--console] [--nodes N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import orthanc  # noqa: E402
from orthanc import free_port  # noqa: E402

NODE_AET = "DICOM_NODE"



def make_inputs(folder: Path) -> tuple[list[Path], int]:
    """40 3D volumes of 128x128x40 and 10 4D volumes of 64x64x8x5: 2,000 instances."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths, instances = [], 0
    for i in range(50):
        shape = (128, 128, 40) if i < 40 else (64, 64, 8, 5)
        path = folder / f"sub-{i:02d}_{'T1w' if i < 40 else 'bold'}.nii.gz"
        if not path.exists():
            data = rng.integers(0, 3000, size=shape, dtype=np.int16)
            nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
        paths.append(path)
        instances += int(np.prod(shape[2:]))
    return paths, instances


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return total


def node_phase(work: Path, inputs: list[Path], n_inst: int, args, console: bool
               ) -> tuple[float, int]:
    """Drop the inputs into a running node's inbox; (seconds to the last instance in Orthanc,
    peak RSS in KiB). ``console``: with the web console on and a client polling it."""
    import threading
    import urllib.request

    storage, state, inbox = work / "orthanc", work / "var", work / "inbox"
    for folder in (storage, state, inbox):
        shutil.rmtree(folder, ignore_errors=True)
    inbox.mkdir()
    server = orthanc.start(storage, http_port=free_port(), dicom_port=free_port(),
                           node_aet=NODE_AET, verbose=args.verbose_pacs)
    cfg = work / "node.toml"
    cfg.write_text(
        f'[node]\nae_title = "{NODE_AET}"\ndefault_destination = "pacs"\n'
        f'state_dir = "{state}"\nworkers = {args.workers}\nrescan_seconds = 5\n'
        f'[destinations.pacs]\nhost = "127.0.0.1"\nport = {server.dicom_port}\n'
        f'ae_title = "ORTHANC"\n[[watch]]\npath = "{inbox}"\nsettle_seconds = 0.5\n'
        'after = "delete"\n'
    )
    console_port = free_port()
    if console:
        cfg.write_text(cfg.read_text() + f"[console]\nenabled = true\nport = {console_port}\n")
    polling = threading.Event()

    def poll() -> None:  # a person watching the dashboard
        while not polling.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{console_port}/", timeout=5) as r:
                    r.read()
            except OSError:
                pass
            polling.wait(5.0)  # as the dashboard refreshes itself

    node = subprocess.Popen([sys.executable, "-m", "node", "watch", "--config", str(cfg)],
                            stdout=open(work / "node.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        time.sleep(5.0)  # let it start watching (and warm its workers), console or not
        staging = work / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for p in inputs:
            shutil.copy(p, staging / p.name)
        if console:
            threading.Thread(target=poll, daemon=True).start()
        t0 = time.perf_counter()
        for p in inputs:  # dropped at once: renamed into place
            os.replace(staging / p.name, inbox / p.name)
        peak, stored = 0, 0
        deadline = time.monotonic() + 1800
        while stored < n_inst and time.monotonic() < deadline:
            peak = max(peak, tree_rss_kib(node.pid))
            stored = int(server.get("/statistics")["CountInstances"])
            time.sleep(0.1)
        node_s = time.perf_counter() - t0
    finally:
        polling.set()
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        orthanc.stop(storage)
        shutil.copy(storage / "orthanc.log", work / "orthanc-node-run.log")
    if stored < n_inst:
        raise SystemExit(f"only {stored}/{n_inst} instances arrived")
    return node_s, peak


def cluster_phase(work: Path, inputs: list[Path], n_inst: int, nodes: int, url: str
                  ) -> tuple[float, float]:
    """Enqueue the inputs into the PostgreSQL journal at ``url``, then time ``nodes`` `work`
    processes delivering them to a fresh Orthanc; (seconds, mean load of the machine)."""
    storage = work / "orthanc-cluster"
    shutil.rmtree(storage, ignore_errors=True)
    server = orthanc.start(storage, http_port=free_port(), dicom_port=free_port(),
                           node_aet=NODE_AET)
    procs = []
    try:
        configs = []
        for k in range(nodes + 1):  # config 0 feeds, 1..N work
            folder = work / f"cluster-{nodes}-{k}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            cfg = folder / "node.toml"
            cfg.write_text(
                f'[node]\nae_title = "{NODE_AET}"\ndefault_destination = "pacs"\n'
                f'journal = "{url}"\nnode_id = "bench{nodes}-{k}"\nstate_dir = "{folder / "var"}"\n'
                "workers = 2\n[destinations.pacs]\nhost = \"127.0.0.1\"\n"
                f'port = {server.dicom_port}\nae_title = "ORTHANC"\n')
            configs.append(cfg)
        subprocess.run([sys.executable, "-m", "node", "ingest", str(inputs[0].parent), "--to",
                        "pacs", "--enqueue-only", "--config", str(configs[0])], check=True,
                       capture_output=True)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        for cfg in configs[1:]:
            procs.append(subprocess.Popen([sys.executable, "-m", "node", "work", "--config",
                                           str(cfg)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        stored, deadline = 0, time.monotonic() + 1800
        while stored < n_inst and time.monotonic() < deadline:
            stored = int(server.get("/statistics")["CountInstances"])
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        load = max(os.getloadavg()[0], load0)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        orthanc.stop(storage)
    if stored < n_inst:
        raise SystemExit(f"cluster of {nodes}: only {stored}/{n_inst} instances arrived")
    return seconds, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--workers", type=int, default=4, help="[node].workers (default 4)")
    parser.add_argument("--verbose-pacs", action="store_true", help="Orthanc --verbose")
    parser.add_argument("--console", action="store_true",
                        help="run the node phase with the web console off, then on")
    parser.add_argument("--nodes", type=int, default=0,
                        help="also: 1 and N nodes sharing a PostgreSQL journal")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs, n_inst = make_inputs(work / "inputs")
    print(f"50 volumes (40 x 128x128x40, 10 x 64x64x8x5), {n_inst} instances; "
          f"cores: {os.cpu_count()}; workers: {args.workers}; work: {work}")

    node_s, peak = node_phase(work, inputs, n_inst, args, console=False)
    if args.console:  # off and on interleaved, three each: the medians count
        import statistics

        runs: dict[bool, list[float]] = {False: [node_s], True: []}
        with_peak = 0
        for console in (True, False, True, False, True):
            seconds, rss = node_phase(work, inputs, n_inst, args, console=console)
            runs[console].append(seconds)
            with_peak = max(with_peak, rss) if console else with_peak
        off, on = statistics.median(runs[False]), statistics.median(runs[True])
        print(f"node with the console off: {off:6.2f} s ({n_inst / off:.0f} inst/s), on and "
              f"watched: {on:6.2f} s ({n_inst / on:.0f} inst/s), medians of 3 interleaved "
              f"(off {', '.join(f'{x:.2f}' for x in runs[False])}; on "
              f"{', '.join(f'{x:.2f}' for x in runs[True])}): {on / off:.2f}x the time "
              f"(target: no measurable cost); peak RSS {peak / 1024:.0f} / "
              f"{with_peak / 1024:.0f} MB")

    if args.nodes:
        sys.path.insert(0, str(ROOT / "tests"))
        from support.pgserver import Cluster

        cluster = Cluster(fsync=True)
        try:
            one_s, _ = cluster_phase(work, inputs, n_inst, 1, cluster.fresh_database("one"))
            many_s, load = cluster_phase(work, inputs, n_inst, args.nodes,
                                         cluster.fresh_database("many"))
        finally:
            cluster.destroy()
        print(f"PostgreSQL journal, 1 node: {one_s:6.2f} s ({n_inst / one_s:.0f} inst/s); "
              f"{args.nodes} nodes: {many_s:6.2f} s ({n_inst / many_s:.0f} inst/s), "
              f"{one_s / many_s:.2f}x the rate of one; load average {load:.1f} on "
              f"{os.cpu_count()} cores")

    # --- storescu, send only, the same series
    storage = work / "orthanc"
    dicom = work / "dicom"
    if not dicom.exists():
        subprocess.run([sys.executable, "-m", "node", "convert", *map(str, inputs), "-o",
                        str(dicom)], check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(storage, ignore_errors=True)
    server = orthanc.start(storage, http_port=free_port(), dicom_port=free_port(),
                           node_aet=NODE_AET)
    try:
        t0 = time.perf_counter()
        subprocess.run(["storescu", "-aet", NODE_AET, "-aec", "ORTHANC", "--scan-directories",
                        "--recurse", "127.0.0.1", str(server.dicom_port), str(dicom)],
                       check=True, env={**os.environ, "TCP_NODELAY": "1"},
                       capture_output=True)
        ref_s = time.perf_counter() - t0
        assert int(server.get("/statistics")["CountInstances"]) == n_inst
    finally:
        orthanc.stop(storage)

    node_rate, ref_rate = n_inst / node_s, n_inst / ref_s
    print(f"node end to end (drop -> last instance in Orthanc): {node_s:6.2f} s  "
          f"{50 / node_s * 60:6.0f} volumes/min  {node_rate:6.0f} inst/s  "
          f"peak RSS {peak / 1024:.0f} MB")
    print(f"storescu send only (same series, converted):         {ref_s:6.2f} s  "
          f"{'':>18} {ref_rate:6.0f} inst/s")
    print(f"node vs storescu send-only: {node_rate / ref_rate:.2f}x (target >= 0.6x); "
          f"peak RSS {peak / 1024:.0f} MB (target < 1024 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
