"""The watcher's settle logic with an injected clock: a file is taken only once it and its
sidecar have stopped changing for ``settle_seconds``, exactly once, and a required sidecar is
waited for during its grace period."""

from __future__ import annotations

import os
from pathlib import Path

from node.service.settings import WatchSettings
from node.service.watcher import Stabilizer, scan, wanted


def _watch(folder: Path, **kw) -> WatchSettings:
    return WatchSettings(path=folder, destination="pacs", profile="bids-mr",
                         settle_seconds=2.0, **kw)


def _touch(path: Path, data: bytes, mtime_ns: int) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_file_is_ready_only_after_it_settles(tmp_path):
    w = _watch(tmp_path)
    f = tmp_path / "sub-01_T1w.nii"
    _touch(f, b"x" * 10, 1_000)
    s = Stabilizer()
    s.nominate(f, w, now=100.0)
    assert s.ready(now=100.0) == []
    assert s.ready(now=101.9) == []
    assert s.ready(now=102.0) == [(f, w, False)]
    assert s.pending() == 0


def test_a_growing_file_restarts_the_clock(tmp_path):
    w = _watch(tmp_path)
    f = tmp_path / "sub-01_T1w.nii"
    _touch(f, b"x" * 10, 1_000)
    s = Stabilizer()
    s.nominate(f, w, now=0.0)
    _touch(f, b"x" * 20, 2_000)  # still being written
    assert s.ready(now=1.5) == []  # the change is seen at 1.5: settled from there
    assert s.ready(now=3.4) == []
    assert s.ready(now=3.5) == [(f, w, False)]


def test_a_late_sidecar_restarts_the_clock(tmp_path):
    w = _watch(tmp_path)
    f = tmp_path / "sub-01_T1w.nii"
    _touch(f, b"x" * 10, 1_000)
    s = Stabilizer()
    s.nominate(f, w, now=0.0)
    _touch(tmp_path / "sub-01_T1w.json", b"{}", 1_500)
    assert s.ready(now=1.0) == []
    assert s.ready(now=2.9) == []
    assert s.ready(now=3.0) == [(f, w, False)]


def test_a_file_is_taken_once_until_it_changes_or_is_forgotten(tmp_path):
    w = _watch(tmp_path)
    f = tmp_path / "a.dcm"
    _touch(f, b"x", 1_000)
    s = Stabilizer()
    s.nominate(f, w, now=0.0)
    assert s.ready(now=5.0) == [(f, w, False)]
    s.nominate(f, w, now=6.0)  # another event for the same, unchanged file
    assert s.ready(now=20.0) == []
    s.forget(f)  # its enqueue failed: it may be taken again
    s.nominate(f, w, now=21.0)
    assert s.ready(now=23.0) == [(f, w, False)]
    _touch(f, b"xy", 2_000)  # new content under the same name is a new candidate
    s.nominate(f, w, now=30.0)
    assert s.ready(now=32.0) == [(f, w, False)]


def test_a_vanished_candidate_is_dropped(tmp_path):
    w = _watch(tmp_path)
    f = tmp_path / "a.dcm"
    _touch(f, b"x", 1_000)
    s = Stabilizer()
    s.nominate(f, w, now=0.0)
    f.unlink()
    assert s.ready(now=10.0) == []
    assert s.pending() == 0


def test_a_required_sidecar_is_waited_for_then_reported_missing(tmp_path):
    w = _watch(tmp_path, require_sidecar=True, sidecar_grace_seconds=30.0)
    f = tmp_path / "sub-01_T1w.nii.gz"
    _touch(f, b"x" * 10, 1_000)
    s = Stabilizer()
    s.nominate(f, w, now=0.0)
    assert s.ready(now=5.0) == []  # settled, but the sidecar may still come
    assert s.ready(now=29.9) == []
    assert s.ready(now=30.0) == [(f, w, True)]


def test_a_required_sidecar_that_arrives_in_time_is_taken_with_the_image(tmp_path):
    w = _watch(tmp_path, require_sidecar=True, sidecar_grace_seconds=30.0)
    f = tmp_path / "sub-01_T1w.nii.gz"
    _touch(f, b"x" * 10, 1_000)
    s = Stabilizer()
    s.nominate(f, w, now=0.0)
    assert s.ready(now=10.0) == []
    _touch(tmp_path / "sub-01_T1w.json", b"{}", 2_000)
    assert s.ready(now=11.0) == []
    assert s.ready(now=13.0) == [(f, w, False)]


def test_wanted_skips_temporary_hidden_and_unmatched_names(tmp_path):
    w = _watch(tmp_path, recursive=False)
    assert wanted(tmp_path / "sub-01_T1w.nii.gz", w)
    assert wanted(tmp_path / "IM1.DCM", w)  # patterns match regardless of case
    for name in (".sub-01_T1w.nii.gz.Xa1b2", "a.nii.part", "a.nii~", "a.tmp", "notes.txt"):
        assert not wanted(tmp_path / name, w), name
    assert not wanted(tmp_path / "sub" / "a.nii", w)  # not recursive
    assert not wanted(tmp_path.parent / "elsewhere.nii", w)


def test_scan_lists_wanted_files_in_order(tmp_path):
    w = _watch(tmp_path)
    for rel in ("b/sub-02_T1w.nii", "a/sub-01_T1w.nii.gz", ".hidden/x.nii", "c.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in scan(w)] == [
        "a/sub-01_T1w.nii.gz", "b/sub-02_T1w.nii"]


def test_declared_voxel_bytes_come_from_the_header_alone(tmp_path):
    """A sparse file or a gzip bomb is sized from its first bytes, before anything loads."""
    import gzip

    import nibabel as nib
    import numpy as np

    from node.service.intake import declared_voxel_bytes

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 512))
    hdr.set_data_dtype(np.int32)
    sparse = tmp_path / "sub-sparse_T1w.nii"
    with open(sparse, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        f.truncate(352 + 2 * 1024**3)  # 2 GiB, holes
    assert declared_voxel_bytes(sparse) == 1024 * 1024 * 512 * 4
    bomb = tmp_path / "sub-bomb_T1w.nii.gz"
    hdr.set_data_shape((1024, 1024, 256))
    hdr.set_data_dtype(np.float32)
    with gzip.open(bomb, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        for _ in range(64):
            f.write(bytes(16 * 1024**2))
    assert bomb.stat().st_size < 8 * 1024**2
    assert declared_voxel_bytes(bomb) == 1024 * 1024 * 256 * 4
    assert declared_voxel_bytes(tmp_path / "x.dcm") == 0
