"""Names for files and folders made from untrusted text (DICOM descriptions, patient ids, UIDs)."""

from __future__ import annotations

import hashlib
import re

__all__ = ["safe_name", "uid_hash"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str, max_length: int = 40) -> str:
    """A file or folder name from untrusted text: ASCII letters, digits, ``._-``; no leading dots;
    at most ``max_length`` characters. Never empty, ``.`` or ``..``, never contains a separator,
    so it cannot leave its parent folder."""
    name = _UNSAFE.sub("_", str(text or "")).strip("._-")[:max_length].strip("._-")
    return name or fallback


def uid_hash(uid: str, length: int = 10) -> str:
    """First ``length`` hex digits of the SHA-256 of a UID (or path): stable, not reversible."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:length]
