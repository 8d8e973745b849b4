"""Leftovers of killed writes: temporary files, and the digest that names a file's content.

Every writer of a run folder writes a temporary file beside its target and renames it into
place (:func:`ppvae.app.rundir.atomic_write`, :func:`ppvae.plots.save_figure`,
:func:`ppvae.inference.checkpoint.save`). A process killed between the two steps leaves
the temporary file behind; :func:`remove_stale_temporaries` finds and removes such files.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["remove_stale_temporaries", "file_digest"]

# Temporary names of atomic_write (.NAME.tmpPID), save_figure (.STEM.tmpPID.png) and
# checkpoint.save (.NAME.XXXXXXXX.tmp); the first two carry the writer's process id.
_TEMP_WITH_PID = re.compile(r"^\..+\.tmp(\d+)(\.png)?$")
_TEMP_RANDOM = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str], *, all_writers: bool = False) -> int:
    """Remove the temporary files killed writes left in ``folder``; returns how many.

    By default only those whose writer (the process id in the name) is no longer running;
    with ``all_writers`` also this process's and the checkpoints' (whose names carry no
    process id): call it so only while holding the folder's lock.
    """
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        match = _TEMP_WITH_PID.match(path.name)
        if match:
            pid = int(match.group(1))
            stale = all_writers or (pid != os.getpid() and not _alive(pid))
        else:
            stale = all_writers and _TEMP_RANDOM.match(path.name) is not None
        if stale and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def file_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
