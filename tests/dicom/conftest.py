"""Fixtures of the DICOM tests; the helpers live in ``dicom_testdata`` (importable by name)."""

from dicom_testdata import make_series  # noqa: F401  (fixture)
