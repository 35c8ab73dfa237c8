"""Find and select CT series in folders of DICOM files as they arrive from a PACS export.

1. :func:`discover_series` walks a tree, reads headers only and groups files by
   SeriesInstanceUID. Unreadable and non-DICOM files are reported, never fatal.
2. :func:`select_reason` says why a series is not a plain axial original CT (``None`` if it is),
   including pixel data this installation cannot decode (:func:`decoder_reason`).

Reading one series into a volume is :func:`bundle.dicom.reader.read_series`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

__all__ = ["CODECS_EXTRA", "Discovery", "FileProblem", "SeriesInfo", "decoder_reason", "discover_series", "select_reason"]

_COSINE_TOL = 1e-4  # two orientations are "the same" if every cosine agrees to this
_AXIAL_MAX_DEG = 5.0  # slice normal within this angle of the patient z axis counts as axial

# Tags read during discovery (headers only; keeps walking a large tree cheap).
# Patient identifiers: read only so that the tools can scrub them from whatever they write (a
# folder or file named after the patient, a reason quoting a path); never stored elsewhere.
_IDENTIFYING_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs")

_DISCOVERY_TAGS = [
    *_IDENTIFYING_TAGS,
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
    transfer_syntaxes: set[str] = field(default_factory=set)
    identifiers: set[str] = field(default_factory=set, repr=False)  # patient name parts, IDs, dates: to scrub

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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _display_text(ds: Dataset, keyword: str, limit: int = 128) -> str:
    """Untrusted text for summaries and logs: values joined with "/", control characters (NUL,
    newlines) as spaces, at most ``limit`` characters."""
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    elif not isinstance(value, str):
        try:
            value = "/".join(str(v) for v in value)
        except TypeError:
            value = str(value)
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def _image_type(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("ImageType", None)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(str(v).strip().upper() for v in value)


def _orientation(ds: Dataset) -> tuple[float, ...] | None:
    """The six cosines, or None when missing, not six numbers or not finite (a series to skip)."""
    try:
        value = ds.get("ImageOrientationPatient", None)
        if value is None or isinstance(value, (str, bytes)) or len(value) != 6:
            return None
        cosines = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        return None
    return cosines if all(np.isfinite(cosines)) else None


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute, or None when missing or not an integer (untrusted headers)."""
    try:
        value = ds.get(keyword, None)
        if value is None or value == "" or isinstance(value, bytes):
            return None
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _frames(ds: Dataset) -> int:
    """NumberOfFrames; an unreadable value counts as more than one frame (not a plain slice)."""
    if "NumberOfFrames" not in ds:
        return 1
    frames = _int_or_none(ds, "NumberOfFrames")
    if frames is None:
        return 1 if ds.get("NumberOfFrames", None) in (None, "") else 2
    return max(frames, 1)


def _size(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword, None)
    return value if isinstance(value, int) else None


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
                info = by_uid[series_uid] = SeriesInfo(
                    series_uid=series_uid,
                    study_uid=_text(ds, "StudyInstanceUID"),
                    modality=_text(ds, "Modality").upper(),
                    image_type=_image_type(ds),
                    series_description=_display_text(ds, "SeriesDescription"),
                    series_number=_int_or_none(ds, "SeriesNumber"),
                    sop_class_uid=_text(ds, "SOPClassUID"),
                    orientation=_orientation(ds),
                    rows=_size(ds, "Rows"),
                    cols=_size(ds, "Columns"),
                    number_of_frames=_frames(ds),
                )
            else:
                _note_variation(info, ds)
            info.transfer_syntaxes.add(_text(ds.file_meta, "TransferSyntaxUID"))
            info.identifiers.update(_identifiers(ds))
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


def _identifiers(ds: Dataset) -> set[str]:
    """The patient's name parts, IDs, birth date and accession number of a header (3+ characters:
    shorter parts, like a middle initial, would scrub ordinary words)."""
    values: set[str] = set()
    for keyword in _IDENTIFYING_TAGS:
        try:
            value = ds.get(keyword, None)
            items = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
            for item in items:
                text = str(item or "")
                parts = [text, *re.split(r"[\^\s=,]+", text)] if keyword == "PatientName" else [text]
                values.update(part.strip() for part in parts if len(part.strip()) >= 3)
        except Exception:  # noqa: BLE001, S112 - an unreadable value cannot leak
            continue
    return values


