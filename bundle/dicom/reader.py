"""Read one CT series into a validated :class:`~bundle.dicom.volume.CTVolume`.

:func:`read_series` validates the geometry before it trusts the pixels: slices are sorted along
the slice normal, never by InstanceNumber or file name; a missing slice, gantry tilt, duplicate
positions or a second series raise :class:`~bundle.dicom.volume.DicomSeriesError` naming the
folder or file and the problem. Conventions of the result: :mod:`bundle.dicom.volume`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from bundle.dicom.discovery import _discover, _same_orientation, _text, discover_series, select_reason
from bundle.dicom.volume import CTVolume, DicomSeriesError

__all__ = ["read_series"]

# Positions and cosines are decimal strings written with 6-16 digits; the tolerances here and in
# discovery are far above rounding noise and far below a real defect (a missing slice is a 100 %
# gap error).
_DUPLICATE_MM = 0.01  # two slices closer than this along the normal are the same position


def _read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, force=False)
    except Exception as exc:  # noqa: BLE001
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
    value = ds.get(keyword, None)
    if value is None or len(value) != n:
        raise DicomSeriesError(f"{path}: {keyword} missing or not {n} values")
    values = np.asarray([float(v) for v in value], float)
    if not np.all(np.isfinite(values)):
        raise DicomSeriesError(f"{path}: {keyword} is not finite: {list(value)}")
    return values


def _hu_pixels(ds: Dataset, path: Path) -> np.ndarray:
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomSeriesError(f"{path}: multi-frame image, one slice per file expected")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomSeriesError(f"{path}: {ds.SamplesPerPixel} samples per pixel, grey-scale expected")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing decoder plugin, truncated data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", syntax)
        raise DicomSeriesError(
            f"{path}: cannot decode pixel data (transfer syntax {name}): {type(exc).__name__}: {exc}"
        ) from exc
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    # float64 arithmetic then float32: exact for every int16 / 12-bit value with integer rescale
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


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
    (row cosine x column cosine), ascending. RescaleSlope/RescaleIntercept are applied per slice.

    Raises:
        DicomSeriesError: several series, unreadable files, inconsistent orientation / size /
            pixel spacing, duplicate positions, a missing slice or irregular gaps, gantry tilt,
            undecodable pixel data. The message names the folder or file and the problem.
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
        first = datasets[0]
        slice_mm = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)

    hu = np.empty((len(datasets), *shape), np.float32)
    for k, (ds, path) in enumerate(zip(datasets, files)):
        hu[k] = _hu_pixels(ds, path)
        del ds.PixelData  # free the encoded copy as we go; slice 0 becomes the pixel-free reference

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
    )
