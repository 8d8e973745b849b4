"""Datasets as in-memory tensors: named sets and array files, splits and binarisation.

Every split is held eagerly as a float tensor of shape ``(N, *event_shape)``: the sets this
library targets fit in memory, and batches are index slices of them
(:class:`~ppvae.inference.batches.BatchLoader`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppvae.inference.batches import BatchLoader, binarize_once
from ppvae.readers import (
    ARRAY_EXTENSIONS,
    check_labels,
    check_x,
    read_array_file,
    read_idx,
    read_idx_set,
)
from ppvae.sprites import DEFAULT_GRID, load_sprites, read_dsprites

__all__ = ["Dataset", "load_dataset", "read_idx"]

SYSTEM_DATA_DIR = Path("/usr/share/datasets")  # where Debian's dataset-* packages install
CACHE_DIR = Path("~/.cache/ppvae")  # default target of download=True
DATA_ENV_VAR = "PPVAE_DATA"
IDX_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
KNOWN_DATASETS = ("digits", *IDX_DATASETS, "dsprites-lite", "dsprites")
_BINARIZE_MODES = ("auto", "dynamic", "static", "threshold", None)
# A fixed seed, independent of `seed`: the test set must not move between runs, or their
# log-likelihoods would not be comparable (the evaluation binarisation is fixed the same way,
# by ppvae.inference.batches.binarize_once).
_TEST_SEED = 20_240_601
_TEST_FRACTION = 0.2
_BINARIZE_TEXT = {
    None: "none",
    "dynamic": "dynamic (fresh Bernoulli draw per training epoch; val/test drawn once)",
    "static": "static (one fixed Bernoulli draw)",
    "threshold": "threshold (x > 0.5)",
}


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
    train_factors: torch.Tensor | None = field(default=None, repr=False)
    val_factors: torch.Tensor | None = field(default=None, repr=False)
    test_factors: torch.Tensor | None = field(default=None, repr=False)
    factor_names: tuple[str, ...] | None = None

    @property
    def factors(self) -> torch.Tensor | None:
        """Integer factor indices ``(N, K)`` of train, val and test rows, in that order
        (the rows of ``torch.cat([ds.train, ds.val, ds.test])``), or ``None``."""
        if self.train_factors is None:
            return None
        return torch.cat([self.train_factors, self.val_factors, self.test_factors])

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
        factors: bool = False,
    ) -> BatchLoader:
        """A :class:`BatchLoader` over one split (shuffled by default for ``"train"`` only).

        Batches are ``(x, labels)``, or ``(x, factors)`` with ``factors=True`` (each
        batch's factor indices ``(B, K)``).
        """
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}: use 'train', 'val' or 'test'")
        second = getattr(self, f"{split}_factors" if factors else f"{split}_labels")
        if factors and second is None:
            raise ValueError(f"dataset {self.name} has no factors: pass factors=False")
        return BatchLoader(
            getattr(self, split),
            second,
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
    factors: np.ndarray | None = None  # integer factor indices (N, K), split like labels
    factors_test: np.ndarray | None = None
    factor_names: tuple[str, ...] | None = None


def _check_arguments(
    binarize: str | None,
    val_fraction: float,
    dtype: torch.dtype,
    data_dir: str | os.PathLike[str] | None,
    download: bool,
) -> None:
    """Refuse :func:`load_dataset` arguments that cannot work, before any data is read."""
    if binarize not in _BINARIZE_MODES:
        raise ValueError(f"unknown binarize={binarize!r}: use one of {_BINARIZE_MODES}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype such as torch.float32, got {dtype}")
    if data_dir is not None and not download and not Path(data_dir).expanduser().is_dir():
        # Otherwise the search would quietly fall through to another copy of the data.
        raise FileNotFoundError(
            f"data_dir {os.fspath(data_dir)} (--data-dir) is not a folder: give the folder "
            "holding the dataset's files, or leave it out to search the default places"
        )


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    binarize: str | None = "auto",
    val_fraction: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    resolution: int = 32,
    grid: Sequence[int] = DEFAULT_GRID,
) -> Dataset:
    """Load a named dataset or an array file into train/val/test tensors.

    Parameters
    ----------
    name_or_path
        ``"digits"`` (scikit-learn's 8x8 digits), ``"mnist"``, ``"fashion-mnist"``,
        ``"kmnist"``, ``"dsprites-lite"`` (generated, :mod:`ppvae.sprites`), ``"dsprites"``
        (the original archive, when on disk), or a path to a ``.npy``, ``.npz``, ``.csv``
        or ``.pt`` file whose rows are datapoints.
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
    resolution, grid
        ``"dsprites-lite"`` only: image side and numbers of (shape, scale, orientation,
        x, y) values (:func:`ppvae.sprites.render_sprites`); the images are cached in
        ``data_dir``, ``$PPVAE_DATA`` or ``~/.cache/ppvae``.

    Returns
    -------
    Dataset
    """
    _check_arguments(binarize, val_fraction, dtype, data_dir, download)
    src = _resolve(name_or_path, data_dir, download, resolution, grid)
    what = src.origin or src.name
    x = check_x(src.x, what)
    y = check_labels(src.y, len(x), what)
    f = _check_factors(src.factors, len(x), what)
    f_test = _check_factors(src.factors_test, 0 if src.x_test is None else len(src.x_test), what)
    if f is not None and src.x_test is not None and f_test is None:
        raise ValueError(f"{what}: has factors but no factors_test for x_test; add them")
    if src.x_test is None:
        perm = np.random.default_rng(_TEST_SEED).permutation(len(x))
        cut = len(x) - round(_TEST_FRACTION * len(x))
        pool_idx, test_idx = np.sort(perm[:cut]), np.sort(perm[cut:])
        x, x_test = x[pool_idx], x[test_idx]
        y, y_test = (None, None) if y is None else (y[pool_idx], y[test_idx])
        f, f_test = (None, None) if f is None else (f[pool_idx], f[test_idx])
    else:
        x_test = check_x(src.x_test, f"{what} (test)")
        y_test = check_labels(src.y_test, len(x_test), f"{what} (test)")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{what}: test rows have shape {x_test.shape[1:]}, train rows "
                f"{x.shape[1:]}; both must hold the same kind of datapoint"
            )
    pool, test = (_to_tensor(a, dtype, src.scale) for a in (x, x_test))
    likelihood, kwargs = src.likelihood or _infer_likelihood(pool, test), src.likelihood_kwargs
    mode = ("dynamic" if src.grey_images else None) if binarize == "auto" else binarize
    pool_eval = pool
    total = kwargs.get("total_count")
    if mode is not None and total:
        # Counts out of a known total (digits: 0..16) are grey levels on another scale:
        # scaled to [0, 1] they binarise as MNIST's 0..255 do.
        pool, test = pool / float(total), test / float(total)
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
            pool_eval, test = binarize_once(pool, test)
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
        train_factors=None if f is None else f[train_idx],
        val_factors=None if f is None else f[val_idx],
        test_factors=f_test if f is not None else None,
        factor_names=None if f is None else _factor_names(src.factor_names, f.shape[1]),
    )


def _check_factors(f: np.ndarray | None, n: int, what: str) -> torch.Tensor | None:
    """Factor indices: one row of non-negative integers per datapoint."""
    if f is None:
        return None
    if f.ndim != 2 or len(f) != n or f.dtype.kind not in "iuf" or not np.all(f == np.round(f)):
        raise ValueError(
            f"{what}: factors must be integer indices of shape ({n}, K), one row per "
            f"datapoint, got {f.dtype} {f.shape}"
        )
    return torch.from_numpy(f.astype(np.int64))


def _factor_names(names: tuple[str, ...] | None, k: int) -> tuple[str, ...]:
    return (
        tuple(names)
        if names is not None and len(names) == k
        else tuple(f"factor{i}" for i in range(k))
    )


def _resolve(
    name_or_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None,
    download: bool,
    resolution: int,
    grid: Sequence[int],
) -> _Source:
    text = os.fspath(name_or_path)
    key = text.lower().replace("_", "-")
    if isinstance(name_or_path, str) and key == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        kwargs = {"likelihood": "binomial", "likelihood_kwargs": {"total_count": 16}}
        return _Source("digits", digits.images[:, None], digits.target, **kwargs)
    if isinstance(name_or_path, str) and key in ("dsprites-lite", "dsprites"):
        env = os.environ.get(DATA_ENV_VAR)
        roots = [Path(d).expanduser() for d in (data_dir, env) if d] + [CACHE_DIR.expanduser()]
        if key == "dsprites":
            sp = read_dsprites([*roots, SYSTEM_DATA_DIR])
        else:
            sp = load_sprites(roots[0], resolution, grid)
        return _Source(key, sp.images, factors=sp.factors, factor_names=sp.factor_names)
    if isinstance(name_or_path, str) and key in IDX_DATASETS:
        return _load_idx(key, data_dir, download)
    if Path(text).suffix.lower() in ARRAY_EXTENSIONS:
        return _load_array_file(Path(text).expanduser())
    raise ValueError(
        f"unknown dataset {text!r}: use one of {', '.join(KNOWN_DATASETS)} or a "
        f"path to a {', '.join(ARRAY_EXTENSIONS)} file"
    )


def _load_idx(name: str, data_dir: str | os.PathLike[str] | None, download: bool) -> _Source:
    # The folders are read here, at call time, so that changing SYSTEM_DATA_DIR or CACHE_DIR
    # on this module takes effect.
    env = os.environ.get(DATA_ENV_VAR)
    user_roots = [Path(d).expanduser() for d in (data_dir, env) if d]
    roots = [*user_roots, CACHE_DIR.expanduser(), SYSTEM_DATA_DIR / name]
    target = (user_roots or [CACHE_DIR.expanduser()])[0] if download else None
    cls = IDX_DATASETS[name]
    arrays = read_idx_set(name, cls, roots, download_to=target, env_var=DATA_ENV_VAR)
    return _Source(name, **arrays, likelihood="bernoulli", scale=1 / 255, grey_images=True)


def _load_array_file(path: Path) -> _Source:
    a = read_array_file(path)  # its OOD flags, if any, matter to scoring, not to training
    names = None if a.factor_names is None else tuple(str(n) for n in a.factor_names)
    return _Source(
        path.stem,
        a.x,
        a.y,
        a.x_test,
        a.y_test,
        origin=str(path),
        factors=a.factors,
        factors_test=a.factors_test,
        factor_names=names,
    )


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
