"""dicom-node: NIfTI in, PACS-ready DICOM out.

The package is laid out along the flow of data (see ../shared/GUIDE.md):
``nifti`` reads a source, ``geometry`` and ``pixels`` describe it in DICOM terms,
``mapping`` resolves the metadata profile, ``uids`` names everything deterministically,
``iod`` builds the datasets and ``convert`` ties them together for one file.
"""

__version__ = "0.1.0"
CONVERTER_NAME = "dicom-node"
