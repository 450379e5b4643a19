"""DICOM files as the network sends them: described from the file meta (PS3.10 7.1) without
a full read, opened at the data set, and re-encoded only when the peer takes no context in the
file's own transfer syntax.

pydicom is imported only for an unusual file (no "DICM", a large or odd file meta) or one that
must be re-encoded: a push of ordinary files never loads it.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from node.errors import InputError
from node.net.status import peer_text
from node.net.upper import AcceptedContext
from node.part5 import LONG_LENGTH_VR_BYTES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydicom.dataset import Dataset

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE)


@dataclass(frozen=True)
class DicomFile:
    """A Part 10 file ready to send, described by its file meta and identifying UIDs."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_uid: str = ""
    series_uid: str = ""


_META_UIDS = {0x0002: "MediaStorageSOPClassUID", 0x0003: "MediaStorageSOPInstanceUID",
              0x0010: "TransferSyntaxUID"}


def _file_meta(path: Path) -> tuple[dict[str, str], int] | None:
    """The file meta UIDs of a Part 10 file and the offset of its data set (PS3.10 7.1).

    The file meta is always Explicit VR Little Endian group 0002 after a 128-byte preamble and
    "DICM", so it is walked directly: a pydicom read costs five times as much, and this runs
    for every file before the first C-STORE. None when anything is unusual (no "DICM", a meta
    over 16 KB, a truncated element, a UID that is not ASCII): pydicom then reads the file.
    """
    with open(path, "rb") as fp:
        head = fp.read(16384)
    try:
        return _walk_file_meta(head)
    except (UnicodeDecodeError, struct.error):
        return None


def _walk_file_meta(head: bytes) -> tuple[dict[str, str], int] | None:
    if head[128:132] != b"DICM":
        return None
    uids: dict[str, str] = {}
    pos = 132
    while pos + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 2:
            break
        if head[pos + 4: pos + 6] in LONG_LENGTH_VR_BYTES:
            if pos + 12 > len(head):
                return None
            (length,) = struct.unpack_from("<I", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        if start + length > len(head):
            return None
        if element in _META_UIDS:
            uids[_META_UIDS[element]] = head[start: start + length].rstrip(b"\0 ").decode("ascii")
        pos = start + length
    else:
        if len(head) == 16384:  # the meta did not end within what was read
            return None
    return uids, pos


def _open_dataset(path: Path) -> tuple[BinaryIO, dict[str, str]]:
    """Open a Part 10 file positioned at its data set, with its file meta UIDs (PS3.10 7.1)."""
    from pydicom.filereader import read_dataset, read_preamble

    found = _file_meta(path)
    fp = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    try:
        if found is not None:
            uids, offset = found
            fp.seek(offset)
            return fp, uids
        read_preamble(fp, False)
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag.group != 2)
        uids = {k: str(meta.get(k, "") or "") for k in _META_UIDS.values()}
    except BaseException:
        fp.close()
        raise
    return fp, uids


_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def read_dicom_file(path: str | Path, check: bool = False) -> DicomFile:
    """Describe a DICOM file from its file meta; InputError if it is not DICOM.

    Only the file meta is read (about 0.03 ms a file, against 0.4 ms for a pydicom read of
    the header), so thousands of files are ready to send at once. The study and series UIDs
    are filled in when the file is opened to be sent (:func:`open_checked`). UIDs are checked
    here (PS3.5 9.1: digits and dots, at most 64): they go into our command sets as they are.
    """
    path = Path(path)
    try:
        found = _file_meta(path)
        if found is not None:
            uids = found[0]
        else:  # something unusual: pydicom reads it
            fp, uids = _open_dataset(path)
            fp.close()
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    except Exception as exc:
        from pydicom.errors import InvalidDicomError

        if isinstance(exc, InvalidDicomError):
            raise InputError(path, "neither NIfTI nor a DICOM Part 10 file") from None
        raise InputError(path, f"unreadable DICOM file ({peer_text(str(exc), 120)})") from None
    if all(uids.get(key) for key in _META_UIDS.values()):
        f = DicomFile(path, uids["MediaStorageSOPClassUID"],
                      uids["MediaStorageSOPInstanceUID"], uids["TransferSyntaxUID"])
    else:
        f = _read_header(path)  # an incomplete file meta: look into the data set
    for what, uid in (("SOP Class UID", f.sop_class_uid), ("SOP Instance UID",
                      f.sop_instance_uid), ("Transfer Syntax UID", f.transfer_syntax)):
        if not _UID.match(uid):
            raise InputError(path, f"its {what} is not a valid UID (digits and dots, at most "
                             "64 characters, PS3.5 9.1)")
    if check:  # the whole structure, now (the node checks before it queues a send)
        fp, f = open_checked(f)
        fp.close()
    return f


