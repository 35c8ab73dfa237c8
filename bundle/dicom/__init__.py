"""DICOM in and out: find and read CT series, write CT series, and a MONAI reader for folders.

Conventions (details in :mod:`bundle.dicom.volume`): ``CTVolume.hu`` is ``(slices, rows, cols)``
= ``[k, j, i]`` in HU; ``spacing`` is ``(slice_mm, row_mm, col_mm)``; ``direction`` columns are the
LPS unit vectors along ``i``, ``j``, ``k``; ``affine_ras`` maps ``(i, j, k, 1)`` to RAS mm for the
array ``hu_ijk = hu.transpose(2, 1, 0)`` (NIfTI / MONAI order).
"""

from bundle.dicom.monai_reader import CTSeriesReader
from bundle.dicom.discovery import Discovery, FileProblem, SeriesInfo, discover_series, select_reason
from bundle.dicom.reader import read_series
from bundle.dicom.volume import CTVolume, DicomSeriesError
from bundle.dicom.writer import write_ct_series

__all__ = [
    "CTSeriesReader",
    "CTVolume",
    "DicomSeriesError",
    "Discovery",
    "FileProblem",
    "SeriesInfo",
    "discover_series",
    "read_series",
    "select_reason",
    "write_ct_series",
]
