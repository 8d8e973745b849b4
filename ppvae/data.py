"""Datasets as in-memory tensors: named sets and array files, splits, binarisation, batching.

Every split is held eagerly as a float tensor of shape ``(N, *event_shape)``: the sets this
library targets fit in memory, and slicing one tensor per batch is far cheaper than a per-item
``torch.utils.data.DataLoader`` pipeline.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["BatchLoader", "Dataset", "load_dataset", "read_idx"]

SYSTEM_DATA_DIR = Path("/usr/share/datasets")  # where Debian's dataset-* packages install
CACHE_DIR = Path("~/.cache/ppvae")  # default target of download=True
DATA_ENV_VAR = "PPVAE_DATA"
IDX_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
KNOWN_DATASETS = ("digits", *IDX_DATASETS)
ARRAY_EXTENSIONS = (".npy", ".npz", ".csv", ".pt")
_BINARIZE_MODES = ("auto", "dynamic", "static", "threshold", None)
_IDX_FILES = {  # key -> (file stem, rank)
    "x": ("train-images-idx3-ubyte", 3),
    "y": ("train-labels-idx1-ubyte", 1),
    "x_test": ("t10k-images-idx3-ubyte", 3),
    "y_test": ("t10k-labels-idx1-ubyte", 1),
}
# Fixed seeds, independent of `seed`: the test set and the evaluation binarisation must not move
# between runs, or their log-likelihoods would not be comparable.
_TEST_SEED = 20_240_601
_BINARIZE_SEED = 60_124_002
_TEST_FRACTION = 0.2
_BINARIZE_TEXT = {
    None: "none",
    "dynamic": "dynamic (fresh Bernoulli draw per training epoch; val/test drawn once)",
    "static": "static (one fixed Bernoulli draw)",
    "threshold": "threshold (x > 0.5)",
}
_Batch = tuple[torch.Tensor, torch.Tensor | None]


class BatchLoader:
    """Minibatches of in-memory tensors; each ``iter()`` is one epoch.

    Parameters
    ----------
    x, y
        Data ``(N, *event_shape)`` and optional labels ``(N,)`` on the same device.
    batch_size
        Datapoints per batch.
    shuffle
        Visit the data in a fresh random order each epoch.
    seed
        Seed of the loader's own generator; ``None`` draws one from torch's global RNG, so
        ``torch.manual_seed`` still makes runs reproducible.
    drop_last
        Skip the final, smaller batch.
    dynamic_binarize
        Replace each batch by one Bernoulli draw with the batch as probabilities.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = False,
        dynamic_binarize: bool = False,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if y is not None and len(y) != len(x):
            raise ValueError(f"got {len(y)} labels for {len(x)} datapoints; pass one per row")
        self.x, self.y = x, y
        self.num_data = len(x)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.dynamic_binarize = shuffle, drop_last, dynamic_binarize
        self.seed = int(torch.randint(2**62, ()).item()) if seed is None else int(seed)
        self.epoch = 0
        self._generator = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_data // self.batch_size
        return -(-self.num_data // self.batch_size)

    def __iter__(self) -> Iterator[_Batch]:
        # The loader's generator advances exactly once per epoch and seeds everything else in
        # it, so a state_dict() taken at any point resumes with the next epoch exactly as an
        # uninterrupted run would.
        epoch_seed = int(torch.randint(2**62, (), generator=self._generator).item())
        self.epoch += 1
        generator = torch.Generator(device=self.x.device).manual_seed(epoch_seed)
        return self._batches(self._order(generator), generator)

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        """Index order of one epoch (the one place a per-rank sampler would take its share)."""
        if not self.shuffle:
            return torch.arange(self.num_data, device=self.x.device)
        return torch.randperm(self.num_data, generator=generator, device=self.x.device)

    def _batches(self, order: torch.Tensor, generator: torch.Generator) -> Iterator[_Batch]:
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            xb = self.x[idx]
            if self.dynamic_binarize:
                xb = torch.bernoulli(xb, generator=generator)
            yield xb, None if self.y is None else self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        """Generator state and epoch count, enough to resume the epoch sequence exactly."""
        return {"seed": self.seed, "epoch": self.epoch, "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self._generator.set_state(state["generator"])


@dataclass
class Dataset:
    """Train/val/test splits held as float tensors of shape ``(N, *event_shape)``.

    ``likelihood`` and ``likelihood_kwargs`` suggest an observation model for the values;
    ``binarize`` is the resolved binarisation mode (``"dynamic"``: train holds grey levels and
    :meth:`loader` draws fresh binary batches each epoch, val and test are drawn once).
    """

    name: str
    train: torch.Tensor = field(repr=False)
    val: torch.Tensor = field(repr=False)
    test: torch.Tensor = field(repr=False)
    event_shape: tuple[int, ...]
    likelihood: str
    likelihood_kwargs: dict[str, Any] = field(default_factory=dict)
    train_labels: torch.Tensor | None = field(default=None, repr=False)
    val_labels: torch.Tensor | None = field(default=None, repr=False)
    test_labels: torch.Tensor | None = field(default=None, repr=False)
    binarize: str | None = None
    num_labels: int | None = None

    def describe(self) -> str:
        """Short multi-line summary of splits, shapes, values, labels and suggested model."""
        lo, hi = _value_range(self.train, self.val, self.test)
        kwargs = ", ".join(f"{k}={v}" for k, v in self.likelihood_kwargs.items())
        binarize = _BINARIZE_TEXT[self.binarize]
        return (
            f"dataset {self.name}\n"
            f"  splits: train {len(self.train)}, val {len(self.val)}, test {len(self.test)}\n"
            f"  event shape: {self.event_shape}\n  values: [{lo:g}, {hi:g}]\n"
            f"  labels: {'none' if self.num_labels is None else f'{self.num_labels} classes'}\n"
            f"  likelihood: {self.likelihood}{f' ({kwargs})' if kwargs else ''}\n"
            f"  binarize: {binarize}"
        )

    def loader(
        self,
        split: str = "train",
        batch_size: int = 128,
        *,
        shuffle: bool | None = None,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> BatchLoader:
        """A :class:`BatchLoader` over one split (shuffled by default for ``"train"`` only)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}: use 'train', 'val' or 'test'")
        return BatchLoader(
            getattr(self, split),
            getattr(self, f"{split}_labels"),
            batch_size=batch_size,
            shuffle=split == "train" if shuffle is None else shuffle,
            seed=seed,
            drop_last=drop_last,
            dynamic_binarize=split == "train" and self.binarize == "dynamic",
        )


@dataclass
class _Source:
    name: str
    x: np.ndarray
    y: np.ndarray | None = None
    x_test: np.ndarray | None = None  # None: carve a fixed test split out of x
    y_test: np.ndarray | None = None
    likelihood: str | None = None  # None: infer from the values
    likelihood_kwargs: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    grey_images: bool = False  # grey-level images meant as Bernoulli probabilities
    origin: str = ""  # what error messages call the source, when not its name


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    binarize: str | None = "auto",
    val_fraction: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load a named dataset or an array file into train/val/test tensors.

    Parameters
    ----------
    name_or_path
        ``"digits"`` (scikit-learn's 8x8 digits), ``"mnist"``, ``"fashion-mnist"``,
        ``"kmnist"``, or a path to a ``.npy``, ``.npz``, ``.csv`` or ``.pt`` file whose rows
        are datapoints.
    data_dir
        Folder holding the IDX files; searched before ``$PPVAE_DATA``, ``~/.cache/ppvae`` and
        ``/usr/share/datasets/<name>``.
    download
        Fetch missing IDX files with torchvision into ``data_dir``, ``$PPVAE_DATA`` or
        ``~/.cache/ppvae``.
    binarize
        ``"auto"`` (dynamic for grey-level MNIST-like sets, else none), ``"dynamic"``,
        ``"static"``, ``"threshold"`` (x > 0.5) or ``None``. Binarised data suggests a
        Bernoulli likelihood; MNIST-like sets left as grey levels suggest a continuous one.
    val_fraction
        Fraction of the training pool held out for validation, in [0, 1).
    seed
        Seed of the train/val split; the test split never depends on it.
    dtype
        Floating dtype of the returned tensors.

    Returns
    -------
    Dataset
    """
    if binarize not in _BINARIZE_MODES:
        raise ValueError(f"unknown binarize={binarize!r}: use one of {_BINARIZE_MODES}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype such as torch.float32, got {dtype}")
    src = _resolve(name_or_path, data_dir, download)
    what = src.origin or src.name
    x = _check_x(src.x, what)
    y = _check_labels(src.y, len(x), what)
    if src.x_test is None:
        perm = np.random.default_rng(_TEST_SEED).permutation(len(x))
        cut = len(x) - round(_TEST_FRACTION * len(x))
        pool_idx, test_idx = np.sort(perm[:cut]), np.sort(perm[cut:])
        x, x_test = x[pool_idx], x[test_idx]
        y, y_test = (None, None) if y is None else (y[pool_idx], y[test_idx])
    else:
        x_test = _check_x(src.x_test, f"{what} (test)")
        y_test = _check_labels(src.y_test, len(x_test), f"{what} (test)")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{what}: test rows have shape {x_test.shape[1:]}, train rows "
                f"{x.shape[1:]}; both must hold the same kind of datapoint"
            )
    pool, test = (_to_tensor(a, dtype, src.scale) for a in (x, x_test))
    likelihood, kwargs = src.likelihood or _infer_likelihood(pool, test), src.likelihood_kwargs
    mode = ("dynamic" if src.grey_images else None) if binarize == "auto" else binarize
    pool_eval = pool
    if mode is not None:
        lo, hi = _value_range(pool, test)
        if lo < 0 or hi > 1:
            raise ValueError(
                f"binarize={mode!r} needs values in [0, 1] but {src.name} has range "
                f"[{lo:g}, {hi:g}]; rescale the data to [0, 1] or pass binarize=None"
            )
        likelihood, kwargs = "bernoulli", {}
        if mode == "threshold":
            pool = pool_eval = (pool > 0.5).to(dtype)
            test = (test > 0.5).to(dtype)
        else:  # "dynamic" keeps grey-level train rows; the loader draws them per epoch
            gen = torch.Generator().manual_seed(_BINARIZE_SEED)
            pool_eval = torch.bernoulli(pool, generator=gen)
            test = torch.bernoulli(test, generator=gen)
            pool = pool_eval if mode == "static" else pool
    elif src.grey_images:
        likelihood = "continuous_bernoulli"  # Bernoulli has no density on grey levels
    n_val = round(val_fraction * len(pool))
    if n_val >= len(pool):
        raise ValueError(f"{what}: val_fraction={val_fraction} leaves no training data")
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(int(seed)))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    labels = [lab for lab in (y, y_test) if lab is not None and len(lab)]
    return Dataset(
        name=src.name,
        train=pool[train_idx],
        val=pool_eval[val_idx],
        test=test,
        event_shape=tuple(pool.shape[1:]),
        likelihood=likelihood,
        likelihood_kwargs=dict(kwargs),
        train_labels=None if y is None else y[train_idx],
        val_labels=None if y is None else y[val_idx],
        test_labels=y_test,
        binarize=mode,
        num_labels=max(int(lab.max()) for lab in labels) + 1 if labels else None,
    )


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


def _resolve(
    name_or_path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None, download: bool
) -> _Source:
    text = os.fspath(name_or_path)
    key = text.lower().replace("_", "-")
    if isinstance(name_or_path, str) and key == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        kwargs = {"likelihood": "binomial", "likelihood_kwargs": {"total_count": 16}}
        return _Source("digits", digits.images[:, None], digits.target, **kwargs)
    if isinstance(name_or_path, str) and key in IDX_DATASETS:
        return _load_idx(key, data_dir, download)
    if Path(text).suffix.lower() in ARRAY_EXTENSIONS:
        return _load_array_file(Path(text).expanduser())
    raise ValueError(
        f"unknown dataset {text!r}: use one of {', '.join(KNOWN_DATASETS)} or a "
        f"path to a {', '.join(ARRAY_EXTENSIONS)} file"
    )


def _load_idx(name: str, data_dir: str | os.PathLike[str] | None, download: bool) -> _Source:
    cls = IDX_DATASETS[name]
    env = os.environ.get(DATA_ENV_VAR)
    user_roots = [Path(d).expanduser() for d in (data_dir, env) if d]
    roots = [*user_roots, CACHE_DIR.expanduser(), SYSTEM_DATA_DIR / name]
    subdirs = (Path(cls, "raw"), Path(name, "raw"), Path(name), Path("raw"), Path())
    found, partial = _find_idx([root / sub for root in roots for sub in subdirs])
    if found is None and download:
        target = (user_roots or [CACHE_DIR.expanduser()])[0]
        from torchvision import datasets

        try:  # torchvision downloads all four files and unpacks them into <Class>/raw
            getattr(datasets, cls)(root=str(target), train=True, download=True)
        except Exception as err:
            raise RuntimeError(
                f"downloading {name} into {target} failed ({_first_line(err)}); "
                "check the internet connection or copy the files there"
            ) from err
        found, partial = _find_idx([target / cls / "raw"])
    if found is None:
        files = ", ".join(stem for stem, _ in _IDX_FILES.values())
        apt = "apt-get install dataset-fashion-mnist, " if name == "fashion-mnist" else ""
        raise FileNotFoundError(
            f"{name} not found: looked for {files} (optionally .gz) in "
            f"{', '.join(map(str, roots))} and their {', '.join(map(str, subdirs[:-1]))} "
            f"subfolders{''.join(f'; {p}' for p in partial)}; fix: pass data_dir= (--data-dir) "
            f"or set {DATA_ENV_VAR} to the folder holding them, {apt}or use download=True "
            "(--download) with internet access"
        )
    arrays = {key: read_idx(found[key], rank) for key, (_, rank) in _IDX_FILES.items()}
    return _Source(name, *arrays.values(), likelihood="bernoulli", scale=1 / 255, grey_images=True)


def _find_idx(dirs: list[Path]) -> tuple[dict[str, Path] | None, list[str]]:
    """The first directory holding all four IDX files, and notes on incomplete ones."""
    partial: list[str] = []
    for d in dict.fromkeys(dirs):
        found = {}
        for key, (stem, _) in _IDX_FILES.items():
            dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-...
            names = (stem, dotted, f"{stem}.gz", f"{dotted}.gz")  # unpacked copies read faster
            path = next((d / n for n in names if (d / n).is_file()), None)
            if path is not None:
                found[key] = path
        if len(found) == len(_IDX_FILES):
            return found, partial
        if found:
            missing = [stem for k, (stem, _) in _IDX_FILES.items() if k not in found]
            partial.append(f"{d} lacks {', '.join(missing)}")
    return None, partial


def _load_array_file(path: Path) -> _Source:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist; check the path")
    ext = path.suffix.lower()
    try:
        if ext == ".csv":
            arrays = _read_csv(path)
        elif ext in (".npy", ".npz"):
            with open(path, "rb") as f:  # np.load leaks its own handle when a zip is corrupt
                loaded = np.load(f, allow_pickle=False)
                files = getattr(loaded, "files", None)  # an archive, whatever its extension
                arrays = {"x": loaded} if files is None else {k: loaded[k] for k in files}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            arrays = obj if isinstance(obj, dict) else {"x": obj}
        arrays = {str(k): _to_numpy(v) for k, v in arrays.items()}
    except Exception as err:
        # torch's own first line advises weights_only=False, which we refuse to use
        why = "not a torch.save file of tensors or arrays" if ext == ".pt" else _first_line(err)
        raise ValueError(f"cannot read {path} as a {ext} data file: {why}") from err
    x = _pick(arrays, "x", "data", "X")
    if x is None and len(arrays) != 1:
        raise ValueError(
            f"{path} has no data array: expected key 'x', 'data' or 'X', found {sorted(arrays)}"
        )
    x = next(iter(arrays.values())) if x is None else x
    y, x_test, y_test = (_pick(arrays, *k) for k in (("y", "labels"), ("x_test",), ("y_test",)))
    return _Source(path.stem, x, y, x_test, y_test, origin=str(path))


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    first = [cell.strip().strip("\"'").lower() for cell in lines[0].split(",")] if lines else []
    has_header = not all(_is_number(cell) for cell in first)
    rows = lines[1:] if has_header else lines
    if not rows:
        raise ValueError("no data rows (empty dataset)")
    table = np.loadtxt(rows, delimiter=",", ndmin=2, dtype=np.float64)
    if has_header and len(first) != table.shape[1]:
        raise ValueError(f"header has {len(first)} columns but rows have {table.shape[1]}")
    for label in ("label", "y"):
        if has_header and label in first:
            j = first.index(label)
            return {"x": np.delete(table, j, axis=1), "y": table[:, j]}
    return {"x": table}


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


def _check_x(x: np.ndarray, what: str) -> np.ndarray:
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


def _check_labels(y: np.ndarray | None, n: int, what: str) -> torch.Tensor | None:
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


def _to_tensor(x: np.ndarray, dtype: torch.dtype, scale: float) -> torch.Tensor:
    out = torch.from_numpy(np.require(x, requirements=["C", "W"])).to(dtype)
    return out * scale if scale != 1 else out


def _value_range(*xs: torch.Tensor) -> tuple[float, float]:
    xs = tuple(x for x in xs if x.numel())
    return min(x.min().item() for x in xs), max(x.max().item() for x in xs)


def _infer_likelihood(*xs: torch.Tensor) -> str:
    lo, hi = _value_range(*xs)
    integral = all(torch.equal(x, x.round()) for x in xs)
    if integral and lo >= 0:
        return "bernoulli" if hi <= 1 else "poisson"
    return "continuous_bernoulli" if lo >= 0 and hi <= 1 else "gaussian"
