"""Raw arrays behind :func:`ppvae.data.load_dataset`: IDX sets, array files and their checks.

The readers return plain numpy arrays named like the dataset fields (``x``, ``y``,
``x_test``, ``y_test``, and the OOD flags ``ood`` of an array file) and raise errors that
name the file and say how to fix it; :func:`read_array_file` is the one reader of array
files, for datasets and anomaly scoring alike, and :func:`csv_header` the one test for a
CSV header; :func:`check_x` and :func:`check_labels` validate the arrays of every source.
Where to look (``data_dir``, ``$PPVAE_DATA``, the cache, the system folder) is decided by
:mod:`ppvae.data`, which passes the folders in; splitting and binarisation happen there.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ARRAY_EXTENSIONS",
    "ArrayFile",
    "IDX_FILES",
    "check_labels",
    "check_x",
    "csv_header",
    "find_idx",
    "read_array_file",
    "read_dsprites_npz",
    "read_idx",
    "read_idx_set",
]

IDX_FILES = {  # key -> (file stem, rank)
    "x": ("train-images-idx3-ubyte", 3),
    "y": ("train-labels-idx1-ubyte", 1),
    "x_test": ("t10k-images-idx3-ubyte", 3),
    "y_test": ("t10k-labels-idx1-ubyte", 1),
}
ARRAY_EXTENSIONS = (".npy", ".npz", ".csv", ".pt")
# Keys of an archive, or columns of a CSV with a header, in order of preference.
X_KEYS = ("x", "data", "X")
LABEL_KEYS = ("y", "labels", "label")
OOD_KEYS = ("ood", "is_ood")


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain or ``.gz``), checking its header and length.

    Raises ``ValueError`` naming the file when it is unreadable, truncated or of another kind.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            raw = bytearray(f.read())  # writable, so torch.from_numpy needs no copy
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"cannot read IDX file {path} ({err}); delete it and fetch it again"
        ) from err
    rank = raw[3] if len(raw) >= 4 and raw[:3] == b"\x00\x00\x08" else None
    if rank is None or (ndim is not None and rank != ndim):
        expected = f"0000080{ndim}" if ndim else "00000803 or 00000801"
        raise ValueError(
            f"{path} is not an IDX ubyte file of the expected kind (magic "
            f"{bytes(raw[:4]).hex()}, expected {expected}); fetch it again"
        )
    header = 4 + 4 * rank
    dims = struct.unpack(f">{rank}I", raw[4:header]) if len(raw) >= header else None
    if dims is None or len(raw) != header + math.prod(dims):
        need = "a full header" if dims is None else f"{header + math.prod(dims)} bytes"
        raise ValueError(
            f"{path} is truncated or corrupt: has {len(raw)} bytes, header "
            f"promises {need}; delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_set(
    name: str,
    cls: str,
    roots: Sequence[Path],
    *,
    download_to: Path | None,
    env_var: str,
) -> dict[str, np.ndarray]:
    """The four IDX arrays of an MNIST-like set, keyed as :data:`IDX_FILES`.

    Parameters
    ----------
    name
        Dataset key, e.g. ``"fashion-mnist"``.
    cls
        The torchvision dataset class, e.g. ``"FashionMNIST"``; torchvision unpacks into
        ``<cls>/raw``.
    roots
        Folders searched in order, each with its ``<cls>/raw``, ``<name>/raw``, ``<name>``
        and ``raw`` subfolders and itself.
    download_to
        Where torchvision fetches the files when no root holds them; ``None``: never
        download.
    env_var
        The environment variable the error message suggests.

    Raises
    ------
    FileNotFoundError
        When no folder holds all four files, naming every place searched and the fixes.
    RuntimeError
        When the download fails.
    """
    subdirs = (Path(cls, "raw"), Path(name, "raw"), Path(name), Path("raw"), Path())
    found, partial = find_idx([root / sub for root in roots for sub in subdirs])
    if found is None and download_to is not None:
        # Loaded only to download: importing torchvision costs seconds (about as long as
        # torch and Pyro together) that no other use of this module needs.
        from torchvision import datasets

        try:  # torchvision downloads all four files and unpacks them into <Class>/raw
            getattr(datasets, cls)(root=str(download_to), train=True, download=True)
        except Exception as err:
            raise RuntimeError(
                f"downloading {name} into {download_to} failed ({_first_line(err)}); "
                "check the internet connection or copy the files there"
            ) from err
        found, partial = find_idx([download_to / cls / "raw"])
    if found is None:
        files = ", ".join(stem for stem, _ in IDX_FILES.values())
        apt = "apt-get install dataset-fashion-mnist, " if name == "fashion-mnist" else ""
        raise FileNotFoundError(
            f"{name} not found: looked for {files} (optionally .gz) in "
            f"{', '.join(map(str, roots))} and their {', '.join(map(str, subdirs[:-1]))} "
            f"subfolders{''.join(f'; {p}' for p in partial)}; fix: pass data_dir= (--data-dir) "
            f"or set {env_var} to the folder holding them, {apt}or use download=True "
            "(--download) with internet access"
        )
    return {key: read_idx(found[key], rank) for key, (_, rank) in IDX_FILES.items()}


def find_idx(dirs: list[Path]) -> tuple[dict[str, Path] | None, list[str]]:
    """The first directory holding all four IDX files, and notes on incomplete ones."""
    partial: list[str] = []
    for d in dict.fromkeys(dirs):
        found = {}
        for key, (stem, _) in IDX_FILES.items():
            dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-...
            names = (stem, dotted, f"{stem}.gz", f"{dotted}.gz")  # unpacked copies read faster
            path = next((d / n for n in names if (d / n).is_file()), None)
            if path is not None:
                found[key] = path
        if len(found) == len(IDX_FILES):
            return found, partial
        if found:
            missing = [stem for k, (stem, _) in IDX_FILES.items() if k not in found]
            partial.append(f"{d} lacks {', '.join(missing)}")
    return None, partial


@dataclass(frozen=True)
class ArrayFile:
    """The arrays of one data file: rows ``x``, and optional labels, test split and OOD flags.

    ``ood`` holds one 0 (in-distribution) or 1 (out-of-distribution) per row of ``x``;
    :func:`ppvae.data.load_dataset` ignores it, anomaly scoring reads it.
    """

    x: np.ndarray
    y: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    ood: np.ndarray | None = None
    factors: np.ndarray | None = None
    factors_test: np.ndarray | None = None
    factor_names: np.ndarray | None = None


def read_array_file(path: str | os.PathLike[str]) -> ArrayFile:
    """The arrays of a ``.npy``/``.npz``/``.csv``/``.pt`` file, the one reader of array files.

    ``x`` is the array under key ``x``, ``data`` or ``X``, or the only array; labels come
    from ``y``, ``labels`` or ``label``, OOD flags from ``ood`` or ``is_ood`` (keys of an
    archive or dict, or columns of a CSV with a header, see :func:`csv_header`); a test
    split from ``x_test`` and ``y_test``; generative-factor indices ``(N, K)`` from
    ``factors`` (and ``factors_test``), their names from ``factor_names``. Raises
    ``FileNotFoundError`` or ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist; check the path")
    ext = path.suffix.lower()
    if ext not in ARRAY_EXTENSIONS:
        raise ValueError(
            f"cannot read {path}: unsupported extension {ext!r}; use {', '.join(ARRAY_EXTENSIONS)}"
        )
    try:
        arrays = {str(k): _to_numpy(v) for k, v in _read_arrays(path, ext).items()}
    except Exception as err:
        # torch's own first line advises weights_only=False, which we refuse to use
        why = "not a torch.save file of tensors or arrays" if ext == ".pt" else _first_line(err)
        raise ValueError(f"cannot read {path} as a {ext} data file: {why}") from err
    x = _pick(arrays, *X_KEYS)
    if x is None and len(arrays) != 1:
        raise ValueError(
            f"{path} has no data array: expected key 'x', 'data' or 'X', found {sorted(arrays)}"
        )
    x = next(iter(arrays.values())) if x is None else x
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{path} holds {x.dtype} values, not numbers: give a file of numeric rows")
    ood = _pick(arrays, *OOD_KEYS)
    if ood is not None:
        ood = _check_ood(ood, len(x), path)
    y, x_test, y_test = (_pick(arrays, *k) for k in (LABEL_KEYS, ("x_test",), ("y_test",)))
    factors = [arrays.get(k) for k in ("factors", "factors_test", "factor_names")]
    return ArrayFile(x, y, x_test, y_test, ood, *factors)


