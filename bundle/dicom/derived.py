"""Write an enhanced volume as a DERIVED CT series beside its source series.

:func:`write_derived_series` writes one CT Image Storage instance per source slice. Each output
file starts from its source slice's own header (read again, without pixels), so the patient,
study, frame of reference, equipment and acquisition attributes, and the exact geometry strings
(ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness) are the source's.
Viewers then link the two series and can do MPR on the output; a Secondary Capture would lose
the geometry.

What changes for a derived image (DICOM PS3.3: new series, new instances, ImageType DERIVED):

* new SeriesInstanceUID and SOPInstanceUIDs, file meta MediaStorageSOPInstanceUID = SOPInstanceUID;
  SeriesNumber + ``series_number_offset``; SeriesDescription ``"<source> enhanced - NOT FOR
  DIAGNOSTIC USE"`` (64 characters at most, the warning always kept);
* ImageType ``DERIVED\\SECONDARY\\AXIAL``, DerivationDescription (model, versions, settings incl.
  the seed), DerivationCodeSequence, a SourceImageSequence item naming the source instance of
  the slice, a ContributingEquipmentSequence item for this software (appended to the source's);
* pixels: signed int16, BitsStored 16, RescaleSlope 1, RescaleIntercept 0, clipped to the
  source series' own HU range; outside the field of view the source's air (:func:`derived_hu`),
  and where the source marked it with PixelPaddingValue, that padding value, marked again;
* removed: tags that describe the old pixels (Smallest/Largest pixel values, icon image, overlays,
  group 7FE0 tables), dose descriptors (CTDIvol, ...: dose monitoring systems must not count
  a derived series as a second exposure) and private tags (vendor data about the source pixels
  or reconstruction that no longer holds). LossyImageCompression is kept: the standard forbids
  resetting it once a predecessor was lossy compressed.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage

from bundle.dicom.reader import padding_stored
from bundle.dicom.volume import CTVolume
from bundle.dicom.writer import (
    INT16_MAX,
    INT16_MIN,
    new_file_meta,
    save_dataset,
    set_hu_pixels,
    uid_source,
)

__all__ = [
    "DERIVED_IMAGE_TYPE",
    "NOT_FOR_DIAGNOSTIC_USE",
    "derived_hu",
    "derived_series_description",
    "padding_hu",
    "write_derived_series",
]

DERIVED_IMAGE_TYPE = ("DERIVED", "SECONDARY", "AXIAL")
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
_SUFFIX = f" enhanced - {NOT_FOR_DIAGNOSTIC_USE}"
_LO_MAX = 64  # SeriesDescription is LO
_ST_MAX = 1024  # DerivationDescription is ST

# CID 7203 (Image Derivation) has no "noise reduction" concept; Smoothing is the closest, and
# DerivationDescription says what was done exactly.
_DERIVATION_CODE = ("113087", "DCM", "Smoothing")
_PURPOSE_SOURCE_IMAGE = ("121322", "DCM", "Source image for image processing operation")
_PURPOSE_MODIFYING_EQUIPMENT = ("109103", "DCM", "Modifying Equipment")

# Descriptors of the exposure: a derived series is not a second irradiation event.
_DOSE_TAGS = ("CTDIvol", "CTDIPhantomTypeCodeSequence", "EstimatedDoseSaving")
# Describe the source pixels, not ours (set_hu_pixels removes the pixel-value ones itself).
_STALE_TAGS = (
    "IconImageSequence",
    "PixelDataProviderURL",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "SourceImageSequence",
    "DerivationCodeSequence",
    "DerivationDescription",
)


def _dicom_text(value) -> str:
    """A text element's value as one string; a backslash in LO text makes pydicom split it into
    several values, which are joined back with "/" (a backslash cannot be written in one value)."""
    if value is None:
        return ""
    if isinstance(value, (str, bytes)):
        return value.decode(errors="replace") if isinstance(value, bytes) else value
    try:
        return "/".join(str(v) for v in value)
    except TypeError:
        return str(value)


def derived_series_description(source_description) -> str:
    """``"<source> enhanced - NOT FOR DIAGNOSTIC USE"``, the source part shortened to fit 64 chars."""
    room = _LO_MAX - len(_SUFFIX)
    source = " ".join(_dicom_text(source_description).split())[:room].rstrip()
    return (source + _SUFFIX) if source else _SUFFIX.strip()


def padding_hu(header: Dataset) -> tuple[float, float] | None:
    """The HU interval a slice header marks as padding (outside the field of view), or None.

    From PixelPaddingValue (and PixelPaddingRangeLimit) in stored values
    (:func:`bundle.dicom.reader.padding_stored`), mapped through the header's rescale.
    """
    interval = padding_stored(header)
    if interval is None:
        return None
    try:
        slope = float(header.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError, OverflowError):
        return None
    a, b = interval[0] * slope + intercept, interval[1] * slope + intercept
    return (min(a, b), max(a, b))


def derived_hu(
    enhanced_hu: np.ndarray, source: CTVolume, padding: Sequence[tuple[float, float] | None] | None = None
) -> np.ndarray:
    """The HU to store for ``enhanced_hu``: clipped to the source's HU range, padding restored.

    Args:
        enhanced_hu: ``(slices, rows, cols)`` in the source's slice order.
        source: the source volume.
        padding: per slice, the HU interval of the source's padding (:func:`padding_hu`), or None;
            used only for a source without ``source.padding`` (one not read by
            :func:`bundle.dicom.read_series`).

    The clip keeps the output inside what the scanner wrote (a generative model may overshoot at
    edges). Outside the field of view (``source.padding``, where the reader put air) the output
    is the source's air, so no ring or model output shows there; the DICOM writer marks it with
    PixelPaddingValue again (:func:`write_derived_series`).
    """
    enhanced_hu = np.asarray(enhanced_hu, dtype=np.float32)
    if enhanced_hu.shape != source.hu.shape:
        raise ValueError(f"enhanced volume {enhanced_hu.shape} does not match the source series {source.hu.shape}")
    if not np.all(np.isfinite(enhanced_hu)):
        raise ValueError("enhanced volume contains NaN or infinite values")
    low, high = float(source.hu.min()), float(source.hu.max())
    out = np.clip(enhanced_hu, low, high)
    mask = getattr(source, "padding", None)
    if mask is not None:
        out[mask] = source.hu[mask]
        return out
    for k, interval in enumerate(padding or ()):
        if interval is not None:
            mask = (source.hu[k] >= interval[0]) & (source.hu[k] <= interval[1])
            out[k][mask] = source.hu[k][mask]
    return out


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _format_settings(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def _derivation_description(description: str, model_version: str, software_version: str, settings) -> str:
    text = (
        f"{description}; model {model_version}; software {software_version}; "
        f"settings: {_format_settings(settings)}; {NOT_FOR_DIAGNOSTIC_USE}"
    )
    text = " ".join(text.replace("\\", "/").split())
    if len(text) > _ST_MAX:
        text = text[: _ST_MAX - 3] + "..."
    return text


def _remove_tags(ds: Dataset) -> None:
    for keyword in _STALE_TAGS + _DOSE_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    for tag in list(ds.keys()):
        group = tag.group
        if 0x6000 <= group <= 0x601E and group % 2 == 0 or 0x5000 <= group <= 0x501E and group % 2 == 0 or group == 0x7FE0:  # overlays drawn on the old pixels
            del ds[tag]
    ds.remove_private_tags()


def _read_source_header(path: Path, expected_sop_uid: str) -> Dataset:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
    if str(ds.get("SOPInstanceUID", "")) != expected_sop_uid:
        raise ValueError(
            f"{path}: SOPInstanceUID {ds.get('SOPInstanceUID')} is not the one read before ({expected_sop_uid}): "
            "the source changed while it was processed"
        )
    return ds


def write_derived_series(
    enhanced_hu: np.ndarray,
    source: CTVolume,
    out_dir: str | os.PathLike,
    *,
    description: str = "ctv2v latent diffusion enhancement of low-dose CT",
    settings: Mapping[str, Any],
    model_version: str,
    software_version: str,
    series_number_offset: int = 1000,
    uid_seed: str | None = None,
    file_prefix: str = "IM_",
) -> list[Path]:
    """Write ``enhanced_hu`` as a derived CT series of ``source`` into ``out_dir``.

    Args:
        enhanced_hu: ``(slices, rows, cols)`` HU in ``source``'s slice order (``source.hu``'s grid).
        source: the series read with :func:`bundle.dicom.read_series` (its ``slice_files`` are
            read again for their headers).
        out_dir: folder for the files (created); each file is written atomically.
        description: what was done, first part of DerivationDescription.
        settings: sampler settings to record (steps, eta, strength, samples, seed, ...).
        model_version: e.g. ``"model.pt sha256:1a2b..."``.
        software_version: e.g. ``"ctv2v 0.1.0"``.
        series_number_offset: SeriesNumber = source's + this (or this, if the source has none).
        uid_seed: None for random UIDs; a string for UIDs reproducible from it and the source.
        file_prefix: files are ``{file_prefix}{k + 1:04d}.dcm``, ``k`` the slice index.

    Returns:
        The written paths in slice order. InstanceNumber is ``k + 1``.
    """
    if not source.slice_files or len(source.slice_files) != source.hu.shape[0]:
        raise ValueError("the source has no DICOM files for its slices (a NIfTI volume?): cannot derive a series")
    enhanced_hu = np.asarray(enhanced_hu)
    if enhanced_hu.shape != source.hu.shape:
        raise ValueError(f"enhanced volume {enhanced_hu.shape} does not match the source series {source.hu.shape}")
    headers = [_read_source_header(Path(p), uid) for p, uid in zip(source.slice_files, source.slice_sop_uids)]
    padding = [padding_hu(h) for h in headers]
    stored_hu = derived_hu(enhanced_hu, source, padding)

    uid = uid_source(uid_seed)
    series_uid = uid("derived-series", source.series_uid, _format_settings(settings), model_version)
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    derivation = _derivation_description(description, model_version, software_version, settings)
    source_number = headers[0].get("SeriesNumber", None)
    series_number = (int(source_number) if source_number not in (None, "") else 0) + int(series_number_offset)
    series_description = derived_series_description(headers[0].get("SeriesDescription", ""))
    out_dir = Path(out_dir)

    paths = []
    for k, ds in enumerate(headers):
        source_sop_class = str(ds.get("SOPClassUID", "") or CTImageStorage)
        source_sop_uid = source.slice_sop_uids[k]
        _remove_tags(ds)
        sop_uid = uid("derived-sop", series_uid, k)
        ds.file_meta = new_file_meta(CTImageStorage, sop_uid)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.InstanceNumber = k + 1
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.ImageType = list(DERIVED_IMAGE_TYPE)
        ds.DerivationDescription = derivation
        ds.DerivationCodeSequence = DicomSequence([_code_item(*_DERIVATION_CODE)])

        reference = Dataset()
        reference.ReferencedSOPClassUID = source_sop_class
        reference.ReferencedSOPInstanceUID = source_sop_uid
        reference.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(*_PURPOSE_SOURCE_IMAGE)])
        ds.SourceImageSequence = DicomSequence([reference])

        equipment = Dataset()
        equipment.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(*_PURPOSE_MODIFYING_EQUIPMENT)])
        equipment.Manufacturer = "ct-v2v"
        equipment.ManufacturerModelName = "ctv2v enhance"
        equipment.SoftwareVersions = [software_version[:64], model_version[:64]]
        equipment.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
        equipment.ContributionDescription = description[:64]
        previous = list(ds.get("ContributingEquipmentSequence", []) or [])
        ds.ContributingEquipmentSequence = DicomSequence(previous + [equipment])

        pixels = stored_hu[k]
        marked = padding[k] is not None and INT16_MIN <= padding[k][0] <= INT16_MAX
        if marked and source.padding is not None:
            # outside the field of view: the source's padding value again, marked as such below
            pixels = pixels.copy()
            pixels[source.padding[k]] = round(padding[k][0])
        set_hu_pixels(ds, pixels)
        if marked:
            # keep the padding marked, now in our encoding (slope 1, intercept 0, signed: VR SS)
            ds.add_new("PixelPaddingValue", "SS", int(round(padding[k][0])))
            if padding[k][1] != padding[k][0] and INT16_MIN <= padding[k][1] <= INT16_MAX:
                ds.add_new("PixelPaddingRangeLimit", "SS", int(round(padding[k][1])))
        paths.append(save_dataset(ds, out_dir / f"{file_prefix}{k + 1:04d}.dcm"))
    return paths
