"""The CT volume type of this package, and the error every DICOM reading problem raises.

Array and geometry conventions (shared by the readers, the writers and the NIfTI functions):

* ``CTVolume.hu[k, j, i]``: ``k`` slice index (ascending along the slice normal), ``j`` row index
  (top to bottom of the image), ``i`` column index (left to right of the image).
* ``spacing = (slice_mm, row_mm, col_mm)``, in the order of the ``hu`` axes: ``row_mm`` is the
  distance between rows (step of ``j``) = PixelSpacing[0], ``col_mm`` the distance between
  columns (step of ``i``) = PixelSpacing[1].
* ``direction[:, 0]``, ``[:, 1]``, ``[:, 2]``: unit vectors in patient LPS along increasing
  ``i``, ``j``, ``k`` (ImageOrientationPatient row cosine, column cosine, and their cross
  product). It is SimpleITK's ``GetDirection()`` reshaped to 3x3.
* ``origin``: LPS position (mm) of voxel ``hu[0, 0, 0]`` (ImagePositionPatient of the lowest slice).
* NIfTI / MONAI order is ``(i, j, k)``: ``CTVolume.hu_ijk = hu.transpose(2, 1, 0)``, and
  ``affine_ras @ (i, j, k, 1)`` is the RAS position in mm. This is what nibabel gives for a NIfTI
  written as ``Nifti1Image(volume.hu_ijk, volume.affine_ras)`` and what SimpleITK / ITK use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

__all__ = ["CTVolume", "DicomSeriesError"]


class DicomSeriesError(ValueError):
    """A DICOM series cannot be read as one regular CT volume; the message names where and why."""


@dataclass
class CTVolume:
    """A CT series as a float32 HU volume with its patient geometry (see the module docstring).

    Attributes:
        hu: float32 array ``(slices, rows, cols)`` = ``[k, j, i]``, Hounsfield units.
        spacing: ``(slice_mm, row_mm, col_mm)``, voxel size along the ``hu`` axes.
        origin: LPS position in mm of voxel ``hu[0, 0, 0]``.
        direction: 3x3, columns are LPS unit vectors along increasing ``i``, ``j``, ``k``.
        slice_files: the file of each slice ``k``.
        slice_sop_uids: SOPInstanceUID of each slice ``k``.
        reference: header of slice 0 without pixel data (patient, study, series, equipment).
        series_uid: SeriesInstanceUID.
        padding: bool ``(slices, rows, cols)``, True where the source marked a voxel as outside the
            field of view (PixelPaddingValue, or a fill below -1500 HU); ``hu`` holds air there.
            None when no voxel is padding (and for volumes not read from DICOM).
        clipped_voxels: how many voxels were beyond the int16 range after rescale and clipped.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    slice_files: list[Path]
    slice_sop_uids: list[str]
    reference: Dataset
    series_uid: str
    padding: np.ndarray | None = None
    clipped_voxels: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def slice_thickness(self) -> float | None:
        """SliceThickness of the series (mm), None when the header has none (NIfTI volumes)."""
        value = self.reference.get("SliceThickness", None) if self.reference is not None else None
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    @property
    def hu_ijk(self) -> np.ndarray:
        """``hu`` with axes ``(i, j, k)`` = (cols, rows, slices), the NIfTI / MONAI order (a view)."""
        return self.hu.transpose(2, 1, 0)

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 mapping ``(i, j, k, 1)`` (column, row, slice index) to LPS mm."""
        slice_mm, row_mm, col_mm = self.spacing
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(self.direction, float) @ np.diag([col_mm, row_mm, slice_mm])
        affine[:3, 3] = self.origin
        return affine

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 mapping ``(i, j, k, 1)`` to RAS mm: the NIfTI affine for the array :attr:`hu_ijk`."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    def to_sitk(self):
        """A SimpleITK image with the same voxels and geometry (SimpleITK is LPS, index (i, j, k))."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.hu))
        slice_mm, row_mm, col_mm = self.spacing
        image.SetSpacing((float(col_mm), float(row_mm), float(slice_mm)))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in np.asarray(self.direction, float).ravel()))
        return image
