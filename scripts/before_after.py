"""Before/after picture of the batch tool's first enhanced DICOM series (the README demo's end).

    python scripts/before_after.py INPUT_DIR OUTPUT_DIR PICTURE.png

Reads OUTPUT_DIR/summary.csv, takes the first enhanced series, finds its source series in
INPUT_DIR by the series UID hash the summary records, and draws the middle slice of both, and
their difference, in a soft-tissue window.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bundle.dicom import discover_series, read_series  # noqa: E402
from bundle.utils.names import uid_hash  # noqa: E402
from bundle.utils.io import atomic_path  # noqa: E402

WINDOW = (-160, 240)


def main(input_dir: str, output_dir: str, picture: str) -> int:
    with open(Path(output_dir) / "summary.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "enhanced" and r["kind"] == "dicom"]
    if not rows:
        print(f"no enhanced DICOM series in {output_dir}/summary.csv", file=sys.stderr)
        return 1
    row = rows[0]
    series, _ = discover_series(input_dir)
    source = next(s for s in series if uid_hash(s.series_uid) == row["series_uid_hash"])
    before = read_series(source.files).hu
    after = read_series(Path(output_dir) / row["output"]).hu
    k = before.shape[0] // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    panels = [(before[k], "low-dose input"), (after[k], "enhanced"), (after[k] - before[k], "enhanced - input")]
    for ax, (image, title) in zip(axes, panels):
        if title.startswith("enhanced -"):
            ax.imshow(image, cmap="coolwarm", vmin=-100, vmax=100)
        else:
            ax.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"slice {k + 1}/{before.shape[0]}, window [{WINDOW[0]}, {WINDOW[1]}] HU - not for diagnostic use")
    fig.tight_layout()
    with atomic_path(picture) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    print(f"before/after picture: {picture}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
