"""Several ``ctv2v benchmark`` JSON files as one (the stages of scripts/gpu_benchmark.sh).

Light on purpose (json and an atomic write; no torch, no MONAI): the script calls it after its
stages with ``python -c``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bundle.utils.io import atomic_write_json

__all__ = ["merge_results"]


def merge_results(parts: Sequence[str | Path], json_path: str | Path) -> dict:
    """Several runs' JSON files (e.g. the stages of scripts/gpu_benchmark.sh) as one: rows, ratios
    and notes concatenated, each run's arguments kept; a missing or unreadable part is a note."""
    merged = {"machine": None, "runs": [], "parameters": {}, "rows": [], "ratios": [], "notes": [], "complete": True}
    for part in parts:
        try:
            data = json.loads(Path(part).read_text())
        except (OSError, ValueError) as error:
            merged["notes"].append(f"{Path(part).name}: not read ({type(error).__name__}: {error})")
            merged["complete"] = False
            continue
        merged["machine"] = merged["machine"] or data.get("machine")
        merged["runs"].append({"part": Path(part).stem, "arguments": data.get("arguments"),
                               "machine": data.get("machine"), "complete": data.get("complete", False)})
        merged["parameters"].update(data.get("parameters", {}))
        for key in ("rows", "ratios", "notes"):
            merged[key] += data.get(key, [])
        if not data.get("complete", False):
            merged["notes"].append(f"{Path(part).stem}: incomplete (stopped by its timeout or an error)")
            merged["complete"] = False
    atomic_write_json(json_path, merged)
    return merged
