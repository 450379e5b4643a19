"""Attach to the clinical exam: --reference FILE|DIR and --study-of KEY=VALUE (a C-FIND at
STUDY level), against the bundled Orthanc; the ambiguous and missing cases are refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import run_node
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from support.niftigen import AXIAL_RAS, affine_from, ramp_data, write_nifti

from node.convert.reference import read_reference
from node.convert.series import convert_file
from node.errors import InputError
from node.service.attach import parse_study_of
from node.service.settings import config_from_dict

#: Patient and General Study keys that must be identical across the study's series.
SHARED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "AccessionNumber", "StudyDescription", "ReferringPhysicianName",
          "StudyID", "StudyInstanceUID")


def clinical_study(folder: Path, patient_id: str, accession: str, study_date="20240102",
                   slices: int = 3) -> Path:
    """A small 'clinical' MR study made with pydicom, as a scanner would send it."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for n in range(1, slices + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = "ROE^RICHARD", patient_id
        ds.PatientBirthDate, ds.PatientSex = "19600606", "M"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID = study_date, "081500", "4711"
        ds.AccessionNumber, ds.StudyDescription = accession, "MR HEAD"
        ds.ReferringPhysicianName = "WHO^DR"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, n
        ds.ImagePositionPatient = [0, 0, float(n)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.arange(16, dtype="<u2").tobytes()
        ds.save_as(folder / f"IM{n}.dcm", enforce_file_format=True)
    return folder


def _research(folder: Path, name: str, sidecar: dict | None = None, seed: int = 0) -> Path:
    return write_nifti(folder / f"{name}.nii.gz", ramp_data((6, 5, 3), "int16", seed=seed),
                       affine_from(AXIAL_RAS), sidecar=sidecar)


def test_reference_gives_patient_study_and_optionally_the_frame(tmp_path):
    exam = clinical_study(tmp_path / "exam", "CLIN-0", "ACC-0")
    reference = read_reference(exam)
    clinical = pydicom.dcmread(exam / "IM1.dcm")
    src = _research(tmp_path, "sub-r01_T1w", {"PatientID": "R01", "PatientName": "X^Y"})
    config = config_from_dict({"profiles": {"seg-on-t1": {"extends": "bids-mr",
                                                          "same_frame_of_reference": True}}})
    series = convert_file(src, config.profile(), reference=reference)
    ds = next(series.datasets())
    for keyword in SHARED:
        assert str(ds.get(keyword)) == str(clinical.get(keyword)), keyword
    assert ds.FrameOfReferenceUID != clinical.FrameOfReferenceUID  # not in the exam's space
    assert any("identity" in w and "reference" in w for w in series.warnings)
    same = next(convert_file(src, config.profile("seg-on-t1"), reference=reference).datasets())
    assert same.FrameOfReferenceUID == clinical.FrameOfReferenceUID


def test_a_reference_folder_must_be_one_study(tmp_path):
    clinical_study(tmp_path / "two" / "a", "CLIN-A", "ACC-A")
    clinical_study(tmp_path / "two" / "b", "CLIN-B", "ACC-B")
    with pytest.raises(InputError, match="2 studies"):
        read_reference(tmp_path / "two")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(InputError, match="not a (readable )?DICOM file"):
        read_reference(tmp_path / "junk.dcm")


@pytest.mark.parametrize("spec", ["PatientID=X", "AccessionNumber=", "Accession=1",
                                  "AccessionNumber=A*", "StudyDate=20240101"])
def test_study_of_needs_keys_that_name_one_study(spec):
    with pytest.raises(ValueError, match="--study-of"):
        parse_study_of(spec)


def _study_in_orthanc(pacs, uid: str) -> dict:
    oid = pacs.lookup(uid)
    assert oid is not None, f"study {uid} not in Orthanc"
    return pacs.get(f"/studies/{oid}")


@pytest.mark.peers  # Orthanc
def test_push_attaches_to_the_clinical_exam_in_orthanc(pacs, tmp_path):
    tag = dt.datetime.now().strftime("%H%M%S%f")[:10]
    exam = clinical_study(tmp_path / "exam", f"CLIN-{tag}", f"ACC-{tag}")
    cfg = pacs.config_toml(tmp_path / "node.toml")
    proc = run_node("push", exam, "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    clinical = pydicom.dcmread(exam / "IM1.dcm")
    patients_before = len(pacs.get("/patients"))

    by_file = _research(tmp_path / "a", "sub-p01_T1w", {"PatientID": "P01"})
    proc = run_node("push", by_file, "--config", cfg, "--reference", exam / "IM1.dcm")
    assert proc.returncode == 0, proc.stderr
    by_query = _research(tmp_path / "b", "sub-p01_FLAIR", None, seed=1)
    proc = run_node("push", by_query, "--config", cfg, "--study-of", f"AccessionNumber=ACC-{tag}")
    assert proc.returncode == 0, proc.stderr

    study = _study_in_orthanc(pacs, clinical.StudyInstanceUID)
    assert len(study["Series"]) == 3
    assert len(pacs.get("/patients")) == patients_before  # no new patient
    shared = [pacs.get(f"/series/{s}/shared-tags?simplify") for s in study["Series"]]
    for keyword in SHARED:
        values = {str(tags.get(keyword, "")) for tags in shared}
        assert values == {str(clinical.get(keyword, ""))}, (keyword, values)
    numbers = {tags["SeriesNumber"] for tags in shared}
    assert len(numbers) == 3  # the new series do not take the clinical one's number


@pytest.mark.peers  # Orthanc
def test_ambiguous_and_missing_exams_are_refused(pacs, tmp_path):
    tag = dt.datetime.now().strftime("%H%M%S%f")[:10]
    for n in (1, 2):  # two studies of one patient on one day
        exam = clinical_study(tmp_path / f"exam{n}", f"AMB-{tag}", f"AMB-{tag}-{n}",
                              study_date="20230303")
        cfg = pacs.config_toml(tmp_path / "node.toml")
        assert run_node("push", exam, "--config", cfg).returncode == 0
    src = _research(tmp_path, "sub-amb_T1w")
    before = pacs.count_instances()
    proc = run_node("push", src, "--config", cfg, "--study-of",
                    f"PatientID=AMB-{tag},StudyDate=20230303")
    assert proc.returncode == 2 and "2 studies match" in proc.stderr, proc.stderr
    assert f"AMB-{tag}" not in proc.stderr  # the patient's ID is not echoed
    proc = run_node("push", src, "--config", cfg, "--study-of", "AccessionNumber=NO-SUCH-ACC")
    assert proc.returncode == 2 and "no study matches" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert pacs.count_instances() == before  # nothing sent


@pytest.mark.peers  # a real node and Orthanc
def test_the_node_attaches_by_the_profiles_reference_rule(pacs, node_factory, tmp_path):
    """Unattended: the profile names the exam by the sidecar's AccessionNumber; an unknown
    accession number is quarantined with the reason, never sent as a new study."""
    from support.node import wait_until

    tag = dt.datetime.now().strftime("%H%M%S%f")[:10]
    exam = clinical_study(tmp_path / "exam", f"NODE-{tag}", f"NAC-{tag}")
    assert run_node("push", exam, "--config", pacs.config_toml(tmp_path / "n.toml")
                    ).returncode == 0
    node = node_factory(pacs.port, default_profile='"attach"')
    node.config.write_text(node.config.read_text() + '[profiles.attach]\nextends = "bids-mr"\n'
                           'reference = { query = "AccessionNumber", '
                           'from = "sidecar:AccessionNumber" }\n')
    node.start()
    src = tmp_path / "src"
    _research(src, "sub-n01_T1w", {"AccessionNumber": f"NAC-{tag}"})
    _research(src, "sub-n02_T1w", {"AccessionNumber": "UNKNOWN-ACC"}, seed=1)
    for name in ("sub-n01_T1w", "sub-n02_T1w"):
        (src / f"{name}.json").rename(node.inbox / f"{name}.json")
        (src / f"{name}.nii.gz").rename(node.inbox / f"{name}.nii.gz")
    wait_until(lambda: sorted(node.states()) == ["done", "quarantined"], 60, "both decided")
    jobs = {Path(j["source"]).name: j for j in node.jobs()}
    assert "no study matches AccessionNumber=UNKNOWN-ACC" in jobs["sub-n02_T1w.nii.gz"][
        "last_error"]
    clinical = pydicom.dcmread(exam / "IM1.dcm")
    assert jobs["sub-n01_T1w.nii.gz"]["study_uid"] == clinical.StudyInstanceUID
    study = _study_in_orthanc(pacs, clinical.StudyInstanceUID)
    assert len(study["Series"]) == 2
    assert study["PatientMainDicomTags"]["PatientID"] == f"NODE-{tag}"
    assert node.stop() == 0
