"""Running the ``ppvae`` command in-process in tests, and the shape of a user error."""

from __future__ import annotations

from typing import Any

from ppvae.app.cli import main

__all__ = ["cli", "cli_err", "assert_user_error"]


def cli(capsys: Any, *args: Any) -> tuple[int, str, str]:
    """Run ``main`` in-process; returns (status, stdout, stderr)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as stop:  # argparse's own exits
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def cli_err(capsys: Any, *args: Any) -> tuple[int, str]:
    """:func:`cli`'s status and stderr, the pair :func:`assert_user_error` takes."""
    status, _, err = cli(capsys, *args)
    return status, err


def assert_user_error(status: int, err: str, *fragments: str) -> None:
    """Exit status 2 and one line ``ppvae: error: ...`` holding every fragment."""
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppvae: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
