"""The right patient and the right study: identity as one group, one set of study values per
study (in a batch, in any order, and across the node's jobs), deterministic SeriesNumbers."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from support.niftigen import AXIAL_RAS, affine_from, ramp_data, write_nifti

from node.convert.series import convert_file
from node.convert.study import STUDY_KEYWORDS, StudyValues, merge
from node.errors import DicomNodeError, MappingError
from node.service.operations.batch import convert_batch
from node.service.settings import config_from_dict

CLINICAL = {"PatientName": "DOE^JANE", "PatientID": "PD01-4711", "PatientSex": "F",
            "PatientBirthDate": "19700101", "AccessionNumber": "ACC-77",
            "StudyDate": "20240305", "StudyTime": "101500"}


def _nifti(folder: Path, name: str, sidecar: dict | None = None, seed: int = 0) -> Path:
    return write_nifti(folder / f"{name}.nii.gz", ramp_data((6, 5, 3), "int16", seed=seed),
                       affine_from(AXIAL_RAS), sidecar=sidecar)


def _first(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)


def test_identity_is_one_group_from_the_most_authoritative_source(tmp_path, config):
    """Defect 3: the sidecar names the patient; the file name's sub- label may not replace
    one key of it (PatientID pd01 beside PatientName DOE^JANE)."""
    path = _nifti(tmp_path, "sub-pd01_ses-1_T1w", CLINICAL)
    series = convert_file(path, config.profile())
    ds = next(series.datasets())
    assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate) == (
        "PD01-4711", "DOE^JANE", "19700101")
    notes = [w for w in series.warnings if w.startswith("identity:")]
    assert notes and "PatientID" in notes[0] and "sidecar" in notes[0]
    assert "PD01" not in " ".join(notes) and "DOE" not in " ".join(notes)  # no PHI in logs


def test_strict_identity_refuses_sources_that_disagree(tmp_path):
    config = config_from_dict({"profiles": {"strict": {"extends": "bids-mr",
                                                       "identity": "strict"}}})
    path = _nifti(tmp_path, "sub-pd01_T1w", CLINICAL)
    with pytest.raises(MappingError, match="identity sources disagree.*PatientID"):
        convert_file(path, config.profile("strict"))
    agreeing = _nifti(tmp_path / "ok", "sub-pd01_T1w", {**CLINICAL, "PatientID": "pd01"})
    assert convert_file(agreeing, config.profile("strict")).uids.series


def test_a_partial_identity_is_never_mixed_in(tmp_path, config):
    """A sidecar with a PatientName but no PatientID does not lend its name to the file
    name's ID: the name would belong to someone the ID does not name."""
    path = _nifti(tmp_path, "sub-pd01_T1w", {"PatientName": "DOE^JANE"})
    series = convert_file(path, config.profile())
    ds = next(series.datasets())
    assert ds.PatientID == "pd01" and str(ds.PatientName) == "pd01"
    assert any("not used" in w for w in series.warnings)


def _batch(tmp_path: Path, config, inputs: list[Path], out: str) -> list:
    return convert_batch(inputs, tmp_path / out, config.profile(), config.node.uid_root, jobs=1)


@pytest.mark.parametrize("order", [1, -1])
def test_series_of_one_study_carry_one_set_of_values_in_any_order(tmp_path, config, order):
    """Defect 3, second half: the session's T2w has no sidecar; it joins the T1w's study
    under the T1w's patient, with its date and accession number."""
    t1 = _nifti(tmp_path / "in", "sub-pd01_ses-1_T1w", CLINICAL)
    t2 = _nifti(tmp_path / "in", "sub-pd01_ses-1_T2w", None, seed=1)
    results = _batch(tmp_path, config, [t1, t2][::order], "out")
    assert not [r for r in results if isinstance(r, DicomNodeError)], results
    first, second = (_first(r.folder) for r in results)
    assert first.StudyInstanceUID == second.StudyInstanceUID
    for keyword in STUDY_KEYWORDS:
        assert str(first.get(keyword, "")) == str(second.get(keyword, "")), keyword
    assert second.PatientID == "PD01-4711" and second.AccessionNumber == "ACC-77"
    assert first.SeriesNumber != second.SeriesNumber


def test_a_study_whose_series_disagree_is_refused_whole(tmp_path, config):
    a = _nifti(tmp_path / "in", "sub-pd01_ses-1_T1w", CLINICAL)
    b = _nifti(tmp_path / "in", "sub-pd01_ses-1_T2w", {**CLINICAL, "AccessionNumber": "ACC-78"},
               seed=1)
    c = _nifti(tmp_path / "in", "sub-pd02_ses-1_T1w", None, seed=2)  # another study: fine
    results = _batch(tmp_path, config, [a, b, c], "out")
    assert all(isinstance(r, MappingError) and "AccessionNumber" in r.reason
               for r in results[:2]), results
    assert not isinstance(results[2], DicomNodeError)
    assert not (tmp_path / "out" / "sub-pd01_ses-1_T1w").exists()


def test_unrelated_files_never_become_one_patient(tmp_path, config):
    """Defect 2: no sub- entity, no identity anywhere: refused with the ways out."""
    paths = [_nifti(tmp_path, f"scan{i}", {"EchoTime": 0.03}, seed=i) for i in range(3)]
    results = _batch(tmp_path, config, paths, "out")
    assert all(isinstance(r, MappingError) and "--set PatientID" in r.reason for r in results)


