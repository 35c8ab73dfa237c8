"""Plain Python values for configs, model files and JSON."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["plain"]


def plain(value: Any) -> Any:
    """``value`` as plain Python: dicts with string keys, lists for tuples, Python numbers for
    numpy/torch scalars and arrays, None for NaN (JSON has no NaN), ``str`` for anything else
    (paths, devices). Config files give lists where code gives tuples: compare ``plain`` forms."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "tolist"):  # numpy and torch, scalars and arrays
        return plain(value.tolist())
    return str(value)
