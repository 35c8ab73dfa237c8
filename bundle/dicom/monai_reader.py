"""MONAI ``ImageReader`` for DICOM CT series folders, backed by :func:`bundle.dicom.read_series`.

``LoadImaged(keys="image", reader=CTSeriesReader())`` turns a series folder into a MetaTensor
exactly as ``NibabelReader`` would load the same volume saved as
``nib.Nifti1Image(volume.hu_ijk, volume.affine_ras)``:

* array axes ``(i, j, k)`` = (columns, rows, slices ascending along the slice normal), no channel
  (``original_channel_dim`` is NaN, so ``EnsureChannelFirstd`` adds one);
* ``affine`` / ``original_affine`` = :attr:`CTVolume.affine_ras`, ``space`` = RAS.

``Orientationd``, ``Spacingd`` and friends therefore treat NIfTI and DICOM inputs identically.

Combining with other readers. ``LoadImage`` given readers tries them from the last given to the
first and moves on when ``read`` raises. This reader raises at once for anything that is not a
folder, so ``reader=[CTSeriesReader(), "NibabelReader"]`` (or just ``reader=CTSeriesReader()``,
which falls back to MONAI's default readers) loads NIfTI files and DICOM folders from one
datalist. For a folder, though, a validation failure (two series, a missing slice, tilt, ...)
must not fall through: MONAI's PydicomReader would then stack the same folder without those
checks. So ``read`` keeps the :class:`DicomSeriesError` and ``get_data`` raises it, outside
``LoadImage``'s fallback loop. In configs the reader can also be named by its dotted path,
``reader: bundle.dicom.CTSeriesReader``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from bundle.dicom.reader import read_series
from bundle.dicom.volume import CTVolume, DicomSeriesError

__all__ = ["CTSeriesReader"]


class _FailedSeries:
    """A folder this reader owns but could not read; ``get_data`` raises the stored error."""

    def __init__(self, error: DicomSeriesError):
        self.error = error


class CTSeriesReader(ImageReader):
    """Read a DICOM CT series folder as a RAS-affine volume for MONAI.

    Args:
        series_uid: SeriesInstanceUID to read when a folder holds several series (rarely useful
            in a datalist; point each entry at a one-series folder instead).
        spacing_tolerance: see :func:`bundle.dicom.read_series`.

    A sequence of folders is read as channels (same affine and shape required), like
    ``NibabelReader`` does for a sequence of files.
    """

    def __init__(self, series_uid: str | None = None, spacing_tolerance: float = 0.1):
        super().__init__()
        self.series_uid = series_uid
        self.spacing_tolerance = spacing_tolerance

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        """True when every given path is a directory (a DICOM series folder)."""
        paths = ensure_tuple(filename)
        return bool(paths) and all(os.path.isdir(p) for p in paths)

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs):
        """Read each folder with :func:`read_series`; returns a :class:`CTVolume` or a list.

        Raises ``ValueError`` for paths that are not folders (so ``LoadImage`` tries its next
        reader); validation errors of a folder are deferred to :meth:`get_data`.
        """
        paths = ensure_tuple(data)
        if not self.verify_suffix(paths):
            raise ValueError(f"CTSeriesReader reads DICOM series folders, got {[str(p) for p in paths]}")
        volumes: list[CTVolume | _FailedSeries] = []
        for path in paths:
            try:
                volumes.append(
                    read_series(path, series_uid=self.series_uid, spacing_tolerance=self.spacing_tolerance)
                )
            except DicomSeriesError as error:
                volumes.append(_FailedSeries(error))
        return volumes if len(volumes) > 1 else volumes[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """``(array, meta)``: array ``(i, j, k)`` float32 HU, or ``(C, i, j, k)`` for several folders."""
        volumes = img if isinstance(img, (list, tuple)) else [img]
        for volume in volumes:
            if isinstance(volume, _FailedSeries):
                raise volume.error
        arrays, meta = [], {}
        for volume in volumes:
            affine = volume.affine_ras
            shape = np.asarray(volume.hu_ijk.shape)
            if meta and not (
                np.array_equal(shape, meta[MetaKeys.SPATIAL_SHAPE]) and np.allclose(affine, meta[MetaKeys.AFFINE], atol=1e-4)
            ):
                raise DicomSeriesError(
                    f"{volume.slice_files[0].parent}: affine or shape differs from the first series; "
                    "folders read as channels must share their geometry"
                )
            if not meta:
                meta = {
                    MetaKeys.AFFINE: affine,
                    MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                    MetaKeys.SPATIAL_SHAPE: shape,
                    MetaKeys.SPACE: SpaceKeys.RAS,
                    MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
                    "series_instance_uid": volume.series_uid,
                }
            arrays.append(volume.hu_ijk)
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta
