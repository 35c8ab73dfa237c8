"""``ctv2v enhance`` on a messy synthetic DICOM tree: selection, statuses, derived series read back
with pydicom and SimpleITK, an untouched input tree, re-runs, and refusal to write into INPUT."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.uid import MRImageStorage

from bundle.cli import main
from bundle.dicom import read_series, write_ct_series
from bundle.inference.batch import DONE_MARKER, SUMMARY_COLUMNS
from bundle.inference.batch.lock import LOCK_NAME
from bundle.inference.low_frequency import TISSUE_LEVELS
from bundle.utils.names import safe_name

SHAPE = (10, 40, 48)  # (slices, rows, cols): rows != cols so a swapped axis shows
SPACING = (2.0, 0.7, 0.8)
PATIENT = {"PatientName": "Doe^John", "PatientID": "PID12345", "PatientBirthDate": "19700101"}
SECRETS = ("Doe", "John", "PID12345", "19700101")
PADDING_HU = -2000


@pytest.fixture(autouse=True, scope="module")  # module scope: before the module-scoped batch run
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- the synthetic tree ---------------------------------------------------------------------------
def phantom(shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, np.float32)
    s, h, w = shape
    hu[:, h // 5 : 4 * h // 5, w // 5 : 4 * w // 5] = 40.0
    hu += rng.normal(0, 20, shape).astype(np.float32)
    return np.round(hu)


def write_series(folder: Path, number: int, study: str, hu=None, **kwargs) -> list[Path]:
    hu = phantom(seed=number) if hu is None else hu
    kwargs.setdefault("direction", np.eye(3))
    kwargs.setdefault("series_description", f"series {number}")
    return write_ct_series(
        hu, folder, spacing=kwargs.pop("spacing", SPACING), origin=kwargs.pop("origin", (-20.0, -15.0, 100.0)),
        series_number=number, patient={**PATIENT, "StudyInstanceUID": study, **kwargs.pop("patient", {})},
        frame_of_reference_uid=study + ".1", **kwargs,
    )


def edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def build_tree(root: Path) -> dict[str, list[Path]]:
    """The input tree; returns the files of each series by role."""
    study = "1.2.826.0.1.3680043.8.498.1001"
    other_study = "1.2.826.0.1.3680043.8.498.1002"
    patient_dir = root / "Doe^John" / "CT chest"  # export folders named after the patient are common
    series: dict[str, list[Path]] = {}

    # good: shuffled names without extension, split over a nested folder, prone-like orientation,
    # outside-field-of-view padding marked with PixelPaddingValue
    hu = phantom(seed=1)
    hu[:, :3, :3] = PADDING_HU
    files = write_series(patient_dir / "good", 2, study, hu=hu, direction=np.diag([-1.0, -1.0, 1.0]),
                         series_description="Chest 1.0 B30f", patient={"StudyDescription": "CT chest"})
    renamed = []
    for n, path in enumerate(files):
        edit(path, lambda ds: ds.add_new("PixelPaddingValue", "SS", PADDING_HU))
        target = path.parent / ("deeper" if n % 2 else "") / uuid.uuid4().hex
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
        renamed.append(target)
    (patient_dir / "good" / "notes.txt").write_text("not DICOM\n")
    series["good"] = renamed

    series["localizer"] = write_series(patient_dir / "scout", 1, study, hu=phantom((1, 40, 48)),
                                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    series["mr"] = write_series(patient_dir / "mr", 3, study, hu=phantom((4, 40, 48)))
    for path in series["mr"]:
        def to_mr(ds):
            ds.Modality = "MR"
            ds.SOPClassUID = MRImageStorage
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage

        edit(path, to_mr)
    series["gap"] = write_series(patient_dir / "gap", 4, study, hu=phantom((8, 40, 48)))
    series["gap"].pop(3).unlink()  # a missing slice
    series["corrupt"] = write_series(patient_dir / "corrupt", 5, study, hu=phantom((6, 40, 48)))
    last = series["corrupt"][-1]  # the last slice, cut short: a silent loss if it were ignored
    last.write_bytes(last.read_bytes()[:-1500])

    # two series in one folder, with hostile descriptions
    mixed = root / "other" / "mixed"
    series["mixed_a"] = write_series(mixed, 6, other_study, series_description="../../../../tmp/evil",
                                     patient={"StudyDescription": "../.."})
    series["mixed_b"] = write_series(mixed, 7, other_study, series_description="a/b\\c:*?<>|",
                                     patient={"StudyDescription": "../.."})
    # a file with the DICOM preamble and garbage after it
    (root / "junk").mkdir()
    (root / "junk" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    # a NIfTI volume among the DICOM files
    (root / "nifti").mkdir()
    affine = np.diag([-0.8, -0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(phantom((48, 40, 6), seed=9), affine), str(root / "nifti" / "volume.nii.gz"))
    return series


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def output_state(root: Path) -> dict[str, int]:
    """Modification times of the series' files (not the summary or the run's lock, rewritten by each run)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("summary.csv", LOCK_NAME)}


