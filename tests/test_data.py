"""Tests for ppvae.data: sources, splits, binarisation, batching and error messages.

Everything runs offline on small files written into ``tmp_path``; the system data directory and
the download cache are redirected there so results never depend on the machine.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import ppvae
from ppvae import data
from ppvae.data import load_dataset, read_idx
from ppvae.inference.batches import BatchLoader, binarize_once
from ppvae.readers import csv_header, read_array_file

N_TRAIN, N_TEST = 50, 20
IDX_NAMES = {
    "x": "train-images-idx3-ubyte",
    "y": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def idx_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "y": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def _write_idx(directory: Path, arrays: dict[str, np.ndarray], gz: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_NAMES.items():
        if gz:
            with gzip.open(directory / f"{stem}.gz", "wb") as f:
                f.write(_idx_bytes(arrays[key]))
        else:
            (directory / stem).write_bytes(_idx_bytes(arrays[key]))
    return directory


def _rows(ds: data.Dataset) -> list[tuple[float, ...]]:
    """All datapoints (with label) of every split, sorted, to compare up to the split order."""
    rows = []
    for split in ("train", "val", "test"):
        x = getattr(ds, split).reshape(len(getattr(ds, split)), -1).double()
        y = getattr(ds, f"{split}_labels")
        y = torch.zeros(len(x)) if y is None else y.double()
        rows += [tuple(r) for r in torch.cat([x, y[:, None]], 1).tolist()]
    return sorted(rows)


def _expected_rows(x: np.ndarray, y: np.ndarray | None = None) -> list[tuple[float, ...]]:
    y = np.zeros(len(x)) if y is None else y
    flat = np.concatenate([x.reshape(len(x), -1).astype(np.float64), y[:, None]], 1)
    return sorted(tuple(r) for r in flat.tolist())


# --- IDX sources ---------------------------------------------------------------------------


def test_idx_gz_torchvision_layout_via_data_dir(tmp_path: Path, idx_arrays) -> None:
    _write_idx(tmp_path / "root" / "FashionMNIST" / "raw", idx_arrays, gz=True)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "root", binarize=None)
    assert ds.name == "fashion-mnist" and ds.event_shape == (1, 28, 28)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45, 5, N_TEST)
    assert ds.train.dtype == torch.float32 and 0 <= ds.train.min() and ds.train.max() <= 1
    assert ds.likelihood == "continuous_bernoulli" and ds.binarize is None
    assert ds.num_labels == int(max(idx_arrays["y"].max(), idx_arrays["y_test"].max())) + 1
    torch.testing.assert_close(ds.test, torch.from_numpy(idx_arrays["x_test"][:, None]) / 255)
    assert ds.test_labels.tolist() == idx_arrays["y_test"].tolist()
    x = np.concatenate([idx_arrays["x"], idx_arrays["x_test"]]).astype(np.float32) / 255
    y = np.concatenate([idx_arrays["y"], idx_arrays["y_test"]])
    ds64 = load_dataset("fashion_mnist", data_dir=tmp_path / "root", binarize=None)
    np.testing.assert_allclose(np.array(_rows(ds64)), np.array(_expected_rows(x, y)), atol=1e-6)


def test_idx_flat_plain_via_env(tmp_path: Path, idx_arrays, monkeypatch) -> None:
    monkeypatch.setenv("PPVAE_DATA", str(_write_idx(tmp_path / "flat", idx_arrays, gz=False)))
    ds = load_dataset("mnist")
    assert ds.binarize == "dynamic" and ds.likelihood == "bernoulli"
    assert ds.train.shape == (45, 1, 28, 28) and ds.test.shape == (N_TEST, 1, 28, 28)
    # train keeps grey levels for per-epoch draws; evaluation splits are binarised once
    assert not torch.isin(ds.train, torch.tensor([0.0, 1.0])).all()
    for split in (ds.val, ds.test):
        assert torch.isin(split, torch.tensor([0.0, 1.0])).all()
    again = load_dataset("mnist")
    assert torch.equal(again.test, ds.test) and torch.equal(again.val, ds.val)
    assert "dynamic" in ds.describe() and "10 classes" in ds.describe()


def test_idx_debian_system_layout(idx_arrays) -> None:
    _write_idx(data.SYSTEM_DATA_DIR / "fashion-mnist", idx_arrays, gz=True)
    ds = load_dataset("fashion-mnist", val_fraction=0.0)
    assert len(ds.train) == N_TRAIN and len(ds.val) == 0 and len(ds.test) == N_TEST


def test_val_split_depends_on_seed_only(tmp_path: Path, idx_arrays) -> None:
    root = _write_idx(tmp_path / "flat", idx_arrays, gz=False)
    a, b, c = (load_dataset("kmnist", data_dir=root, seed=s, val_fraction=0.2) for s in (0, 0, 1))
    assert torch.equal(a.val, b.val) and torch.equal(a.train_labels, b.train_labels)
    assert not torch.equal(a.val, c.val)
    assert torch.equal(a.test, c.test)  # the test split never moves with the seed


def test_download_uses_torchvision_class(tmp_path: Path, idx_arrays, monkeypatch) -> None:
    import torchvision.datasets

    calls = []

    def fake_fashion(root: str, train: bool, download: bool) -> None:
        calls.append((root, download))
        _write_idx(Path(root) / "FashionMNIST" / "raw", idx_arrays, gz=True)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion)
    ds = load_dataset("fashion-mnist", download=True, binarize="static")
    assert calls == [(str(tmp_path / "cache"), True)] and len(ds.test) == N_TEST
    load_dataset("fashion-mnist")  # now found in the cache without downloading
    assert len(calls) == 1


# --- digits and array files ----------------------------------------------------------------


def test_digits() -> None:
    ds = load_dataset("digits")
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert len(ds.test) == round(0.2 * 1797) and len(ds.val) == round(0.1 * (1797 - len(ds.test)))
    assert ds.event_shape == (1, 8, 8) and ds.train.shape[1:] == (1, 8, 8)
    assert ds.likelihood == "binomial" and ds.likelihood_kwargs == {"total_count": 16}
    assert ds.binarize is None and ds.num_labels == 10
    values = torch.cat([ds.train, ds.val, ds.test])
    assert values.min() == 0 and values.max() == 16 and torch.equal(values, values.round())
    assert torch.equal(load_dataset("digits", seed=3).test, ds.test)
    assert "binomial (total_count=16)" in ds.describe() and "1294" in ds.describe()


def test_npy_roundtrip_images_gaussian(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(30, 5, 6)).astype(np.float32)
    np.save(tmp_path / "imgs.npy", x)
    ds = load_dataset(tmp_path / "imgs.npy")
    assert ds.name == "imgs" and ds.event_shape == (1, 5, 6) and ds.likelihood == "gaussian"
    assert ds.train_labels is None and ds.num_labels is None
    assert _rows(ds) == _expected_rows(x)


def test_npz_roundtrip_with_labels_bernoulli(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 2, (40, 7)), rng.integers(0, 3, 40)
    np.savez(tmp_path / "bits.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "bits.npz"), binarize="auto")
    assert ds.likelihood == "bernoulli" and ds.binarize is None and ds.event_shape == (7,)
    assert ds.num_labels == 3 and ds.train_labels.dtype == torch.int64
    assert _rows(ds) == _expected_rows(x, y)


def test_csv_roundtrip_with_label_column_poisson(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x, y = rng.poisson(3.0, (25, 4)), rng.integers(0, 5, 25)
    table = np.column_stack([x[:, :2], y, x[:, 2:]])
    np.savetxt(tmp_path / "counts.csv", table, delimiter=",", header="a,b,label,c,d", comments="")
    ds = load_dataset(tmp_path / "counts.csv", dtype=torch.float64)
    assert ds.likelihood == "poisson" and ds.event_shape == (4,) and ds.train.dtype == torch.float64
    assert _rows(ds) == _expected_rows(x, y)
    np.savetxt(tmp_path / "nohead.csv", x, delimiter=",")
    assert _rows(load_dataset(tmp_path / "nohead.csv")) == _expected_rows(x)


def test_pt_dict_roundtrip_with_explicit_test(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(4)
    x, x_test = torch.rand(30, 3, 4, 4, generator=gen), torch.rand(8, 3, 4, 4, generator=gen)
    y, y_test = torch.arange(30) % 4, torch.arange(8) % 4
    torch.save({"x": x, "y": y, "x_test": x_test, "y_test": y_test}, tmp_path / "rgb.pt")
    ds = load_dataset(tmp_path / "rgb.pt", val_fraction=0.2)
    assert ds.likelihood == "continuous_bernoulli" and ds.event_shape == (3, 4, 4)
    assert torch.equal(ds.test, x_test) and torch.equal(ds.test_labels, y_test)
    assert len(ds.val) == 6 and ds.num_labels == 4
    assert sorted(map(tuple, torch.cat([ds.train, ds.val]).flatten(1).tolist())) == sorted(
        map(tuple, x.flatten(1).tolist())
    )


# --- binarisation --------------------------------------------------------------------------


def _grey_file(tmp_path: Path) -> Path:
    np.save(tmp_path / "grey.npy", np.random.default_rng(5).uniform(size=(60, 1, 4, 4)))
    return tmp_path / "grey.npy"


def test_dynamic_binarisation_redraws_each_epoch(tmp_path: Path) -> None:
    ds = load_dataset(_grey_file(tmp_path), binarize="dynamic")
    assert ds.binarize == "dynamic" and ds.likelihood == "bernoulli"
    loader = ds.loader("train", batch_size=len(ds.train), shuffle=False, seed=0)
    (first, _), (second, _) = next(iter(loader)), next(iter(loader))
    assert torch.isin(first, torch.tensor([0.0, 1.0])).all() and not torch.equal(first, second)
    val_batch = next(iter(ds.loader("val", batch_size=len(ds.val))))[0]
    assert torch.equal(val_batch, ds.val)  # evaluation data is never redrawn


def test_static_and_threshold_binarisation(tmp_path: Path) -> None:
    path = _grey_file(tmp_path)
    ds = load_dataset(path, binarize="static")
    assert torch.isin(torch.cat([ds.train, ds.val, ds.test]), torch.tensor([0.0, 1.0])).all()
    assert torch.equal(load_dataset(path, binarize="static").train, ds.train)
    loader = ds.loader(batch_size=len(ds.train), shuffle=False)
    assert torch.equal(next(iter(loader))[0], next(iter(loader))[0])
    grey = load_dataset(path, binarize=None)
    assert grey.likelihood == "continuous_bernoulli"
    assert torch.equal(load_dataset(path, binarize="threshold").train, (grey.train > 0.5).float())


# --- BatchLoader ---------------------------------------------------------------------------


def _epoch(loader: BatchLoader) -> list[list[int]]:
    return [xb[:, 0].long().tolist() for xb, _ in loader]


@pytest.mark.parametrize(("n", "batch_size", "drop_last"), [(23, 5, False), (23, 5, True)])
def test_loader_covers_every_index_once(n: int, batch_size: int, drop_last: bool) -> None:
    x, y = torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) * 10
    loader = BatchLoader(x, y, batch_size=batch_size, seed=0, drop_last=drop_last)
    batches = list(loader)
    assert len(batches) == len(loader) == (4 if drop_last else 5) and loader.num_data == n
    seen = torch.cat([xb[:, 0] for xb, _ in batches]).long()
    assert all(torch.equal(yb, xb[:, 0].long() * 10) for xb, yb in batches)
    if drop_last:
        assert len(seen) == 20 and len(set(seen.tolist())) == 20
    else:
        assert sorted(seen.tolist()) == list(range(n))
    assert _epoch(BatchLoader(x, batch_size=10, shuffle=False)) == [
        list(range(10)),
        list(range(10, 20)),
        [20, 21, 22],
    ]
    assert next(iter(BatchLoader(x, batch_size=4)))[1] is None


def test_loader_seeded_shuffle_and_resume() -> None:
    x = torch.arange(40, dtype=torch.float32)[:, None]
    a, b = BatchLoader(x, batch_size=8, seed=7), BatchLoader(x, batch_size=8, seed=7)
    first = [_epoch(a) for _ in range(2)]
    assert first == [_epoch(b) for _ in range(2)] and first[0] != first[1]
    assert _epoch(BatchLoader(x, batch_size=8, seed=8)) != first[0]
    state = a.state_dict()
    expected = [_epoch(a) for _ in range(2)]
    resumed = BatchLoader(x, batch_size=8, seed=123)
    resumed.load_state_dict(state)
    assert resumed.epoch == 2 and [_epoch(resumed) for _ in range(2)] == expected
    # a state taken mid-epoch resumes with the next epoch, as the uninterrupted run does
    c = BatchLoader(x, batch_size=8, seed=7)
    next(iter(c))
    mid = c.state_dict()
    d = BatchLoader(x, batch_size=8)
    d.load_state_dict(mid)
    assert _epoch(d) == first[1]


def test_loader_global_seed_reproducible() -> None:
    x = torch.rand(16, 2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        a = BatchLoader(x, batch_size=4, dynamic_binarize=True)
        torch.manual_seed(0)
        b = BatchLoader(x, batch_size=4, dynamic_binarize=True)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))


def test_binarize_once_is_fixed_and_leaves_the_global_stream_alone() -> None:
    x = torch.rand(30, 4, generator=torch.Generator().manual_seed(1))
    state = torch.get_rng_state()
    a, b = binarize_once(x, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    # One private stream, drawn in order: the same first draw every time, a second one after.
    assert torch.equal(binarize_once(x)[0], a) and not torch.equal(a, b)
    with pytest.raises(ValueError, match=r"needs data in \[0, 1\], got range \[0, 2\]"):
        binarize_once(x, torch.tensor([[0.0, 2.0]]))


# --- errors --------------------------------------------------------------------------------


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*fashion-mnist.*\.npz"):
        load_dataset("cifar")


def test_missing_idx_files_says_where_and_how(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PPVAE_DATA", str(tmp_path / "env"))
    (tmp_path / "mine").mkdir()  # a folder without the files (a missing one is refused first)
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    message = str(info.value)
    for phrase in ("mine", "env", str(data.SYSTEM_DATA_DIR / "fashion-mnist"), "FashionMNIST/raw",
                   "data_dir=", "--data-dir", "PPVAE_DATA", "apt-get install dataset-fashion-mnist",
                   "download=True", "--download"):  # fmt: skip
        assert phrase in message
    assert "\n" not in message
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist")
    assert "apt-get" not in str(info.value)


def test_incomplete_idx_set_is_reported(tmp_path: Path, idx_arrays) -> None:
    root = _write_idx(tmp_path / "part", idx_arrays, gz=False)
    (root / IDX_NAMES["y_test"]).unlink()
    with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=root)


def test_missing_array_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_dataset(tmp_path / "nothere.npz")


def test_read_array_file_takes_ood_and_label_columns_out_of_a_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x, y, ood = rng.integers(0, 5, (30, 3)), rng.integers(0, 3, 30), rng.integers(0, 2, 30)
    table = np.column_stack([x[:, :1], ood, x[:, 1:], y])
    path = tmp_path / "mixed.csv"
    np.savetxt(path, table, delimiter=",", fmt="%d", header='a,"IS_OOD",b,c,label', comments="")
    arrays = read_array_file(path)
    np.testing.assert_array_equal(arrays.x, x)
    np.testing.assert_array_equal(arrays.y, y)
    np.testing.assert_array_equal(arrays.ood, ood)
    assert arrays.ood.dtype == np.int64 and arrays.x_test is None
    ds = load_dataset(path)  # the flags are no feature to train on
    assert ds.event_shape == (3,) and _rows(ds) == _expected_rows(x, y)


def test_read_array_file_reads_ood_from_an_npz(tmp_path: Path) -> None:
    x, ood = np.arange(12.0).reshape(4, 3), np.array([1, 0, 0, 1])
    np.savez(tmp_path / "flags.npz", x=x, is_ood=ood)
    arrays = read_array_file(tmp_path / "flags.npz")
    np.testing.assert_array_equal(arrays.x, x)
    np.testing.assert_array_equal(arrays.ood, ood)
    assert arrays.y is None
    np.savez(tmp_path / "plain.npz", x=x)
    assert read_array_file(tmp_path / "plain.npz").ood is None


@pytest.mark.parametrize(
    ("ood", "phrase"), [([0, 2, 1, 0], r"0 \(in\) or 1 \(out\)"), ([0, 1], "2 ood values for 4")]
)
def test_bad_ood_flags(tmp_path: Path, ood: list[int], phrase: str) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 2)), ood=np.array(ood))
    with pytest.raises(ValueError, match=phrase):
        read_array_file(tmp_path / "bad.npz")


def test_csv_header_is_any_line_with_a_cell_that_is_not_a_number() -> None:
    assert csv_header("1,2.5,-3e4, nan") is None
    assert csv_header(' "A", b ,label') == ["a", "b", "label"]
    assert csv_header("1,x") == ["1", "x"]


@pytest.mark.parametrize(
    ("corrupt", "phrase"),
    [
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "not an IDX ubyte file"),
        (lambda b: b[:-7], "truncated"),
        (lambda b: b[:6], "truncated"),
        (lambda b: b"not gzip at all", "cannot read IDX file"),
    ],
)
def test_bad_idx_files(tmp_path: Path, idx_arrays, corrupt, phrase: str) -> None:
    root = _write_idx(tmp_path / "FashionMNIST" / "raw", idx_arrays, gz=True)
    path = root / f"{IDX_NAMES['x']}.gz"
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if phrase == "cannot read IDX file":
        path.write_bytes(corrupt(raw))
    else:
        with gzip.open(path, "wb") as f:
            f.write(corrupt(raw))
    with pytest.raises(ValueError, match=phrase) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_labels_as_images(tmp_path: Path, idx_arrays) -> None:
    (tmp_path / "labels").write_bytes(_idx_bytes(idx_arrays["y"]))
    assert read_idx(tmp_path / "labels").shape == (N_TRAIN,)
    with pytest.raises(ValueError, match="expected 00000803"):
        read_idx(tmp_path / "labels", ndim=3)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.npy", b"\x93NUMPY garbage"),
        ("bad.npz", b"PK\x03\x04 not really a zip"),
        ("bad.pt", b"garbage"),
        ("bad.csv", b"1,2,3\n4,five,6\n"),
        ("ragged.csv", b"a,b\n1,2\n3\n"),
    ],
)
def test_unreadable_array_files(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"cannot read .*{name}"):
        load_dataset(tmp_path / name)


def test_non_finite_values_counted(tmp_path: Path) -> None:
    x = np.ones((10, 3))
    x[1, 2], x[4, 0] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        load_dataset(tmp_path / "nan.npy")


@pytest.mark.parametrize("shape", [(10,), (2, 2, 2, 2, 2)])
def test_wrong_rank(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "rank.npy", np.zeros(shape))
    with pytest.raises(ValueError, match=rf"got {len(shape)}-D shape"):
        load_dataset(tmp_path / "rank.npy")


def test_empty_dataset(tmp_path: Path) -> None:
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="empty dataset"):
        load_dataset(tmp_path / "empty.npy")
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="empty dataset"):
        load_dataset(tmp_path / "empty.csv")


def test_bad_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "short.npz", x=np.zeros((10, 2)), y=np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="labels have shape"):
        load_dataset(tmp_path / "short.npz")
    np.savez(tmp_path / "frac.npz", x=np.zeros((10, 2)), labels=np.full(10, 1.5))
    with pytest.raises(ValueError, match="non-negative integers"):
        load_dataset(tmp_path / "frac.npz")
    np.savez(tmp_path / "many.npz", a=np.zeros((10, 2)), b=np.zeros(10))
    with pytest.raises(ValueError, match="no data array"):
        load_dataset(tmp_path / "many.npz")


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"binarize": "sometimes"}, "unknown binarize"),
    ],
)
def test_bad_arguments(kwargs: dict, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        load_dataset("digits", **kwargs)


def test_bad_loader_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(torch.zeros(4, 1), batch_size=0)
    with pytest.raises(ValueError, match="labels"):
        BatchLoader(torch.zeros(4, 1), torch.zeros(3), batch_size=2)
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("digits").loader("holdout")


def test_digits_counts_are_scaled_to_unit_interval_before_binarising() -> None:
    grey = load_dataset("digits", binarize=None)
    ds = load_dataset("digits", binarize="dynamic")
    assert ds.likelihood == "bernoulli" and ds.likelihood_kwargs == {}
    torch.testing.assert_close(ds.train, grey.train / 16)  # grey levels kept for draws
    for split in (ds.val, ds.test):
        assert torch.isin(split, torch.tensor([0.0, 1.0])).all()
    assert 0.2 < ds.test.mean() < 0.8  # binarised from the scaled levels, not all ones
    vae = ppvae.VAE(ds.event_shape, 2, likelihood="bernoulli", hidden=(16,))
    hist = ppvae.fit(vae, ds, epochs=2, progress=False, seed=0)  # the loader binarises
    assert len(hist.val_elbo) == 2 and all(math.isfinite(v) for v in hist.val_elbo)


def test_values_outside_unit_interval_without_a_known_total_are_not_binarised(
    tmp_path: Path,
) -> None:
    np.save(tmp_path / "counts.npy", np.arange(40.0).reshape(10, 4) % 5)
    with pytest.raises(ValueError, match=r"needs values in \[0, 1\].*\[0, 4\]"):
        load_dataset(tmp_path / "counts.npy", binarize="static")


def test_a_missing_data_dir_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere \(--data-dir\) is not a folder"):
        load_dataset("mnist", data_dir=tmp_path / "nowhere")


def test_a_file_of_strings_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "words.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match=r"words\.npy holds <U1 values, not numbers"):
        read_array_file(path)
