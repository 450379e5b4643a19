"""Bad input: exit 2, one line naming the file and the reason, no traceback, nothing left behind."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from support.bad_inputs import BAD, GOOD, _good, make_empty
from support.niftigen import AXIAL_RAS, affine_from, ramp_data, write_nifti


def run_convert(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node", "convert", *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )



@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_is_one_clear_line(kind: str, tmp_path: Path) -> None:
    make, reason = BAD[kind]
    src = tmp_path / "in"
    src.mkdir()
    path = make(src)
    out = tmp_path / "out"
    proc = run_convert(path, "-o", out, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dicom-node: error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("dicom-node: error: ") and path.stem.split(".")[0] in errors[0]
    assert reason in errors[0]
    assert proc.stdout == ""
    assert not out.exists() or list(out.iterdir()) == [], "nothing may be left behind"


def test_bad_file_does_not_stop_the_batch(tmp_path: Path) -> None:
    good = _good(tmp_path / "sub-01_T1w.nii.gz")
    bad = make_empty(tmp_path)
    proc = run_convert(bad, good, "-o", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "empty.nii.gz" in proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "MR Image Storage" in proc.stdout
    assert len(list((tmp_path / "out" / "sub-01_T1w").glob("*.dcm"))) == 4


def _nan_file(d: Path) -> Path:
    data = ramp_data((8, 8, 4), "float32")
    data[0, 0, 0] = np.nan
    data[1, 2, 3] = np.inf
    return write_nifti(d / "sub-03_bold.nii.gz", data, affine_from(AXIAL_RAS))


def test_nan_replaced_with_warning_by_default(tmp_path: Path) -> None:
    path = _nan_file(tmp_path)
    proc = run_convert(path, "-o", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 NaN/Inf voxels replaced with the background value 0" in proc.stderr
    ds = pydicom.dcmread(sorted((tmp_path / "out" / "sub-03_bold").glob("*.dcm"))[0])
    real = ds.pixel_array[0, 0] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert abs(real) <= float(ds.RescaleSlope)  # background 0 (within one quantization step)


def test_nan_is_an_error_when_the_profile_says_so(tmp_path: Path) -> None:
    path = _nan_file(tmp_path)
    cfg = tmp_path / "node.toml"
    cfg.write_text('[profiles.strict]\nextends = "bids-mr"\nnonfinite = "error"\n')
    proc = run_convert(path, "-o", tmp_path / "out", "--config", cfg, "--profile", "strict",
                       cwd=tmp_path)
    assert proc.returncode == 2
    assert "2 voxels are NaN or Inf" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "nope"], "no profile 'nope'"),
        (["--set", "PatientSex"], "KEYWORD=VALUE"),
        (["--config", "missing.toml"], "config file does not exist"),
        (["--set", "NotAKeyword=1"], "not a DICOM attribute keyword"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, args, message) -> None:
    good = _good(tmp_path / "sub-01_T1w.nii.gz")
    proc = run_convert(good, "-o", tmp_path / "out", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_config_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text("[node\nae_title = 1\n")
    proc = run_convert(_good(tmp_path / "a.nii"), "-o", tmp_path / "o", "--config", cfg,
                       cwd=tmp_path)
    assert proc.returncode == 2 and "invalid TOML" in proc.stderr and "node.toml" in proc.stderr


def test_json_for_sidecar_option(tmp_path: Path) -> None:
    good = _good(tmp_path / "scan.nii")
    side = tmp_path / "meta.json"
    side.write_text(json.dumps({"SeriesDescription": "from option", "PatientID": "P1"}))
    proc = run_convert(good, "-o", tmp_path / "out", "--sidecar", side, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ds = pydicom.dcmread(sorted((tmp_path / "out" / "scan").glob("*.dcm"))[0])
    assert ds.SeriesDescription == "from option"


def test_multi_member_gzip_is_good_input(tmp_path: Path) -> None:
    """Concatenated gzip members (bgzip, `cat a.gz b.gz`) are one valid stream (RFC 1952 2.2);
    the trailer's size counts only the last member, which must not read as truncation."""
    plain = _good(tmp_path / "plain.nii").read_bytes()
    half = len(plain) // 2
    multi = tmp_path / "sub-01_T1w.nii.gz"
    multi.write_bytes(gzip.compress(plain[:half]) + gzip.compress(plain[half:]))
    proc = run_convert(multi, "-o", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == GOOD.shape[2]


ID = ("--set", "PatientID=P1")  # these inputs have no sub- entity: name the patient


def test_convert_never_replaces_a_folder_that_is_not_its_own_output(tmp_path: Path) -> None:
    """`convert incoming/data.nii -o HOME` must not delete HOME/data/thesis.tex."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "thesis.tex").write_text("years of work")
    src = _good(tmp_path / "incoming" / "data.nii")
    proc = run_convert(src, "-o", home, *ID, cwd=tmp_path)
    assert proc.returncode == 2 and "is not dicom-node's output" in proc.stderr
    assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert (home / "data" / "thesis.tex").read_text() == "years of work"
    # our own earlier output of the same input is replaced quietly (a rerun)
    out = tmp_path / "out"
    assert run_convert(src, "-o", out, *ID, cwd=tmp_path).returncode == 0
    first = sorted(p.name for p in (out / "data").iterdir())
    assert run_convert(src, "-o", out, *ID, cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in (out / "data").iterdir()) == first
    # another input of the same name is refused, unless the user says --overwrite
    other = tmp_path / "elsewhere" / "data.nii"
    write_nifti(other, ramp_data((8, 8, 4), "int16", seed=99), affine_from(AXIAL_RAS))
    refused = run_convert(other, "-o", out, *ID, cwd=tmp_path)
    assert refused.returncode == 2 and "another input" in refused.stderr
    assert run_convert(other, "-o", out, "--overwrite", *ID, cwd=tmp_path).returncode == 0


def test_odd_output_names_are_clear(tmp_path: Path) -> None:
    src = _good(tmp_path / "in" / ".nii")  # a name that is all suffix
    out = tmp_path / "out"
    proc = run_convert(src, "-o", out, *ID, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.is_dir() and [p for p in out.iterdir() if p.name.startswith("series-")]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    proc = run_convert(_good(tmp_path / "in" / "x.nii"), "-o", a_file, *ID, cwd=tmp_path)
    assert proc.returncode == 2 and "is a file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_output_folders_follow_the_umask(tmp_path: Path) -> None:
    """A PACS import service running as another user must be able to read the series."""
    src = _good(tmp_path / "in" / "sub-um_T1w.nii")
    proc = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.umask(0o022); from node.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "convert", str(src), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "out" / "sub-um_T1w"
    assert folder.stat().st_mode & 0o777 == 0o755


def test_no_patient_id_from_any_source_is_refused(tmp_path: Path) -> None:
    """Never an empty identity: fourteen unrelated files would be one patient '' in a PACS."""
    proc = run_convert(_good(tmp_path / "scan.nii"), "-o", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2 and "no PatientID from any source" in proc.stderr
    assert "--set PatientID=" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "scan").exists()
    named = run_convert(_good(tmp_path / "scan2.nii"), "-o", tmp_path / "out", "--set",
                        "PatientID=P7", cwd=tmp_path)
    assert named.returncode == 0, named.stderr
