"""Reading model and checkpoint files: only tensors and plain values, one clear error otherwise.

Every file this project reads back with ``torch.load`` goes through :func:`load_weights`, which
always passes ``weights_only=True``: a file whose unpickling would import and call anything
(``os.system``, a class, a function) is refused before any of it runs. Every way a file can be
wrong (missing, a folder, empty, truncated, not a PyTorch file, code inside) is a
:class:`ModelFileError` whose message is one line naming the file and the problem; the loaders
of the formats (``CTEnhancer.from_file``, ``load_redcnn``) add "another format", "another
architecture" and "a newer version" in the same form.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["ModelFileError", "ModelFileNotFoundError", "describe_contents", "load_weights"]

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_ZIP_MAGIC = b"PK\x03\x04"
NOT_PYTORCH = "not a PyTorch file (torch.load cannot read it)"


class ModelFileError(ValueError):
    """A model (or checkpoint) file that cannot be used. ``str()`` is one line:
    ``<what> <path>: <problem>``."""

    def __init__(self, path: str | os.PathLike, problem: str, what: str = "model file") -> None:
        self.path, self.problem, self.what = Path(path), problem, what
        super().__init__(f"{what} {path}: {problem}")

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.what)


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The file does not exist (a ``FileNotFoundError`` too)."""


def _first_line(error: BaseException) -> str:
    """The first sentence of the error's first line (torch's own texts go on with advice)."""
    from bundle.utils.validation import first_error_line

    return first_error_line(error, 160).split(". ", 1)[0].rstrip(".")


def load_weights(path: str | os.PathLike, map_location: Any = "cpu", what: str = "model file") -> Any:
    """``torch.load(path, weights_only=True)`` with every failure a one-line :class:`ModelFileError`.

    A file holding pickled code (anything ``weights_only`` does not allow) is refused and nothing
    in it runs; this function never turns ``weights_only`` off.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise ModelFileNotFoundError(path, "not found", what)
    if path.is_dir():
        raise ModelFileError(path, "is a folder, not a file", what)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as error:
        raise ModelFileError(path, f"cannot be read ({error.strerror or error})", what) from None
    if not head:
        raise ModelFileError(path, "is empty (0 bytes): not a PyTorch file", what)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise before the real error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL.search(str(error))
        if found or (head != _ZIP_MAGIC and _pickles_code(path)):
            inside = f" ({found.group(1)})" if found else ""
            raise ModelFileError(
                path,
                f"refused: it holds pickled Python objects{inside} that would run code when loaded; "
                "a model file holds only tensors and plain values (nothing in it was run)",
                what,
            ) from None
        raise ModelFileError(path, NOT_PYTORCH, what) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, KeyError, ValueError, UnicodeDecodeError,
            AttributeError, IndexError, TypeError, OSError) as error:
        if head == _ZIP_MAGIC:
            raise ModelFileError(
                path, f"truncated or corrupt PyTorch file ({_first_line(error)}); copy or export it again", what
            ) from None
        raise ModelFileError(path, NOT_PYTORCH, what) from None


def _pickles_code(path: Path) -> bool:
    """Whether a plain pickle file imports or calls anything (read with ``pickletools``, which
    only parses: nothing is imported or run)."""
    import pickletools

    try:
        with open(path, "rb") as f:
            for opcode, _, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"):
                    return True
    except (ValueError, EOFError, OSError):  # not a pickle, or a broken one
        return False
    return False


def describe_contents(contents: Any) -> str:
    """What a loaded file holds, for a message saying it is not the expected format."""
    if not isinstance(contents, dict):
        return f"it holds a {type(contents).__name__}"
    extra = contents.get("_extra_state")
    if isinstance(contents.get("format"), str):
        return f"it is a {contents['format']!r} file"
    if isinstance(extra, dict) and isinstance(extra.get("format"), str):
        return f"it is a {extra['format']!r} file"
    keys = [str(k) for k in contents]
    if {"vae", "unet"} & set(keys) or any(k in keys for k in ("optimizer", "trainer", "ema")):
        return f"it looks like a training checkpoint (keys: {', '.join(keys[:6])}), not an exported model"
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} keys)" if len(keys) > 5 else "")
    return f"it holds a dict of {shown or 'nothing'}"
