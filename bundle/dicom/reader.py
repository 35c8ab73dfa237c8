"""Find, select and read CT series from folders of DICOM files as they arrive from a PACS export.

Three steps, each usable alone:

1. :func:`discover_series` walks a tree, reads headers only and groups files by
   SeriesInstanceUID. Unreadable and non-DICOM files are reported, never fatal.
2. :func:`select_reason` says why a series is not a plain axial original CT (``None`` if it is).
3. :func:`read_series` reads one series into a :class:`CTVolume` after validating its geometry:
   slices are sorted along the slice normal, never by InstanceNumber or file name; a missing
   slice, gantry tilt, duplicate positions or a second series raise :class:`DicomSeriesError`.

Array and geometry conventions (shared by the NIfTI writer and :class:`CTSeriesReader`):

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

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage

__all__ = [
    "CTVolume",
    "Discovery",
    "DicomSeriesError",
    "FileProblem",
    "SeriesInfo",
    "discover_series",
    "read_series",
    "select_reason",
]

# Tolerances. Positions and cosines are decimal strings written with 6-16 digits; these are far
# above rounding noise and far below a real defect (a missing slice is a 100 % gap error).
_COSINE_TOL = 1e-4  # two orientations are "the same" if every cosine agrees to this
_DUPLICATE_MM = 0.01  # two slices closer than this along the normal are the same position
_AXIAL_MAX_DEG = 5.0  # slice normal within this angle of the patient z axis counts as axial

# Tags read during discovery (headers only; keeps walking a large tree cheap).
_DISCOVERY_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "SeriesDescription",
    "SeriesNumber",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
    "NumberOfFrames",
]


class DicomSeriesError(ValueError):
    """A DICOM series cannot be read as one regular CT volume; the message names where and why."""


@dataclass(frozen=True)
class FileProblem:
    """A file that discovery skipped, and why.

    ``kind`` is one of ``"not-dicom"`` (no DICOM preamble: text, images, ...), ``"unreadable"``
    (claims to be DICOM but cannot be parsed: truncated, corrupt, unreadable on disk),
    ``"not-an-image"`` (DICOM without SeriesInstanceUID, e.g. DICOMDIR) or ``"duplicate"``
    (a second copy of a SOPInstanceUID already seen).
    """

    path: Path
    kind: str
    reason: str


@dataclass
class SeriesInfo:
    """Header summary of one series, from :func:`discover_series`.

    ``orientation``, ``rows`` and ``cols`` are the values of the first file; ``varying`` names the
    attributes whose value differs between files of the series (a series to skip).
    """

    series_uid: str
    study_uid: str
    modality: str
    image_type: tuple[str, ...]
    series_description: str
    series_number: int | None
    sop_class_uid: str
    orientation: tuple[float, ...] | None
    rows: int | None
    cols: int | None
    number_of_frames: int = 1
    files: list[Path] = field(default_factory=list)
    varying: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for error messages and logs (UIDs and series text; no patient name, ID or birth date)."""
        return (
            f"{self.series_uid} (#{self.series_number}, {self.modality}, "
            f"'{self.series_description}', {len(self.files)} files)"
        )


class Discovery(NamedTuple):
    """What :func:`discover_series` found: ``series, problems = discover_series(root)``."""

    series: list[SeriesInfo]
    problems: list[FileProblem]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _image_type(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("ImageType", None)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(str(v).strip().upper() for v in value)


def _orientation(ds: Dataset) -> tuple[float, ...] | None:
    value = ds.get("ImageOrientationPatient", None)
    if value is None or len(value) != 6:
        return None
    return tuple(float(v) for v in value)


def _same_orientation(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, atol=_COSINE_TOL, rtol=0.0))


def _iter_files(root: Path) -> Iterable[Path]:
    """Every regular file under ``root`` (or ``root`` itself), in a deterministic order."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file():
                yield path


def discover_series(root: str | os.PathLike) -> Discovery:
    """Group the DICOM files under ``root`` by SeriesInstanceUID, reading headers only.

    Any file name, nesting and extension is accepted. Files are read with ``force=False``, so a
    file without the DICOM preamble is rejected. Non-DICOM and corrupt files, DICOM files without
    a SeriesInstanceUID (DICOMDIR) and second copies of a SOPInstanceUID already seen are
    returned in ``problems``; none of them stops the walk.

    Returns:
        ``Discovery(series, problems)``: series sorted by (study, series number, series UID);
        each series' ``files`` in walk order (not slice order, see :func:`read_series`).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    return _discover(_iter_files(root))


_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"


class _CorruptFile(Exception):
    pass


