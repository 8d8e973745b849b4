"""dSprites-style images with known generative factors, rendered in code, and the original set.

:func:`render_sprites` draws binary images of a square, an ellipse or a heart at every
combination of scale, orientation and x/y position on a grid, as in the dSprites dataset
(Matthey et al. 2017; Higgins et al. 2017), at a small resolution that trains on a few CPU
cores in minutes. Rendering is vectorised over all images of one (shape, scale,
orientation) triple: each pixel centre is mapped into the shape's own frame (translate,
rotate by −θ, divide by the scale) and tested against the shape's implicit inequality, so
there is no Python loop over pixels or positions. :func:`load_sprites` caches the result on
disk (one ``.npz`` per setting, written atomically) so later calls only read it.

:func:`read_dsprites` reads the original ``dsprites_ndarray_*.npz`` archive when a user has
it; it is never downloaded.

References
----------
Matthey, Higgins, Hassabis & Lerchner (2017), "dSprites: Disentanglement testing Sprites
dataset", https://github.com/deepmind/dsprites-dataset.
Higgins et al. (2017), "β-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework", ICLR.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppvae.readers import read_dsprites_npz

__all__ = [
    "DSPRITES_FILE",
    "FACTOR_NAMES",
    "SHAPES",
    "Sprites",
    "load_sprites",
    "read_dsprites",
    "render_sprites",
]

SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DEFAULT_GRID = (3, 6, 10, 16, 16)
# Half-width of a shape at scale 1 as a fraction of the image side, and the margin that
# keeps the largest rotated shape (a square's half-diagonal is √2 half-widths) inside it.
_HALF_WIDTH = 0.18
_MARGIN = _HALF_WIDTH * 2**0.5
_SCALE_RANGE = (0.5, 1.0)  # as dSprites
_CACHE_VERSION = 1  # bump when the rendering changes, so stale caches are not read


@dataclass(frozen=True)
class Sprites:
    """Images ``(N, 1, H, W)`` (uint8, 0 or 1), integer factor indices ``(N, 5)`` and names."""

    images: np.ndarray
    factors: np.ndarray
    factor_names: tuple[str, ...]


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v) of the shape's own frame (half-width 1, v up) lie in it."""
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "ellipse":
        return u**2 + (v / 0.5) ** 2 <= 1.0
    # The heart curve (x² + y² − 1)³ = x² y³, shrunk to half-width 1 and centred.
    x, y = u * 1.2, v * 1.2 + 0.15
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def render_sprites(
    resolution: int = 32, grid: Sequence[int] = DEFAULT_GRID, *, supersample: int = 3
) -> Sprites:
    """Render every combination of the five factors once, in row-major factor order.

    Parameters
    ----------
    resolution
        Image side in pixels.
    grid
        Number of values of (shape, scale, orientation, x, y); at most 3 shapes, taken in
        the order of :data:`SHAPES`. Scales are evenly spaced in [0.5, 1], orientations in
        [0, 2π) (the endpoint is left out: it repeats 0), positions in the image so that
        every sprite stays inside it.
    supersample
        Sub-pixels per side; a pixel is on when at least half of its sub-pixels are inside
        the shape, which keeps small sprites from vanishing between pixel centres.

    Returns
    -------
    Sprites
        ``factors[:, k]`` is the index of factor k's value; the image of row
        ``np.ravel_multi_index(factors[i], grid)`` is row i.
    """
    n_shape, n_scale, n_orient, n_x, n_y = (int(g) for g in grid)
    if len(grid) != 5 or min(grid) < 1 or n_shape > len(SHAPES):
        raise ValueError(f"grid must be 5 positive counts with at most 3 shapes, got {grid}")
    if resolution < 8 or supersample < 1:
        raise ValueError(f"resolution must be ≥ 8 and supersample ≥ 1, got {resolution}")
    scales = np.linspace(*_SCALE_RANGE, n_scale) if n_scale > 1 else np.ones(1)
    angles = np.linspace(0, 2 * np.pi, n_orient, endpoint=False)
    xs = np.linspace(_MARGIN, 1 - _MARGIN, n_x) if n_x > 1 else np.full(1, 0.5)
    ys = np.linspace(_MARGIN, 1 - _MARGIN, n_y) if n_y > 1 else np.full(1, 0.5)
    side = resolution * supersample
    centres = (np.arange(side) + 0.5) / side  # sub-pixel centres in [0, 1]
    # (x, y, rows, cols): the offset of each sub-pixel from each sprite centre; image rows
    # grow downwards, so v = centre_y − row coordinate points up.
    du = centres[None, None, None, :] - xs[:, None, None, None]
    dv = ys[None, :, None, None] - centres[None, None, :, None]
    out = np.empty((n_shape, n_scale, n_orient, n_x, n_y, resolution, resolution), np.uint8)
    for s, shape in enumerate(SHAPES[:n_shape]):
        for c, scale in enumerate(scales):
            for o, angle in enumerate(angles):
                cos, sin = np.cos(angle), np.sin(angle)
                radius = _HALF_WIDTH * scale
                u = (cos * du + sin * dv) / radius
                v = (-sin * du + cos * dv) / radius
                hit = _inside(shape, u, v).reshape(
                    n_x, n_y, resolution, supersample, resolution, supersample
                )
                out[s, c, o] = hit.mean(axis=(3, 5)) >= 0.5
    factors = np.stack(np.unravel_index(np.arange(out[..., 0, 0].size), grid[:5]), axis=1)
    images = out.reshape(-1, 1, resolution, resolution)
    return Sprites(images, factors.astype(np.int64), FACTOR_NAMES)


