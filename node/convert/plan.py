"""What a series will be, known before any voxel is read: the header and the sidecar, the
mapping resolved, the object chosen and the UIDs made. Enough for a batch (or the node's
journal) to reconcile the series of one study before converting any of them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from node.convert.diffusion import VolumeWeighting, gradient_files, read_weighting
from node.convert.geometry import choose_affine
from node.convert.iods.image import SOP_CLASSES
from node.convert.iods.seg import SEG_SUFFIXES
from node.convert.mapping import Attributes, pseudonym, resolve_attributes, value_of
from node.convert.options import ConversionOptions, options_from
from node.convert.profile import Profile, builtin_profile
from node.convert.source import NiftiSource, bids_entities, load_source
from node.convert.study import StudyValues, series_number
from node.convert.uids import SeriesUids, series_uids
from node.errors import MappingError


def standalone_study(values: StudyValues, series_uid: str, own_number: int | None
                     ) -> tuple[StudyValues, int | None]:
    """A series alone in its study: it carries its own values, and a SeriesNumber from its
    Series Instance UID."""
    return values, own_number if own_number is not None else series_number(series_uid, set())


def _mapping_digest(attrs: Attributes, modality: str, profile: Profile) -> str:
    payload = {k: v.value for k, v in sorted(attrs.items())}
    payload["_modality"] = modality
    payload["_derived"] = profile.derived
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class SeriesPlan:
    """What a series will say, known from the header, the sidecar and the mapping alone
    (no voxel read): enough to reconcile it with the other series of its study."""

    source: NiftiSource
    modality: str
    attributes: Attributes
    uids: SeriesUids
    warnings: tuple[str, ...] = ()
    weighting: tuple[VolumeWeighting, ...] | None = None  # a DWI's .bval/.bvec, per volume

    @property
    def study(self) -> StudyValues:
        return StudyValues.of(self.uids.study, self.attributes)

    @property
    def series_number(self) -> int | None:
        """The SeriesNumber a source names, if any."""
        text = str(value_of(self.attributes, "SeriesNumber")).strip()
        return int(text) if text.lstrip("-").isdigit() else None


def plan_series(path: str | Path, profile: Profile | None = None,
                options: ConversionOptions | None = None, **keywords) -> SeriesPlan:
    """Read the header and the sidecar, resolve the mapping, make the UIDs. ``options`` (or
    the same as keywords): see ConversionOptions; its ``iod`` is the object already chosen
    (``choose_iod``), default a classic image."""
    opts = options_from(options, keywords)
    reference, iod = opts.reference, opts.iod or "image"
    profile = profile or builtin_profile()
    source = load_source(path, opts.sidecar)
    modality = (opts.modality or profile.modality).upper()
    notes: list[str] = []
    if is_colour(source, profile) and modality != "OT":
        notes.append(f"colour data: Secondary Capture, not {modality} (an {modality} image is "
                     "MONOCHROME2)")
        modality = "OT"
    if modality not in SOP_CLASSES:
        modality = "OT"
    overrides = dict(opts.overrides) if opts.overrides is not None else None
    attrs = resolve_attributes(source, profile, overrides, modality,
                               reference=reference.values if reference else None,
                               warnings=notes)
    if not str(value_of(attrs, "PatientID")).strip():
        # never an empty identity: a PACS files every such series under one patient ''
        raise MappingError(source.path, "no PatientID from any source (no sub- entity in the "
                           "file name, none in the sidecar or the profile): give --set "
                           "PatientID=..., a sidecar key PatientID, or a profile static or "
                           "fallback value")
    if reference is None and "StudyInstanceUID" in attrs:
        study_uid: str | None = str(value_of(attrs, "StudyInstanceUID"))
    else:
        study_uid = reference.study_uid if reference else None
    frame = reference.frame_of_reference_uid if (
        reference and profile.same_frame_of_reference) else None
    if reference and profile.same_frame_of_reference and not frame:
        raise MappingError(source.path, f"the profile says the NIfTI is in the reference's "
                           f"space, but the reference {reference.origin} has no single "
                           "FrameOfReferenceUID")
    weighting = _weighting(source) if modality == "MR" else None
    digest = _mapping_digest(attrs, modality, profile)
    if iod != "image":  # another object is another series (an encoding is not)
        digest = hashlib.sha256(f"{digest} {iod}".encode()).hexdigest()
    if weighting:  # other gradients make another series
        digest = hashlib.sha256((digest + repr(weighting)).encode()).hexdigest()
    uids = series_uids(
        opts.uid_root,
        _study_key(source, profile, attrs),
        str(value_of(attrs, "StudyID")),
        source.sha256,
        digest,
        study_uid=study_uid,
        frame_of_reference_uid=frame,
    )
    return SeriesPlan(source, modality, attrs, uids, tuple(notes), weighting)


def _weighting(source: NiftiSource) -> tuple[VolumeWeighting, ...] | None:
    """The diffusion weighting per volume from ``.bval``/``.bvec`` beside the file, if any."""
    found = gradient_files(source.path)
    if found is None:
        return None
    affine, _ = choose_affine(source.image.header)
    return tuple(read_weighting(*found, source.shape[3], affine))


def _study_key(source: NiftiSource, profile: Profile, attrs: Attributes) -> str:
    """Who the study belongs to, for its UID: the file name's subject when it has one (so the
    series of one session share a study whichever carry a sidecar identity), else the
    PatientID."""
    sub = source.entities.get("sub")
    if sub and "{sub}" in profile.filename.get("PatientID", ""):
        return pseudonym(profile, "sub", sub) if profile.deidentify else sub
    return str(value_of(attrs, "PatientID"))


def is_colour(source: NiftiSource, profile: Profile) -> bool:
    """RGB24 voxels, or a last dimension of 3 that the profile says holds R, G, B."""
    return source.rgb or (profile.rgb_last_dimension and source.shape[3] == 3)


def choose_iod(path: Path, iod: str) -> str:
    """``auto``: a SEG of a BIDS label map (_dseg, _mask, _probseg), else a classic image."""
    if iod != "auto":
        return iod
    return "seg" if bids_entities(path).get("suffix") in SEG_SUFFIXES else "image"
