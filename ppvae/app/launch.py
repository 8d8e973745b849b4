"""``ppvae train --nproc N``: the same command on N local processes, launched by torchrun.

:func:`launch` calls torchrun's own Python entry point (:mod:`torch.distributed.run`)
with ``--standalone --nproc-per-node N -m ppvae ARGS``: exactly what a user would type as
``torchrun --standalone --nproc-per-node N -m ppvae train ...``, without a shell. Every
process then runs the command as one rank of the group (see
:mod:`ppvae.inference.distributed`). :func:`quiet_unless_main` keeps the ranks other than
0 from printing, so that the group's output reads as one process's.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from ppvae.app.config import UserError
from ppvae.inference.distributed import is_main_process, launched_by_torchrun

__all__ = ["LAUNCHED", "LOST_GROUP", "launch", "without_nproc", "quiet_unless_main"]

#: Set in the ranks' environment by :func:`launch`.
LAUNCHED = "PPVAE_LAUNCHED"
#: Exit status of a rank that lost the process group (another rank died or hung).
LOST_GROUP = 3


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` (or ``--nproc=N``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``ppvae ARGV`` (without ``--nproc``) as ``nproc`` ranks on this machine.

    Returns the exit status: 0, or the first failed rank's status (that rank printed its
    error line), or 1 with one line naming the rank when it was killed by a signal.
    """
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    if launched_by_torchrun():
        raise UserError("--nproc inside a torchrun launch: drop --nproc (torchrun sets the ranks)")
    args = ["--standalone", f"--nproc-per-node={nproc}", "-m", "ppvae", *without_nproc(argv)]
    # run(), not main(), and the launcher's log quiet: main() adds torchrun's multi-line
    # failure report. A rank that fails on its own prints its line; a rank killed by a
    # signal, or one that lost the group (LOST_GROUP, silent under this launcher, since
    # the launcher knows more), gets the one line below.
    for name in ("torch.distributed.elastic", "torch.distributed.run"):
        # (torchrun's notice that it sets OMP_NUM_THREADS=1 per rank goes too: --threads.)
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHED] = "1"
    try:
        torchrun.run(torchrun.parse_args(args))
    except ChildFailedError as err:
        failures = sorted(err.failures.items(), key=lambda item: item[1].timestamp)
        spoke = [f.exitcode for _, f in failures if f.exitcode > 0 and f.exitcode != LOST_GROUP]
        if spoke:  # a rank failed on its own and printed its line
            return spoke[0]
        killed = [(r, f) for r, f in failures if f.exitcode < 0]
        if killed:
            rank, what = killed[0][0], f"died ({killed[0][1].signal_name()})"
        else:  # every failed rank lost the group: one of them stopped answering
            rank, what = failures[0][0], "lost the others (one stopped answering)"
        print(
            f"ppvae: error: rank {rank} of {nproc} {what} and the group stopped; the last "
            "checkpoint written is intact: continue with --resume",
            file=sys.stderr,
        )
        return 1
    return 0


def quiet_unless_main() -> None:
    """Send this process's standard output to nowhere unless it is rank 0 (or alone)."""
    if not is_main_process():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
