"""The three top-level folders install as one package, editable and as a wheel."""

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
    assert "ppvae/data.py" in names
    assert not any(n.startswith(("models/", "inference/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ppvae = ppvae.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
