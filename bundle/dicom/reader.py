"""Read one CT series into a validated :class:`~bundle.dicom.volume.CTVolume`.

:func:`read_series` validates the geometry before it trusts the pixels: slices are sorted along
the slice normal, never by InstanceNumber or file name; a missing slice, gantry tilt, duplicate
positions or a second series raise :class:`~bundle.dicom.volume.DicomSeriesError` naming the
folder or file and the problem. Conventions of the result: :mod:`bundle.dicom.volume`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from bundle.dicom.discovery import (
    _discover,
    _frames,
    _int_or_none,
    _same_orientation,
    _text,
    decoder_reason,
    discover_series,
    select_reason,
)
from bundle.dicom.volume import CTVolume, DicomSeriesError
from bundle.utils.names import uid_hash

__all__ = ["AIR_HU", "OUTSIDE_FOV_BELOW_HU", "padding_stored", "read_series"]

logger = logging.getLogger(__name__)

#: HU given to voxels outside the field of view.
AIR_HU = -1000.0
#: Below this, a value is no tissue and no air (air is -1000 HU; noise does not reach 500 HU
#: below it): a fill outside the field of view that the header did not mark (-2000, -3024, ...).
OUTSIDE_FOV_BELOW_HU = -1500.0
_INT16_MIN, _INT16_MAX = -32768, 32767

# Positions and cosines are decimal strings written with 6-16 digits; the tolerances here and in
# discovery are far above rounding noise and far below a real defect (a missing slice is a 100 %
# gap error).
_DUPLICATE_MM = 0.01  # two slices closer than this along the normal are the same position


def _read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, force=False)
    except Exception as exc:
        raise DicomSeriesError(f"{path}: cannot read DICOM: {type(exc).__name__}: {exc}") from exc


def _select_files(
    source: str | os.PathLike | Sequence[str | os.PathLike], series_uid: str | None
) -> tuple[str, list[Path]]:
    """Resolve a folder or a file list to the files of exactly one series: ``(where, files)``.

    In a folder, non-DICOM files and DICOMDIRs are ignored, but a corrupt DICOM file is an error:
    it may be a slice of the series, and a volume silently missing its end slices is worse than
    none. In an explicit file list, every file must be a readable DICOM image.
    """
    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        series, problems = discover_series(source)
        fatal = [p for p in problems if p.kind == "unreadable"]
    else:
        files = [Path(f) for f in source]
        if not files:
            raise DicomSeriesError("read_series: no files given")
        where = f"{files[0].parent} ({len(files)} files given)"
        series, problems = _discover(files)
        fatal = [p for p in problems if p.kind != "duplicate"]
    if fatal:
        raise DicomSeriesError(
            f"{where}: {len(fatal)} file(s) cannot be read as DICOM images, first {fatal[0].path}: {fatal[0].reason}"
        )
    if series_uid is not None:
        chosen = [s for s in series if s.series_uid == series_uid]
        if not chosen:
            found = "; ".join(s.summary() for s in series) or "none"
            raise DicomSeriesError(f"{where}: no series {series_uid}; series found: {found}")
    else:
        chosen = series
    if not chosen:
        raise DicomSeriesError(f"{where}: no DICOM image series found ({len(problems)} non-image files skipped)")
    if len(chosen) > 1:
        listing = "; ".join(f"{s.summary()} [{select_reason(s) or 'selectable'}]" for s in chosen)
        raise DicomSeriesError(f"{where}: holds {len(chosen)} series, pass series_uid= to pick one: {listing}")
    return where, chosen[0].files


def _float_list(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    try:
        value = ds.get(keyword, None)
        if value is None or isinstance(value, (str, bytes)) or len(value) != n:
            raise DicomSeriesError(f"{path}: {keyword} missing or not {n} values")
        values = np.asarray([float(v) for v in value], float)
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, DicomSeriesError):
            raise
        raise DicomSeriesError(f"{path}: {keyword} is not {n} numbers") from None
    if not np.all(np.isfinite(values)):
        raise DicomSeriesError(f"{path}: {keyword} is not finite: {list(value)}")
    return values


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rescale(ds: Dataset, path: Path) -> tuple[float, float]:
    """``(slope, intercept)``; missing ones are 1 and 0, anything else must be a finite number."""
    values = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        try:
            value = ds.get(keyword, None)
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert
            raise DicomSeriesError(f"{path}: {keyword} cannot be read as a number") from None
        if value is None or value == "":
            values.append(default)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise DicomSeriesError(f"{path}: {keyword} {_short(value)} is not one number") from None
        if not np.isfinite(number):
            raise DicomSeriesError(f"{path}: {keyword} {_short(value)} is not finite")
        values.append(number)
    if values[0] == 0:
        raise DicomSeriesError(f"{path}: RescaleSlope is 0: every pixel would be the same HU")
    return values[0], values[1]


def padding_stored(header: Dataset) -> tuple[int, int] | None:
    """The stored-value interval a header marks as padding (PixelPaddingValue, and
    PixelPaddingRangeLimit when present), read as PixelRepresentation says; None without one or
    when the value cannot be read (a broken optional tag is ignored, not fatal)."""
    try:
        if "PixelPaddingValue" not in header:
            return None
        signed = int(header.get("PixelRepresentation", 0) or 0) == 1

        def stored(keyword: str) -> int | None:
            value = header[keyword].value
            if isinstance(value, bytes):  # VR US or SS undecided at read time: decode by PixelRepresentation
                return int.from_bytes(value[:2], "little", signed=signed) if len(value) >= 2 else None
            if value is None or value == "" or isinstance(value, (str, list, tuple)):
                return None
            value = int(value)
            if signed and value > _INT16_MAX:
                value -= 65536
            return value

        low = stored("PixelPaddingValue")
        if low is None:
            return None
        high = stored("PixelPaddingRangeLimit") if "PixelPaddingRangeLimit" in header else None
        high = low if high is None else high
        return (min(low, high), max(low, high))
    except Exception:  # noqa: BLE001 - untrusted optional tag
        return None


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    frames = _frames(ds)
    if frames > 1:
        raise DicomSeriesError(f"{path}: multi-frame image ({ds.get('NumberOfFrames')} frames), one slice per file expected")
    samples = _int_or_none(ds, "SamplesPerPixel")
    if samples not in (None, 1):
        raise DicomSeriesError(f"{path}: {samples} samples per pixel, grey-scale expected")
    syntax = _text(getattr(ds, "file_meta", Dataset()), "TransferSyntaxUID")
    try:
        return ds.pixel_array
    except Exception as exc:
        name = getattr(pydicom.uid.UID(syntax), "name", syntax) if syntax else "unknown"
        needs = decoder_reason(syntax)
        if needs is not None:
            raise DicomSeriesError(f"{path}: {needs}") from exc
        raise DicomSeriesError(
            f"{path}: cannot decode pixel data (transfer syntax {name}): {type(exc).__name__}: {exc}"
        ) from exc


def _hu_pixels(ds: Dataset, path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(hu float32, padding mask, voxels clipped to int16)`` of one slice."""
    stored = _decode(ds, path)
    if stored.shape != tuple(shape):
        raise DicomSeriesError(f"{path}: pixel data of shape {stored.shape}, Rows/Columns say {tuple(shape)}")
    slope, intercept = _rescale(ds, path)
    # float64 arithmetic then float32: exact for every int16 / 12-bit value with integer rescale
    hu = stored.astype(np.float64) * slope + intercept
    outside = (hu < _INT16_MIN) | (hu > _INT16_MAX)
    clipped = int(np.count_nonzero(outside))
    if clipped:
        hu = np.clip(hu, _INT16_MIN, _INT16_MAX)
    padding = hu < OUTSIDE_FOV_BELOW_HU
    interval = padding_stored(ds)
    if interval is not None:
        padding |= (stored >= interval[0]) & (stored <= interval[1])
    hu[padding] = AIR_HU
    return hu.astype(np.float32), padding, clipped