def open_checked(f: DicomFile) -> tuple[BinaryIO, DicomFile]:
    """``f``'s file, open at its data set, after a walk of the data set's structure; and ``f``
    with its study and series UIDs. InputError when a declared length does not fit the file
    (a peer would wait for bytes that never come) or the file cannot be read.

    One open and one 64 KB read serve the file meta, the walk and the send: the walk of an
    ordinary image (its elements, then pixel data reaching the end of the file) needs no more.
    """
    try:
        fp = open(f.path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    except OSError as exc:
        raise InputError(f.path, f"cannot read ({exc.strerror or exc})") from None
    try:
        head = fp.read(_HEAD_BYTES)
        size = os.fstat(fp.fileno()).st_size
        try:
            found = _walk_file_meta(head[:16384])
        except (UnicodeDecodeError, struct.error):
            found = None
        if found is None or f.transfer_syntax in _NOT_WALKED:
            fp.close()
            try:
                fp, _ = _open_dataset(f.path)
            except Exception as exc:
                raise InputError(f.path, f"unreadable DICOM file "
                                 f"({peer_text(str(exc), 120)})") from None
            return fp, describe(f)
        offset = found[1]
        if size <= offset:
            raise Malformed("the file has no data set")
        explicit = f.transfer_syntax != IMPLICIT_LE
        uids = _walk_head(head, offset, size, explicit)
        if uids is None:  # sequences of undefined length, elements after a large value...
            uids = check_structure(f.path, offset, f.transfer_syntax)
        fp.seek(offset)
    except Malformed as exc:
        fp.close()
        raise InputError(f.path, f"malformed DICOM data set: {exc}") from None
    except OSError as exc:
        fp.close()
        raise InputError(f.path, f"cannot read ({exc.strerror or exc})") from None
    except BaseException:
        fp.close()
        raise
    study, series = uids
    return fp, replace(f, study_uid=study or f.study_uid, series_uid=series or f.series_uid)


_HEAD_BYTES = 16384


def _walk_head(head: bytes, pos: int, size: int, explicit: bool) -> tuple[str, str] | None:
    """The top-level walk of a data set within the first bytes of a file of ``size`` bytes:
    the (study, series) UIDs when every element was checked, Malformed when one cannot fit
    the file, None when the rest needs the whole file (:func:`check_structure`)."""
    found: dict[int, bytes] = {_STUDY_UID: b"", _SERIES_UID: b""}
    have = len(head)
    while pos < size:
        if pos + 12 > have:
            return None
        group, element, vr, length, start = _element_header(head, pos, explicit)
        tag = group << 16 | element
        if length == _UNDEFINED or group == 0xFFFE:
            return None
        end = start + length
        if end > size:
            raise Malformed(f"element ({group:04X},{element:04X}) declares {length} bytes, "
                            f"{size - start} are left in the file")
        if vr == b"SQ" or (not explicit and tag != 0x7FE00010 and length >= 8):
            if end > have:
                return None
            if vr == b"SQ" or _is_item(head, start, end):
                try:
                    _walk_items(head, start, end, explicit, 1)
                except Malformed:
                    if vr == b"SQ":
                        raise
        if tag in found:
            if end > have:
                return None
            found[tag] = head[start:end]
        pos = end
        if pos >= have and pos != size:
            return None
    return tuple(v.rstrip(b"\0 ").decode("ascii", "replace") for v in found.values())


# --- the data set's structure -------------------------------------------------------------

#: Tags the walk reads values of: Study and Series Instance UID (PS3.3 C.7.2.1, C.7.3.1).
_STUDY_UID, _SERIES_UID = 0x0020000D, 0x0020000E
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32  # nested sequences: deeper is not an image, it is an attack on the stack


class Malformed(ValueError):
    """A data set whose declared lengths do not fit the file (PS3.5 7.1, 7.5)."""


def _walk(buf, pos: int, end: int, explicit: bool, depth: int, found: dict[int, bytes] | None,
          stop: int) -> int:
    """Walk data elements from ``pos`` to ``end`` (or to an item delimiter), checking that each
    declared length fits; returns the position after the last element (after the delimiter).

    Values of the tags in ``found`` are collected at the top level only. Undefined lengths
    (sequences, encapsulated pixel data, PS3.5 7.5 and A.4) are followed item by item.
    """
    if depth > _MAX_DEPTH:
        raise Malformed(f"sequences nested deeper than {_MAX_DEPTH}")
    while pos < end:
        if pos + 8 > end:
            if depth == 0 and not any(buf[pos:end]):
                return end  # a few bytes of zero padding after the last element
            raise Malformed(f"a truncated element header at byte {pos}")
        group, element = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            return pos + 8
        if depth == 0 and tag > stop:
            return pos
        if explicit and group != 0xFFFE and bytes(buf[pos + 4: pos + 6]) in (
                LONG_LENGTH_VR_BYTES) and pos + 12 > end:
            raise Malformed(f"a truncated element header at byte {pos}")
        _, _, vr, length, start = _element_header(buf, pos, explicit)
        if length == _UNDEFINED:
            # a sequence, encapsulated pixel data or UN of undefined length (then implicit VR
            # inside, PS3.5 6.2.2): items until the sequence delimiter
            pos = _walk_items(buf, start, end, explicit and vr != b"UN", depth + 1)
            continue
        if start + length > end:
            raise Malformed(f"element ({group:04X},{element:04X}) declares {length} bytes, "
                            f"{end - start} are left in the file")
        if found is not None and depth == 0 and tag in found:
            found[tag] = bytes(buf[start: start + length])
        if vr == b"SQ":
            _walk_items(buf, start, start + length, explicit, depth + 1)
        elif not explicit and tag != 0x7FE00010 and _is_item(buf, start, start + length):
            with contextlib.suppress(Malformed):  # implicit VR: it only looks like a sequence
                _walk_items(buf, start, start + length, explicit, depth + 1)
        pos = start + length
    return pos


def _element_header(buf, pos: int, explicit: bool) -> tuple[int, int, bytes, int, int]:
    """(group, element, VR or b"", value length, value offset) of the element at ``pos``
    (PS3.5 7.1.1-7.1.3: explicit VR with a 2- or 4-byte length, or implicit VR)."""
    group, element = struct.unpack_from("<HH", buf, pos)
    if explicit and group != 0xFFFE:
        vr = bytes(buf[pos + 4: pos + 6])
        if vr in LONG_LENGTH_VR_BYTES:
            return group, element, vr, struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
        return group, element, vr, struct.unpack_from("<H", buf, pos + 6)[0], pos + 8
    return group, element, b"", struct.unpack_from("<I", buf, pos + 4)[0], pos + 8


def _is_item(buf, start: int, end: int) -> bool:
    return end - start >= 8 and struct.unpack_from("<I", buf, start)[0] == 0xE000FFFE


def _walk_items(buf, pos: int, end: int, explicit: bool, depth: int) -> int:
    """Items of a sequence from ``pos``: defined lengths checked, undefined ones walked."""
    while pos < end:
        if pos + 8 > end:
            raise Malformed(f"a truncated item header at byte {pos}")
        tag = (struct.unpack_from("<H", buf, pos)[0] << 16) | struct.unpack_from(
            "<H", buf, pos + 2)[0]
        (length,) = struct.unpack_from("<I", buf, pos + 4)
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise Malformed(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) where a sequence item was due")
        if length == _UNDEFINED:
            pos = _walk(buf, pos + 8, end, explicit, depth, None, 0xFFFFFFFF)
            continue
        if pos + 8 + length > end:
            raise Malformed(f"an item declares {length} bytes, {end - pos - 8} are left")
        pos += 8 + length
    return pos


def check_structure(path: Path, offset: int, transfer_syntax: str) -> tuple[str, str]:
    """Walk the data set of a Part 10 file from ``offset`` and return its (study UID, series
    UID); Malformed when a declared length does not fit the file. Little endian syntaxes only
    (explicit, implicit and every compressed one); others return ("", "")."""
    import mmap

    explicit = transfer_syntax != IMPLICIT_LE
    if transfer_syntax in _NOT_WALKED:
        return "", ""
    found: dict[int, bytes] = {_STUDY_UID: b"", _SERIES_UID: b""}
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        if size <= offset:
            raise Malformed("the file has no data set")
        with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _walk(buf, offset, size, explicit, 0, found, 0xFFFFFFFF)
    return tuple(v.rstrip(b"\0 ").decode("ascii", "replace") for v in found.values())


#: Explicit VR Big Endian and the deflated syntaxes: pydicom reads those.
_NOT_WALKED = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                         "1.2.840.10008.1.2.8.1"})


