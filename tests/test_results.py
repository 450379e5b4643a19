"""Results of a SEG (issue 26): an RGB overlay series placed like the image, a TID 1500 SR of
the segment volumes, an Encapsulated PDF QA report; judged by dciodvfy, dsrdump, highdicom,
pdfinfo/pdftoppm, Orthanc, and the voxels of a known label map."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import run_node
from support.niftigen import affine_from, write_nifti
from support.node import wait_until

pytestmark = pytest.mark.peers  # dciodvfy, dsrdump, pdfinfo, Orthanc

AFFINE = affine_from(np.diag([0.8, 0.8, 2.0]), origin=(-25.0, -30.0, 10.0))
SHAPE = (64, 72, 8)


def _phantom() -> np.ndarray:
    """A smooth head-like blob: grey values that vary slowly, so a window means something."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    return (1000 * np.exp(-(x**2 + y**2) * 2) + 200 * z + 300).astype(np.int16)


def _inputs(folder: Path) -> tuple[Path, Path, np.ndarray]:
    t1 = write_nifti(folder / "sub-01_T1w.nii.gz", _phantom(), AFFINE)
    labels = np.zeros(SHAPE, np.uint8)
    labels[30:44, 36:50, 2:6] = 1  # a tumour
    labels[10:16, 50:58, 3:5] = 3  # oedema (label value 3)
    labels[50, 20, 6] = 5  # one voxel
    seg = write_nifti(folder / "sub-01_desc-lesion_dseg.nii.gz", labels, AFFINE)
    (folder / "sub-01_desc-lesion_dseg.tsv").write_text(
        "index\tname\n1\ttumour\n3\toedema\n5\tdot\n")
    return t1, seg, labels


def _convert(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    t1, seg, labels = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    for path, extra in ((t1, []), (seg, ["--iod", "seg", "--results",
                                         "overlay,measurements,report"])):
        proc = run_node("convert", path, "-o", out, *extra)
        assert proc.returncode == 0, proc.stderr
    return out / "sub-01_T1w", out / "sub-01_desc-lesion_dseg", labels


def _dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("Error")]


