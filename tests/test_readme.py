"""The README runs as pasted: its Python blocks and its command-line walkthrough.

Blocks are found by their fences, so sections added later are picked up without
changing this file. How they run:

- ```` ```python ```` blocks: all blocks of one ``##`` section run in order, in one
  namespace, in a fresh Python process started in an empty folder (a section is what a
  reader follows from top to bottom; a block may use what an earlier block of its section
  defined, never what another section defined).
- ```` ```bash ```` and ```` ```console ```` blocks that hold a line starting with
  ``ppvae`` (or ``$ ppvae``): every line of all such blocks runs in order, in one empty
  folder, in one Python process (``ppvae`` lines through :func:`ppvae.app.cli.main`, which
  saves the interpreter's start-up per command; other lines through ``bash``). Each must
  succeed.
- A block is skipped only when the line just above its opening fence is the visible
  marker ``<!-- not run: REASON -->``, with a reason.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ppvae.app.cli import _TRAIN_FLAGS, EXAMPLES
from ppvae.app.config import RunConfig

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
_COMMAND = re.compile(r"^(\$ )?ppvae\b")
# Every README command may take this long on a loaded machine; a hang fails the test.
_TIMEOUT = 600


@dataclass
class Block:
    """A fenced code block of the README."""

    lang: str
    code: str
    section: str
    line: int  # of the opening fence, 1-based
    skipped: str | None  # the reason of a "not run" marker


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text`` with its ``##`` section and not-run marker."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section, i = "", 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        above = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = _NOT_RUN.match(above)
        code = "\n".join(lines[start + 1 : i]) + "\n"
        blocks.append(Block(match.group(1), code, section, start + 1, marker and marker["reason"]))
        i += 1
    return blocks


def _blocks() -> list[Block]:
    return readme_blocks(README.read_text(encoding="utf-8"))


def _python_sections() -> dict[str, list[Block]]:
    sections: dict[str, list[Block]] = {}
    for block in _blocks():
        if block.lang == "python" and block.skipped is None:
            sections.setdefault(block.section, []).append(block)
    return sections


def cli_lines() -> list[str]:
    """The lines of the README's command-line blocks, comments and prompts removed."""
    out = []
    for block in _blocks():
        lines = block.code.splitlines()
        if block.lang not in ("bash", "console") or block.skipped is not None:
            continue
        if not any(_COMMAND.match(ln.strip()) for ln in lines):
            continue
        for ln in lines:
            ln = ln.strip().removeprefix("$ ")
            if ln and not ln.startswith("#"):
                out.append(ln)
    return out


def _env() -> dict[str, str]:
    # The suite's own interpreter first on PATH, so that `python` means the project's.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_extraction_finds_blocks_and_honours_only_explicit_markers() -> None:
    text = (
        "## A\n```python\nx = 1\n```\n\n<!-- not run: needs Fashion-MNIST on disk -->\n"
        "```python\ny = 2\n```\n<!-- not run: -->\n```bash\nppvae train --out r\n```\n"
    )
    a, b, c = readme_blocks(text)
    assert (a.section, a.code, a.skipped) == ("A", "x = 1\n", None)
    assert b.skipped == "needs Fashion-MNIST on disk"
    assert c.skipped is None  # a marker without a reason does not count
    assert _python_sections(), "the README has Python blocks"
    skipped = [b for b in _blocks() if b.skipped]
    assert len(skipped) <= 3, f"keep not-run markers rare: {[(b.line, b.skipped) for b in skipped]}"


@pytest.mark.parametrize("section", sorted(_python_sections()))
def test_readme_python_section_runs_as_pasted(section: str, tmp_path: Path) -> None:
    # Each block is compiled under its README line, so a failure points at the block.
    runner = "\n".join(
        f"exec(compile({b.code!r}, 'README.md:{b.line}', 'exec'), ns)"
        for b in _python_sections()[section]
    )
    proc = subprocess.run(
        [sys.executable, "-c", "ns = {'__name__': '__main__'}\n" + runner],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )
    assert proc.returncode == 0, f"README section {section!r} failed:\n{proc.stderr[-3000:]}"


_CLI_RUNNER = """
import shlex, subprocess, sys
from ppvae.app.cli import main
for line in sys.argv[1:]:
    if line.startswith("ppvae "):
        try:
            rc = main(shlex.split(line, comments=True)[1:])
        except SystemExit as err:
            rc = err.code
    else:
        rc = subprocess.run(["bash", "-c", line]).returncode
    if rc:
        sys.exit(f"README command failed with status {rc}: {line}")
"""


def test_readme_command_line_walkthrough_runs(tmp_path: Path) -> None:
    lines = cli_lines()
    assert any(ln.startswith("ppvae train") for ln in lines)
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_RUNNER, *lines],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("metrics.json", "bdmc.json", "samples.png", "scores.csv", "report.html"):
        assert (tmp_path / "runs" / "a" / name).is_file(), name


def test_every_help_example_is_run_by_the_walkthrough() -> None:
    assert set(EXAMPLES) >= {"train", "evaluate", "sample", "score", "report"}
    walkthrough = {" ".join(ln.split("#")[0].split()) for ln in cli_lines()}
    for command, examples in EXAMPLES.items():
        for example in examples:
            assert example in walkthrough, f"'ppvae {command} --help' example not run: {example}"


def test_readme_lists_every_toml_key_without_a_flag() -> None:
    flagged = {dest for _, dest, _, _ in _TRAIN_FLAGS} | {"download", "conditional"}
    unflagged = [f.name for f in dataclasses.fields(RunConfig) if f.name not in flagged]
    assert unflagged, "some keys have no flag"
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Command line") :]
    rows = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert set(unflagged) <= rows, f"README lacks TOML keys {sorted(set(unflagged) - rows)}"
