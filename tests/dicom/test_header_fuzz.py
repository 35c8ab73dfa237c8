"""Property test: random tag values and truncated files never crash header reading, series
grouping, selection, batch planning or the validating reader.

Each example writes one to three files of one small CT slice into a fresh folder, with some tags
replaced by random values (text with NUL, non-ASCII and 300 characters, numbers including NaN,
inf and huge ones, raw bytes of the wrong length), some tags removed, and some files cut short.
Allowed outcomes: a series with a skip reason or none, a reported file problem, a planned row with
a status, or :class:`DicomSeriesError` from the reader. Anything else escaping is a crash.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

hypothesis = pytest.importorskip("hypothesis")  # in the [test] extra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle.dicom import DicomSeriesError, discover_series, read_series, select_reason
from bundle.dicom.derived import padding_hu
from bundle.dicom.writer import write_ct_series
from bundle.inference.batch.plan import plan_batch

SERIES_UID = "1.2.826.0.1.3680043.8.498.3001"


def _template_slices() -> list[bytes]:
    """Three valid slices of one series, as bytes (written once)."""
    with tempfile.TemporaryDirectory() as tmp:
        hu = np.random.default_rng(0).integers(-1024, 1000, (3, 8, 10)).astype(np.float32)
        paths = write_ct_series(hu, tmp, spacing=(2.0, 0.5, 0.5), origin=(0, 0, 0), direction=np.eye(3),
                                series_description="fuzz", series_uid=SERIES_UID, uid_seed="fuzz")
        return [Path(p).read_bytes() for p in paths]


TEMPLATE = _template_slices()

# tags that discovery, selection and the reader look at, and a few the writer copies
KEYWORDS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "ImageType",
    "SeriesDescription", "SeriesNumber", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "SliceThickness", "SpacingBetweenSlices", "StudyDescription", "PatientName", "SpecificCharacterSet",
]

texts = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=250, max_size=320),
    st.sampled_from(["", "\x00", "../../x", "/etc/passwd", "a\\b\\c", "NaN", "inf", "-inf", "1e400", "-0",
                     "1\\0\\0\\0\\1\\0", "0\\0\\0\\0\\0\\0", "nan\\0\\0\\0\\1\\0", "CT", "ORIGINAL\\PRIMARY\\AXIAL",
                     "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "Ünïcødé 患者", " 12 ", "1" * 40]),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
)
raw_bytes = st.binary(max_size=24)
# how a tag is changed: removed, set to text, to a number as text, or to raw bytes of any length
changes = st.one_of(
    st.just(("remove", None)),
    st.tuples(st.just("text"), texts),
    st.tuples(st.just("text"), numbers.map(str)),
    st.tuples(st.just("raw"), raw_bytes),
    st.tuples(st.just("raw"), texts.map(lambda t: t.encode("utf-8", "surrogatepass"))),
)
file_specs = st.tuples(
    st.integers(min_value=0, max_value=len(TEMPLATE) - 1),  # which template slice
    st.dictionaries(st.sampled_from(KEYWORDS), changes, max_size=4),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),  # truncate to this fraction
    st.one_of(st.none(), st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70",
                                          "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.100", "1.2.3", "x"])),
)


def _put_raw(ds: pydicom.Dataset, tag: int, data: bytes) -> None:
    """Store ``data`` as the element's bytes, unparsed: written as VR UN, read back with the
    dictionary VR (pydicom converts known tags), so the reader parses whatever the bytes say."""
    data = data + b"\0" * (len(data) % 2)
    ds._dict[pydicom.tag.Tag(tag)] = pydicom.dataelem.RawDataElement(
        pydicom.tag.Tag(tag), "UN", len(data), data, 0, False, True)


def _mutated(spec) -> bytes:
    index, changes_, truncate, syntax = spec
    ds = pydicom.dcmread(io.BytesIO(TEMPLATE[index]))
    for keyword, (how, value) in changes_.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        if how == "remove":
            if keyword in ds:
                del ds[keyword]
        elif how == "raw":
            _put_raw(ds, tag, value)
        else:
            try:  # the text as a value of the tag's own VR, where pydicom accepts it ...
                ds[tag] = pydicom.DataElement(tag, pydicom.datadict.dictionary_VR(tag), value)
            except Exception:  # noqa: BLE001 - ... else as its bytes
                _put_raw(ds, tag, value.encode("utf-8", "surrogatepass"))
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - pydicom refuses to write it: keep the template instead
        buffer = io.BytesIO(TEMPLATE[index])
    data = buffer.getvalue()
    if truncate is not None:
        data = data[: int(len(data) * truncate)]
    return data


@settings(max_examples=200, deadline=None, database=None,  # no .hypothesis folder in the checkout
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(file_specs, min_size=1, max_size=3))
def test_random_headers_and_truncations_never_crash(specs):
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about invalid values: expected here
        folder = Path(tmp) / "input"
        folder.mkdir()
        for n, spec in enumerate(specs):
            (folder / f"f{n}").write_bytes(_mutated(spec))

        series, problems = discover_series(folder)
        assert len(series) + len(problems) >= 1
        for info in series:
            reason = select_reason(info)
            assert reason is None or (isinstance(reason, str) and reason)
            info.summary()
            try:
                volume = read_series(info.files)
            except DicomSeriesError as exc:
                assert str(exc)
            else:
                assert volume.hu.dtype == np.float32 and np.isfinite(volume.hu).all()
                assert volume.hu.min() >= -32768 and volume.hu.max() <= 32767
                padding_hu(volume.reference)

        jobs, redact = plan_batch(folder)
        for job in jobs:
            assert job.row.status in ("pending", "skipped", "failed")
            assert job.row.status == "pending" or job.row.reason
            assert tmp not in redact(f"{job.row.reason} {job.row.description}")
