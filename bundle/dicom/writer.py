"""Write a HU volume as a CT Image Storage series, one file per slice.

:func:`write_ct_series` composes small pieces meant to be reused by the derived-series writer
(enhanced output that copies the source headers):

* :func:`uid_source` - UIDs, random or reproducible from a seed;
* :func:`new_file_meta` - file meta whose MediaStorageSOPInstanceUID equals the SOPInstanceUID;
* :func:`geometry_for_slice` - the per-slice geometry attributes (position, orientation, spacing);
* :func:`set_hu_pixels` - signed int16 pixels, slope 1, intercept 0, stale pixel tags removed;
* :func:`save_dataset` - atomic write of one dataset.

Geometry arguments follow :class:`bundle.dicom.volume.CTVolume`: ``hu`` is ``(slices, rows, cols)``,
``spacing`` is ``(slice_mm, row_mm, col_mm)``, ``origin`` is the LPS position of ``hu[0, 0, 0]``,
``direction`` has the LPS unit vectors along columns index, rows index, slice index as columns.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from bundle.utils.io import atomic_path

__all__ = [
    "DEFAULT_PATIENT",
    "geometry_for_slice",
    "new_file_meta",
    "save_dataset",
    "set_hu_pixels",
    "uid_source",
    "write_ct_series",
]

INT16_MIN, INT16_MAX = -32768, 32767

#: Synthetic patient/study module used when the caller gives none (demo data, tests).
DEFAULT_PATIENT: dict[str, Any] = {
    "PatientName": "Demo^Phantom",
    "PatientID": "DEMO-0001",
    "PatientBirthDate": "",
    "PatientSex": "O",
    "StudyID": "1",
    "StudyDescription": "Synthetic demo study",
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
}

# Pixel-value tags a copied source header may carry; they describe the old pixels, not the new.
_STALE_PIXEL_TAGS = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
)


def uid_source(seed: str | None = None) -> Callable[..., str]:
    """A function ``uid(*parts)`` returning a new UID.

    With ``seed=None`` every call is random. With a seed, the UID is a hash of the seed and the
    parts, so ``uid("series")`` or ``uid("sop", 12)`` is the same on every run (reproducible
    outputs, re-runs that overwrite instead of duplicating).
    """

    def uid(*parts: Any) -> str:
        if seed is None:
            return str(generate_uid())
        return str(generate_uid(entropy_srcs=[str(seed), *(str(p) for p in parts)]))

    return uid


def new_file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File meta for Explicit VR Little Endian, MediaStorageSOPInstanceUID = ``sop_instance_uid``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _ds(value: float) -> str:
    # snap cosine noise (6e-17) to 0 so headers stay readable; DS is limited to 16 characters
    value = float(value)
    return format_number_as_ds(0.0 if abs(value) < 1e-12 else value)


def _check_geometry(spacing: Sequence[float], direction: np.ndarray) -> None:
    if len(spacing) != 3 or min(float(s) for s in spacing) <= 0:
        raise ValueError(f"spacing must be three positive (slice_mm, row_mm, col_mm), got {spacing}")
    # orthonormal also means the slice axis is perpendicular to the image plane: no gantry tilt
    if direction.shape != (3, 3) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise ValueError(f"direction must be a 3x3 orthonormal matrix (no tilt, no shear), got\n{direction}")


def geometry_for_slice(
    index: int,
    *,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray,
    slice_thickness: float | None = None,
) -> dict[str, Any]:
    """DICOM geometry attributes of slice ``index`` (0-based along ``direction[:, 2]``).

    Returns a mapping keyword -> value for ImagePositionPatient, ImageOrientationPatient,
    PixelSpacing ([row_mm, col_mm]), SliceThickness and SliceLocation (the position along the
    slice normal, so viewers sort and label consistently with our reader).

    ``slice_thickness`` is the reconstructed slice's nominal thickness, which is not the spacing
    between slices (overlapping reconstructions: 2.5 mm slices every 1.25 mm). ``None`` writes it
    empty (Type 2: unknown) rather than passing the spacing off as the thickness.
    """
    direction = np.asarray(direction, float)
    slice_mm, row_mm, col_mm = (float(s) for s in spacing)
    position = np.asarray(origin, float) + index * slice_mm * direction[:, 2]
    normal = np.cross(direction[:, 0], direction[:, 1])
    return {
        "ImagePositionPatient": [_ds(v) for v in position],
        "ImageOrientationPatient": [_ds(v) for v in (*direction[:, 0], *direction[:, 1])],
        "PixelSpacing": [_ds(row_mm), _ds(col_mm)],
        "SliceThickness": "" if slice_thickness is None else _ds(slice_thickness),
        "SliceLocation": _ds(float(position @ normal)),
    }


def set_hu_pixels(ds: Dataset, hu_slice: np.ndarray) -> None:
    """Store a 2D HU slice ``(rows, cols)`` as signed int16, RescaleSlope 1, RescaleIntercept 0.

    Values are rounded to the nearest integer and clipped to the int16 range; integer HU in range
    round-trip exactly. BitsStored is 16 (inheriting a source's 12 would wrap values above 4095).
    Stale SmallestImagePixelValue / LargestImagePixelValue / PixelPadding tags are removed.
    Keeps ``ds.SOPInstanceUID`` unchanged.
    """
    hu_slice = np.asarray(hu_slice)
    if hu_slice.ndim != 2:
        raise ValueError(f"hu_slice must be 2D (rows, cols), got shape {hu_slice.shape}")
    if not np.all(np.isfinite(hu_slice)):
        raise ValueError("hu_slice contains NaN or infinite values")
    stored = np.clip(np.rint(hu_slice.astype(np.float64)), INT16_MIN, INT16_MAX).astype(np.int16)
    for keyword in _STALE_PIXEL_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "0"
    ds.RescaleType = "HU"


def save_dataset(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as a DICOM Part 10 file, atomically; checks the file meta SOP UID first."""
    if ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID:
        raise ValueError(f"{path}: MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _patient_study(patient: Mapping[str, Any] | None) -> dict[str, Any]:
    attrs = dict(DEFAULT_PATIENT)
    for keyword, value in (patient or {}).items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"patient: {keyword!r} is not a DICOM keyword")
        attrs[keyword] = value
    return attrs


def write_ct_series(
    hu: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray | Sequence[Sequence[float]],
    series_description: str,
    series_number: int = 1,
    patient: Mapping[str, Any] | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_uid: str | None = None,
    uid_seed: str | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    file_prefix: str | None = None,
    slice_thickness: float | None = None,
) -> list[Path]:
    """Write ``hu`` (slices, rows, cols) in HU as a CT Image Storage series, one file per slice.

    Args:
        hu: HU volume ``[k, j, i]``; rounded to int16 (see :func:`set_hu_pixels`).
        out_dir: folder for the files (created); each file is written atomically.
        spacing: ``(slice_mm, row_mm, col_mm)``.
        origin: LPS position in mm of ``hu[0, 0, 0]``.
        direction: 3x3, columns = LPS unit vectors along i (columns), j (rows), k (slices).
        series_description: SeriesDescription.
        series_number: SeriesNumber.
        patient: DICOM keyword -> value for the patient and study modules (PatientName,
            PatientID, StudyInstanceUID, StudyDate, ...); missing ones come from
            :data:`DEFAULT_PATIENT` (synthetic).
        study_uid: StudyInstanceUID; default ``patient["StudyInstanceUID"]`` or a new UID.
        frame_of_reference_uid: FrameOfReferenceUID; default a new UID.
        series_uid: SeriesInstanceUID; default a new UID.
        uid_seed: if given, new UIDs are derived from it (same seed, same UIDs); else random.
        image_type: ImageType values.
        file_prefix: file names are ``{file_prefix}{instance:04d}.dcm``; default
            ``f"CT{series_number}_"``, so two series written into one folder do not collide.
        slice_thickness: SliceThickness in mm (e.g. ``CTVolume.slice_thickness`` of the series
            the volume came from); None leaves it empty, never the slice spacing.

    Returns:
        The written paths, in slice order (``k`` = 0, 1, ...). InstanceNumber is ``k + 1``.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or hu.shape[0] < 1:
        raise ValueError(f"hu must be (slices, rows, cols) with at least one slice, got {hu.shape}")
    direction = np.asarray(direction, float)
    _check_geometry(spacing, direction)
    uid = uid_source(uid_seed)
    attrs = _patient_study(patient)
    study_uid = study_uid or attrs.get("StudyInstanceUID") or uid("study")
    attrs["StudyInstanceUID"] = study_uid
    series_uid = series_uid or uid("series", series_number)
    frame_of_reference_uid = frame_of_reference_uid or uid("frame-of-reference", study_uid)
    now = _dt.datetime.now()
    attrs.setdefault("StudyDate", now.strftime("%Y%m%d"))
    attrs.setdefault("StudyTime", now.strftime("%H%M%S"))
    prefix = f"CT{series_number}_" if file_prefix is None else file_prefix
    out_dir = Path(out_dir)

    paths = []
    for k in range(hu.shape[0]):
        sop_uid = uid("sop", series_uid, k)
        ds = Dataset()
        ds.file_meta = new_file_meta(CTImageStorage, sop_uid)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        # general series / equipment / frame of reference
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(series_number)
        ds.SeriesDescription = series_description
        ds.SeriesDate = attrs["StudyDate"]
        ds.SeriesTime = attrs["StudyTime"]
        ds.PatientPosition = "HFS"
        ds.Manufacturer = "ct-v2v"
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        # general image / CT image
        ds.ImageType = list(image_type)
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ContentDate = attrs["StudyDate"]
        ds.ContentTime = attrs["StudyTime"]
        ds.KVP = ""
        geometry = geometry_for_slice(k, spacing=spacing, origin=origin, direction=direction,
                                      slice_thickness=slice_thickness)
        for keyword, value in geometry.items():
            setattr(ds, keyword, value)
        set_hu_pixels(ds, hu[k])
        paths.append(save_dataset(ds, out_dir / f"{prefix}{k + 1:04d}.dcm"))
    return paths