def read_dsprites_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``imgs`` ``(N, 64, 64)`` and ``latents_classes`` ``(N, 6)`` of the dSprites archive.

    The archive's pickled ``metadata`` is never loaded. Raises ``ValueError`` naming the file.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            images, classes = f["imgs"], f["latents_classes"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"cannot read {path} as the dSprites archive ({err}); fetch it again"
        ) from err
    if images.ndim != 3 or classes.shape != (len(images), 6):
        raise ValueError(
            f"{path}: expected imgs (N, 64, 64) and latents_classes (N, 6), got "
            f"{images.shape} and {classes.shape}; fetch the file again"
        )
    return images, classes


def csv_header(first_line: str) -> list[str] | None:
    """The lower-cased column names if ``first_line`` of a CSV is a header, else ``None``.

    A line is a header when any of its cells is not a number; quotes around names are
    dropped.
    """
    cells = [cell.strip().strip("\"'").lower() for cell in first_line.split(",")]
    return None if all(_is_number(cell) for cell in cells) else cells


def check_x(x: np.ndarray, what: str) -> np.ndarray:
    """Validate data rows; (N, H, W) images gain a channel axis."""
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what}: data must be numeric, got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"{what}: expected shape (N, D), (N, H, W) or (N, C, H, W) with one row "
            f"per datapoint, got {x.ndim}-D shape {x.shape}; reshape the array"
        )
    if x.size == 0:
        raise ValueError(f"{what}: empty dataset (shape {x.shape}); supply at least one row")
    if x.dtype.kind == "f" and (bad := int(np.count_nonzero(~np.isfinite(x)))):
        raise ValueError(f"{what}: {bad} NaN or infinite values; drop or impute them first")
    return x[:, None] if x.ndim == 3 else x


