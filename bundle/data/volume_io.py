"""Load a CT volume from NIfTI or DICOM, save HU volumes as NIfTI with the input's geometry.

One convention in memory, the one of :class:`bundle.dicom.CTVolume`:

* ``hu[k, j, i]``, shape ``(slices, rows, cols)``, float32 HU;
* ``spacing = (slice_mm, row_mm, col_mm)``;
* ``direction[:, 0]``, ``[:, 1]``, ``[:, 2]``: LPS unit vectors along ``i`` (columns), ``j``
  (rows), ``k`` (slices); ``origin``: LPS position (mm) of ``hu[0, 0, 0]``.

On disk, NIfTI stores the axes in the order ``(i, j, k)``: the file's data array is
``hu.transpose(2, 1, 0)`` and its affine (sform and qform) is ``CTVolume.affine_ras``, which maps
``(i, j, k, 1)`` to RAS mm. So a volume read from DICOM, saved here and read back with nibabel,
MONAI (``NibabelReader``, ``LoadImage``) or SimpleITK lands on the same voxels in patient space
as the DICOM series. Loading a NIfTI reverses this: ``hu = data.transpose(2, 1, 0)``,
``affine_lps = diag(-1, -1, 1, 1) @ affine``, spacing from the column norms of its 3x3 part,
direction from the normalised columns.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bundle.utils.io import atomic_path

__all__ = [
    "NIFTI_SUFFIXES",
    "is_nifti",
    "load_ct",
    "load_nifti",
    "save_ct_nifti",
    "save_nifti",
    "volume_from_array",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DTYPES = {"float32": np.float32, "int16": np.int16, "uint8": np.uint8}
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_nifti(path: str | os.PathLike) -> bool:
    """True for a name ending in ``.nii`` or ``.nii.gz`` (any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def volume_from_array(hu: np.ndarray, affine_ras: np.ndarray):
    """A :class:`bundle.dicom.CTVolume` for ``hu`` (slices, rows, cols) and a NIfTI-style affine.

    ``affine_ras`` maps ``(i, j, k, 1)`` = (col, row, slice) to RAS mm. A volume that did not
    come from DICOM has no slice files, SOP UIDs or reference header (empty values).
    """
    from pydicom.dataset import Dataset

    from bundle.dicom import CTVolume

    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise ValueError(f"expected a (slices, rows, cols) volume, got shape {hu.shape}")
    affine_lps = _LPS_FROM_RAS @ np.asarray(affine_ras, dtype=np.float64)
    axes = affine_lps[:3, :3]
    spacing_ijk = np.linalg.norm(axes, axis=0)
    if np.any(spacing_ijk <= 0) or not np.all(np.isfinite(affine_lps)):
        raise ValueError(f"degenerate affine:\n{affine_ras}")
    return CTVolume(
        hu=hu,
        spacing=(float(spacing_ijk[2]), float(spacing_ijk[1]), float(spacing_ijk[0])),
        origin=tuple(float(v) for v in affine_lps[:3, 3]),
        direction=axes / spacing_ijk,
        slice_files=[],
        slice_sop_uids=[],
        reference=Dataset(),
        series_uid="",
    )


def load_nifti(path: str | os.PathLike):
    """A NIfTI file as a :class:`bundle.dicom.CTVolume` (HU float32, (slices, rows, cols)).

    The scaling of the file (``scl_slope``/``scl_inter``) is applied. Trailing axes of length 1
    (a ``(x, y, z, 1)`` file) are dropped; other 4D files are an error.
    """
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: say which and why
        raise ValueError(f"{path}: cannot read NIfTI: {type(exc).__name__}: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: holds NaN or infinite values")
    return volume_from_array(np.ascontiguousarray(data.transpose(2, 1, 0)), image.affine)


def load_ct(path: str | os.PathLike):
    """Load a CT volume: a NIfTI file, or a folder holding one DICOM series.

    Returns:
        :class:`bundle.dicom.CTVolume`: ``.hu`` float32 (slices, rows, cols), ``.spacing``,
        ``.origin``, ``.direction``, ``.affine_ras``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a NIfTI file or a folder, or unreadable; the message names ``path``
            (:class:`bundle.dicom.DicomSeriesError` is a ``ValueError``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        from bundle.dicom import read_series

        return read_series(path)
    if is_nifti(path):
        return load_nifti(path)
    raise ValueError(f"{path}: not a NIfTI file (.nii, .nii.gz) or a DICOM series folder")


def save_nifti(
    hu: np.ndarray, path: str | os.PathLike, affine: np.ndarray, dtype: str = "float32"
) -> Path:
    """Write ``hu`` (slices, rows, cols) as a NIfTI file, atomically.

    Args:
        hu: HU volume.
        path: ``.nii`` or ``.nii.gz`` (compressed).
        affine: 4x4 RAS affine for ``(i, j, k)`` = (col, row, slice), e.g. ``CTVolume.affine_ras``.
        dtype: ``"float32"`` (exact), ``"int16"`` (HU rounded and clipped to the int16 range,
            no scaling: what a scanner stores, half the size) or ``"uint8"`` (label maps).
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: a NIfTI name must end in .nii or .nii.gz")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a (slices, rows, cols) volume, got shape {hu.shape}")
    if dtype == "int16":
        data = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    elif dtype == "uint8":  # label maps
        data = np.clip(np.rint(hu), 0, 255).astype(np.uint8)
    else:
        data = hu.astype(np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(data.transpose(2, 1, 0), affine)
    image.header.set_data_dtype(data.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code=1)  # scanner coordinates
    image.set_qform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def save_ct_nifti(
    volume, path: str | os.PathLike, hu: np.ndarray | None = None, dtype: str = "float32"
) -> Path:
    """Write ``volume.hu`` (or ``hu``, a volume on the same grid) with ``volume``'s geometry."""
    hu = volume.hu if hu is None else np.asarray(hu)
    if tuple(hu.shape) != tuple(volume.hu.shape):
        raise ValueError(f"hu {hu.shape} does not match the volume's grid {volume.hu.shape}")
    return save_nifti(hu, path, volume.affine_ras, dtype=dtype)
