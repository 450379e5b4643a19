#!/usr/bin/env python3
"""Benchmark: whole-process wall time of NIfTI -> DICOM conversion, as a user feels it.

In one run, on the same inputs:
  * dicom-node: five 256x256x176 int16 .nii.gz volumes in one `dicom-node convert` call;
  * floor: one Python process that gunzips the five inputs and writes the same pixel bytes
    into the same number of files (the I/O a converter cannot avoid);
  * nii2dcm (PyPI, in its own venv since it pins old numpy/pydicom), one process per file;
  * niftitodicom (Debian vtk-dicom-tools, C++), one process per file;
  * a 64x64x40x200 float32 4D file by dicom-node (nii2dcm cannot convert 4D at all).
Prints seconds, instances/s, peak RSS (largest single process) and the ratios.

Targets (issue "Converter core"): >= 3x faster than nii2dcm; <= 1.6x the floor; peak RSS under
2x one uncompressed volume + 150 MB per worker. Peers missing are installed when possible
(`--no-install` to skip them instead).

Objects (issue "Clinical-grade objects"): the same five volumes as `enhanced`, uncompressed and
with each lossless codec, against classic `image` output: time, bytes on disk, compression
ratio. Targets: enhanced conversion no slower than image; JPEG-LS at least 1.8x smaller; the
4D file as `enhanced` under 400 MB peak RSS.

    .venv/bin/python scripts/bench_convert.py [--work DIR] [--no-install] [--profile]
                                              [--objects-only] [--real NIFTI ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

N_VOLUMES = 5
SHAPE = (256, 256, 176)
SHAPE_4D = (64, 64, 40, 200)
ROOT = Path(__file__).resolve().parent.parent

_RUSAGE_WRAPPER = (
    "import resource, subprocess, sys, time;"
    "t = time.perf_counter();"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode;"
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
)


def head_phantom(shape, seed: int) -> np.ndarray:
    """A smooth ellipsoid 'head' with tissue-like contrast and noise: compresses like real MR."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / s) ** 2 for g, s in zip(grids, (0.8, 0.9, 0.85), strict=True)))
    img = np.where(r < 1.0, 800.0, 0.0) + np.where(r < 0.85, -300.0, 0.0)
    img += np.where(r < 0.5, 250.0 * np.cos(grids[0] * 9) ** 2, 0.0)
    img += rng.normal(0, 20, size=shape).astype(np.float32) * (r < 1.0)
    return np.clip(img, 0, 4095).astype(np.int16)


def make_inputs(work: Path) -> tuple[list[Path], Path]:
    inputs = []
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-128.0, -128.0, -88.0]
    for i in range(N_VOLUMES):
        path = work / "in" / f"sub-{i + 1:02d}_T1w.nii.gz"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(head_phantom(SHAPE, i), affine), str(path))
        inputs.append(path)
    path4d = work / "in4d" / "sub-01_task-rest_bold.nii.gz"
    if not path4d.exists():
        path4d.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(7)
        base = head_phantom(SHAPE_4D[:3], 9).astype(np.float32) / 10.0
        data = base[..., None] + rng.normal(0, 1.5, size=SHAPE_4D).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.5, 1.0])), str(path4d))
    return inputs, path4d


def measure(commands: list[list[str]]) -> tuple[float, int]:
    """Run commands one after another; (total seconds, peak RSS in KiB of any one process)."""
    total, peak = 0.0, 0
    for cmd in commands:
        out = subprocess.run(
            [sys.executable, "-c", _RUSAGE_WRAPPER, *cmd], capture_output=True, text=True,
            check=True, timeout=1800,
        ).stdout.split()
        seconds, rss, rc = float(out[0]), int(out[1]), int(out[2])
        if rc != 0:
            raise RuntimeError(f"{cmd[0]} failed with exit status {rc}")
        total += seconds
        peak = max(peak, rss)
    return total, peak


FLOOR = """
import gzip, sys
from pathlib import Path
import nibabel as nib
out = Path(sys.argv[1])
for n, src in enumerate(sys.argv[2:]):
    offset = int(nib.load(src).dataobj.offset)
    raw = gzip.open(src).read()[offset:]
    nz = int(nib.load(src).shape[2])
    size = len(raw) // nz
    for k in range(nz):
        (out / f"{n}_{k:04d}.raw").write_bytes(raw[k * size:(k + 1) * size])
"""


