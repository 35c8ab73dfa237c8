"""``ctv2v enhance`` on a generated corpus of the DICOM that scanners and PACS exports really send.

The corpus (built in a tmp folder, no downloads) holds one series per oddity: compressed transfer
syntaxes, Enhanced CT (multi-frame), outside-field-of-view padding, odd rescales and bit depths,
garbage high bits, a localizer and dose objects beside an axial series, reformats, tiny series,
a series split over folders, a DICOMDIR export, junk files and hostile text in every text tag.
The tool runs once over all of it (tiny model, 2 DDIM steps); each case then checks its row of
``summary.csv`` - enhanced, or skipped / failed with the reason - and, for enhanced cases, the
image: every encoding of the same HU must give exactly the reference series' output (the model is
deterministic), padding must come out as air with no ring.

Cases that need an encoder this environment lacks (JPEG-LS, JPEG 2000) are skipped; JPEG Lossless
is encoded by the test itself and expected enhanced with a decoder plugin installed, skipped with
"needs ..." without. RLE runs everywhere (pydicom alone encodes and decodes it).
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from dicom_testdata import encode_jpeg_lossless
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.fileset import FileSet
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    MPEG2MPML,
    EnhancedCTImageStorage,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    XRayRadiationDoseSRStorage,
    generate_uid,
)

from bundle.dicom import read_series, write_ct_series
from bundle.dicom.discovery import decoder_reason
from bundle.dicom.writer import new_file_meta
from tests.inference.test_batch import enhance_logged

SHAPE = (5, 40, 48)  # (slices, rows, cols)
SPACING = (2.0, 0.7, 0.8)
ORIGIN = (-17.0, -14.0, 50.0)
STUDY = "1.2.826.0.1.3680043.8.498.2001"
PATIENT = {"PatientName": "Doe^John", "PatientID": "PID12345", "PatientBirthDate": "19700101",
           "StudyInstanceUID": STUDY, "StudyDescription": "corpus"}
SECRETS = ("Doe", "John", "PID12345", "19700101")
AIR = -1000.0
HOSTILE = "../../etc/passwd /abs\\path \x00NUL Ünïcødé 患者 ☢ " + "x" * 300
# direction columns = LPS unit vectors along i, j, k
CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # i: +x, j: +z, k: -y
SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i: +y, j: +z, k: +x


@pytest.fixture(autouse=True, scope="module")  # module scope: before the module-scoped batch run
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: identical inputs give bit-identical outputs
    yield
    torch.set_num_threads(previous)


# --- the images -----------------------------------------------------------------------------------
def field_of_view(shape=SHAPE) -> np.ndarray:
    """True inside the reconstruction circle, False in the corners outside it."""
    rows, cols = shape[-2:]
    j, i = np.mgrid[:rows, :cols]
    return (j - (rows - 1) / 2) ** 2 + (i - (cols - 1) / 2) ** 2 <= (min(rows, cols) / 2 + 2) ** 2


def phantom(shape=SHAPE, seed=0) -> np.ndarray:
    """Integer HU in [-1024, 3071] (every encoding of the corpus holds it exactly), air outside
    the field of view."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, AIR, np.float32)
    _, h, w = shape
    hu[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 40.0
    hu[:, h // 2 - 3 : h // 2 + 3, w // 2 - 3 : w // 2 + 3] = 900.0
    hu += rng.normal(0, 20, shape).astype(np.float32)
    hu = np.clip(np.round(hu), -1024, 3071)
    hu[:, ~field_of_view(shape)] = AIR
    return hu


REFERENCE_HU = phantom()


# --- building the corpus --------------------------------------------------------------------------
@dataclass
class Case:
    number: int  # SeriesNumber: identifies the row in summary.csv
    status: str  # expected status
    reason: str = ""  # expected part of the reason
    built: bool = True
    files: list[Path] | None = None
    why_not_built: str = ""


def write(folder: Path, number: int, hu=None, **kwargs) -> list[Path]:
    hu = REFERENCE_HU if hu is None else hu
    kwargs.setdefault("direction", np.eye(3))
    kwargs.setdefault("series_description", f"case {number}")
    return write_ct_series(hu, folder, spacing=kwargs.pop("spacing", SPACING), origin=kwargs.pop("origin", ORIGIN),
                           series_number=number, patient={**PATIENT, **kwargs.pop("patient", {})},
                           frame_of_reference_uid=STUDY + ".1", slice_thickness=SPACING[0], **kwargs)


def edit_all(files: list[Path], change) -> None:
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        change(ds, k)
        ds.save_as(path, enforce_file_format=True)


def to_unsigned(bits_stored: int, intercept: float, slope: float = 1.0, garbage: bool = False):
    """Stored = (HU - intercept) / slope as unsigned 16-bit with ``bits_stored`` bits used."""

    def change(ds, k):
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        stored = np.rint((hu - intercept) / slope).astype(np.uint16)
        ds.set_pixel_data(stored, "MONOCHROME2", bits_stored, generate_instance_uid=False)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        if garbage:
            raw = np.frombuffer(ds.PixelData, np.uint16).copy()
            noise = np.random.default_rng(k).integers(0, 1 << (16 - bits_stored), raw.shape).astype(np.uint16)
            ds.PixelData = (raw | (noise << bits_stored)).tobytes()

    return change


def signed_12_garbage(ds, k):
    stored = ds.pixel_array.astype(np.int16)  # slope 1, intercept 0: stored = HU, within 12 bits signed
    ds.set_pixel_data(stored, "MONOCHROME2", 12, generate_instance_uid=False)
    raw = np.frombuffer(ds.PixelData, np.uint16).copy() & 0x0FFF
    noise = np.random.default_rng(k).integers(0, 16, raw.shape).astype(np.uint16)
    ds.PixelData = (raw | (noise << 12)).tobytes()


def compressed(syntax: str):
    def change(ds, k):
        if syntax == JPEGLosslessSV1:
            frame = encode_jpeg_lossless(ds.pixel_array)
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        elif syntax == MPEG2MPML:  # a transfer syntax pydicom has no decoder for at all
            ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = MPEG2MPML
        else:
            ds.compress(syntax, generate_instance_uid=False)

    return change


def hostile_text(ds, k):
    """Every free-text element (and a few optional code strings) path-like, with NUL, non-ASCII
    characters and 300 characters; the patient's name and ID keep a recognisable secret."""
    ds.BodyPartExamined = HOSTILE.encode("ascii", "ignore").decode()  # CS: the default repertoire only
    for keyword in ("InstitutionName", "StationName", "ProtocolName", "OperatorsName", "ReferringPhysicianName", "AccessionNumber", "StudyID", "StudyDescription",
                    "SeriesDescription", "ImageComments", "Manufacturer", "ManufacturerModelName"):
        setattr(ds, keyword, HOSTILE)
    for element in ds:
        if element.VR in ("LO", "LT", "PN", "SH", "ST", "UT", "UC") and element.keyword not in ("PatientName",
                                                                                                 "PatientID"):
            element.value = HOSTILE
    ds.PatientName = "Doe^John^" + HOSTILE[:40]
    ds.PatientID = "PID12345" + HOSTILE[:20]


def enhanced_ct(folder: Path, number: int) -> list[Path]:
    """A minimal Enhanced CT Image Storage instance: all slices as frames of one file."""
    folder.mkdir(parents=True)
    ds = Dataset()
    sop = generate_uid()
    ds.file_meta = new_file_meta(EnhancedCTImageStorage, sop)
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, generate_uid()
    ds.FrameOfReferenceUID = STUDY + ".1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", number, 1
    ds.SeriesDescription = f"case {number}"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [str(SPACING[1]), str(SPACING[2])]
    measures.SliceThickness = str(SPACING[0])
    orientation = Dataset()
    orientation.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    rescale = Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = "1", "0", "HU"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelValueTransformationSequence = DicomSequence([rescale])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for k in range(SHAPE[0]):
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [str(ORIGIN[0]), str(ORIGIN[1]), str(ORIGIN[2] + k * SPACING[0])]
        item.PlanePositionSequence = DicomSequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.set_pixel_data(REFERENCE_HU.astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
    path = folder / "enhanced-ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path]


def non_image(folder: Path, number: int, sop_class: str, modality: str, with_pixels: bool) -> Path:
    """A dose report (SR, no pixels) or a dose screen (Secondary Capture with pixels)."""
    ds = Dataset()
    sop = generate_uid()
    ds.file_meta = new_file_meta(sop_class, sop)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, generate_uid()
    ds.Modality, ds.SeriesNumber = modality, number
    ds.SeriesDescription = f"case {number}"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.set_pixel_data(np.zeros((32, 32), np.uint8), "MONOCHROME2", 8, generate_instance_uid=False)
    path = folder / f"dose-{number}"
    ds.save_as(path, enforce_file_format=True)
    return path


def can_encode(syntax: str) -> bool:
    return bool(get_encoder(syntax).is_available)


def build_corpus(root: Path) -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def add(name, number, status, reason="", files=None):
        cases[name] = Case(number, status, reason, files=files)
        return cases[name]

    def encoding(name, number, change, **kwargs):
        """A case with REFERENCE_HU in another encoding: enhanced like the reference."""
        files = write(root / name, number, **kwargs)
        edit_all(files, change)
        return add(name, number, "enhanced", files=files)

    # the reference: signed int16, slope 1, intercept 0, in one folder with a localizer and dose objects
    mixed = root / "mixed"
    add("reference", 1, "enhanced", files=write(mixed, 1))
    add("localizer", 2, "skipped", "localizer",
        files=write(mixed, 2, hu=phantom((1, 40, 48)), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    add("dose_report", 3, "skipped", "modality SR, not CT",
        files=[non_image(mixed, 3, XRayRadiationDoseSRStorage, "SR", with_pixels=False)])
    add("dose_screen", 4, "skipped", "SOP class Secondary Capture Image Storage",
        files=[non_image(mixed, 4, SecondaryCaptureImageStorage, "CT", with_pixels=True)])

    # compressed transfer syntaxes
    encoding("rle_lossless", 5, compressed(RLELossless))
    for name, number, syntax in (("jpeg_ls_lossless", 6, JPEGLSLossless), ("jpeg_2000_lossless", 7, JPEG2000Lossless)):
        if can_encode(syntax):
            encoding(name, number, compressed(syntax))
        else:
            cases[name] = Case(number, "", built=False, why_not_built=f"no encoder for {syntax.name} here")
    encoding("jpeg_lossless_sv1", 8, compressed(JPEGLosslessSV1), hu=REFERENCE_HU)
    for name in ("jpeg_ls_lossless", "jpeg_2000_lossless", "jpeg_lossless_sv1"):
        case = cases[name]
        syntax = {"jpeg_ls_lossless": JPEGLSLossless, "jpeg_2000_lossless": JPEG2000Lossless}.get(name, JPEGLosslessSV1)
        needs = decoder_reason(syntax)
        if case.built and needs is not None:  # no decoder plugin here: skipped with what to install
            case.status, case.reason = "skipped", needs
    files = write(root / "mpeg2", 9)
    edit_all(files, compressed(MPEG2MPML))
    add("no_decoder_at_all", 9, "skipped", "needs a decoder for MPEG2", files=files)

    # Enhanced CT Image Storage: skipped with the reason
    add("enhanced_ct_multiframe", 10, "skipped", "Enhanced CT Image Storage (multi-frame",
        files=enhanced_ct(root / "enhanced-ct", 10))

    # outside-field-of-view padding: tagged (-2000, PixelPaddingValue) and untagged (-3024)
    outside = ~field_of_view()
    padded = REFERENCE_HU.copy()
    padded[:, outside] = -2000
    files = write(root / "padding-2000", 11, hu=padded)
    edit_all(files, lambda ds, k: ds.add_new("PixelPaddingValue", "SS", -2000))
    add("padding_value_-2000", 11, "enhanced", files=files)
    padded[:, outside] = -3024
    files = write(root / "padding-3024", 12, hu=padded)
    edit_all(files, lambda ds, k: (setattr(ds, "PixelData", (ds.pixel_array + 1024).astype(np.int16).tobytes()),
                                   setattr(ds, "RescaleIntercept", "-1024")))
    add("padding_-3024_untagged_intercept", 12, "enhanced", files=files)

    # rescale and bit depth
    files = write(root / "beyond-int16", 13)

    def beyond_int16(ds, k):
        to_unsigned(16, -1024)(ds, k)
        stored = ds.pixel_array.copy()
        stored[0, :5] = 65535  # 64511 HU after rescale: beyond int16
        ds.PixelData = stored.tobytes()

    edit_all(files, beyond_int16)
    add("beyond_int16_after_rescale", 13, "enhanced", files=files)
    encoding("rescale_missing", 14, lambda ds, k: (delattr(ds, "RescaleSlope"), delattr(ds, "RescaleIntercept")))
    encoding("rescale_slope_0.5_unsigned", 15, to_unsigned(16, -1024, slope=0.5))
    files = write(root / "slope-zero", 16)
    edit_all(files, lambda ds, k: setattr(ds, "RescaleSlope", "0"))
    add("rescale_slope_zero", 16, "failed", "RescaleSlope is 0", files=files)
    files = write(root / "slope-nan", 17)
    edit_all(files, lambda ds, k: ds.__setitem__("RescaleSlope", pydicom.DataElement("RescaleSlope", "DS", "NaN")))
    add("rescale_slope_nan", 17, "failed", "RescaleSlope", files=files)
    encoding("unsigned_12_bit", 18, to_unsigned(12, -1024))
    encoding("unsigned_12_bit_garbage_high_bits", 19, to_unsigned(12, -1024, garbage=True))
    encoding("signed_12_bit_garbage_high_bits", 20, signed_12_garbage)
    encoding("unsigned_16_bit", 21, to_unsigned(16, -1024))

    # series that are not one regular axial original volume
    files = write(root / "rows-columns", 22, hu=phantom((4, 40, 48)))
    files += write(root / "rows-columns", 22, hu=phantom((1, 32, 48)), series_uid=pydicom.dcmread(files[0]).SeriesInstanceUID,
                   origin=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + 4 * SPACING[0]), file_prefix="other_")
    add("rows_columns_differ", 22, "skipped", "inconsistent Rows/Columns across files", files=files)
    add("coronal_reformat", 23, "skipped", "derived image",
        files=write(root / "coronal", 23, direction=CORONAL, image_type=("DERIVED", "SECONDARY", "REFORMATTED")))
    add("sagittal_original", 24, "skipped", "not axial", files=write(root / "sagittal", 24, direction=SAGITTAL))

    # small series
    for n, number in ((1, 25), (2, 26), (4, 27)):
        add(f"{n}_slice_series", number, "enhanced", files=write(root / f"slices-{n}", number, hu=REFERENCE_HU[:n]))

    # a series split over two folders, files without extension; junk and zero-byte files beside it
    files = write(root / "split" / "part-a", 28)
    for path in files[1::2]:
        target = root / "split" / "elsewhere" / "part-b" / path.stem
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    for path in files[0::2]:
        path.rename(path.with_suffix(""))
    (root / "split" / "part-a" / "empty").write_bytes(b"")
    add("split_over_folders_no_extension", 28, "enhanced")

    # a media export: DICOMDIR + PT000000/ST000000/SE000000/IM00000n
    source = write(root / "staging", 29)
    file_set = FileSet()
    for path in source:
        file_set.add(path)
    file_set.write(root / "export")
    shutil.rmtree(root / "staging")
    add("dicomdir_export", 29, "enhanced")

    # hostile text in every text tag
    files = write(root / "Ünïcødé 患者 folder" / "hostile", 30)
    edit_all(files, lambda ds, k: hostile_text(ds, k))
    add("hostile_text_in_every_text_tag", 30, "enhanced", files=files)

    # junk
    junk = root / "junk"
    junk.mkdir()
    (junk / "zero-bytes.dcm").write_bytes(b"")
    (junk / "zero-bytes").write_bytes(b"")
    (junk / "notes.txt").write_text("not DICOM\n")
    (junk / "image.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    (junk / "random").write_bytes(os.urandom(1000))
    (junk / "preamble-only").write_bytes(b"\0" * 128 + b"DICM")
    return cases


# --- one run of the tool --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(batch_model) -> Path:
    return batch_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("corpus")
    input_dir, output = root / "input", root / "output"
    cases = build_corpus(input_dir)
    code, log = enhance_logged(input_dir, output, model)
    with open(output / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"input": input_dir, "output": output, "cases": cases, "code": code, "rows": rows, "log": log}


def row_of(corpus, name: str) -> dict:
    case = corpus["cases"][name]
    if not case.built:
        pytest.skip(case.why_not_built)
    found = [r for r in corpus["rows"] if r["kind"] == "dicom" and r["series_number"] == str(case.number)]
    assert len(found) == 1, f"{name}: {len(found)} rows for series #{case.number}"
    return found[0]


def output_volume(corpus, name: str):
    return read_series(corpus["output"] / row_of(corpus, name)["output"])


CASE_NAMES = [
    "reference", "localizer", "dose_report", "dose_screen", "rle_lossless", "jpeg_ls_lossless",
    "jpeg_2000_lossless", "jpeg_lossless_sv1", "no_decoder_at_all", "enhanced_ct_multiframe",
    "padding_value_-2000", "padding_-3024_untagged_intercept", "beyond_int16_after_rescale", "rescale_missing",
    "rescale_slope_0.5_unsigned", "rescale_slope_zero", "rescale_slope_nan", "unsigned_12_bit",
    "unsigned_12_bit_garbage_high_bits", "signed_12_bit_garbage_high_bits", "unsigned_16_bit",
    "rows_columns_differ", "coronal_reformat", "sagittal_original", "1_slice_series", "2_slice_series",
    "4_slice_series", "split_over_folders_no_extension", "dicomdir_export", "hostile_text_in_every_text_tag",
]
SAME_HU_AS_REFERENCE = [
    "rle_lossless", "jpeg_ls_lossless", "jpeg_2000_lossless", "jpeg_lossless_sv1", "rescale_missing",
    "rescale_slope_0.5_unsigned", "unsigned_12_bit", "unsigned_12_bit_garbage_high_bits",
    "signed_12_bit_garbage_high_bits", "unsigned_16_bit", "split_over_folders_no_extension", "dicomdir_export",
    "hostile_text_in_every_text_tag",
]


# --- per case: status and reason ------------------------------------------------------------------
def test_every_case_is_listed(corpus):
    assert sorted(corpus["cases"]) == sorted(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_status_and_reason(corpus, name):
    case = corpus["cases"][name]
    row = row_of(corpus, name)
    assert row["status"] == case.status, row
    if case.status == "enhanced":
        assert row["reason"] == "" and row["output"]
    else:
        assert case.reason and case.reason in row["reason"], row
        assert row["output"] == ""


# --- per case: the image --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAME_HU_AS_REFERENCE)
def test_same_hu_in_another_encoding_gives_the_reference_output(corpus, name):
    case = corpus["cases"][name]
    row_of(corpus, name)
    if case.status != "enhanced":
        pytest.skip(f"{name} is {case.status} here: {case.reason}")
    if case.files is not None:  # the reader sees the reference HU in this encoding
        np.testing.assert_array_equal(read_series(case.files).hu, REFERENCE_HU)
    np.testing.assert_array_equal(output_volume(corpus, name).hu, output_volume(corpus, "reference").hu)


@pytest.mark.parametrize("name", ["padding_value_-2000", "padding_-3024_untagged_intercept"])
def test_padding_becomes_air_without_a_ring(corpus, name):
    case = corpus["cases"][name]
    source = read_series(case.files)
    outside = ~field_of_view()
    assert source.padding is not None and source.padding.sum() == outside.sum() * SHAPE[0]
    np.testing.assert_array_equal(source.hu, REFERENCE_HU)  # the model sees air, as for the reference
    out = output_volume(corpus, name).hu
    reference = output_volume(corpus, "reference").hu
    # inside the field of view exactly the reference's output: no bright or dark ring at its edge
    np.testing.assert_array_equal(out[:, ~outside], reference[:, ~outside])
    assert (out[:, outside] == AIR).all()
    stored = pydicom.dcmread(min((corpus["output"] / row_of(corpus, name)["output"]).glob("IM_*.dcm")))
    if name == "padding_value_-2000":  # marked padding stays marked, with the source's value
        assert stored.PixelPaddingValue == -2000 and (stored.pixel_array[outside] == -2000).all()
    else:  # unmarked fill: written as air, nothing below -1024 HU in the output
        assert "PixelPaddingValue" not in stored and stored.pixel_array.min() >= -1024


def test_beyond_int16_is_clipped_and_counted(corpus):
    case = corpus["cases"]["beyond_int16_after_rescale"]
    source = read_series(case.files)
    assert source.clipped_voxels == 5 * SHAPE[0] and source.hu.max() == 32767
    expected = REFERENCE_HU.copy()
    expected[:, 0, :5] = 32767
    np.testing.assert_array_equal(source.hu, expected)
    assert any(f"{5 * SHAPE[0]} voxel(s) beyond the int16 range" in line for line in corpus["log"])


@pytest.mark.parametrize("name", ["1_slice_series", "2_slice_series", "4_slice_series"])
def test_small_series_keep_their_slices(corpus, name):
    n = int(name.split("_")[0])
    assert row_of(corpus, name)["slices"] == str(n)
    out = output_volume(corpus, name)
    assert out.hu.shape == (n, *SHAPE[1:])


def test_split_series_is_one_row_with_all_slices(corpus):
    assert row_of(corpus, "split_over_folders_no_extension")["slices"] == str(SHAPE[0])


def test_hostile_text_stays_inside_output_and_out_of_logs(corpus):
    output = corpus["output"].resolve()
    for row in corpus["rows"]:
        if row["output"]:
            assert (output / row["output"]).resolve().is_relative_to(output)
            assert ".." not in Path(row["output"]).parts
    row = row_of(corpus, "hostile_text_in_every_text_tag")
    assert "\x00" not in row["description"]
    derived = pydicom.dcmread(min((output / row["output"]).glob("IM_*.dcm")))
    assert len(derived.SeriesDescription) <= 64 and derived.SeriesDescription.endswith("NOT FOR DIAGNOSTIC USE")
    text = "\n".join(corpus["log"]) + (corpus["output"] / "summary.csv").read_text()
    for secret in SECRETS:
        assert secret not in text


def test_junk_dicomdir_and_empty_files_make_no_rows_and_no_crash(corpus):
    assert corpus["code"] == 1  # the rescale cases failed; the batch went on
    assert {r["status"] for r in corpus["rows"]} <= {"enhanced", "skipped", "failed"}
    assert all(r["reason"] for r in corpus["rows"] if r["status"] != "enhanced")
    files = [r for r in corpus["rows"] if r["kind"] == "file"]
    # only the file with a DICOM preamble and nothing after it is reported (it may be a slice)
    assert [Path(r["description"]).name for r in files] == ["preamble-only"]
    assert all(r["status"] == "skipped" for r in files)
    assert len([r for r in corpus["rows"] if r["kind"] == "dicom"]) == sum(c.built for c in corpus["cases"].values())


def test_a_missing_decoder_is_a_skip_naming_the_package(corpus, monkeypatch):
    """As if pylibjpeg-libjpeg and gdcm were not installed: pydicom's registry says what is missing,
    selection skips with "needs ...", and the reader (called directly) says the same."""
    import pydicom.pixels

    from bundle.dicom import DicomSeriesError, discover_series, select_reason

    class Unavailable:
        is_available = False
        missing_dependencies = ("gdcm - requires gdcm>=3.0.10",
                                "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1")

    def no_pixels(self):
        raise RuntimeError("Unable to decode as there are no pixel data decoders available")

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_pixels))
    folder = corpus["input"] / "jpeg_lossless_sv1"
    (info,), _ = discover_series(folder)
    reason = select_reason(info)
    assert reason.startswith("needs python-gdcm>=3.0.10, or pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1 to decode JPEG")
    assert "[dicom-codecs]" in reason
    with pytest.raises(DicomSeriesError, match="needs python-gdcm"):
        read_series(folder)