def load_sprites(
    cache_dir: str | os.PathLike[str] | None,
    resolution: int = 32,
    grid: Sequence[int] = DEFAULT_GRID,
) -> Sprites:
    """:func:`render_sprites`, read from ``cache_dir`` when rendered there before.

    The file name holds a hash of the settings and the renderer's version; it is written
    to a temporary file and renamed, so an interrupted call never leaves a partial cache.
    ``cache_dir=None`` renders without caching. An unreadable cache file is rendered anew.
    """
    if cache_dir is None:
        return render_sprites(resolution, grid)
    key = json.dumps([_CACHE_VERSION, int(resolution), [int(g) for g in grid]])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = Path(cache_dir).expanduser() / f"dsprites-lite-{resolution}px-{digest}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                images = np.unpackbits(f["bits"])[: int(f["size"])]
                return Sprites(
                    images.reshape(f["shape"]), f["factors"], tuple(str(n) for n in f["names"])
                )
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    sprites = render_sprites(resolution, grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(
                f,
                bits=np.packbits(sprites.images),
                size=sprites.images.size,
                shape=sprites.images.shape,
                factors=sprites.factors,
                names=np.array(sprites.factor_names),
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sprites


def read_dsprites(roots: Sequence[Path]) -> Sprites:
    """The original 737,280 dSprites images and their factor indices, from the first root
    holding :data:`DSPRITES_FILE` (directly or in a ``dsprites`` subfolder).

    The colour factor (one value) is dropped; ``factors`` are ``latents_classes`` for
    shape, scale, orientation (40 values), x and y (32 each). The images take 3 GB as
    bytes, four times that as float32 tensors.

    Raises
    ------
    FileNotFoundError
        Naming every place searched and how to get the file.
    """
    candidates = [
        Path(r).expanduser() / sub / DSPRITES_FILE for r in roots for sub in ("", "dsprites")
    ]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"dsprites not found: looked for {DSPRITES_FILE} in "
            f"{', '.join(str(p.parent) for p in candidates)}; fix: download it from "
            "https://github.com/deepmind/dsprites-dataset and pass data_dir= (--data-dir) or "
            "set PPVAE_DATA to its folder, or use the generated 'dsprites-lite'"
        )
    images, classes = read_dsprites_npz(path)
    return Sprites(images[:, None], classes[:, 1:].astype(np.int64), FACTOR_NAMES)