def check_labels(y: np.ndarray | None, n: int, what: str) -> torch.Tensor | None:
    """Validate labels: one non-negative integer per row, returned as an int64 tensor."""
    if y is None:
        return None
    if y.ndim != 1 or len(y) != n:
        raise ValueError(
            f"{what}: labels have shape {y.shape} but there are {n} datapoints; "
            "pass one integer label per row"
        )
    integral = y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.all(y == np.round(y)))
    if not integral or (len(y) and y.min() < 0):
        raise ValueError(f"{what}: labels must be non-negative integers (class indices)")
    return torch.from_numpy(y.astype(np.int64))


def _read_arrays(path: Path, ext: str) -> dict[str, Any]:
    if ext == ".csv":
        return _read_csv(path)
    if ext in (".npy", ".npz"):
        with open(path, "rb") as f:  # np.load leaks its own handle when a zip is corrupt
            loaded = np.load(f, allow_pickle=False)
            files = getattr(loaded, "files", None)  # an archive, whatever its extension
            return {"x": loaded} if files is None else {k: loaded[k] for k in files}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj if isinstance(obj, dict) else {"x": obj}


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns named as labels or OOD flags are taken out of ``x``."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    header = csv_header(lines[0]) if lines else None
    rows = lines[1:] if header is not None else lines
    if not rows:
        raise ValueError("no data rows (empty dataset)")
    table = np.loadtxt(rows, delimiter=",", ndmin=2, dtype=np.float64)
    if header is None:
        return {"x": table}
    if len(header) != table.shape[1]:
        raise ValueError(f"header has {len(header)} columns but rows have {table.shape[1]}")
    out = {name: table[:, j] for j, name in enumerate(header) if name in LABEL_KEYS + OOD_KEYS}
    keep = [j for j, name in enumerate(header) if name not in out]
    return {**out, "x": table[:, keep]}


def _check_ood(values: np.ndarray, n: int, path: Path) -> np.ndarray:
    values = values.reshape(-1)
    if len(values) != n:
        raise ValueError(f"{path}: {len(values)} ood values for {n} rows; give one per row")
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{path}: the ood column must hold 0 (in) or 1 (out) per row")
    return values.astype(np.int64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _pick(arrays: dict[str, np.ndarray], *keys: str) -> np.ndarray | None:
    return next((arrays[k] for k in keys if k in arrays), None)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.double() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