def read_summary(output: Path) -> list[dict]:
    with open(output / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def row_of(rows, number: int) -> dict:
    (row,) = [r for r in rows if r["kind"] == "dicom" and r["series_number"] == str(number)]
    return row


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def enhance(input_dir: Path, output: Path, model: Path, *extra: str) -> int:
    return main(["enhance", str(input_dir), str(output), "--model", str(model), "--steps", "2", "--device", "cpu",
                 "--no-progress", *extra])


def enhance_logged(input_dir: Path, output: Path, model: Path, *extra: str) -> tuple[int, list[str]]:
    """:func:`enhance` with every log line of the package captured at DEBUG: (exit code, lines)."""
    records = _Records()
    logger = logging.getLogger("bundle")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(records)
    try:
        return enhance(input_dir, output, model, *extra), records.lines
    finally:
        logger.removeHandler(records)
        logger.setLevel(previous)


@pytest.fixture(scope="module")
def model(batch_model) -> Path:
    return batch_model


@pytest.fixture(scope="module")
def batch(tmp_path_factory, model):
    """One run of the tool on the tree: (input, output, series, exit code, log lines, input hashes)."""
    root = tmp_path_factory.mktemp("batch")
    input_dir, output = root / "input", root / "output"
    series = build_tree(input_dir)
    before = tree_hashes(input_dir)
    code, log = enhance_logged(input_dir, output, model, "--format", "both", "--num-samples", "2")
    return dict(input=input_dir, output=output, series=series, code=code, log=log, before=before)


# --- the tests ------------------------------------------------------------------------------------
def test_summary_lists_every_series_with_its_status(batch):
    rows = read_summary(batch["output"])
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    expected = {2: "enhanced", 1: "skipped", 3: "skipped", 4: "failed", 5: "failed", 6: "enhanced", 7: "enhanced"}
    for number, status in expected.items():
        assert row_of(rows, number)["status"] == status, row_of(rows, number)
    assert row_of(rows, 1)["reason"] == "localizer"
    assert "MR" in row_of(rows, 3)["reason"]
    assert "missing slice" in row_of(rows, 4)["reason"]
    assert "unreadable" in row_of(rows, 5)["reason"]
    (junk,) = [r for r in rows if r["kind"] == "file"]
    assert junk["status"] == "skipped" and "broken.dcm" in junk["description"]
    (volume,) = [r for r in rows if r["kind"] == "nifti"]
    assert volume["status"] == "enhanced"
    assert len(rows) == 9  # seven series, the junk file, the NIfTI file; not notes.txt
    assert all(r["seconds"] for r in rows if r["status"] != "skipped")
    assert row_of(rows, 2)["slices"] == "10"
    assert batch["code"] == 1  # something failed


def test_outputs_exist_only_for_the_enhanced_series(batch):
    output = batch["output"]
    rows = read_summary(output)
    done = {r["output"] for r in rows if r["status"] == "enhanced"}
    assert all(r["output"] == "" for r in rows if r["status"] != "enhanced")
    markers = {str(p.parent.relative_to(output)) for p in output.rglob(DONE_MARKER)}
    assert markers == done and len(done) == 4
    folders = {str(p.relative_to(output)) for p in output.glob("*/*") if p.is_dir()}
    assert folders == done
    assert not list(output.rglob("*.partial"))
    for folder in done:  # sanitised names, inside OUTPUT
        assert ".." not in folder and "\\" not in folder and ":" not in folder
        assert (output / folder).resolve().is_relative_to(output.resolve())
    assert safe_name("../..", "study") == "study"


def test_input_tree_is_unchanged(batch):
    assert tree_hashes(batch["input"]) == batch["before"]


def test_logs_and_summary_carry_no_patient_data(batch):
    text = "\n".join(batch["log"]) + (batch["output"] / "summary.csv").read_text()
    assert batch["log"]
    for secret in SECRETS:
        assert secret not in text


def _derived(batch, number: int):
    output = batch["output"]
    row = row_of(read_summary(output), number)
    folder = output / row["output"]
    files = sorted(folder.glob("IM_*.dcm"))
    return folder, files


def test_derived_series_tags(batch):
    source = read_series(batch["series"]["good"])
    source_headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in source.slice_files]
    folder, files = _derived(batch, 2)
    assert len(files) == len(source.slice_files)
    outputs = [pydicom.dcmread(p) for p in files]
    sop_uids = {str(ds.SOPInstanceUID) for ds in outputs}
    assert len(sop_uids) == len(outputs) and not sop_uids & set(source.slice_sop_uids)
    assert len({str(ds.SeriesInstanceUID) for ds in outputs}) == 1
    assert outputs[0].SeriesInstanceUID != source.series_uid
    by_position = {tuple(h.ImagePositionPatient): h for h in source_headers}
    low, high = source.hu.min(), source.hu.max()
    for ds in outputs:
        src = by_position[tuple(ds.ImagePositionPatient)]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == src.SOPClassUID
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName",
                        "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns"):
            assert ds[keyword].value == src[keyword].value, keyword
        (reference,) = ds.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == src.SOPClassUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.DerivationCodeSequence[0].CodingSchemeDesignator == "DCM"
        assert "seed=0" in ds.DerivationDescription and "steps=2" in ds.DerivationDescription
        assert "sha256:" in ds.DerivationDescription
        assert ds.ContributingEquipmentSequence[-1].Manufacturer == "ct-v2v"
        assert ds.SeriesDescription == "Chest 1.0 B30f enhanced - NOT FOR DIAGNOSTIC USE"
        assert ds.SeriesNumber == 1002
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
        assert "SmallestImagePixelValue" not in ds and "LargestImagePixelValue" not in ds
        pixels = ds.pixel_array
        # the outside-field-of-view padding is the source's, and still marked as padding; the
        # reader gave the model air there (source.hu), and the rest stays in the source's range
        assert ds.PixelPaddingValue == PADDING_HU and (pixels[:3, :3] == PADDING_HU).all()
        inside = pixels != PADDING_HU
        assert pixels.dtype == np.int16 and low <= pixels[inside].min() and pixels[inside].max() <= high