def test_series_numbers_are_stable_and_distinct_within_a_study(tmp_path, config):
    """Defect 4: no source names a SeriesNumber; each series still gets one, the same on
    every run, distinct within its study, clear of the clinical range."""
    names = ["sub-01_ses-1_T1w", "sub-01_ses-1_T2w", "sub-01_ses-1_FLAIR", "sub-01_ses-1_bold"]
    inputs = [_nifti(tmp_path / "in", n, None, seed=i) for i, n in enumerate(names)]
    runs = []
    for out in ("a", "b"):
        results = _batch(tmp_path, config, inputs, out)
        runs.append([int(_first(r.folder).SeriesNumber) for r in results])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == len(names) and all(n >= 1000 for n in runs[0])
    alone = next(convert_file(inputs[0], config.profile()).datasets())
    assert int(alone.SeriesNumber) >= 1000


def test_merge_rules():
    """Stand-ins yield to real values, the better identity moves whole, sent values stay."""
    sidecar = StudyValues("1.2", {"PatientID": "P1", "PatientName": "A^B", "StudyTime": "0900"},
                          frozenset({"StudyTime"}), identity_rank=1)
    named = StudyValues("1.2", {"PatientID": "p1", "StudyTime": "0800"},
                        frozenset({"StudyTime"}), identity_rank=3)
    assert merge(sidecar, named).values == merge(named, sidecar).values == {
        "PatientID": "P1", "PatientName": "A^B", "StudyTime": "0800"}
    sent = StudyValues("1.2", named.values, named.weak, 3, sent=True)
    with pytest.raises(MappingError, match="identity"):
        merge(sent, sidecar)
    assert merge(StudyValues("1.2", sidecar.values, sidecar.weak, 1, sent=True),
                 named).values["PatientID"] == "P1"


def test_journal_remembers_a_study_across_jobs(tmp_path):
    """The node's memory: a later series with fewer values takes the study's; a sent
    identity is never replaced; a conflicting value is refused; SeriesNumbers stay
    distinct and a resend keeps its number."""
    from node.service.journal import Journal

    first = StudyValues("1.2.3", {"PatientID": "PD01-4711", "AccessionNumber": "A1"},
                        frozenset(), identity_rank=1)
    later = StudyValues("1.2.3", {"PatientID": "pd01"}, frozenset(), identity_rank=3)
    with Journal(tmp_path / "j.sqlite") as journal:
        values, n1 = journal.reconcile_study(first, "1.2.3.1", None)
        carried, n2 = journal.reconcile_study(later, "1.2.3.2", None)
        assert carried.values == {"PatientID": "PD01-4711", "AccessionNumber": "A1"}
        assert n1 != n2 and journal.reconcile_study(later, "1.2.3.2", None)[1] == n2
        assert journal.reconcile_study(later, "1.2.3.3", n1)[1] == n1  # its own number
        with pytest.raises(MappingError, match="AccessionNumber"):
            journal.reconcile_study(StudyValues("1.2.3", {**first.values, "AccessionNumber":
                                                          "A2"}, frozenset(), 1), "1.2.3.4",
                                    None)


@pytest.mark.peers  # a real node and Orthanc
def test_the_node_keeps_one_set_of_study_values_across_jobs(pacs, node_factory, tmp_path):
    from support.node import wait_until

    node = node_factory(pacs.port)
    node.start()
    _nifti(tmp_path / "src", "sub-pd07_ses-1_T1w", {**CLINICAL, "PatientID": "PD07-1"})
    for name in ("sub-pd07_ses-1_T1w.json", "sub-pd07_ses-1_T1w.nii.gz"):
        (tmp_path / "src" / name).rename(node.inbox / name)
    wait_until(lambda: node.states() == ["done"], 60, "the T1w")
    _nifti(node.inbox, "sub-pd07_ses-1_T2w", None, seed=1)  # no sidecar: takes the study's
    wait_until(lambda: node.states() == ["done", "done"], 60, "the T2w")
    _nifti(tmp_path / "src", "sub-pd07_ses-1_FLAIR", {**CLINICAL, "PatientID": "PD07-1",
                                                       "AccessionNumber": "ACC-99"}, seed=2)
    for name in ("sub-pd07_ses-1_FLAIR.json", "sub-pd07_ses-1_FLAIR.nii.gz"):
        (tmp_path / "src" / name).rename(node.inbox / name)
    wait_until(lambda: node.states()[2:] == ["quarantined"], 60, "the conflicting FLAIR")
    jobs = node.jobs()
    assert "AccessionNumber" in jobs[2]["last_error"]
    study = pacs.get(f"/studies/{pacs.lookup(jobs[0]['study_uid'])}")
    assert len(study["Series"]) == 2 and study["PatientMainDicomTags"]["PatientID"] == "PD07-1"
    tags = [pacs.get(f"/series/{s}/shared-tags?simplify") for s in study["Series"]]
    for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyDate", "StudyTime"):
        assert tags[0].get(keyword) == tags[1].get(keyword) != None, keyword  # noqa: E711
    assert node.stop() == 0


def test_a_sent_stand_in_stays_the_studys_value():
    """Once a stand-in (a profile default) has been sent, a later series with a real value
    takes the sent one: the PACS shows one value per study."""
    sent = StudyValues("1.2", {"PatientID": "P", "StudyDescription": "Research imaging"},
                       frozenset({"StudyDescription"}), 3, sent=True)
    later = StudyValues("1.2", {"PatientID": "P", "StudyDescription": "MR HEAD"}, frozenset(), 3)
    assert merge(sent, later).values["StudyDescription"] == "Research imaging"
    unsent = StudyValues("1.2", sent.values, sent.weak, 3)
    assert merge(unsent, later).values["StudyDescription"] == "MR HEAD"
