"""CTSeriesReader: a DICOM folder loads in MONAI exactly like its NIfTI twin."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from dicom_testdata import rotation_x, rotation_z
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from bundle.dicom import CTSeriesReader, DicomSeriesError, read_series
from bundle.utils.io import atomic_path


@pytest.fixture
def dicom_and_nifti(make_series, tmp_path):
    # oblique and with a flipped column axis, so any axis or sign slip shows in the affine
    series = make_series(direction=rotation_x(3.0) @ rotation_z(160.0) @ np.diag([1.0, -1.0, -1.0]))
    volume = read_series(series.folder)
    nifti = tmp_path / "same.nii.gz"
    with atomic_path(nifti) as tmp:
        nib.save(nib.Nifti1Image(volume.hu_ijk, volume.affine_ras), tmp)
    return series, volume, nifti


def load(reader, path):
    return LoadImaged(keys="image", reader=reader, image_only=True)({"image": str(path)})["image"]


def test_loadimaged_matches_nibabel_on_the_nifti_twin(dicom_and_nifti):
    series, volume, nifti = dicom_and_nifti
    from_dicom = load(CTSeriesReader(), series.folder)
    from_nifti = load("NibabelReader", nifti)

    assert from_dicom.shape == (40, 32, 6)  # (i, j, k) = (columns, rows, slices)
    np.testing.assert_array_equal(from_dicom.numpy(), volume.hu.transpose(2, 1, 0))
    np.testing.assert_array_equal(from_dicom.numpy(), from_nifti.numpy())
    # NIfTI stores the affine in float32: compare to that precision
    np.testing.assert_allclose(from_dicom.affine.numpy(), from_nifti.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(from_dicom.affine.numpy(), volume.affine_ras, atol=1e-10)
    assert from_dicom.meta["space"] == from_nifti.meta["space"] == "RAS"
    assert from_dicom.meta["filename_or_obj"] == str(series.folder)


def test_orientation_transforms_treat_both_alike(dicom_and_nifti):
    series, _, nifti = dicom_and_nifti
    chain = Compose(
        [
            LoadImaged(keys="image", reader=[CTSeriesReader(), "NibabelReader"], image_only=True),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
        ]
    )
    from_dicom = chain({"image": str(series.folder)})["image"]
    from_nifti = chain({"image": str(nifti)})["image"]
    assert from_dicom.shape == from_nifti.shape and from_dicom.shape[0] == 1
    np.testing.assert_array_equal(from_dicom.numpy(), from_nifti.numpy())
    np.testing.assert_allclose(from_dicom.affine.numpy(), from_nifti.affine.numpy(), atol=1e-4)


def test_a_bad_folder_is_an_error_not_a_fallback_to_other_readers(make_series):
    series = make_series()
    series.files[2].unlink()  # MONAI's PydicomReader would stack the rest with an averaged spacing
    with pytest.raises(DicomSeriesError, match="missing slice"):
        load(CTSeriesReader(), series.folder)
    with pytest.raises(DicomSeriesError, match="missing slice"):
        load([CTSeriesReader(), "NibabelReader"], series.folder)


def test_verify_suffix_and_dotted_name(dicom_and_nifti):
    series, volume, nifti = dicom_and_nifti
    reader = CTSeriesReader()
    assert reader.verify_suffix(str(series.folder)) and reader.verify_suffix([series.folder, series.folder])
    assert not reader.verify_suffix(str(nifti)) and not reader.verify_suffix(str(series.files[0]))
    with pytest.raises(ValueError):
        reader.read(str(nifti))
    image = load("bundle.dicom.CTSeriesReader", series.folder)  # how a YAML config can name it
    np.testing.assert_array_equal(image.numpy(), volume.hu_ijk)
    # a NIfTI given to this reader alone falls through to MONAI's default NibabelReader
    np.testing.assert_array_equal(load(reader, nifti).numpy(), volume.hu_ijk)
    # several folders stack as channels, like several NIfTI files
    channels = LoadImaged(keys="image", reader=reader, image_only=True)({"image": [str(series.folder)] * 2})["image"]
    assert channels.shape == (2, *volume.hu_ijk.shape)
