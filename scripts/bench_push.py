#!/usr/bin/env python3
"""Benchmark: C-STORE throughput of `dicom-node push` against DCMTK's storescu, same run.

2,000 instances (256x256 int16, made by dicom-node convert) are pushed to the bundled Orthanc
(started with TCP_NODELAY=1, so DCMTK disables Nagle's algorithm) by:
  * storescu (DCMTK, C++), with TCP_NODELAY=1, one association;
  * dicom-node push with 1, 2 and 4 parallel associations.
Each run gets a fresh, empty Orthanc, so nobody profits from duplicates. Each tool runs
``--repeat`` times, interleaved, and the median wall time counts (loopback runs on a shared
2-core machine vary by +-10%). Prints instances/s, MB/s and the ratio to storescu, wall time
from process start to exit for both. Target (issue "DICOM networking"): >= 1.0x storescu.

Then the start-up case (issue "One house"): two 176-slice series, 352 instances, where the
process start is a large part of what a user waits for; target >= 1.0x storescu, whole process.

Then compressed against uncompressed delivery (issue "Clinical-grade objects"): five
256x256x176 head phantoms converted once uncompressed and once as JPEG-LS lossless, each pushed
to a fresh Orthanc (2 associations); target: the compressed push no slower.

Then DICOMweb (issue "DICOMweb destinations", ``--web`` or ``--only-web``): the same 352 and
2,000 instances to Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) by dicomweb-client's
``store_instances`` (the files read with pydicom, as its API takes them), by dicom-node push
over STOW-RS, and by dicom-node push over C-STORE to the same Orthanc; target: STOW-RS push
>= 2x dicomweb-client; the ratio to our C-STORE is reported. Then peak RSS of the STOW-RS push
against series size (352 and 2,000 instances, and a series of ``--big-gb`` GB of 512x512
instances): target flat, under 200 MB for 2 GB.

    .venv/bin/python scripts/bench_push.py [--work DIR] [--instances 2000] [--repeat 3]
                                           [--small-repeat 5] [--compressed-repeat 3]
                                           [--profile] [--web | --only-web] [--big-gb 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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



def make_dicom(work: Path, instances: int, per: int = 200) -> tuple[Path, int]:
    """Convert NIfTI volumes of 256x256x``per`` int16 into DICOM folders; (folder, bytes)."""
    out = work / f"dicom-{instances}-{per}"
    if not out.exists():
        src = work / f"nifti-{instances}-{per}"
        src.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        n_volumes = -(-instances // per)
        paths = []
        for v in range(n_volumes):
            nz = min(per, instances - v * per)
            data = rng.integers(0, 4000, size=(256, 256, nz), dtype=np.int16)
            path = src / f"sub-{v + 1:02d}_T1w.nii.gz"
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
            paths.append(str(path))
        subprocess.run([sys.executable, "-m", "node", "convert", *paths, "-o", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
    files = sorted(out.rglob("*.dcm"))
    return out, sum(f.stat().st_size for f in files)


def run(label: str, make_cmd, storage: Path, expected: int, env=None, web: bool = False,
        rss: list | None = None) -> float:
    """Start a fresh Orthanc (``web``: with its DICOMweb plugin), time ``make_cmd(server)``
    (or ``make_cmd(dicom_port)``), check that all arrived; ``rss`` gets the command's peak
    resident memory in MB."""
    shutil.rmtree(storage, ignore_errors=True)
    server = orthanc.start(storage, http_port=free_port(), dicom_port=free_port(),
                           node_aet=NODE_AET, dicomweb=web)
    try:
        cmd = make_cmd(server) if web else make_cmd(server.dicom_port)
        # the peak RSS through GNU time: a process forked from this one (numpy, pydicom
        # loaded) would count this one's pages as its own peak
        peak = storage.parent / "peak-rss"
        if rss is not None:
            cmd = ["/usr/bin/time", "-f", "%M", "-o", str(peak), *cmd]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, **(env or {})})
        _, status, _ = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        error = proc.stderr.read().decode(errors="replace")[-2000:]
        proc.stderr.close()
        stored = int(server.get("/statistics")["CountInstances"])
    finally:
        orthanc.stop(storage)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or stored != expected:
        raise SystemExit(f"{label}: exit {code}, Orthanc has {stored}/{expected}\n{error}")
    if rss is not None:
        rss.append(int(peak.read_text().split()[-1]) / 1024)
    return seconds


def compare(work: Path, folder: Path, n: int, mb: float, repeat: int,
            assocs_list: tuple[int, ...]) -> float:
    """storescu and dicom-node push, interleaved ``repeat`` times; prints the table and
    returns the best dicom-node ratio to storescu (median wall times, whole process)."""
    print(f"{'median of ' + str(repeat) + ' runs':<36} {'wall':>8} {'inst/s':>9} "
          f"{'MB/s':>7}  vs storescu")

    def storescu(port: int) -> list[str]:
        return ["storescu", "-aet", NODE_AET, "-aec", "ORTHANC", "--scan-directories",
                "--recurse", "127.0.0.1", str(port), str(folder)]

    def push(port: int, assocs: int) -> list[str]:
        cfg = work / f"node-{assocs}.toml"
        cfg.write_text(
            f'[node]\nae_title = "{NODE_AET}"\n[destinations.pacs]\nhost = "127.0.0.1"\n'
            f'port = {port}\nae_title = "ORTHANC"\nmax_associations = {assocs}\n'
        )
        return [sys.executable, "-m", "node", "push", str(folder), "--to", "pacs",
                "--config", str(cfg)]

    tools = {"storescu (DCMTK), 1 association": (storescu, {"TCP_NODELAY": "1"})}
    for assocs in assocs_list:
        tools[f"dicom-node push, {assocs} association(s)"] = (
            lambda port, assocs=assocs: push(port, assocs), None)
    walls: dict[str, list[float]] = {label: [] for label in tools}
    for _ in range(repeat):  # interleaved, so a slow spell of the machine hits all
        for label, (make_cmd, env) in tools.items():
            walls[label].append(run(label, make_cmd, work / "orthanc", n, env=env))
    ref = statistics.median(walls["storescu (DCMTK), 1 association"])
    best = 0.0
    for label, times in walls.items():
        seconds = statistics.median(times)
        if not label.startswith("storescu"):
            best = max(best, ref / seconds)
        spread = f"{min(times):.2f}-{max(times):.2f}"
        print(f"{label:<36} {seconds:7.2f}s {n / seconds:9.0f} {mb / seconds:7.1f}  "
              f"{ref / seconds:5.2f}x   (runs {spread} s)")
    return best


def compressed_case(work: Path, repeat: int) -> int:
    """The same five head phantoms pushed uncompressed and as JPEG-LS lossless."""
    from bench_convert import SHAPE, head_phantom

    src = work / "phantoms"
    if not src.exists():
        src.mkdir(parents=True)
        for i in range(5):
            nib.save(nib.Nifti1Image(head_phantom(SHAPE, i), np.eye(4)),
                     str(src / f"sub-{i + 1:02d}_T1w.nii.gz"))
    inputs = sorted(map(str, src.glob("*.nii.gz")))
    n = 5 * SHAPE[2]
    folders = {}
    for name, options in (("uncompressed", []), ("jpeg-ls", ["--compression", "jpeg-ls"])):
        folders[name] = work / f"phantoms-{name}"
        if not folders[name].exists():
            subprocess.run([sys.executable, "-m", "node", "convert", *options, *inputs, "-o",
                            str(folders[name])], check=True, stdout=subprocess.DEVNULL)

    def push(folder: Path):
        def cmd(port: int) -> list[str]:
            cfg = work / "node-compressed.toml"
            cfg.write_text(
                f'[node]\nae_title = "{NODE_AET}"\n[destinations.pacs]\nhost = "127.0.0.1"\n'
                f'port = {port}\nae_title = "ORTHANC"\nmax_associations = 2\n')
            return [sys.executable, "-m", "node", "push", str(folder), "--to", "pacs",
                    "--config", str(cfg)]
        return cmd

    walls: dict[str, list[float]] = {name: [] for name in folders}
    for _ in range(repeat):
        for name, folder in folders.items():
            walls[name].append(run(name, push(folder), work / "orthanc", n))
    print(f"\ncompressed delivery: 5 x {SHAPE} head phantoms, {n} instances, 2 associations, "
          f"median of {repeat}")
    for name, folder in folders.items():
        size = sum(f.stat().st_size for f in folder.rglob("*.dcm"))
        print(f"{name:<14} {statistics.median(walls[name]):7.2f}s  {size / 1024**2:7.1f} MB")
    ratio = statistics.median(walls["jpeg-ls"]) / statistics.median(walls["uncompressed"])
    print(f"JPEG-LS push time / uncompressed: {ratio:.2f}x  (target <= 1.0x)")
    return 0


#: dicomweb-client's store_instances, as its documentation shows it: datasets read with
#: pydicom, one request (run in its own process, like the other tools).
DICOMWEB_CLIENT = """
import sys
from pathlib import Path
import pydicom, requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
url, user, password, folder = sys.argv[1:5]
session = create_session_from_user_pass(user, password)
client = DICOMwebClient(url=url, session=session)
datasets = [pydicom.dcmread(f) for f in sorted(Path(folder).rglob("*.dcm"))]
client.store_instances(datasets=datasets)
"""


def make_big(work: Path, gigabytes: float) -> tuple[Path, int, int]:
    """One series of 512x512 int16 instances, ``gigabytes`` in all, written from a template
    (converting a 2 GB NIfTI would measure the converter); (folder, instances, bytes)."""
    import pydicom
    from pydicom.uid import generate_uid

    n = int(gigabytes * 1024**3 // (512 * 512 * 2))
    out = work / f"big-{n}"
    if not out.exists():
        template = make_dicom(work, 1, per=1)[0]
        ds = pydicom.dcmread(next(template.rglob("*.dcm")))
        ds.Rows = ds.Columns = 512
        ds.PixelData = np.random.default_rng(1).integers(0, 4000, (512, 512), np.int16).tobytes()
        ds.SeriesInstanceUID = generate_uid()
        tmp = work / f"big-{n}.partial"
        tmp.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = i + 1
            ds.save_as(tmp / f"{i + 1:05d}.dcm", enforce_file_format=True)
        tmp.rename(out)
    files = sorted(out.glob("*.dcm"))
    return out, len(files), sum(f.stat().st_size for f in files)


def web_case(work: Path, repeat: int, big_gb: float) -> int:
    """STOW-RS push against dicomweb-client and against our own C-STORE; RSS by size."""
    password_env = "BENCH_ORTHANC_PASSWORD"

    def node_push(folder: Path, web: bool):
        def cmd(server) -> list[str]:
            os.environ[password_env] = server.password
            cfg = work / f"node-{'web' if web else 'dimse'}.toml"
            dest = (f'url = "{server.url}/dicom-web"\nauth = {{ kind = "basic", username = '
                    f'"{orthanc.USER}", password_env = "{password_env}" }}\n' if web else
                    f'host = "127.0.0.1"\nport = {server.dicom_port}\nae_title = "ORTHANC"\n')
            cfg.write_text(f'[node]\nae_title = "{NODE_AET}"\n[destinations.pacs]\n{dest}')
            return [sys.executable, "-m", "node", "push", str(folder), "--to", "pacs",
                    "--config", str(cfg)]
        return cmd

    def client(folder: Path):
        def cmd(server) -> list[str]:
            return [sys.executable, "-c", DICOMWEB_CLIENT, f"{server.url}/dicom-web",
                    orthanc.USER, server.password, str(folder)]
        return cmd

    rss: dict[str, list[float]] = {}
    for n, per in ((352, 176), (2000, 200)):
        folder, size = make_dicom(work, n, per=per)
        tools = {"dicomweb-client store_instances": client(folder),
                 "dicom-node push, STOW-RS": node_push(folder, True),
                 "dicom-node push, C-STORE": node_push(folder, False)}
        walls: dict[str, list[float]] = {label: [] for label in tools}
        for _ in range(repeat):
            for label, make_cmd in tools.items():
                walls[label].append(run(label, make_cmd, work / "orthanc", n, web=True,
                                        rss=rss.setdefault(f"{label} {n}", [])))
        print(f"\nDICOMweb: {n} instances, {size / 1024**2:.0f} MB, to Orthanc's DICOMweb "
              f"plugin, median of {repeat}, whole process")
        ref = statistics.median(walls["dicomweb-client store_instances"])
        for label, times in walls.items():
            seconds = statistics.median(times)
            print(f"{label:<34} {seconds:7.2f}s {n / seconds:7.0f} inst/s  "
                  f"{ref / seconds:5.2f}x dicomweb-client  peak RSS "
                  f"{max(rss[f'{label} {n}']):5.0f} MB")
        stow = statistics.median(walls["dicom-node push, STOW-RS"])
        cstore = statistics.median(walls["dicom-node push, C-STORE"])
        print(f"STOW-RS push vs dicomweb-client: {ref / stow:.2f}x (target >= 2x); "
              f"STOW-RS time / C-STORE time: {stow / cstore:.2f}")
    if big_gb:
        folder, n, size = make_big(work, big_gb)
        peak: list[float] = []
        seconds = run("big", node_push(folder, True), work / "orthanc", n, web=True, rss=peak)
        print(f"\nSTOW-RS push of one series of {n} instances, {size / 1024**3:.2f} GB: "
              f"{seconds:.1f} s, peak RSS {peak[0]:.0f} MB (target < 200 MB; 352 instances: "
              f"{max(rss['dicom-node push, STOW-RS 352']):.0f} MB)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool (median counts)")
    parser.add_argument("--small-repeat", type=int, default=5,
                        help="runs per tool of the 352-instance start-up case (0: skip)")
    parser.add_argument("--compressed-repeat", type=int, default=3,
                        help="runs per variant of the compressed-delivery case (0: skip)")
    parser.add_argument("--only-compressed", action="store_true",
                        help="only the compressed-delivery case")
    parser.add_argument("--profile", action="store_true", help="where dicom-node's time goes")
    parser.add_argument("--web", action="store_true", help="also the DICOMweb cases")
    parser.add_argument("--only-web", action="store_true", help="only the DICOMweb cases")
    parser.add_argument("--big-gb", type=float, default=2.0,
                        help="size of the series whose STOW-RS push RSS is measured (0: skip)")
    args = parser.parse_args()
    # our package's bytecode, as an installed package has it (pip compiles at install time):
    # the whole-process times are not to include compiling dicom-node's own modules
    import compileall

    compileall.compile_dir(str(ROOT / "node"), quiet=1)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-push-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.only_web:
        return web_case(work, args.repeat, args.big_gb)
    if args.only_compressed:
        return compressed_case(work, args.compressed_repeat or 3)
    folder, total_bytes = make_dicom(work, args.instances)
    n = args.instances
    mb = total_bytes / 1024**2
    print(f"{n} instances, {mb:.0f} MB, to Orthanc {orthanc.binary()} (TCP_NODELAY=1); "
          f"cores: {os.cpu_count()}; work: {work}")
    best = compare(work, folder, n, mb, args.repeat, (1, 2, 4))
    print(f"\nbest dicom-node rate vs storescu: {best:.2f}x  (target >= 1.0x)")
    if args.small_repeat:
        small, small_bytes = make_dicom(work, 352, per=176)
        print(f"\nstart-up case: 2 series x 176 instances = 352, "
              f"{small_bytes / 1024**2:.0f} MB, whole process")
        best_small = compare(work, small, 352, small_bytes / 1024**2, args.small_repeat, (2,))
        print(f"\n352-instance push vs storescu: {best_small:.2f}x  (target >= 1.0x)")
    if args.compressed_repeat:
        compressed_case(work, args.compressed_repeat)
    if args.web:
        web_case(work, args.repeat, args.big_gb)

    if args.profile:
        import cProfile
        import pstats

        storage = work / "orthanc"
        shutil.rmtree(storage, ignore_errors=True)
        server = orthanc.start(storage, http_port=free_port(), dicom_port=free_port(),
                               node_aet=NODE_AET)
        try:
            prof = work / "push.prof"
            cProfile.run(
                "from node.cli import main; main(['push', "
                f"{str(folder)!r}, '--host', '127.0.0.1', '--port', "
                f"'{server.dicom_port}', '--aet', 'ORTHANC'])",
                str(prof),
            )
        finally:
            orthanc.stop(storage)
        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
