"""Our Legacy Converted Enhanced instances against highdicom's (``highdicom.legacy``), the
reference converter: the same series is converted by both, from the same classic instances,
and every element highdicom writes must be in ours with the same value, except where
``node/convert/iods/enhanced.py`` says we differ on purpose (each such difference is named
here, never waved through in bulk)."""

from __future__ import annotations

import json
import pkgutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from support.niftigen import affine_from, ramp_data, rotation, write_nifti

from node.convert.iods.legacy_iod import IOD_KEYWORDS
from node.convert.series import ConvertedSeries, convert_file

AFFINE = affine_from(rotation(0.2, 0.1, 0.3), zooms=(1.0, 1.2, 2.0))

#: Top-level elements we write differently on purpose: the creation and content times (now,
#: when the classic images have none), our contributing equipment, our Dimension Index
#: (In-Stack Position and Temporal Position, not highdicom's position), and the classic
#: instances as a series (never stored).
_OURS_ON_PURPOSE = {
    "InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime",
    "ContributingEquipmentSequence", "DimensionOrganizationSequence", "DimensionIndexSequence",
    "DimensionOrganizationType", "ReferencedSeriesSequence", "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence", "PixelData",
}
#: Type 2 elements of optional modules (Clinical Trial, Contrast/Bolus) that highdicom writes
#: empty when the classic images do not have them; we write those modules only when they do.
_EMPTY_IN_HIGHDICOM = {"ClinicalTrialTimePointID", "ClinicalTrialCoordinatingCenterName",
                       "ContrastBolusAgent"}
_DIFFUSION = {"DiffusionBValue", "DiffusionDirectionality", "DiffusionGradientOrientation"}


def _highdicom(series: ConvertedSeries) -> Dataset:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage, LegacyConvertedEnhancedMRImage

    frames = []
    for ds in series.classic_datasets():
        ds.ImageType = [ds.ImageType[0], "PRIMARY", "VOLUME", "NONE"]
        frames.append(ds)
    cls = {"MR": LegacyConvertedEnhancedMRImage, "CT": LegacyConvertedEnhancedCTImage}[
        series.modality]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(frames, series_instance_uid=series.uids.series,
                   series_number=int(series.template.SeriesNumber),
                   sop_instance_uid=series.object_uid, instance_number=1)


def _values(item: Dataset) -> dict[str, object]:
    """keyword -> value, sequences as lists of such dicts (comparable with ==)."""
    out: dict[str, object] = {}
    for element in item:
        if element.VR == "SQ":
            out[element.keyword] = [_values(i) for i in element.value]
        elif element.keyword != "PixelData":
            value = element.value
            out[element.keyword] = list(value) if isinstance(
                value, pydicom.multival.MultiValue) else value
    return out


def _same(ours: dict, theirs: dict, where: str, skip: set[str] = frozenset()) -> None:
    for keyword, value in theirs.items():
        if keyword in skip:
            continue
        assert keyword in ours, f"{where}: {keyword} missing"
        assert _norm(ours[keyword]) == _norm(value), (
            f"{where}: {keyword} = {ours[keyword]!r}, highdicom {value!r}")


def _norm(value):
    """DS/IS/FD read back as numbers or text: compare numbers as numbers."""
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if value is None:  # an empty IS or DS read back from a file
        return ""
    try:
        return round(float(str(value)), 6)
    except (TypeError, ValueError):
        return str(value)


