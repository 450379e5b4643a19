"""DICOM networking as an SCU: any DICOM file to any peer (PS3.7, PS3.8).

Knows no NIfTI and no journal: imports nothing of ``node.convert``, ``node.service`` or
``node.cli``.
"""
