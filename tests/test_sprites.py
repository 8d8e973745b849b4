"""dsprites-lite: the generated ground-truth set, its cache, and factors through the data layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ppvae
from ppvae.sprites import FACTOR_NAMES, load_sprites, read_dsprites, render_sprites

GRID = (3, 3, 5, 4, 4)  # 72° steps: no adjacent pair is a symmetry of the square or ellipse


@pytest.fixture(scope="module")
def sprites():
    return render_sprites(32, GRID)


def test_every_combination_once(sprites):
    assert sprites.images.shape == (int(np.prod(GRID)), 1, 32, 32)
    assert set(np.unique(sprites.images)) == {0, 1}
    assert sprites.factor_names == FACTOR_NAMES
    for k, count in enumerate(GRID):
        assert (
            np.bincount(sprites.factors[:, k]).tolist() == [len(sprites.factors) // count] * count
        )
    assert len({tuple(r) for r in sprites.factors}) == len(sprites.factors)
    # row i is the image of its factor indices (row-major order)
    assert np.array_equal(
        np.ravel_multi_index(sprites.factors.T, GRID), np.arange(len(sprites.factors))
    )
    assert (sprites.images.reshape(len(sprites.images), -1).sum(1) > 0).all()


def test_each_factor_changes_the_image(sprites):
    images = sprites.images.reshape(*GRID, 32, 32)
    for k in range(5):
        moved = np.moveaxis(images, k, 0)
        differs = (moved[1:] != moved[:-1]).any(axis=(-2, -1))
        assert differs.all(), FACTOR_NAMES[k]


def test_shapes_differ_and_scale_grows_area(sprites):
    images = sprites.images.reshape(*GRID, 32, 32).astype(float)
    area = images.sum(axis=(-2, -1))
    assert (np.diff(area.mean(axis=(0, 2, 3, 4))) > 0).all()
    square, ellipse, heart = images[:, -1, 0, 2, 2]
    assert (square != ellipse).sum() > 10 and (square != heart).sum() > 10
    assert (ellipse != heart).sum() > 10


def test_deterministic_and_cached(tmp_path, monkeypatch):
    first = load_sprites(tmp_path, 16, (2, 2, 2, 3, 3))
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr("ppvae.sprites.render_sprites", lambda *a, **k: pytest.fail("re-rendered"))
    again = load_sprites(tmp_path, 16, (2, 2, 2, 3, 3))
    assert np.array_equal(first.images, again.images)
    assert np.array_equal(first.factors, again.factors)


def test_load_dataset_splits_factors_like_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("PPVAE_DATA", str(tmp_path))
    ds = ppvae.load_dataset("dsprites-lite", resolution=16, grid=(2, 2, 2, 4, 4))
    assert ds.factor_names == FACTOR_NAMES and ds.likelihood == "bernoulli"
    assert len(ds.train_factors) == len(ds.train) and len(ds.test_factors) == len(ds.test)
    assert ds.factors.shape == (128, 5)
    assert list(tmp_path.glob("dsprites-lite-*.npz"))
    # each row keeps its own factors: re-render and compare the test split
    full = render_sprites(16, (2, 2, 2, 4, 4))
    rows = np.ravel_multi_index(ds.test_factors.numpy().T, (2, 2, 2, 4, 4))
    assert torch.equal(ds.test, torch.from_numpy(full.images[rows]).float())


def test_array_file_factors(tmp_path):
    x = np.random.default_rng(0).random((20, 4))
    factors = np.stack([np.arange(20) % 2, np.arange(20) % 5], 1)
    np.savez(tmp_path / "f.npz", x=x, factors=factors, factor_names=np.array(["a", "b"]))
    ds = ppvae.load_dataset(tmp_path / "f.npz", val_fraction=0.2)
    assert ds.factor_names == ("a", "b")
    assert sorted(ds.factors[:, 1].tolist()) == sorted(factors[:, 1].tolist())
    np.savez(tmp_path / "g.npz", x=x, factors=factors[:5])
    with pytest.raises(ValueError, match="factors must be integer indices of shape"):
        ppvae.load_dataset(tmp_path / "g.npz")


def test_original_dsprites(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"looked for dsprites_ndarray.*{tmp_path}"):
        read_dsprites([tmp_path])
    imgs = np.zeros((4, 64, 64), np.uint8)
    classes = np.array([[0, s, 1, 2, 3, 4] for s in range(3)] + [[0, 0, 5, 39, 31, 0]])
    np.savez(
        tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
        imgs=imgs,
        latents_classes=classes,
    )
    ds = ppvae.load_dataset("dsprites", data_dir=tmp_path, val_fraction=0.0)
    assert ds.event_shape == (1, 64, 64)
    assert sorted(map(tuple, ds.factors.tolist())) == sorted(map(tuple, classes[:, 1:].tolist()))


def test_batches_carry_factors(tmp_path, monkeypatch):
    monkeypatch.setenv("PPVAE_DATA", str(tmp_path))
    ds = ppvae.load_dataset("dsprites-lite", resolution=16, grid=(2, 2, 2, 4, 4))
    grid = (2, 2, 2, 4, 4)
    full = render_sprites(16, grid)
    seen = 0
    for xb, fb in ds.loader("train", batch_size=16, factors=True, seed=0):
        rows = np.ravel_multi_index(fb.numpy().T, grid)
        assert torch.equal(xb, torch.from_numpy(full.images[rows]).float())
        seen += len(xb)
    assert seen == len(ds.train)
    with pytest.raises(ValueError, match="no factors"):
        ppvae.load_dataset("digits").loader("train", factors=True)
