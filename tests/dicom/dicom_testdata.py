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


def encode_jpeg_lossless(image: np.ndarray) -> bytes:
    """One frame as JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1).

    pydicom has no encoder for this transfer syntax and the pylibjpeg plugins only decode, so the
    test corpus makes its own: 16-bit precision, predictor 1 (the left neighbour; the one above at
    the start of a row), one Huffman table giving every difference category a 5-bit code.
    ``image`` is 2D, any 16-bit integer type (signed values are stored as their bit pattern).
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype.itemsize != 2:
        raise ValueError(f"need a 2D 16-bit image, got {image.dtype} {image.shape}")
    rows, cols = image.shape
    x = image.view(np.uint16).astype(np.int64)
    predicted = np.empty_like(x)
    predicted[0, 0] = 1 << 15
    predicted[0, 1:] = x[0, :-1]
    predicted[1:, 0] = x[:-1, 0]
    predicted[1:, 1:] = x[1:, :-1]
    diff = (x - predicted) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)  # -32768 stands for +32768: category 16

    bits: list[str] = []
    for d in diff.ravel().tolist():
        category = 16 if d == -32768 else abs(d).bit_length()
        bits.append(format(category, "05b"))  # code of category c: c in 5 bits (17 codes, none all ones)
        if 0 < category < 16:
            extra = d if d > 0 else d - 1
            bits.append(format(extra & ((1 << category) - 1), f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad the last byte with ones
    entropy = bytearray()
    for n in range(0, len(stream), 8):
        byte = int(stream[n : n + 8], 2)
        entropy.append(byte)
        if byte == 0xFF:
            entropy.append(0x00)  # byte stuffing

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof3 = bytes([16]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, predictor 1, Se 0, Ah/Al 0
    return (b"\xff\xd8" + segment(0xC3, sof3) + segment(0xC4, dht) + segment(0xDA, sos) + bytes(entropy)
            + b"\xff\xd9")
