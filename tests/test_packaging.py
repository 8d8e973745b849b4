"""The three top-level folders install as one package, editable and as a wheel."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import ppvae
import ppvae.inference
import ppvae.models

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_the_folders():
    assert Path(ppvae.models.__file__).parent == ROOT / "models"
    assert Path(ppvae.inference.__file__).parent == ROOT / "inference"
    assert ppvae.__version__ != "0.0.0"


def test_wheel_contains_models_and_inference_under_ppvae(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("ppvae", "models", "inference"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("ppvae-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "ppvae/models/vae.py" in names
    assert "ppvae/inference/__init__.py" in names
    assert "ppvae/data.py" in names and "ppvae/app/cli.py" in names
    assert not any(n.startswith(("models/", "inference/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ppvae = ppvae.app.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _imported_modules(path: Path, package: str) -> list[str]:
    """Every module an ``import`` or ``from ... import`` of the file names (relative resolved)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]  # from ppvae import app
    return found


def test_the_library_never_imports_the_app():
    offenders = []
    for folder, package in (
        ("ppvae", "ppvae"),
        ("models", "ppvae.models"),
        ("inference", "ppvae.inference"),
    ):
        for path in sorted((ROOT / folder).rglob("*.py")):
            inner = path.relative_to(ROOT / folder).parts
            if folder == "ppvae" and inner[0] == "app":
                continue
            pkg = ".".join([package, *inner[:-1]])
            offenders += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in _imported_modules(path, pkg)
                if name == "ppvae.app" or name.startswith("ppvae.app.")
            ]
    assert not offenders
