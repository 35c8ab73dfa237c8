"""One ``ctv2v enhance`` per OUTPUT folder at a time.

Two batches writing one OUTPUT would race on the same series folders and on ``summary.csv``. The
lock is an advisory ``flock`` on ``OUTPUT/.ctv2v-enhance.lock``: the kernel drops it when its
process ends, however it ends (a SIGKILL leaves no stale lock behind), so a re-run after a kill
needs no clean-up. The file keeps the holder's pid and start time for the second process's message.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".ctv2v-enhance.lock"


class OutputInUse(RuntimeError):
    """Another process holds OUTPUT."""


@contextlib.contextmanager
def output_lock(output_dir: Path) -> Iterator[Path]:
    """Hold the lock on ``output_dir`` (created) for the ``with`` block, or raise
    :class:`OutputInUse` at once naming the holder."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; run unlocked as before
        yield output_dir / LOCK_NAME
        return
    path = output_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            raise OutputInUse(f"{output_dir} is being written by another ctv2v enhance ({holder}); wait for it "
                              "to finish or choose another OUTPUT") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