def test_derived_series_geometry_in_simplesitk_and_our_reader(batch):
    source = read_series(batch["series"]["good"])
    folder, files = _derived(batch, 2)

    def sitk_read(paths):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(p) for p in paths])
        return reader.Execute()

    expected = sitk_read(source.slice_files)  # SimpleITK on the source, in our slice order
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    assert len(ids) == 1
    image = sitk_read(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    assert image.GetSize() == expected.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)

    derived = read_series(folder)  # our reader: the same grid, and the NIfTI holds the same HU
    np.testing.assert_allclose(derived.affine_lps, source.affine_lps, atol=1e-4)
    nifti = nib.load(str(folder / "enhanced.nii.gz"))
    np.testing.assert_allclose(nifti.affine, source.affine_ras, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(nifti.dataobj).transpose(2, 1, 0), derived.hu)
    uncertainty = nib.load(str(folder / "uncertainty.nii.gz"))
    assert uncertainty.shape == nifti.shape and uncertainty.get_data_dtype() == np.float32
    assert np.asanyarray(uncertainty.dataobj).min() >= 0


def test_nifti_input_gives_nifti_with_its_geometry(batch):
    (row,) = [r for r in read_summary(batch["output"]) if r["kind"] == "nifti"]
    source = nib.load(str(batch["input"] / "nifti" / "volume.nii.gz"))
    out = nib.load(str(batch["output"] / row["output"] / "enhanced.nii.gz"))
    assert out.shape == source.shape
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)