def _note_variation(info: SeriesInfo, ds: Dataset) -> None:
    checks = {
        "Modality": _text(ds, "Modality").upper() == info.modality,
        "ImageType": _image_type(ds) == info.image_type,
        "ImageOrientationPatient": _same_orientation(_orientation(ds), info.orientation),
        "Rows/Columns": (_size(ds, "Rows"), _size(ds, "Columns")) == (info.rows, info.cols),
        "SOPClassUID": _text(ds, "SOPClassUID") == info.sop_class_uid,
    }
    for name, same in checks.items():
        if not same and name not in info.varying:
            info.varying.append(name)
    info.number_of_frames = max(info.number_of_frames, _frames(ds))


def _normal(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 0 else np.full(3, np.nan)


#: The optional dependency group that brings the decoders of compressed transfer syntaxes.
CODECS_EXTRA = "ct-v2v-diffusion[dicom-codecs]"


def decoder_reason(transfer_syntax: str) -> str | None:
    """``"needs <packages>"`` when pydicom cannot decode ``transfer_syntax`` here, else None.

    Asks pydicom's decoder registry (nothing is decoded): RLE Lossless and the uncompressed
    syntaxes decode with pydicom alone; JPEG Lossless, JPEG-LS and JPEG 2000 need a plugin
    (``pylibjpeg`` with ``pylibjpeg-libjpeg`` / ``pylibjpeg-openjpeg``, ``pyjpegls``, ``gdcm``,
    Pillow for JPEG 2000): the reason names what pydicom says is missing and the extra.
    An unknown or empty UID is left to the reader (it fails with the decode error).
    """
    from pydicom.pixels import get_decoder

    text = str(transfer_syntax or "").strip()
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", text) or len(text) > 64:
        return None  # not a UID at all: the reader reports the file
    uid = pydicom.uid.UID(text)
    if not uid.is_transfer_syntax:
        return f"needs a decoder for transfer syntax {text}, which pydicom {pydicom.__version__} does not know"
    if not uid.is_compressed:
        return None
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"needs a decoder for {uid.name}, which pydicom {pydicom.__version__} does not have"
    if decoder.is_available:
        return None
    # pydicom lists e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"; the
    # PyPI name of gdcm's Python binding is python-gdcm
    missing = [m.split(" - ", 1)[-1].removeprefix("requires ").replace("gdcm>=", "python-gdcm>=")
               for m in decoder.missing_dependencies]
    options = ", or ".join(missing) if missing else "a pixel data plugin"
    return f"needs {options} to decode {uid.name} (pip install '{CODECS_EXTRA}')"


def select_reason(info: SeriesInfo) -> str | None:
    """Why ``info`` is not a series to enhance, or ``None`` for a plain axial original CT.

    Accepted: Modality CT, CT Image Storage (single frame), ImageType ORIGINAL and not LOCALIZER,
    one ImageOrientationPatient, one Rows/Columns, slice normal within 5 degrees of patient z,
    and a transfer syntax that pydicom can decode here (else ``"needs <package>..."``).
    """
    if info.modality != "CT":
        return f"modality {info.modality or 'missing'}, not CT"
    if info.sop_class_uid in (EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage):
        name = pydicom.uid.UID(info.sop_class_uid).name
        return (f"SOP class {name} (multi-frame, per-frame functional groups) is not read by this tool; "
                "export the series as CT Image Storage, one slice per file")
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
    normal = _normal(info.orientation)
    if not np.all(np.isfinite(normal)):
        return "ImageOrientationPatient is not two independent direction cosines"
    angle = np.degrees(np.arccos(min(1.0, abs(float(normal[2])))))
    if angle > _AXIAL_MAX_DEG:
        return f"not axial (slice normal {angle:.1f} degrees from patient z)"
    for syntax in sorted(info.transfer_syntaxes):
        reason = decoder_reason(syntax)
        if reason is not None:
            return reason
    return None