def ensure_nii2dcm(work: Path, install: bool) -> Path | None:
    exe = work / "nii2dcm-venv" / "bin" / "nii2dcm"
    if exe.exists() or not install:
        return exe if exe.exists() else None
    subprocess.run([sys.executable, "-m", "venv", str(exe.parent.parent)], check=True)
    subprocess.run([str(exe.parent / "pip"), "install", "-q", "nii2dcm"], check=True)
    return exe


def ensure_niftitodicom(install: bool) -> str | None:
    exe = shutil.which("niftitodicom")
    if exe or not install or os.geteuid() != 0:
        return exe
    subprocess.run(["apt-get", "install", "-y", "-qq", "vtk-dicom-tools"], check=False,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("niftitodicom")


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def row(name: str, seconds: float, instances: int, rss_kib: int, ref: float | None) -> None:
    ratio = f"{seconds / ref:6.2f}x" if ref else "      "
    print(f"{name:<34} {seconds:8.2f} s {instances / seconds:9.0f} inst/s "
          f"{rss_kib / 1024:8.0f} MB  {ratio}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--no-install", action="store_true", help="skip peers that are missing")
    parser.add_argument("--profile", action="store_true", help="print where dicom-node's time goes")
    parser.add_argument("--objects-only", action="store_true",
                        help="only the enhanced/compression comparison")
    parser.add_argument("--real", type=Path, nargs="+", default=[], metavar="NIFTI",
                        help="more real scans for the JPEG-LS ratio (beside nibabel's)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs, path4d = make_inputs(work)
    n_inst = N_VOLUMES * SHAPE[2]
    volume_mb = np.prod(SHAPE) * 2 / 1024**2
    node = [sys.executable, "-m", "node", "convert"]
    print(f"inputs: {N_VOLUMES} x {SHAPE} int16 .nii.gz ({n_inst} instances), "
          f"4D {SHAPE_4D} float32; cores: {os.cpu_count()}; work: {work}")
    if args.objects_only:
        return objects(work, inputs, path4d, node, args.real)
    print(f"{'':<34} {'wall':>10} {'rate':>16} {'peak RSS':>11}  vs floor")

    floor_s, floor_rss = measure([[sys.executable, "-c", FLOOR, str(fresh(work / "o-floor")),
                                   *map(str, inputs)]])
    row("floor (gunzip + write)", floor_s, n_inst, floor_rss, None)

    ours_s, ours_rss = measure([[*node, *map(str, inputs), "-o", str(fresh(work / "o-node"))]])
    row("dicom-node convert (batch)", ours_s, n_inst, ours_rss, floor_s)
    one_s, one_rss = measure([[*node, "-j", "1", *map(str, inputs), "-o",
                               str(fresh(work / "o-node1"))]])
    row("dicom-node convert -j 1", one_s, n_inst, one_rss, floor_s)

    peers: dict[str, float] = {}
    nii2dcm = ensure_nii2dcm(work, not args.no_install)
    if nii2dcm:
        out = fresh(work / "o-nii2dcm")
        s, rss = measure([[str(nii2dcm), str(p), str(fresh(out / p.name))] for p in inputs])
        row("nii2dcm (process per file)", s, n_inst, rss, floor_s)
        peers["nii2dcm"] = s
    else:
        print("nii2dcm: not available (skipped)")
    vtk = ensure_niftitodicom(not args.no_install)
    if vtk:
        out = fresh(work / "o-vtk")
        s, rss = measure([[vtk, "-s", "-o", str(fresh(out / p.name)), str(p)] for p in inputs])
        row("niftitodicom (process per file)", s, n_inst, rss, floor_s)
        peers["niftitodicom"] = s
    else:
        print("niftitodicom: not available (skipped)")

    n4d = SHAPE_4D[2] * SHAPE_4D[3]
    s4d, rss4d = measure([[*node, str(path4d), "-o", str(fresh(work / "o-4d"))]])
    row("dicom-node 4D float32", s4d, n4d, rss4d, None)

    print()
    print(f"dicom-node vs floor:        {ours_s / floor_s:.2f}x  (target <= 1.6x)")
    for name, seconds in peers.items():
        print(f"dicom-node vs {name + ':':<14}{seconds / ours_s:.2f}x faster"
              + ("  (target >= 3x)" if name == "nii2dcm" else "  (stretch: >= 1x)"))
    # budget per process: 2x one uncompressed input volume + 150 MB (the 4D file is float32)
    budget, budget4d = 2 * volume_mb + 150, 2 * np.prod(SHAPE_4D) * 4 / 1024**2 + 150
    print(f"peak RSS: batch {ours_rss / 1024:.0f} MB (target < {budget:.0f} MB), "
          f"4D {rss4d / 1024:.0f} MB (target < {budget4d:.0f} MB; float64 would be > "
          f"{np.prod(SHAPE_4D) * 8 / 1024**2:.0f} MB)")

    if args.profile:
        import cProfile
        import pstats

        prof = work / "convert.prof"
        cProfile.run(
            "from node.cli import main; main(['convert', '-j', '1', "
            f"{str(inputs[0])!r}, '-o', {str(fresh(work / 'o-prof'))!r}])",
            str(prof),
        )
        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(12)
    print()
    return objects(work, inputs, path4d, node, args.real)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def objects(work: Path, inputs: list[Path], path4d: Path, node: list[str],
            real: list[Path] = ()) -> int:
    """Enhanced and compressed output against classic images, on the same five volumes."""
    print(f"{'objects (5 volumes, -j 1)':<34} {'wall':>10} {'bytes':>12} {'ratio':>8} "
          f"{'peak RSS':>10}")
    results = {}
    for name, options in (("image", []), ("enhanced", ["--iod", "enhanced"]),
                          *((f"image {c}", ["--compression", c])
                            for c in ("rle", "jpeg-ls", "jpeg2000")),
                          *((f"enhanced {c}", ["--iod", "enhanced", "--compression", c])
                            for c in ("rle", "jpeg-ls", "jpeg2000"))):
        out = fresh(work / ("o-" + name.replace(" ", "-")))
        seconds, rss = measure([[*node, "-j", "1", *options, *map(str, inputs), "-o", str(out)]])
        size = folder_bytes(out)
        results[name] = (seconds, size)
        ratio = results["image"][1] / size
        print(f"{name:<34} {seconds:8.2f} s {size:12d} {ratio:7.2f}x {rss / 1024:8.0f} MB")
    s4d, rss4d = measure([[*node, "--iod", "enhanced", str(path4d), "-o",
                           str(fresh(work / "o-4d-enhanced"))]])
    print(f"{'4D 64x64x40x200 as enhanced':<34} {s4d:8.2f} s {'':>12} {'':>8} "
          f"{rss4d / 1024:8.0f} MB")
    print()
    image_s, image_b = results["image"]
    print(f"enhanced vs image time:     {results['enhanced'][0] / image_s:.2f}x  "
          "(target <= 1.0x)")
    print(f"JPEG-LS lossless vs uncompressed bytes: {image_b / results['image jpeg-ls'][1]:.2f}x"
          " smaller  (target >= 1.8x)")
    print(f"4D enhanced peak RSS: {rss4d / 1024:.0f} MB  (target < 400 MB)")
    real_mr(work, node, real)
    return 0


def real_mr(work: Path, node: list[str], more: list[Path] = ()) -> None:
    """JPEG-LS on real MR: nibabel's test data (a 33x41x25 anatomical at 2 mm, cropped to
    the head, and a 128x96x24x2 EPI run), always here, and the scans named with ``--real``.
    Bytes of the files and of the Pixel Data alone (small slices make the header weigh)."""
    import pydicom

    data = Path(nib.__file__).parent / "tests" / "data"
    print(f"\n{'real MR, JPEG-LS':<34} {'files':>12} {'pixels':>12}")
    for path in [data / "anatomical.nii", data / "example4d.nii.gz", *more]:
        name = path.name
        sizes = {}
        for compression in ("none", "jpeg-ls"):
            out = fresh(work / f"o-real-{compression}-{name}")
            subprocess.run([*node, str(path), "--set", "PatientID=BENCH",
                            "--compression", compression, "-o", str(out)],
                           check=True, capture_output=True)
            files = sorted(out.rglob("*.dcm"))
            sizes[compression] = (sum(p.stat().st_size for p in files),
                                  sum(len(pydicom.dcmread(p).PixelData) for p in files))
        (f0, p0), (f1, p1) = sizes["none"], sizes["jpeg-ls"]
        print(f"{name[:34]:<34} {f0 / f1:11.2f}x {p0 / p1:11.2f}x smaller")


if __name__ == "__main__":
    raise SystemExit(main())