def _read_header(path: Path) -> DicomFile:
    """Describe a DICOM file from its header (file meta and data set, no pixel data)."""
    from pydicom.filereader import read_partial

    try:
        with open(path, "rb") as fp:  # the UIDs all come before (0020,000E)'s successors
            ds = read_partial(
                fp, stop_when=lambda tag, vr, length: tag > 0x0020000E,
                specific_tags=[0x00080016, 0x00080018, 0x0020000D, 0x0020000E],
            )
    except Exception as exc:
        raise InputError(path, f"unreadable DICOM file ({exc})") from None
    meta = ds.file_meta
    sop_class = meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID")
    sop_instance = meta.get("MediaStorageSOPInstanceUID") or ds.get("SOPInstanceUID")
    syntax = meta.get("TransferSyntaxUID")
    if not (sop_class and sop_instance and syntax):
        raise InputError(path, "DICOM file without SOP Class/Instance UID or transfer syntax")
    return DicomFile(
        path=path, sop_class_uid=str(sop_class), sop_instance_uid=str(sop_instance),
        transfer_syntax=str(syntax), study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
    )


def describe(f: DicomFile) -> DicomFile:
    """``f`` with its study and series UIDs, read from the file when they are not known yet."""
    if f.series_uid and f.study_uid:
        return f
    try:
        fp, described = open_checked(f)
    except InputError:
        return f
    fp.close()
    return described


