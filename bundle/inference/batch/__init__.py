"""The radiologists' batch tool behind ``ctv2v enhance INPUT OUTPUT``.

INPUT is a folder tree of DICOM files (any names, nested, mixed with other files) and/or NIfTI
files, or a single file. :func:`run_batch`:

1. finds every DICOM series (headers only, :func:`bundle.dicom.discover_series`) and every NIfTI
   file; selects axial ORIGINAL CT series (:func:`bundle.dicom.select_reason`) and skips the
   rest with the reason;
2. for each selected series: reads it with the validating reader (sorted along the slice normal;
   a missing slice, tilt or a corrupt file fails the series), enhances it with the ONE loaded
   :class:`~bundle.inference.CTEnhancer`, and writes it to its own folder of OUTPUT;
3. keeps ``OUTPUT/summary.csv`` up to date (rewritten atomically after every series).

Output layout (every name sanitised from untrusted DICOM text, ending in a hash of the UID, so it
cannot escape OUTPUT and two series never share a folder)::

    OUTPUT/summary.csv
    OUTPUT/<study description>_<study uid hash>/<series number>_<series description>_<series uid hash>/
        IM_0001.dcm ...          derived CT series (--format dicom|both), one file per source slice
        enhanced.nii.gz          int16 HU with the source geometry (--format nifti|both)
        uncertainty.nii.gz       float32 HU, std over samples (--num-samples > 1)
        ctv2v-done.json          completion marker: settings, model, timing (written last)
    OUTPUT/nifti/<file stem>_<path hash>/enhanced.nii.gz ...   for NIfTI inputs (NIfTI only)

A series is written into ``<folder>.partial`` and renamed into place after its marker is written,
so a crash leaves no half series under a final name; a re-run removes stale ``.partial`` folders
and skips series whose folder holds a marker. Nothing is written inside INPUT, ever.

Privacy: logs and the summary carry no patient name, ID or birth date. The summary identifies
series by a hash of their UIDs (UIDs are not names, but they link a row back to a patient in a
PACS; the hash still matches the folder name), series number and description. Messages of the
reader are stripped of folder paths (export folders are often named after the patient).
"""

from bundle.inference.batch.outputs import (
    DONE_MARKER,
    SUMMARY_COLUMNS,
    SUMMARY_NAME,
    BatchResult,
    SeriesRow,
)
from bundle.inference.batch.run import (
    BatchError,
    check_output_location,
    load_enhancer,
    model_version_of,
    run_batch,
)

__all__ = [
    "DONE_MARKER",
    "SUMMARY_COLUMNS",
    "SUMMARY_NAME",
    "BatchError",
    "BatchResult",
    "SeriesRow",
    "check_output_location",
    "load_enhancer",
    "model_version_of",
    "run_batch",
]