def _compare(series: ConvertedSeries) -> None:
    ours = _values(series.object())
    theirs = _values(_highdicom(series))
    _same(ours, theirs, "top level", _OURS_ON_PURPOSE | {
        k for k in _EMPTY_IN_HIGHDICOM if k in theirs and not theirs[k]})
    # Body Part Examined stays in General Series beside its Frame Anatomy, and an empty
    # Laterality (Type 2C, PS3.3 C.7.3.1: "unknown") is kept where highdicom drops it
    assert set(ours) - set(theirs) <= {"BodyPartExamined", "Laterality"} | (
        _OURS_ON_PURPOSE), set(ours) - set(theirs)

    shared = ours["SharedFunctionalGroupsSequence"][0]
    their_shared = theirs["SharedFunctionalGroupsSequence"][0]
    for group, items in their_shared.items():
        if group == "PlaneOrientationSequence":  # per frame in ours (dcm2niix, see module)
            continue
        if group == "UnassignedSharedConvertedAttributesSequence":
            continue
        assert group in shared, f"shared {group} missing"
        _same(shared[group][0], items[0], f"shared {group}")
    # highdicom's unassigned shared attributes: ours in the same place, or (duplicates of
    # what the top level or a functional group holds) there
    placed = {k: v for group in shared.values() for item in group for k, v in item.items()}
    placed.update(ours)
    own = shared.get("UnassignedSharedConvertedAttributesSequence", [{}])[0]
    for keyword, value in their_shared.get(
            "UnassignedSharedConvertedAttributesSequence", [{}])[0].items():
        if keyword in ("ContentDate", "ContentTime") or keyword in _DIFFUSION:
            continue  # classic copies of the top level's / each frame's MR Diffusion
        where = own if keyword in own else placed
        assert keyword in where, f"unassigned shared {keyword} lost"
        assert _norm(where[keyword]) == _norm(value), keyword

    frames = {f["ConversionSourceAttributesSequence"][0]["ReferencedSOPInstanceUID"]: f
              for f in ours["PerFrameFunctionalGroupsSequence"]}
    for theirs_frame in theirs["PerFrameFunctionalGroupsSequence"]:
        uid = theirs_frame["ConversionSourceAttributesSequence"][0]["ReferencedSOPInstanceUID"]
        frame = frames[uid]
        for group in ("PlanePositionSequence", "ConversionSourceAttributesSequence"):
            _same(frame[group][0], theirs_frame[group][0], f"frame {group}")
        _same(frame["UnassignedPerFrameConvertedAttributesSequence"][0],
              theirs_frame["UnassignedPerFrameConvertedAttributesSequence"][0],
              "frame unassigned", _DIFFUSION)
        _same(frame["FrameContentSequence"][0], theirs_frame["FrameContentSequence"][0],
              "frame content", {"StackID", "InStackPositionNumber", "DimensionIndexValues",
                                "TemporalPositionIndex"})
        their_unassigned = theirs_frame["UnassignedPerFrameConvertedAttributesSequence"][0]
        if "DiffusionBValue" in their_unassigned:
            diffusion = frame["MRDiffusionSequence"][0]
            assert diffusion["DiffusionBValue"] == their_unassigned["DiffusionBValue"]
            assert diffusion["DiffusionDirectionality"] == (
                their_unassigned["DiffusionDirectionality"])
            if "DiffusionGradientOrientation" in their_unassigned:
                assert _norm(diffusion["DiffusionGradientDirectionSequence"][0][
                    "DiffusionGradientOrientation"]) == _norm(
                        their_unassigned["DiffusionGradientOrientation"])
    assert len(frames) == len(theirs["PerFrameFunctionalGroupsSequence"])
    # the same pixels for the same classic instance
    our_pixels = dict(zip(frames, series.object().pixel_array, strict=True))
    their = _highdicom(series)
    for group, pixels in zip(their.PerFrameFunctionalGroupsSequence, their.pixel_array,
                             strict=True):
        uid = group.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID
        assert np.array_equal(our_pixels[uid], pixels)


def test_mr_3d_and_4d_as_highdicom_converts_them(tmp_path):
    t1 = write_nifti(tmp_path / "sub-01_T1w.nii.gz", ramp_data((20, 16, 6), "int16"), AFFINE,
                     sidecar={"RepetitionTime": 2.3, "EchoTime": 0.003})
    _compare(convert_file(t1, iod="enhanced"))
    bold = write_nifti(tmp_path / "sub-01_task-rest_bold.nii.gz",
                       ramp_data((20, 16, 4, 3), "int16", seed=2), AFFINE,
                       sidecar={"RepetitionTime": 2.0, "EchoTime": 0.03})
    _compare(convert_file(bold, iod="enhanced"))


