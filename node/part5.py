"""Facts of the DICOM data encoding (PS3.5) that the converter and the network both use.

A root module, so that ``node.convert`` and ``node.net`` share one table without importing
each other.
"""

#: VRs whose explicit-VR length field has 4 bytes after 2 reserved ones (PS3.5 7.1.2,
#: Table 7.1-1); every other VR has a 2-byte length.
LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                             "UT", "UV"})
#: The same, as the two bytes that stand in a file.
LONG_LENGTH_VR_BYTES = frozenset(vr.encode("ascii") for vr in LONG_LENGTH_VRS)
