"""Where a path lies: containment after resolving links, so that no output lands inside an input."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["is_within"]


def is_within(path: str | os.PathLike, root: str | os.PathLike | None) -> bool:
    """Whether ``path`` is ``root`` or lies below it, both resolved (symbolic links, ``..``).
    ``root=None`` contains nothing."""
    if root is None:
        return False
    path, root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return path == root or root in path.parents
