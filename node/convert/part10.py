"""Part 10 encoding of a series' instances, reusing the encoded bytes of what they share.

Every instance of a series shares ~60 elements and differs in a handful (SOP Instance UID,
Instance Number, Image Position, Slice Location, temporal indices, Pixel Data). pydicom spends
most of a file's write time building and encoding elements, so :class:`SeriesEncoder` encodes
each shared element once with pydicom's own element writer and, per instance, encodes only the
varying ones (all plain text or OW, trivial in Explicit VR Little Endian) and joins the pieces
in tag order (PS3.5 7.1: elements ascend by tag). The result is byte-for-byte what
``pydicom.dcmwrite`` writes for the same dataset (tested).
"""

from __future__ import annotations

import copy
import struct

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from node.convert.iods.image import InstanceSlice
from node.part5 import LONG_LENGTH_VRS

PREAMBLE = b"\x00" * 128 + b"DICM"  # PS3.10 7.1


def encode_element(tag: int, vr: str, value: str | bytes | tuple[float, ...]) -> bytes:
    """One Explicit VR Little Endian element of a text, OB/OW or FD value (PS3.5 7.1.2).

    Text is padded to even length with a space, UIs with a NUL (PS3.5 6.2, 9.1).
    """
    if isinstance(value, tuple):  # FD: IEEE 754 binary64, little endian
        data = struct.pack(f"<{len(value)}d", *value)
    else:
        data = value if isinstance(value, bytes) else value.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr in ("UI", "OB") else b" "
    group, element = tag >> 16, tag & 0xFFFF
    if vr in LONG_LENGTH_VRS:
        return struct.pack("<HH2s2xI", group, element, vr.encode(), len(data)) + data
    return struct.pack("<HH2sH", group, element, vr.encode(), len(data)) + data


def _buffer() -> DicomBytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False  # Explicit VR Little Endian
    return fp


class SeriesEncoder:
    """Encode a series' instances: the template once (by pydicom), each instance's few
    varying elements and its file meta directly."""

    def __init__(self, template: Dataset, meta: FileMetaDataset) -> None:
        encodings = template.get("SpecificCharacterSet") or None
        self._shared: dict[int, bytes] = {}
        for elem in template:
            fp = _buffer()
            write_data_element(fp, elem, encodings)
            self._shared[int(elem.tag)] = fp.getvalue()
        # file meta (PS3.10 7.1): all but the instance UID is the same for the series
        self._meta_head = encode_element(0x00020001, "OB", b"\x00\x01") + encode_element(
            0x00020002, "UI", str(meta.MediaStorageSOPClassUID)
        )
        self._meta_tail = b"".join(
            encode_element(tag, vr, str(meta[tag].value))
            for tag, vr in ((0x00020010, "UI"), (0x00020012, "UI"), (0x00020013, "SH"))
            if tag in meta
        )

    def encode(self, instance: InstanceSlice) -> bytes:
        pieces = dict(self._shared)
        for tag, vr, value in instance.elements():
            pieces[tag] = encode_element(tag, vr, value)
        meta = (
            self._meta_head
            + encode_element(0x00020003, "UI", instance.sop_instance_uid)
            + self._meta_tail
        )
        group_length = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(meta))
        return b"".join([PREAMBLE, group_length, meta, *(pieces[t] for t in sorted(pieces))])


# --- multi-frame: the per-frame functional groups ----------------------------------------

_FIXED = {"US": "<H", "UL": "<L", "SS": "<h", "SL": "<l", "FD": "<d", "FL": "<f"}
_PADDED_WITH_NUL = ("UI", "OB")


def _text(value) -> bytes:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).encode("ascii")
    return str(value).encode("ascii")


def encode_items(elements) -> bytes:
    """Explicit VR Little Endian encoding of plain elements (text, numbers, sequences of
    them) with defined lengths: the few kinds a functional group holds (PS3.5 7.1.2, 7.5).
    Anything else is left to pydicom's own writer."""
    out = []
    for element in elements:
        tag, vr, value = int(element.tag), element.VR, element.value
        group, number = tag >> 16, tag & 0xFFFF
        if vr == "SQ":
            items = b"".join(
                struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
                for body in (encode_items(item) for item in value))
            out.append(struct.pack("<HH2sHI", group, number, b"SQ", 0, len(items)) + items)
        elif vr in _FIXED:
            values = value if isinstance(value, list | tuple) or type(value).__name__ == (
                "MultiValue") else ([] if value is None else [value])
            data = b"".join(struct.pack(_FIXED[vr], v) for v in values)
            out.append(struct.pack("<HH2sH", group, number, vr.encode(), len(data)) + data)
        elif vr == "AT":
            values = value if isinstance(value, list | tuple) else [value]
            data = b"".join(struct.pack("<HH", int(v) >> 16, int(v) & 0xFFFF) for v in values)
            out.append(struct.pack("<HH2sH", group, number, b"AT", len(data)) + data)
        elif vr in ("CS", "SH", "LO", "UI", "IS", "DS", "DA", "TM", "DT", "ST", "LT", "AS"):
            data = b"" if value is None or value == "" else _text(value)
            if len(data) % 2:
                data += b"\x00" if vr in _PADDED_WITH_NUL else b" "
            out.append(struct.pack("<HH2sH", group, number, vr.encode(), len(data)) + data)
        else:  # rare in functional groups: pydicom writes it
            fp = _buffer()
            write_data_element(fp, element, None)
            out.append(fp.getvalue())
    return b"".join(out)


def multiframe_bytes(ds: Dataset) -> bytes:
    """A multi-frame instance as a Part 10 file in Explicit VR Little Endian, byte for byte
    what pydicom writes (tested): pydicom encodes everything but the per-frame functional
    groups and the pixel data, which are the bulk of an enhanced object (thousands of small
    items) and are encoded here."""
    from pydicom.filebase import DicomBytesIO

    if 0x52009230 not in ds or 0x7FE00010 not in ds:
        raise ValueError("not a multi-frame image with Pixel Data (a float map?): use pydicom")
    per_frame, pixels = ds[0x52009230], ds[0x7FE00010]
    head = Dataset()
    for element in ds:
        if int(element.tag) < 0x52009230:
            head.add(element)
        elif int(element.tag) not in (0x52009230, 0x7FE00010):
            raise ValueError(f"{element.tag} after the functional groups: use pydicom")
    head.file_meta = ds.file_meta
    fp = DicomBytesIO()
    head.save_as(fp, enforce_file_format=True)
    data = bytes(pixels.value)
    if len(data) % 2:
        data += b"\x00"
    from pydicom.filewriter import correct_ambiguous_vr_element

    # "OB or OW": resolved from Bits Allocated as pydicom's writer does (PS3.5 8.2)
    vr = correct_ambiguous_vr_element(copy.copy(pixels), ds, True).VR
    return b"".join([fp.getvalue(), encode_items([per_frame]),
                     struct.pack("<HH2s2xI", 0x7FE0, 0x0010, vr.encode(), len(data)), data])