def _read_header(path: Path) -> Dataset:
    """Header without pixels, plus the cheap completeness checks pydicom does not make.

    pydicom silently ends a dataset at a truncated element, so an interrupted copy would pass
    as a valid header. We check the file meta is complete and, where the pixel data has an
    explicit length, that the file holds all of it (encapsulated pixel data is not checked).
    """
    size = path.stat().st_size
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=False, specific_tags=_DISCOVERY_TAGS)
        meta = ds.file_meta
        if "TransferSyntaxUID" not in meta:
            raise _CorruptFile("no TransferSyntaxUID in the file meta (corrupt header)")
        meta_length = meta.get("FileMetaInformationGroupLength", None)
        if meta_length is not None and 128 + 4 + 12 + int(meta_length) > size:
            raise _CorruptFile("truncated in the file meta")
        start = fp.tell()
        head = fp.read(12)
    if not head:
        sop_class_uid = _text(ds, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID")
        sop_class = getattr(pydicom.uid.UID(sop_class_uid), "name", "")
        if "Rows" in ds or "Image Storage" in sop_class:
            raise _CorruptFile(f"{sop_class or 'image'} without pixel data (truncated?)")
        return ds
    if head[:4] == _PIXEL_DATA_TAG_LE and len(head) == 12:
        explicit = head[4:6] in (b"OB", b"OW", b"UN")
        length = int.from_bytes(head[8:12] if explicit else head[4:8], "little")
        available = size - start - (12 if explicit else 8)
        if length != 0xFFFFFFFF and length > available:
            raise _CorruptFile(f"truncated pixel data: {available} of {length} bytes present")
    return ds


def _discover(paths: Iterable[Path]) -> Discovery:
    by_uid: dict[str, SeriesInfo] = {}
    seen_sops: dict[str, Path] = {}
    problems: list[FileProblem] = []
    for path in paths:
        try:
            ds = _read_header(path)
            series_uid = _text(ds, "SeriesInstanceUID")
            sop_uid = _text(ds, "SOPInstanceUID")
            if not series_uid:
                kind = "DICOMDIR" if path.name.upper() == "DICOMDIR" else "DICOM file"
                problems.append(FileProblem(path, "not-an-image", f"{kind} without SeriesInstanceUID"))
                continue
            if sop_uid and sop_uid in seen_sops:
                problems.append(FileProblem(path, "duplicate", f"same SOPInstanceUID as {seen_sops[sop_uid]}"))
                continue
            info = by_uid.get(series_uid)
            if info is None:
                number = ds.get("SeriesNumber", None)
                info = by_uid[series_uid] = SeriesInfo(
                    series_uid=series_uid,
                    study_uid=_text(ds, "StudyInstanceUID"),
                    modality=_text(ds, "Modality").upper(),
                    image_type=_image_type(ds),
                    series_description=_text(ds, "SeriesDescription"),
                    series_number=int(number) if number not in (None, "") else None,
                    sop_class_uid=_text(ds, "SOPClassUID"),
                    orientation=_orientation(ds),
                    rows=ds.get("Rows", None),
                    cols=ds.get("Columns", None),
                    number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
                )
            else:
                _note_variation(info, ds)
        except InvalidDicomError as exc:
            problems.append(FileProblem(path, "not-dicom", str(exc)))
            continue
        except _CorruptFile as exc:
            problems.append(FileProblem(path, "unreadable", str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
            problems.append(FileProblem(path, "unreadable", f"{type(exc).__name__}: {exc}"))
            continue
        info.files.append(path)
        if sop_uid:
            seen_sops[sop_uid] = path
    series = sorted(
        by_uid.values(),
        key=lambda s: (s.study_uid, s.series_number if s.series_number is not None else -1, s.series_uid),
    )
    return Discovery(series, problems)


def _note_variation(info: SeriesInfo, ds: Dataset) -> None:
    checks = {
        "Modality": _text(ds, "Modality").upper() == info.modality,
        "ImageType": _image_type(ds) == info.image_type,
        "ImageOrientationPatient": _same_orientation(_orientation(ds), info.orientation),
        "Rows/Columns": (ds.get("Rows", None), ds.get("Columns", None)) == (info.rows, info.cols),
        "SOPClassUID": _text(ds, "SOPClassUID") == info.sop_class_uid,
    }
    for name, same in checks.items():
        if not same and name not in info.varying:
            info.varying.append(name)
    info.number_of_frames = max(info.number_of_frames, int(ds.get("NumberOfFrames", 1) or 1))


def _normal(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def select_reason(info: SeriesInfo) -> str | None:
    """Why ``info`` is not a series to enhance, or ``None`` for a plain axial original CT.

    Accepted: Modality CT, CT Image Storage (single frame), ImageType ORIGINAL and not LOCALIZER,
    one ImageOrientationPatient, one Rows/Columns, slice normal within 5 degrees of patient z.
    """
    if info.modality != "CT":
        return f"modality {info.modality or 'missing'}, not CT"
    if info.sop_class_uid and info.sop_class_uid != CTImageStorage:
        name = getattr(pydicom.uid.UID(info.sop_class_uid), "name", info.sop_class_uid)
        return f"SOP class {name}, not CT Image Storage"
    if info.number_of_frames > 1:
        return "multi-frame images, not one slice per file"
    if "LOCALIZER" in info.image_type:
        return "localizer"
    if not info.image_type:
        return "no ImageType"
    if info.image_type[0] == "DERIVED":
        return "derived image"
    if info.image_type[0] != "ORIGINAL":
        return f"image type {info.image_type[0]}, not ORIGINAL"
    if info.varying:
        return "inconsistent " + ", ".join(info.varying) + " across files"
    if info.rows is None or info.cols is None:
        return "no Rows/Columns"
    if info.orientation is None:
        return "no ImageOrientationPatient"
    angle = np.degrees(np.arccos(min(1.0, abs(float(_normal(info.orientation)[2])))))
    if angle > _AXIAL_MAX_DEG:
        return f"not axial (slice normal {angle:.1f} degrees from patient z)"
    return None


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
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    slice_files: list[Path]
    slice_sop_uids: list[str]
    reference: Dataset
    series_uid: str

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