class _Unsendable(Exception):
    """This file cannot go over this association (a permanent failure for the instance);
    ``sop_class_refused``: because the peer takes no instance of its SOP class at all."""

    def __init__(self, message: str, sop_class_refused: bool = False) -> None:
        super().__init__(message)
        self.sop_class_refused = sop_class_refused


def _payload(
    f: DicomFile, contexts: Sequence[AcceptedContext]
) -> tuple[int, BinaryIO, DicomFile]:
    """The accepted context for ``f``, its data set ready to read, and ``f`` described (study
    and series UIDs): the file's own bytes, structure checked, when the peer took its transfer
    syntax; else re-encoded uncompressed by pydicom."""
    mine = [c for c in contexts if c.abstract_syntax == f.sop_class_uid]
    for context in mine:
        if context.transfer_syntax == f.transfer_syntax:
            try:
                fp, described = open_checked(f)
            except InputError as exc:
                raise _Unsendable(exc.reason) from None
            return context.id, fp, described  # streamed as encoded
    fallback = next((c for c in mine if c.transfer_syntax in UNCOMPRESSED), None)
    from pydicom.uid import UID

    if fallback is None:
        name = UID(f.sop_class_uid).name
        what = f"{name} ({f.sop_class_uid})" if name != f.sop_class_uid else f.sop_class_uid
        if not mine:
            raise _Unsendable(f"peer does not take SOP class {what}", sop_class_refused=True)
        raise _Unsendable(f"peer accepted no presentation context for SOP class {what} in "
                          f"transfer syntax {f.transfer_syntax}")
    from pydicom import dcmread
    from pynetdicom.dsutils import encode

    try:
        ds = dcmread(f.path)  # a deflated data set is inflated here
        syntax = UID(f.transfer_syntax)
        if syntax.is_compressed:
            # a transfer syntax is not part of an instance's identity: pydicom would give the
            # decompressed data set a new SOP Instance UID, and it would no longer match the
            # request (storescp answers 0xA900) nor be the same instance in the PACS
            ds.decompress(generate_instance_uid=False)
        elif not syntax.is_little_endian:
            _words_to_little_endian(ds)
        data = encode(ds, fallback.transfer_syntax == IMPLICIT_LE, True)
    except Exception as exc:
        raise _Unsendable(f"peer does not accept transfer syntax {f.transfer_syntax} and the "
                          f"file cannot be re-encoded here ({exc})") from None
    if data is None:
        raise _Unsendable(f"{f.path} cannot be encoded in {fallback.transfer_syntax}")
    described = replace(f, study_uid=str(ds.get("StudyInstanceUID", "") or ""),
                        series_uid=str(ds.get("SeriesInstanceUID", "") or ""))
    return fallback.id, BytesIO(data), described


#: Word size of the binary VRs whose values are byte-swapped with the data set (PS3.5 7.3).
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _words_to_little_endian(ds: Dataset) -> None:
    """Swap the words of the raw binary values (pixel data, LUTs, overlays) of a data set read
    from Explicit VR Big Endian, which pydicom writes as they are: without this, a big endian
    file re-encoded for a peer reaches it with every 16-bit pixel byte-swapped. Numeric VRs
    (US, SS, FL, ...) are held as numbers and written in the new byte order by pydicom."""
    import numpy as np

    for elem in ds.iterall():
        size = _WORD_SIZES.get(elem.VR)
        if size and isinstance(elem.value, bytes) and len(elem.value) % size == 0:
            elem.value = np.frombuffer(elem.value, f">u{size}").astype(f"<u{size}").tobytes()
