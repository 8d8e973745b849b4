"""Benchmark results as JSON (written atomically) and as a markdown table."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_text", "write_json", "markdown_table", "markdown_report", "update_readme"]

README_BEGIN = "<!-- bench-table:begin -->"
README_END = "<!-- bench-table:end -->"


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates the file private to its owner
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` atomically (a reader never sees half a file)."""
    write_text(path, json.dumps(_clean(results), indent=2, default=str) + "\n")


def _load(values: Any) -> str:
    return "n/a" if not values else "/".join(f"{v:.1f}" for v in values)


def _met(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "**no**")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per measurement: metric, ppvae, baseline, ratio, target, met."""
    head = "| measurement | ppvae | baseline | ratio | target | met |\n|---|---|---|---|---|---|"
    lines = [
        f"| {r['metric']} | {r['ppvae']} | {r['reference']} | {r['ratio']} | "
        f"{r['target']} | {_met(r['met'])} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def markdown_report(results: dict[str, Any]) -> str:
    """Machine line, command, the table, and the notes the benchmarks left."""
    m = results["machine"]
    peak = results.get("matmul_peak", {})
    machine = (
        f"Machine: {m['cpu']}, {m['cores']} cores, torch threads: {m['torch_threads']}, "
        f"device {m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}; "
        f"torch {m['torch']}, pyro {m['pyro']}, python {m['python']}; load average "
        f"{_load(m.get('load_average'))} at the start, {_load(results.get('load_average_end'))} "
        "at the end."
    )
    if peak:
        machine += f" Measured float32 matmul peak: {peak['flops'] / 1e9:.1f} GFLOP/s."
    rows = [row for section in results["sections"].values() for row in section.get("rows", [])]
    parts = [
        f"Run {results['started']} on {m['host']} with `{results['command']}` "
        f"({results['seconds_total']:.0f} s).",
        "",
        machine,
        "",
        markdown_table(rows),
    ]
    notes = [n for section in results["sections"].values() for n in section.get("notes", [])]
    if notes:
        parts += ["", *(f"- {n}" for n in notes)]
    return "\n".join(parts) + "\n"


def update_readme(readme: Path, report: str) -> bool:
    """Replace the table between the README's markers; returns whether it was updated."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    new = text[: start + len(README_BEGIN)] + "\n" + report + text[end:]
    write_text(readme, new)
    return True