def test_rerun_skips_done_series_without_rewriting_them(batch, model, tmp_path):
    output = tmp_path / "output"
    shutil.copytree(batch["output"], output)  # copy2 keeps the mtimes
    rows = read_summary(output)
    redo = output / row_of(rows, 6)["output"]
    shutil.rmtree(redo)  # as if the run had stopped while writing it
    partial = redo.with_name(redo.name + ".partial")
    partial.mkdir()
    (partial / "IM_0001.dcm").write_bytes(b"half written")
    before = output_state(output)

    code = enhance(batch["input"], output, model, "--format", "both", "--num-samples", "2")
    assert code == 1  # the broken series still fail
    rows = read_summary(output)
    for number in (2, 7):
        assert row_of(rows, number)["status"] == "skipped"
        assert row_of(rows, number)["reason"].startswith("already enhanced")
        assert row_of(rows, number)["output"]
    assert row_of(rows, 6)["status"] == "enhanced"
    after = output_state(output)
    unchanged = {k: v for k, v in before.items() if not k.startswith(str(partial.relative_to(output)))}
    assert {k: after[k] for k in unchanged} == unchanged  # done series not rewritten
    new = set(after) - set(before)
    assert new and all(k.startswith(str(redo.relative_to(output))) for k in new)
    assert not partial.exists()
    assert len(list(redo.glob("IM_*.dcm"))) == 10  # no duplicates, no stale files
    assert tree_hashes(batch["input"]) == batch["before"]


def test_output_inside_input_is_refused(batch, model, capsys):
    inside = batch["input"] / "other" / "enhanced"
    assert enhance(batch["input"], inside, model) == 2
    assert "inside INPUT" in capsys.readouterr().err
    assert not inside.exists()
    assert enhance(batch["input"], batch["input"], model) == 2
    assert tree_hashes(batch["input"]) == batch["before"]


def test_missing_model_is_an_error_before_any_output(batch, tmp_path, capsys):
    output = tmp_path / "never"
    assert enhance(batch["input"], output, tmp_path / "missing.pt") == 2
    assert "missing.pt" in capsys.readouterr().err and not output.exists()


