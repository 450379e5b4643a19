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