def _grey(ds: pydicom.Dataset) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) in this test's own words: the viewer's first window."""
    value = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    return np.rint(np.clip((value - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255)


def test_the_results_of_a_seg_are_valid_dicom_and_say_what_the_labels_hold(tmp_path):
    image_folder, seg_folder, labels = _convert(tmp_path)
    results = sorted(seg_folder.glob("RS*.dcm"))
    made = [pydicom.dcmread(p) for p in results]
    kinds = [str(ds.SOPClassUID) for ds in made]
    assert kinds == ["1.2.840.10008.5.1.4.1.1.7"] * SHAPE[2] + [
        "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.104.1"]
    for path in (results[0], results[-2], results[-1]):
        assert _dciodvfy_errors(path) == [], path.name
    seg = pydicom.dcmread(seg_folder / "IM000001.dcm")
    assert {ds.StudyInstanceUID for ds in made} == {seg.StudyInstanceUID}

    # the overlay: placed like the image, grey where no label is, blended where one is
    images = sorted((pydicom.dcmread(p) for p in image_folder.glob("IM*.dcm")),
                    key=lambda d: int(d.InstanceNumber))
    overlays = made[:SHAPE[2]]
    colours = {1: (255, 64, 64), 2: (64, 200, 64)}  # segments 1 and 2: labels 1 and 3
    for image, over in zip(images, overlays, strict=True):
        assert over.ImagePositionPatient == image.ImagePositionPatient
        assert over.ImageOrientationPatient == image.ImageOrientationPatient
        assert over.FrameOfReferenceUID == image.FrameOfReferenceUID
        assert over.BurnedInAnnotation == "YES" and over.ImageType[0] == "DERIVED"
    k = 3  # a slice with both big segments; NIfTI voxel (i, j) is DICOM pixel (row j, col i)
    grey = _grey(images[k])
    rgb = overlays[k].pixel_array.astype(int)
    for (i, j), segment in (((36, 42), 1), ((12, 54), 2)):
        expected = np.rint(0.5 * grey[j, i] + 0.5 * np.array(colours[segment]))
        assert tuple(rgb[j, i]) == tuple(expected), (i, j)
    i, j = 60, 66  # no label, far from the legend in the top-left corner
    assert tuple(rgb[j, i]) == (grey[j, i],) * 3

    # the SR: dsrdump reads it; highdicom reads every volume back; each = voxels x voxel
    dump = subprocess.run(["dsrdump", str(results[-2])], capture_output=True, text=True,
                          timeout=60)
    assert dump.returncode == 0 and "Imaging Measurement Report" in dump.stdout
    import highdicom as hd

    sr = hd.sr.srread(results[-2])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    voxel = float(np.prod(nib.load(str(seg_folder.parent.parent / "in"
                                       / "sub-01_desc-lesion_dseg.nii.gz")).header.get_zooms()))
    for group, value in zip(groups, (1, 3, 5), strict=True):
        count = int(np.count_nonzero(labels == value))
        volumes = {m.unit.value: m.value for m in group.get_measurements()}
        assert volumes["mm3"] == pytest.approx(count * voxel, rel=1e-6)
        assert volumes["ml"] == pytest.approx(count * voxel / 1000, rel=1e-6)
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID

    # the PDF: a valid one-page PDF whose picture shows the image
    pdf = made[-1].EncapsulatedDocument[:made[-1].EncapsulatedDocumentLength]
    (tmp_path / "report.pdf").write_bytes(pdf)
    info = subprocess.run(["pdfinfo", str(tmp_path / "report.pdf")], capture_output=True,
                          text=True, timeout=60)
    assert info.returncode == 0 and "Pages:           1" in info.stdout
    subprocess.run(["pdftoppm", "-r", "50", "-png", str(tmp_path / "report.pdf"),
                    str(tmp_path / "page")], check=True, timeout=60)
    page = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
        next(tmp_path.glob("page*.png"))).convert("L"), dtype=float)
    picture = page[60:300, 30:380]  # where the three-plane picture sits
    assert picture.std() > 20  # an image, not a blank page


def test_an_explain_lists_the_results_and_the_odd_segments(tmp_path):
    t1, seg, _ = _inputs(tmp_path / "in")
    proc = run_node("convert", "--explain", "--iod", "seg", "--results", "measurements",
                    "--source", t1, seg)
    assert proc.returncode == 0, proc.stderr
    assert "Comprehensive 3D SR Storage: 1 instance(s)" in proc.stdout
    assert "segment 3 dot: 1 voxels" in proc.stdout
    assert "note: segment 3 (dot) is a single voxel" in proc.stdout
    wrong = run_node("convert", "--explain", "--results", "overlay,pie", seg)
    assert wrong.returncode == 2 and "--results: a list of overlay" in wrong.stderr


def test_labels_outside_the_image_are_measured_and_said(tmp_path):
    folder = tmp_path / "in"
    write_nifti(folder / "sub-02_T1w.nii.gz", _phantom()[:, :, :4], AFFINE)
    labels = np.zeros(SHAPE, np.uint8)
    labels[20:30, 20:30, 2:7] = 1  # slices 4-6 are beyond the 4-slice image
    seg = write_nifti(folder / "sub-02_desc-x_dseg.nii.gz", labels, AFFINE)
    proc = run_node("convert", "--explain", "--iod", "seg", "--results", "measurements", seg)
    assert proc.returncode == 0, proc.stderr
    assert "300 of its voxels lie outside the image's field of view" in proc.stdout
    empty = write_nifti(folder / "sub-03_desc-none_dseg.nii.gz", np.zeros(SHAPE, np.uint8),
                        AFFINE)
    write_nifti(folder / "sub-03_T1w.nii.gz", _phantom(), AFFINE)
    refused = run_node("convert", "--iod", "seg", "--results", "overlay", empty, "-o",
                       tmp_path / "out")
    assert refused.returncode == 2 and "the label map is empty" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_the_node_delivers_the_results_with_the_seg_in_one_job(pacs, node_factory, tmp_path):
    node = node_factory(pacs.port, destination_toml='iod = "auto"\n'
                        'results = ["overlay", "measurements", "report"]\n')
    node.start()
    staging = tmp_path / "staging"
    t1, seg, _ = _inputs(staging)
    for path in (seg.with_suffix("").with_suffix(".tsv"), t1, seg):  # the names first
        (node.inbox / path.name).write_bytes(path.read_bytes())
    wait_until(lambda: node.states() == ["done", "done"], 120, "the image and the SEG")
    jobs = {Path(j["source"]).name: j for j in node.jobs()}
    job = jobs[seg.name]
    assert job["instances"] == job["delivered"] == 1 + SHAPE[2] + 2  # SEG, overlay, SR, PDF
    study = pacs.get(f"/studies/{pacs.lookup(job['study_uid'])}")
    stored = {}  # the study may hold other tests' series of this subject too
    for oid in study["Series"]:
        series = pacs.get(f"/series/{oid}")
        stored.setdefault(series["MainDicomTags"].get("Modality", ""), []).append(
            len(series["Instances"]))
    assert {"MR", "SEG", "OT", "SR", "DOC"} <= set(stored)
    assert SHAPE[2] in stored["OT"] and 1 in stored["SR"] and 1 in stored["DOC"]


def test_a_map_beside_the_seg_is_measured_within_each_segment_and_one_without_units_said(
        tmp_path):
    t1, seg, labels = _inputs(tmp_path / "in")
    rng = np.random.default_rng(7)
    t1map = rng.uniform(800, 1600, SHAPE).astype(np.float32)
    write_nifti(tmp_path / "in" / "sub-01_T1map.nii.gz", t1map, AFFINE,
                sidecar={"Units": "ms"})
    write_nifti(tmp_path / "in" / "sub-01_MD.nii.gz", t1map / 1e6, AFFINE)  # no units anywhere
    out = tmp_path / "out"
    proc = run_node("convert", seg, "-o", out, "--iod", "seg", "--results",
                    "measurements,report")
    assert proc.returncode == 0, proc.stderr
    assert "map sub-01_MD.nii.gz has no units" in proc.stderr  # a warning on the series
    import highdicom as hd

    sr = hd.sr.srread(out / "sub-01_desc-lesion_dseg" / "RS000001.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    for group, value in zip(groups, (1, 3, 5), strict=True):
        inside = t1map[labels == value].astype(np.float64)
        got = {m.derivation.meaning: m.value for m in group.get_measurements()
               if m.name.value == "T1map"}
        assert got["Mean"] == pytest.approx(inside.mean(), rel=1e-5)
        assert got["Standard Deviation"] == pytest.approx(inside.std(), rel=1e-4, abs=1e-3)
        assert got["Minimum"] == pytest.approx(inside.min(), rel=1e-6)
        assert got["Maximum"] == pytest.approx(inside.max(), rel=1e-6)
        units = {m.unit.value for m in group.get_measurements() if m.name.value == "T1map"}
        assert units == {"ms"}
        assert not [m for m in group.get_measurements() if m.name.value == "MD"]
    assert _dciodvfy_errors(out / "sub-01_desc-lesion_dseg" / "RS000001.dcm") == []
