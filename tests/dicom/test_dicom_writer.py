"""The CT series writer: valid files, exact integer HU round trip, reusable per-slice pieces."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_testdata import ORIGIN, SHAPE, SPACING, integer_hu, rotation_z
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from bundle.dicom import read_series, write_ct_series
from bundle.dicom.writer import geometry_for_slice, set_hu_pixels


def test_files_are_valid_ct_image_storage(make_series):
    series = make_series(direction=rotation_z(10.0), series_number=7, series_description="demo")
    assert [p.name for p in series.files] == [f"CT7_{n:04d}.dcm" for n in range(1, SHAPE[0] + 1)]
    assert not [p for p in series.folder.iterdir() if p.name.startswith(".")]  # no temporary left
    datasets = [pydicom.dcmread(p) for p in series.files]
    for k, ds in enumerate(datasets):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.preamble is not None and ds.Modality == "CT" and ds.InstanceNumber == k + 1
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (32, 40, 16, 16, 1)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
        assert [float(v) for v in ds.PixelSpacing] == [SPACING[1], SPACING[2]]
        expected_position = np.asarray(ORIGIN) + k * SPACING[0] * series.direction[:, 2]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected_position, atol=1e-6)
        assert float(ds.SliceLocation) == pytest.approx(expected_position[2])
        assert ds.pixel_array.dtype == np.int16
        np.testing.assert_array_equal(ds.pixel_array, series.hu[k])
        assert str(ds.PatientName) == "Demo^Phantom" and ds.SeriesNumber == 7 and ds.SeriesDescription == "demo"
    for keyword in ("SOPInstanceUID",):
        assert len({getattr(ds, keyword) for ds in datasets}) == len(datasets)
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert len({getattr(ds, keyword) for ds in datasets}) == 1


def test_integer_hu_round_trips_and_out_of_range_values_clip(make_series):
    hu = integer_hu()
    hu[0, 3, :4] = [-32768, 32767, -1024, 0]
    exact = make_series("exact", hu=hu)
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in exact.files])
    np.testing.assert_array_equal(stored, hu)
    # our reader gives the same HU, except that a fill below -1500 HU (outside the field of view) is air
    volume = read_series(exact.folder)
    np.testing.assert_array_equal(volume.hu, np.where(hu < -1500, -1000, hu))
    assert volume.padding is not None and volume.padding.sum() == 1 and volume.padding[0, 3, 0]

    wild = hu.copy()
    wild[1, 4, :3] = [40000.0, -40000.0, 12.6]
    clipped = make_series("clipped", hu=wild)
    assert pydicom.dcmread(clipped.files[1]).pixel_array[4, :3].tolist() == [32767, -32768, 13]


def test_patient_study_and_seeded_uids(make_series):
    patient = {"PatientName": "Test^Case", "PatientID": "X1", "StudyInstanceUID": "1.2.3.4"}
    first = make_series("a", patient=patient, uid_seed="run-1", frame_of_reference_uid="1.2.3.5")
    again = make_series("b", patient=patient, uid_seed="run-1", frame_of_reference_uid="1.2.3.5")
    ds, ds_again = pydicom.dcmread(first.files[2]), pydicom.dcmread(again.files[2])
    assert (str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (
        "Test^Case",
        "X1",
        "1.2.3.4",
        "1.2.3.5",
    )
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (ds_again.SeriesInstanceUID, ds_again.SOPInstanceUID)
    other = pydicom.dcmread(make_series("c", uid_seed="run-2").files[2])
    assert other.SOPInstanceUID != ds.SOPInstanceUID
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        make_series("d", patient={"Name": "x"})


def test_rejects_bad_geometry(tmp_path):
    hu = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="orthonormal"):
        write_ct_series(hu, tmp_path, spacing=SPACING, origin=ORIGIN, direction=np.diag([1, 1, 2]), series_description="x")
    sheared = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sheared[:, 2] = [0.0, np.sin(0.2), np.cos(0.2)]
    with pytest.raises(ValueError, match="no tilt"):
        write_ct_series(hu, tmp_path, spacing=SPACING, origin=ORIGIN, direction=sheared, series_description="x")
    with pytest.raises(ValueError, match="spacing"):
        write_ct_series(hu, tmp_path, spacing=(0, 1, 1), origin=ORIGIN, direction=np.eye(3), series_description="x")


def test_pieces_for_a_derived_writer(make_series):
    """A copied source header: new pixels keep the SOP UID and drop stale pixel-value tags."""
    series = make_series()
    ds = pydicom.dcmread(series.files[0])
    ds.BitsStored, ds.HighBit, ds.SmallestImagePixelValue, ds.LargestImagePixelValue = 12, 11, 0, 4095
    sop = ds.SOPInstanceUID
    set_hu_pixels(ds, np.full((32, 40), 5000.4))
    assert ds.SOPInstanceUID == sop and ds.BitsStored == 16 and "LargestImagePixelValue" not in ds
    assert int(ds.pixel_array.max()) == 5000

    geometry = geometry_for_slice(3, spacing=SPACING, origin=ORIGIN, direction=np.eye(3))
    assert [float(v) for v in geometry["ImagePositionPatient"]] == [ORIGIN[0], ORIGIN[1], ORIGIN[2] + 3 * SPACING[0]]
    assert [float(v) for v in geometry["ImageOrientationPatient"]] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in geometry["PixelSpacing"]] == [SPACING[1], SPACING[2]]


def test_slice_thickness_is_written_as_given_not_as_the_spacing(tmp_path):
    """An overlapping reconstruction (2.5 mm slices every 1.25 mm) keeps its thickness; without
    one the attribute is empty (unknown), never the slice spacing."""
    hu = np.zeros((3, 16, 16), np.float32)
    spacing = (1.25, 0.7, 0.7)
    write_ct_series(hu, tmp_path / "given", spacing=spacing, origin=ORIGIN, direction=np.eye(3),
                    series_description="x", slice_thickness=2.5)
    volume = read_series(tmp_path / "given")
    assert volume.slice_thickness == 2.5 and volume.spacing[0] == pytest.approx(1.25)
    write_ct_series(hu, tmp_path / "unknown", spacing=spacing, origin=ORIGIN, direction=np.eye(3),
                    series_description="x")
    assert read_series(tmp_path / "unknown").slice_thickness is None
    assert pydicom.dcmread(sorted((tmp_path / "unknown").glob("*.dcm"))[0]).SliceThickness in ("", None)