def test_ct_with_profile_attributes_as_highdicom_converts_it(tmp_path):
    """Attributes a profile may add land where highdicom puts them: the IOD's own modules at
    the top level, acquisition date and time in Frame Content, the body part's code in Frame
    Anatomy, the others among the Unassigned Shared Converted Attributes."""
    ct = write_nifti(tmp_path / "ct.nii.gz", ramp_data((20, 16, 5), "int16", seed=3), AFFINE)
    series = convert_file(ct, iod="enhanced", modality="CT", overrides={
        "PatientID": "X1", "InstitutionName": "Here", "BodyPartExamined": "HEAD",
        "AcquisitionDate": "20240101", "AcquisitionTime": "101010", "StudyDate": "20240101",
        "ContrastBolusAgent": "iodine", "KVP": "120", "ConvolutionKernel": "B30f"})
    _compare(series)
    ds = series.object()
    anatomy = ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert anatomy.AnatomicRegionSequence[0].CodeValue == "69536005"  # SCT head
    assert anatomy.FrameLaterality == "U"


def test_dwi_as_highdicom_converts_it(tmp_path):
    dwi = write_nifti(tmp_path / "sub-01_dwi.nii.gz", ramp_data((20, 16, 3, 3), "int16"),
                      AFFINE, sidecar={"RepetitionTime": 3.0, "EchoTime": 0.08})
    (tmp_path / "sub-01_dwi.bval").write_text("0 1000 1000\n")
    (tmp_path / "sub-01_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
    _compare(convert_file(dwi, iod="enhanced"))


@pytest.mark.parametrize("modality,iod", [("MR", "legacy-converted-enhanced-mr-image"),
                                          ("CT", "legacy-converted-enhanced-ct-image")])
def test_the_iod_tables_are_highdicoms(modality, iod):
    """``legacy_iod.py`` is generated from highdicom's copy of the standard: still the same."""
    iods = json.loads(pkgutil.get_data("highdicom", "_standard/iod_module_map.json"))
    modules = json.loads(pkgutil.get_data("highdicom", "_standard/module_attribute_map.json"))
    keywords = {a["keyword"] for m in iods[iod] for a in modules[m["key"]] if not a["path"]}
    assert IOD_KEYWORDS[modality] == keywords


def test_the_oracle_can_fail(tmp_path):
    """The comparison notices one wrong value."""
    t1 = write_nifti(tmp_path / "sub-01_T1w.nii.gz", ramp_data((20, 16, 4), "int16"), AFFINE)
    series = convert_file(t1, iod="enhanced")
    series.object().SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [
        1.0, 1.0]
    with pytest.raises(AssertionError, match="PixelSpacing"):
        _compare(series)



def test_our_encoding_is_what_pydicom_writes(tmp_path):
    """The per-frame groups and Pixel Data we encode by hand are, byte for byte, what
    pydicom writes for the same dataset (lengths, padding, tag order): a 4D DWI, whose
    frames carry the most groups."""
    from node.convert.series import part10_bytes

    dwi = write_nifti(tmp_path / "sub-01_dwi.nii.gz", ramp_data((20, 16, 3, 3), "int16"),
                      AFFINE, sidecar={"RepetitionTime": 3.0})
    (tmp_path / "sub-01_dwi.bval").write_text("0 1000 1000\n")
    (tmp_path / "sub-01_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
    series = convert_file(dwi, iod="enhanced")
    (_, _, pieces), = series.encoded()
    ours = b"".join(pieces)
    assert ours == part10_bytes(pydicom.dcmread(pydicom.filebase.DicomBytesIO(ours)))