def test_derived_series_from_an_unsigned_12_bit_implicit_vr_source(tmp_path):
    """The common scanner encoding (unsigned, BitsStored 12, intercept -1024, implicit VR) with
    stale and private tags: the output is signed int16 / BitsStored 16 / intercept 0, clipped to
    the source's range, and carries none of the stale tags."""
    from pydicom.uid import ImplicitVRLittleEndian

    from bundle.dicom.derived import write_derived_series

    hu = np.clip(phantom((4, 40, 48), seed=3), -1024, 3071)
    files = write_series(tmp_path / "source", 8, "1.2.826.0.1.3680043.8.498.1003", hu=hu)

    def to_unsigned_12_bit(ds):
        stored = (ds.pixel_array.astype(np.int32) + 1024).astype(np.uint16)
        ds.set_pixel_data(stored, "MONOCHROME2", 12, generate_instance_uid=False)
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.add_new("SmallestImagePixelValue", "US", int(stored.min()))
        ds.add_new("LargestImagePixelValue", "US", int(stored.max()))
        ds.CTDIvol = 3.2
        ds.SeriesDescription = "Abdomen\\portal"  # a backslash: two values
        ds.private_block(0x0029, "VENDOR", create=True).add_new(0x10, "LO", "vendor data")
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    for path in files:
        edit(path, to_unsigned_12_bit)
    source = read_series(tmp_path / "source")
    np.testing.assert_array_equal(source.hu, hu)

    enhanced = source.hu + 3000.0  # overshoots the source's maximum
    enhanced[0, 0, 0] = source.hu.max() - 1
    paths = write_derived_series(enhanced, source, tmp_path / "derived", settings={"steps": 2, "seed": 7},
                                 model_version="model.pt sha256:0123", software_version="ctv2v test", uid_seed="x")
    derived = read_series(tmp_path / "derived")
    assert derived.hu.max() == source.hu.max() and derived.hu[0, 0, 0] == source.hu.max() - 1
    for path in paths:
        ds = pydicom.dcmread(path)
        assert (ds.BitsStored, ds.PixelRepresentation, ds.RescaleIntercept) == (16, 1, 0)
        assert ds.pixel_array.dtype == np.int16
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "CTDIvol"):
            assert keyword not in ds
        assert not any(element.tag.is_private for element in ds)
        assert ds.SeriesDescription == "Abdomen/portal enhanced - NOT FOR DIAGNOSTIC USE"
        assert len(ds.SeriesDescription) <= 64
        assert "seed=7" in ds.DerivationDescription
    # UIDs reproducible from a seed: the same seed gives the same series UID
    again = write_derived_series(enhanced, source, tmp_path / "again", settings={"steps": 2, "seed": 7},
                                 model_version="model.pt sha256:0123", software_version="ctv2v test", uid_seed="x")
    assert pydicom.dcmread(again[0]).SeriesInstanceUID == pydicom.dcmread(paths[0]).SeriesInstanceUID


def test_source_lowpass_sigma_changes_the_output_and_is_recorded(batch, model, tmp_path):
    """``--source-lowpass-sigma``: the user's band replaces the model's, the output changes, the
    marker records it (so a re-run with another band is not taken as done). A negative one:
    tests/test_settings_errors.py."""
    input_dir = tmp_path / "input"
    shutil.copytree(batch["input"] / "nifti", input_dir / "nifti")
    (default_row,) = [r for r in read_summary(batch["output"]) if r["kind"] == "nifti"]
    default_marker = batch["output"] / default_row["output"] / DONE_MARKER
    assert "source_lowpass_sigma" in default_marker.read_text()

    output = tmp_path / "output"
    assert enhance(input_dir, output, model, "--format", "both", "--num-samples", "2",
                   "--source-lowpass-sigma", "1.5") == 0
    (row,) = read_summary(output)
    marker = json.loads((output / row["output"] / DONE_MARKER).read_text())
    assert marker["settings"]["source_lowpass_sigma"] == 1.5
    assert marker["settings"] != json.loads(default_marker.read_text())["settings"]
    ours = nib.load(str(output / row["output"] / "enhanced.nii.gz")).get_fdata()
    default = nib.load(str(batch["output"] / default_row["output"] / "enhanced.nii.gz")).get_fdata()
    assert np.abs(ours - default).max() > 0.5  # HU: the band changed what the output holds

    # the band per tissue level: recorded, and a marker without it is not taken as done
    tissue = tmp_path / "tissue"
    assert enhance(input_dir, tissue, model, "--source-lowpass-levels", "tissue",
                   "--source-lowpass-min-support", "0.5", "--source-lowpass-sigma-z", "1") == 0
    (row,) = read_summary(tissue)
    marker = json.loads((tissue / row["output"] / DONE_MARKER).read_text())
    assert marker["settings"]["source_lowpass_levels"] == list(TISSUE_LEVELS)
    assert marker["settings"]["source_lowpass_min_support"] == 0.5
    assert marker["settings"]["source_lowpass_sigma_z"] == 1.0
    assert "source_lowpass_levels" not in json.loads(default_marker.read_text())["settings"]
