"""Convert a batch of NIfTI files into folders of DICOM (``dicom-node convert``), and explain
where each attribute of one would come from."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from node.convert.options import ConversionOptions
from node.convert.profile import Profile
from node.convert.source import nifti_stem
from node.errors import DicomNodeError
from node.service.operations.processes import in_processes


def _convert_one(path: Path, out_dir: Path, profile: Profile, name: str,
                 options: ConversionOptions, study, overwrite: bool, preview: bool):
    """Worker: a SeriesSummary, or the DicomNodeError to report (never raises for bad input).
    ``study``: the StudyHook the batch reconciled for this input, or the error refusing it."""
    from node.convert.output import convert_to_folder

    if isinstance(study, DicomNodeError):
        return study
    try:
        return convert_to_folder(path, out_dir, profile, options.replace(study=study),
                                 name=name, overwrite=overwrite, preview=preview)
    except DicomNodeError as exc:
        return exc


def reconcile_studies(inputs: Sequence[Path], profile: Profile,
                      options: ConversionOptions) -> list:
    """Per input, the study it joins (a picklable StudyHook) or the error that refuses it.

    Every series of one study carries one set of patient and study values, whatever the order
    of the files: the batch is planned first (headers and sidecars only), then each study is
    reconciled (node.convert.study), then converted.
    """
    from node.convert.plan import choose_iod, plan_series
    from node.convert.study import Member, reconcile

    members, slots, out = [], [], []
    for path in inputs:
        try:
            plan = plan_series(path, profile, options.replace(
                iod=choose_iod(Path(path), options.iod or profile.iod)))
        except DicomNodeError as exc:
            out.append(exc)
            continue
        members.append(Member(path, plan.study, plan.uids.series, plan.series_number))
        slots.append(len(out))
        out.append(None)
    for slot, known in zip(slots, reconcile(members), strict=True):
        out[slot] = known
    return out


def unique_names(paths: Iterable[Path]) -> list[str]:
    """One output folder name per input: its NIfTI stem, made unique with ``_2``, ``_3``..."""
    used: set[str] = set()
    names = []
    for path in paths:
        stem = name = nifti_stem(path)
        n = 1
        while name in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name)
        names.append(name)
    return names


def convert_batch(inputs: Sequence[Path], out_dir: Path, profile: Profile, uid_root: str, *,
                  jobs: int | None = None, overwrite: bool = False, preview: bool = False,
                  **options) -> list:
    """Convert each input into ``out_dir/<name>``: a SeriesSummary or a DicomNodeError each.

    ``options``: the ConversionOptions of every input (sidecar, overrides, modality, the
    clinical exam as ``reference``, iod, compression, source_image, labelmap). The series of
    one study are reconciled first (:func:`reconcile_studies`).
    """
    common = ConversionOptions(uid_root=uid_root, **options)
    studies = reconcile_studies(inputs, profile, common)
    calls = [(path, out_dir, profile, name, common, study, overwrite, preview)
             for path, name, study in zip(inputs, unique_names(inputs), studies, strict=True)]
    return in_processes(_convert_one, calls, jobs)


def checked_results(value: list[str] | None) -> tuple[str, ...]:
    """``--results overlay,measurements,report`` checked (a ValueError names the option)."""
    from node.convert.profile import check_results

    return check_results("--results", list(value or []))


def planned_results(path: Path, profile: Profile, uid_root: str, **options) -> list[str]:
    """What a SEG would also bring (its profile's or ``results``), one line each, with the
    measurements and the notes (a one-voxel segment, labels outside the image)."""
    from node.convert.output import wanted_results
    from node.convert.results import make_results
    from node.convert.series import convert_file

    opts = ConversionOptions(uid_root=uid_root, **options)
    series = convert_file(path, profile, opts)
    which = wanted_results(series, opts)
    if not which:
        return []
    if series.iod != "seg":
        return [f"results ({', '.join(which)}): none, they are made from a SEG and this "
                f"file becomes {series.iod!r}"]
    made = make_results(series, which)
    lines = []
    by_series: dict[str, list] = {}
    for ds in made.datasets:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    for uid, items in by_series.items():
        first = items[0]
        lines.append(f"{first.SOPClassUID.name}: {len(items)} instance(s), series {uid} "
                     f"({first.get('SeriesDescription', '')})")
    for s in made.segments:
        lines.append(f"segment {s.number} {s.label}: {s.voxels} voxels, "
                     f"{s.volume_mm3(made.voxel_mm3):.1f} mm3, "
                     f"{s.volume_mm3(made.voxel_mm3) / 1000:.3f} ml")
    for m in made.maps:
        for number, (mean, sd, lo, hi, n) in sorted(m.per_segment.items()):
            lines.append(f"{m.quantity} ({m.name}, {m.units}) in segment {number}: mean "
                         f"{mean:.4g}, sd {sd:.4g}, min {lo:.4g}, max {hi:.4g} ({n} voxels)")
    return lines + [f"note: {n}" for n in made.notes]


def explain(path: Path, profile: Profile, uid_root: str, **options) -> list:
    """What ``convert`` would write for ``path``, attribute by attribute, and from where;
    ``options`` as for :func:`convert_batch`."""
    from node.convert.explain import explain
    from node.convert.series import convert_file

    return explain(convert_file(path, profile, ConversionOptions(uid_root=uid_root, **options)))
