"""Discovery, selection and validated reading of DICOM CT series."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_testdata import SPACING, edit_file, integer_hu, rotation_x, rotation_z
from pydicom.fileset import FileSet
from pydicom.uid import MRImageStorage

from bundle.dicom import DicomSeriesError, discover_series, read_series, select_reason


def sitk_read(folder, series_uid=None):
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder), series_uid or "")
    reader.SetFileNames(names)
    return reader.Execute()


GEOMETRIES = {
    "identity": np.eye(3),
    "rotated-in-plane": rotation_z(30.0),
    "oblique-3deg": rotation_x(3.0) @ rotation_z(-20.0),
    # slices written from head to feet: k runs against the in-plane normal (row x column cosine)
    "descending": np.diag([1.0, 1.0, -1.0]),
    # i along -x, k along -z: right-handed again, so written along the normal
    "flipped-right-handed": np.diag([-1.0, 1.0, -1.0]),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometry_matches_simpleitk(make_series, name):
    series = make_series(direction=GEOMETRIES[name])
    volume = read_series(series.folder)
    image = sitk_read(series.folder)

    assert volume.hu.dtype == np.float32 and volume.hu.shape == series.hu.shape
    np.testing.assert_array_equal(volume.hu, sitk.GetArrayFromImage(image).astype(np.float32))
    np.testing.assert_allclose(volume.spacing[::-1], image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(volume.origin, image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(volume.direction.ravel(), image.GetDirection(), atol=1e-6)
    # k always runs along +normal (right-handed), and the helper image agrees with SimpleITK
    assert np.linalg.det(volume.direction) == pytest.approx(1.0)
    ours = volume.to_sitk()
    np.testing.assert_allclose(ours.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(ours.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(ours.GetSpacing(), image.GetSpacing(), atol=1e-6)

    # positions written against the in-plane normal (left-handed direction given to the writer)
    descending = np.linalg.det(series.direction) < 0
    if not descending:  # written ascending: an exact copy
        np.testing.assert_array_equal(volume.hu, series.hu)
        np.testing.assert_allclose(volume.origin, series.origin, atol=1e-5)
        np.testing.assert_allclose(volume.direction, series.direction, atol=1e-6)
    else:  # written descending: the reader starts from the last written slice
        np.testing.assert_array_equal(volume.hu, series.hu[::-1])
    assert volume.spacing == pytest.approx(SPACING)
    written_order = [p.name for p in series.files]
    assert [p.name for p in volume.slice_files] == (written_order[::-1] if descending else written_order)
    assert volume.slice_sop_uids == [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in volume.slice_files]
    assert "PixelData" not in volume.reference and volume.reference.PatientName == "Demo^Phantom"


def test_affine_maps_every_voxel_to_its_dicom_position(make_series):
    series = make_series(direction=rotation_x(3.0) @ rotation_z(25.0))
    volume = read_series(series.folder)
    for k, path in enumerate(volume.slice_files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        # voxel (i=0, j=0, k) is the slice's ImagePositionPatient; one column step is
        # PixelSpacing[1] along the row cosine, one row step PixelSpacing[0] along the column cosine
        ipp = np.array(ds.ImagePositionPatient, float)
        row_cos, col_cos = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        i, j = 7, 5
        expected_lps = ipp + i * float(ds.PixelSpacing[1]) * row_cos + j * float(ds.PixelSpacing[0]) * col_cos
        np.testing.assert_allclose((volume.affine_lps @ [i, j, k, 1])[:3], expected_lps, atol=1e-5)
        np.testing.assert_allclose((volume.affine_ras @ [i, j, k, 1])[:3], expected_lps * [-1, -1, 1], atol=1e-5)
    np.testing.assert_array_equal(volume.hu_ijk[3, 2, 1], volume.hu[1, 2, 3])


def test_shuffled_names_and_instance_numbers_keep_slice_order(make_series):
    series = make_series()
    rng = random.Random(4)
    numbers = list(range(1, len(series.files) + 1))
    rng.shuffle(numbers)
    (series.folder / "deeper" / "still").mkdir(parents=True)
    for path, number in zip(series.files, numbers):
        edit_file(path, lambda ds, n=number: setattr(ds, "InstanceNumber", n))
        target = series.folder / ("deeper/still" if number % 2 else "") / f"{rng.getrandbits(48):012x}"
        path.rename(target)  # no extension, random name, nested

    volume = read_series(series.folder)
    np.testing.assert_array_equal(volume.hu, series.hu)
    np.testing.assert_allclose(volume.origin, series.origin, atol=1e-5)
    assert volume.hu[:, 0, 0].tolist() == [10.0 * k for k in range(len(series.files))]


def test_two_series_in_one_folder(make_series):
    study = {"study_uid": "1.2.3.4.5", "frame_of_reference_uid": "1.2.3.4.6"}
    first = make_series("mixed", series_number=2, series_description="soft tissue", **study)
    second = make_series("mixed", hu=integer_hu(seed=1), series_number=3, series_description="bone", **study)
    series, problems = discover_series(first.folder)
    assert problems == []
    assert [(s.series_uid, len(s.files)) for s in series] == [(first.uid, 6), (second.uid, 6)]
    assert {s.series_description for s in series} == {"soft tissue", "bone"}

    with pytest.raises(DicomSeriesError) as error:
        read_series(first.folder)
    message = str(error.value)
    assert "2 series" in message and first.uid in message and second.uid in message and str(first.folder) in message

    volume = read_series(first.folder, series_uid=second.uid)
    np.testing.assert_array_equal(volume.hu, second.hu)
    assert volume.series_uid == second.uid
    # the discovered file list is an equally good input
    np.testing.assert_array_equal(read_series(series[0].files).hu, first.hu)


def test_missing_slice_is_an_error_naming_the_gap(make_series):
    series = make_series()
    series.files[3].unlink()
    with pytest.raises(DicomSeriesError, match="missing slice") as error:
        read_series(series.folder)
    message = str(error.value)
    assert "gap of 5.000 mm" in message and "nominal 2.500 mm" in message
    assert "35.000" in message and "40.000" in message  # positions along the normal either side
    assert str(series.folder) in message


def test_gantry_tilt_is_an_error(make_series):
    series = make_series()
    shift_per_slice = SPACING[0] * np.tan(np.radians(15.0))
    for k, path in enumerate(series.files):

        def tilt(ds, k=k):
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y + k * shift_per_slice, z]

        edit_file(path, tilt)
    with pytest.raises(DicomSeriesError, match="tilt") as error:
        read_series(series.folder)
    assert "15.00 degrees" in str(error.value)


def test_duplicate_position_and_irregular_spacing_are_errors(make_series):
    series = make_series("dup")
    edit_file(series.files[4], lambda ds: setattr(ds, "ImagePositionPatient", list(pydicom.dcmread(series.files[3]).ImagePositionPatient)))
    with pytest.raises(DicomSeriesError, match="duplicate slice position"):
        read_series(series.folder)

    series = make_series("irregular")
    edit_file(series.files[2], lambda ds: setattr(ds, "ImagePositionPatient", [-100.0, -120.0, 36.0]))
    with pytest.raises(DicomSeriesError, match="irregular slice spacing"):
        read_series(series.folder)


def test_corrupt_text_and_dicomdir_files_are_reported_not_fatal(make_series, tmp_path):
    series = make_series("source")
    # a media export: DICOMDIR plus PT000000/ST000000/SE000000/IM00000n, names without extension
    file_set = FileSet()
    for path in series.files:
        file_set.add(path)
    tree = tmp_path / "export"
    file_set.write(tree)
    (tree / "README").write_text("exported by a PACS\n")
    (tree / "PT000000" / "notes.txt").write_text("not dicom")
    blob = series.files[0].read_bytes()
    (tree / "PT000000" / "broken").write_bytes(blob[: len(blob) - 100])  # truncated pixel data
    (tree / "PT000000" / "garbage").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    shutil.copy(series.files[1], tree / "PT000000" / "copy-of-slice-2")

    found, problems = discover_series(tree)
    assert len(found) == 1 and len(found[0].files) == 6 and select_reason(found[0]) is None
    kinds = {p.path.name: p.kind for p in problems}
    # the walk meets PT000000/copy-of-slice-2 before the exported original of that slice
    duplicate = next(p.path.name for p in problems if p.kind == "duplicate")
    assert duplicate.startswith("IM")
    assert kinds == {
        "README": "not-dicom",
        "notes.txt": "not-dicom",
        "broken": "unreadable",
        "garbage": "unreadable",
        "DICOMDIR": "not-an-image",
        duplicate: "duplicate",
    }
    # the selected files read fine; the folder itself is refused while a corrupt DICOM sits in it
    np.testing.assert_array_equal(read_series(found[0].files).hu, series.hu)
    with pytest.raises(DicomSeriesError, match="broken"):
        read_series(tree)


def test_unsigned_12_bit_with_intercept_reads_hu(make_series):
    hu = integer_hu(low=-1024, high=3071)
    hu[0, 1, :4] = [-1024, 3071, 0, -1]  # both ends of the 12-bit range
    series = make_series(hu=hu)
    for path in series.files:

        def to_unsigned_12_bit(ds):
            stored = (ds.pixel_array.astype(np.int32) + 1024).astype(np.uint16)
            ds.set_pixel_data(stored, "MONOCHROME2", 12, generate_instance_uid=False)
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"

        edit_file(path, to_unsigned_12_bit)
    ds = pydicom.dcmread(series.files[0])
    assert (ds.PixelRepresentation, ds.BitsStored, ds.pixel_array.dtype) == (0, 12, np.uint16)
    volume = read_series(series.folder)
    assert volume.hu.dtype == np.float32
    np.testing.assert_array_equal(volume.hu, hu)


def test_select_reason(make_series):
    def info(folder):
        (found,), _ = discover_series(folder)
        return found

    assert select_reason(info(make_series("ok").folder)) is None
    assert select_reason(info(make_series("scout", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")).folder)) == "localizer"
    assert select_reason(info(make_series("derived", image_type=("DERIVED", "SECONDARY", "AXIAL")).folder)) == "derived image"
    coronal = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # i: x, j: -z, k: +y
    assert select_reason(info(make_series("coronal", direction=coronal).folder)).startswith("not axial")
    assert select_reason(info(make_series("slightly-oblique", direction=rotation_x(3.0)).folder)) is None

    mr = make_series("mr")
    for path in mr.files:
        edit_file(path, lambda ds: setattr(ds, "Modality", "MR"))
    assert select_reason(info(mr.folder)) == "modality MR, not CT"

    mixed = make_series("mixed")
    edit_file(mixed.files[2], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]))
    edit_file(mixed.files[3], lambda ds: setattr(ds, "SOPClassUID", MRImageStorage))
    assert select_reason(info(mixed.folder)) == "inconsistent ImageOrientationPatient, SOPClassUID across files"


def test_single_slice_and_errors_for_bad_inputs(make_series, tmp_path):
    single = make_series("single", hu=integer_hu(shape=(1, 32, 40)))
    volume = read_series(single.folder)
    assert volume.hu.shape == (1, 32, 40) and volume.spacing == pytest.approx(SPACING)

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DicomSeriesError, match="no DICOM image series"):
        read_series(tmp_path / "empty")
    with pytest.raises(DicomSeriesError, match="a.txt"):
        read_series([tmp_path / "empty" / "a.txt"])
    with pytest.raises(DicomSeriesError, match="no series 1.2.3"):
        read_series(single.folder, series_uid="1.2.3")
