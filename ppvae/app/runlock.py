"""One command at a time per run folder: an ``fcntl`` lock on ``RUN_DIR/ppvae.lock``.

Two ``ppvae train`` processes writing into one folder would leave a run that contradicts
itself (the configuration of one, the weights of the other). Every command that works on
a run folder (train, demo, evaluate, report, sample, score, bdmc) therefore holds an
exclusive lock on the folder's lock file for its whole duration; a second command on the
same folder does not wait but stops at once with a :class:`~ppvae.app.config.UserError`
that names the holder (process id, host and command line). ``compare`` only reads, and
takes no lock.

The lock file lives inside the run folder, so a folder is created only when a command is
about to write into it (``train`` validates everything first, see
:func:`ppvae.app.train.train_run`). Two processes that create the same new folder at the
same moment both succeed in ``mkdir`` and then meet at the lock, which only one of them
gets. The lock is released by the kernel when its holder exits, however it exits, so a
killed run leaves no stale lock behind; the file itself stays (it is empty of meaning once
no process holds it).

The lock is re-entrant within a process: the demo trains, evaluates and reports while
holding the lock of its folder, and each step takes the same lock again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ppvae.app.config import UserError

__all__ = ["LOCK_NAME", "lock_run", "holder"]

#: The lock file's name inside a run folder.
LOCK_NAME = "ppvae.lock"

# Locks this process holds: resolved folder -> [file descriptor, depth].
_HELD: dict[str, list[int]] = {}


def holder(folder: str | os.PathLike[str]) -> str:
    """Who holds (or last held) the lock of ``folder``, as the lock file says, in words."""
    path = Path(folder) / LOCK_NAME
    # The holder writes its name just after taking the lock: wait briefly for it.
    for _ in range(20):
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.05)
    return "another process"


@contextlib.contextmanager
def lock_run(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of the run folder ``folder`` (created if missing) for a block.

    Raises
    ------
    UserError
        Another process holds the lock; the message names it.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    key = str(root.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"{root} is in use by {holder(root)}: wait for that command to finish (or stop "
            "it), or use another run directory"
        ) from None
    _HELD[key] = [fd, 1]
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({_command()})\n".encode())
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # releases the lock


def _command() -> str:
    """This process's command line, with the ``ppvae`` entry point named as such."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "ppvae" if program in ("ppvae", "cli.py") else program
    return shlex.join([program, *sys.argv[1:]])