def _check_image_plane(
    where: str, datasets: list[Dataset], files: list[Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Same orientation, pixel spacing and size on every slice: ``(row_cos, col_cos, spacing, shape)``."""
    first, first_path = datasets[0], files[0]
    orientation = _float_list(first, "ImageOrientationPatient", 6, first_path)
    pixel_spacing = _float_list(first, "PixelSpacing", 2, first_path)
    shape = (first.get("Rows", None), first.get("Columns", None))
    for ds, path in zip(datasets[1:], files[1:]):
        if not _same_orientation(tuple(_float_list(ds, "ImageOrientationPatient", 6, path)), tuple(orientation)):
            raise DicomSeriesError(f"{where}: ImageOrientationPatient differs between {first_path} and {path}")
        if not np.allclose(_float_list(ds, "PixelSpacing", 2, path), pixel_spacing, rtol=1e-4, atol=1e-6):
            raise DicomSeriesError(f"{where}: PixelSpacing differs between {first_path} and {path}")
        if (ds.get("Rows", None), ds.get("Columns", None)) != shape:
            raise DicomSeriesError(f"{where}: Rows/Columns differ between {first_path} and {path}")
    if not all(isinstance(n, int) and n > 0 for n in shape):
        raise DicomSeriesError(f"{first_path}: Rows/Columns missing or not positive: {shape}")
    if np.any(pixel_spacing <= 0):
        raise DicomSeriesError(f"{first_path}: PixelSpacing {list(pixel_spacing)} is not positive")
    row_cos, col_cos = orientation[:3], orientation[3:]
    norms = np.linalg.norm(row_cos), np.linalg.norm(col_cos)
    if max(abs(norms[0] - 1), abs(norms[1] - 1), abs(row_cos @ col_cos)) > 1e-3:
        raise DicomSeriesError(
            f"{first_path}: ImageOrientationPatient {list(orientation)} is not two orthonormal cosines"
        )
    return row_cos / norms[0], col_cos / norms[1], pixel_spacing, shape  # type: ignore[return-value]


def _single_slice_mm(ds: Dataset) -> float:
    """Slice size of a one-slice series: SpacingBetweenSlices, else SliceThickness, else 1 mm
    (a missing, unreadable or non-positive value counts as absent)."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(keyword, None))
        except (TypeError, ValueError, OverflowError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    return 1.0


def _check_slice_positions(
    where: str, files: list[Path], positions: np.ndarray, normal: np.ndarray, tolerance: float
) -> float:
    """Sorted positions: no duplicates, one regular gap (a missing slice shows as a multiple)."""
    along = positions @ normal
    gaps = np.diff(along)
    for n, gap in enumerate(gaps):
        if gap < _DUPLICATE_MM:
            raise DicomSeriesError(
                f"{where}: duplicate slice position {along[n]:.3f} mm along the normal: {files[n]} and {files[n + 1]}"
            )
    nominal = float(np.median(gaps))
    for n, gap in enumerate(gaps):
        if abs(gap - nominal) > tolerance * nominal:
            ratio = gap / nominal
            if ratio > 1.5 and abs(ratio - round(ratio)) <= tolerance:
                what = f"missing slice(s): about {round(ratio) - 1} slice(s) missing,"
            else:
                what = "irregular slice spacing:"
            raise DicomSeriesError(
                f"{where}: {what} gap of {gap:.3f} mm (nominal {nominal:.3f} mm) between positions "
                f"{along[n]:.3f} and {along[n + 1]:.3f} mm along the normal "
                f"({files[n].name} -> {files[n + 1].name})"
            )
    return float((along[-1] - along[0]) / (len(along) - 1))


def _check_no_tilt(where: str, positions: np.ndarray, normal: np.ndarray, max_drift_mm: float) -> None:
    """Every slice origin on the line through the first along the normal (else: gantry tilt)."""
    offsets = positions - positions[0]
    along = offsets @ normal
    off_axis = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    worst = int(np.argmax(off_axis))
    if off_axis[worst] > max_drift_mm:
        angle = np.degrees(np.arctan2(off_axis[worst], along[worst]))
        raise DicomSeriesError(
            f"{where}: gantry tilt or sheared stack: slice positions move {off_axis[worst]:.3f} mm off the "
            f"slice normal over {along[worst]:.3f} mm (about {angle:.2f} degrees tilt)"
        )


def read_series(
    files_or_folder: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    series_uid: str | None = None,
    spacing_tolerance: float = 0.1,
) -> CTVolume:
    """Read one CT series into a validated :class:`CTVolume` (HU float32, ``(slices, rows, cols)``).

    Args:
        files_or_folder: a folder (searched recursively; non-DICOM files and DICOMDIRs are
            ignored, but a corrupt DICOM file is an error since it may be one of the slices) or
            the files of the series in any order and with any names, e.g. ``SeriesInfo.files``
            from :func:`discover_series` to read one series out of a messy tree.
        series_uid: the SeriesInstanceUID to read when the folder or files hold several series;
            without it, several series are an error that lists them.
        spacing_tolerance: largest accepted deviation of a slice gap from the nominal gap, as a
            fraction of the nominal gap; the same fraction of the in-plane pixel size bounds how
            far a slice position may lie off the slice normal (gantry tilt).

    Slices are sorted by the projection of ImagePositionPatient on the slice normal
    (row cosine x column cosine), ascending. RescaleSlope/RescaleIntercept are applied per slice;
    outside-field-of-view padding becomes air and HU beyond int16 are clipped (module docstring).

    Raises:
        DicomSeriesError: several series, unreadable files, inconsistent orientation / size /
            pixel spacing, duplicate positions, a missing slice or irregular gaps, gantry tilt,
            undecodable pixel data (``"needs <package>"`` when a decoder plugin is missing), a
            rescale that is not a finite number. The message names the folder or file and the problem.
    """
    where, files = _select_files(files_or_folder, series_uid)
    datasets = [_read_dataset(path) for path in files]
    row_cos, col_cos, pixel_spacing, shape = _check_image_plane(where, datasets, files)
    normal = np.cross(row_cos, col_cos)

    positions = np.stack([_float_list(ds, "ImagePositionPatient", 3, p) for ds, p in zip(datasets, files)])
    order = np.argsort(positions @ normal, kind="stable")
    datasets = [datasets[n] for n in order]
    files = [files[n] for n in order]
    positions = positions[order]
    if len(files) > 1:
        slice_mm = _check_slice_positions(where, files, positions, normal, spacing_tolerance)
        _check_no_tilt(where, positions, normal, spacing_tolerance * float(pixel_spacing.min()))
    else:
        slice_mm = _single_slice_mm(datasets[0])

    hu = np.empty((len(datasets), *shape), np.float32)
    padding = np.zeros(hu.shape, bool)
    clipped = 0
    for k, (ds, path) in enumerate(zip(datasets, files)):
        hu[k], padding[k], count = _hu_pixels(ds, path, shape)
        clipped += count
        del ds.PixelData  # free the encoded copy as we go; slice 0 becomes the pixel-free reference
    if clipped:
        # no path or patient data: the series is named by a hash of its UID, as in the batch summary
        logger.warning("series uid %s: %d voxel(s) beyond the int16 range after rescale, clipped to [%d, %d]",
                       uid_hash(_text(datasets[0], "SeriesInstanceUID")), clipped, _INT16_MIN, _INT16_MAX)

    reference = datasets[0]
    return CTVolume(
        hu=hu,
        spacing=(slice_mm, float(pixel_spacing[0]), float(pixel_spacing[1])),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=np.stack([row_cos, col_cos, normal], axis=1),
        slice_files=files,
        slice_sop_uids=[_text(ds, "SOPInstanceUID") for ds in datasets],
        reference=reference,
        series_uid=_text(reference, "SeriesInstanceUID"),
        padding=padding if padding.any() else None,
        clipped_voxels=clipped,
    )
