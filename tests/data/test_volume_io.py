"""NIfTI / DICOM loading and NIfTI saving keep voxels and patient geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bundle.data.volume_io import load_ct, save_ct_nifti, save_nifti, volume_from_array


def _volume(shape=(5, 12, 16), seed=0):
    return np.random.default_rng(seed).normal(0, 300, shape).astype(np.float32)


def _rotated_affine():
    """An oblique, flipped grid: columns to patient left-anterior, rows to posterior-left."""
    angle = np.deg2rad(30)
    direction = np.array(
        [[np.cos(angle), np.sin(angle), 0.0], [-np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction @ np.diag([0.8, 0.7, 2.5])
    affine_lps[:3, 3] = (-100.0, 50.0, 20.0)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps, direction


def test_nifti_round_trip_keeps_voxels_and_geometry(tmp_path):
    hu = _volume()
    affine, direction = _rotated_affine()
    path = save_nifti(hu, tmp_path / "ct.nii.gz", affine)
    volume = load_ct(path)
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.hu.dtype == np.float32
    np.testing.assert_allclose(volume.affine_ras, affine, atol=1e-5)
    np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.8), atol=1e-6)
    np.testing.assert_allclose(volume.direction, direction, atol=1e-6)
    np.testing.assert_allclose(volume.origin, (-100.0, 50.0, 20.0), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]  # no temporary left behind


def test_nifti_axes_are_col_row_slice(tmp_path):
    """The file holds hu.transpose(2, 1, 0): NIfTI index (i, j, k) = hu[k, j, i]."""
    hu = _volume((3, 4, 5))
    affine = np.diag([-1.0, -2.0, 3.0, 1.0])
    save_nifti(hu, tmp_path / "ct.nii", affine)
    image = nib.load(str(tmp_path / "ct.nii"))
    data = np.asanyarray(image.dataobj)
    assert data.shape == (5, 4, 3)
    assert data[4, 1, 2] == hu[2, 1, 4]
    np.testing.assert_allclose(image.affine, affine)
    assert int(image.header["sform_code"]) == 1


def test_int16_rounds_and_clips(tmp_path):
    hu = np.array([[[-1024.4, 0.6, 40000.0, -3.5]]], dtype=np.float32)
    save_nifti(hu, tmp_path / "ct.nii.gz", np.eye(4), dtype="int16")
    image = nib.load(str(tmp_path / "ct.nii.gz"))
    assert image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(load_ct(tmp_path / "ct.nii.gz").hu.ravel(), [-1024, 1, 32767, -4])


def test_dicom_series_to_nifti_keeps_patient_geometry(tmp_path):
    import SimpleITK as sitk

    from bundle.dicom import write_ct_series

    hu = np.rint(_volume((4, 10, 14), seed=1))
    _, direction = _rotated_affine()
    write_ct_series(
        hu, tmp_path / "series", spacing=(2.5, 0.7, 0.8), origin=(-100.0, 50.0, 20.0),
        direction=direction, series_description="geometry test", uid_seed="volume-io",
    )
    series = load_ct(tmp_path / "series")
    np.testing.assert_array_equal(series.hu, hu)
    save_ct_nifti(series, tmp_path / "from_dicom.nii.gz")
    nifti = load_ct(tmp_path / "from_dicom.nii.gz")
    np.testing.assert_array_equal(nifti.hu, series.hu)
    np.testing.assert_allclose(nifti.affine_ras, series.affine_ras, atol=1e-4)

    # An independent reader puts voxel (i, j, k) = hu[k, j, i] at the same LPS point.
    image = sitk.ReadImage(str(tmp_path / "from_dicom.nii.gz"))
    i, j, k = 13, 2, 3
    point = image.TransformIndexToPhysicalPoint((i, j, k))
    expected = series.origin + series.direction @ (np.array([i, j, k]) * np.array([0.8, 0.7, 2.5]))
    np.testing.assert_allclose(point, expected, atol=1e-3)
    assert sitk.GetArrayFromImage(image)[k, j, i] == hu[k, j, i]


def test_save_ct_nifti_with_replacement_voxels(tmp_path):
    affine, _ = _rotated_affine()
    volume = volume_from_array(_volume(), affine)
    other = volume.hu + 5
    save_ct_nifti(volume, tmp_path / "other.nii.gz", hu=other)
    loaded = load_ct(tmp_path / "other.nii.gz")
    np.testing.assert_array_equal(loaded.hu, other)
    np.testing.assert_allclose(loaded.affine_ras, volume.affine_ras, atol=1e-5)
    with pytest.raises(ValueError, match="grid"):
        save_ct_nifti(volume, tmp_path / "bad.nii.gz", hu=other[:2])


def test_trailing_singleton_axis_is_dropped(tmp_path):
    data = _volume((6, 5, 4)).transpose(2, 1, 0)[..., None]  # (i, j, k, 1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "four_d.nii.gz"))
    assert load_ct(tmp_path / "four_d.nii.gz").hu.shape == (6, 5, 4)


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load_ct(tmp_path / "missing.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        load_ct(tmp_path / "broken.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt"):
        load_ct(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match=r"\.nii"):
        save_nifti(_volume(), tmp_path / "ct.img", np.eye(4))
