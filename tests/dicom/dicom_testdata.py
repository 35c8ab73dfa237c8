"""Small synthetic CT series for the DICOM tests, written with our own writer.

Imported by name from the test modules (a unique module name: several test folders have a conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bundle.dicom import write_ct_series

# Rows != columns and row spacing != column spacing, so a swapped axis cannot pass unnoticed.
SHAPE = (6, 32, 40)
SPACING = (2.5, 0.7, 0.8)  # (slice_mm, row_mm, col_mm)
ORIGIN = (-100.0, -120.0, 30.0)


def rotation_z(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def rotation_x(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])


@dataclass
class Series:
    hu: np.ndarray
    folder: Path
    files: list[Path]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @property
    def uid(self) -> str:
        return str(pydicom.dcmread(self.files[0], stop_before_pixels=True).SeriesInstanceUID)


def integer_hu(shape=SHAPE, seed: int = 0, low: int = -1024, high: int = 3071) -> np.ndarray:
    """Random integer HU with a distinct value per slice mean, so slice order errors show."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(low, high, size=shape).astype(np.float32)
    hu[:, 0, 0] = np.arange(shape[0]) * 10  # slice k carries 10*k in its first voxel
    return hu


@pytest.fixture
def make_series(tmp_path):
    """``make_series(folder_name, **writer_kwargs) -> Series`` writing into ``tmp_path/folder_name``."""

    def make(folder: str = "series", *, hu=None, spacing=SPACING, origin=ORIGIN, direction=None, **kwargs) -> Series:
        hu = integer_hu() if hu is None else hu
        direction = np.eye(3) if direction is None else np.asarray(direction, float)
        kwargs.setdefault("series_description", "test series")
        kwargs.setdefault("slice_thickness", spacing[0])  # contiguous slices, as most CT series
        out = tmp_path / folder
        files = write_ct_series(hu, out, spacing=spacing, origin=origin, direction=direction, **kwargs)
        return Series(hu, out, files, spacing, origin, direction)

    return make


def edit_file(path: Path, change) -> None:
    """Read a DICOM file, apply ``change(ds)``, write it back in place."""
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)
