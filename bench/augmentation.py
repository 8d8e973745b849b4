"""Does VAE data augmentation help a classifier trained on few labels? (README table.)

On scikit-learn's digits (ppvae's fixed test split of 360 images), each seed keeps a
stratified 5 % of the labelled training split (64 of 1293 images, 6–7 per class) and
trains two classifiers — logistic regression and a small MLP — on

(a) the small set alone;
(b) the small set plus class-conditional samples of a conditional VAE trained on the small
    set only (``ppvae.augment(cvae, n_per_class=N)``, as draws x ~ p(x | z, y) and as
    means E[x | z, y] rounded to counts);
(c) the small set plus classic augmentation: every image shifted by one pixel up, down,
    left and right (zero fill), 4 copies;
(d) the small set plus posterior-neighbourhood samples of the same CVAE
    (``mode="posterior"``: about 10 N / 64 draws per real image from q(z | x, y),
    decoded), at temperature 1 and 0.5.

A diagnostic row gives the share of the added examples that a logistic regression trained
on all 1293 labelled training images assigns to their own label (how recognisable the
synthetic digits are; not a condition, since it uses labels the setting does not have).

Accuracy on the test split is reported as the mean over seeds with a 95 % Student-t
interval (mean ± t₀.₉₇₅,ₙ₋₁ s / √n), and so is the paired difference from (a) (each seed
uses the same small set for every condition, so the difference removes the luck of the
draw of the small set).

    .venv/bin/python -m bench.augmentation              # 10 seeds, about 3 minutes on one core
    .venv/bin/python -m bench.augmentation --seeds 3 --epochs 100   # a quick look
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

import ppvae
from ppvae.inference.rng import seeded

__all__ = [
    "CONDITIONS",
    "FIDELITY",
    "small_set",
    "train_cvae",
    "shift_augment",
    "run_experiment",
    "summarize",
    "markdown",
]

CONDITIONS = {
    "a": "(a) small set only",
    "b": "(b) + CVAE samples, x ~ p(x|z,y)",
    "b_mean": "(b') + CVAE means, E[x|z,y] rounded",
    "c": "(c) + shifts by ±1 pixel",
    "d": "(d) + CVAE posterior samples",
    "d_cool": "(d') + CVAE posterior samples, T = 0.5",
}
# A diagnostic, not a condition: the share of the added examples that a logistic regression
# trained on every labelled training image assigns to their own label.
FIDELITY = "added examples recognised (diagnostic)"


def shift_augment(x: torch.Tensor) -> torch.Tensor:
    """Four copies of images ``(N, C, H, W)`` shifted one pixel up, down, left, right."""
    out = []
    for dim, step in ((-2, 1), (-2, -1), (-1, 1), (-1, -1)):
        shifted = torch.roll(x, step, dims=dim)
        edge = 0 if step == 1 else -1  # the row or column that wrapped round: blank it
        shifted.select(dim, edge).zero_()
        out.append(shifted)
    return torch.cat(out)


def _classifiers(seed: int) -> dict[str, Callable[[], Any]]:
    return {
        "logistic regression": lambda: LogisticRegression(C=1.0, max_iter=2000),
        "MLP (64)": lambda: MLPClassifier((64,), alpha=1e-3, max_iter=500, random_state=seed),
    }


def _accuracy(make: Callable[[], Any], x: torch.Tensor, y: torch.Tensor, test: Any) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = make().fit(x.flatten(1).numpy() / 16.0, y.numpy())
    return float(clf.score(test[0], test[1]))


def small_set(ds: ppvae.Dataset, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stratified ``fraction`` of the labelled training split (images and labels)."""
    keep, _ = train_test_split(
        np.arange(len(ds.train)),
        train_size=fraction,
        stratify=ds.train_labels.numpy(),
        random_state=seed,
    )
    keep = torch.as_tensor(np.sort(keep))
    return ds.train[keep], ds.train_labels[keep]


def train_cvae(
    small: tuple[torch.Tensor, torch.Tensor],
    ds: ppvae.Dataset,
    seed: int,
    *,
    epochs: int = 300,
    latent_dim: int = 8,
    hidden: Sequence[int] = (128,),
    lr: float = 3e-3,
    batch_size: int = 32,
) -> ppvae.VAE:
    """A conditional VAE trained on the small set only (in eval mode)."""
    with seeded(seed):  # the initial weights
        vae = ppvae.VAE(
            ds.event_shape,
            latent_dim=latent_dim,
            likelihood=ds.likelihood,
            likelihood_kwargs=ds.likelihood_kwargs,
            hidden=tuple(hidden),
            num_labels=10,
        )
    x, y = small
    opts = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=False)
    ppvae.fit(vae, x, y=y, **opts)
    return vae.eval()


def _augmented_sets(
    small: tuple[torch.Tensor, torch.Tensor], vae: Any, n_per_class: int, seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    x, y = small
    per_row = max(1, round(10 * n_per_class / len(x)))
    extra = {
        "b": ppvae.augment(vae, n_per_class=n_per_class, seed=seed),
        "b_mean": ppvae.augment(vae, n_per_class=n_per_class, output="mean", seed=seed),
        "c": (shift_augment(x), y.repeat(4)),
        "d": ppvae.augment(vae, mode="posterior", source=small, n=per_row * len(x), seed=seed),
        "d_cool": ppvae.augment(
            vae, mode="posterior", source=small, n=per_row * len(x), temperature=0.5, seed=seed
        ),
    }
    sets = {"a": small}
    for key, (xa, ya) in extra.items():
        sets[key] = (torch.cat([x, xa]), torch.cat([y, ya]))
    return sets


def run_experiment(
    seeds: Sequence[int] = tuple(range(10)),
    *,
    fraction: float = 0.05,
    n_per_class: int = 50,
    epochs: int = 300,
    latent_dim: int = 8,
    hidden: Sequence[int] = (128,),
    lr: float = 3e-3,
    batch_size: int = 32,
    echo: Callable[[str], Any] = print,
) -> pd.DataFrame:
    """Test accuracy per seed, classifier and condition (a long table).

    Parameters
    ----------
    seeds
        One small set, CVAE and classifier initialisation per seed.
    fraction
        Share of the labelled training split kept (stratified by class).
    n_per_class
        CVAE samples per class in (b); (d) adds about as many in all.
    epochs, latent_dim, hidden, lr, batch_size
        Training of the CVAE on the small set.
    """
    ds = ppvae.load_dataset("digits")
    test = (ds.test.flatten(1).numpy() / 16.0, ds.test_labels.numpy())
    train = dict(epochs=epochs, latent_dim=latent_dim, hidden=tuple(hidden), lr=lr)
    judge = LogisticRegression(max_iter=2000).fit(
        ds.train.flatten(1).numpy() / 16.0, ds.train_labels
    )
    rows = []
    for seed in seeds:
        start = time.perf_counter()
        small = small_set(ds, fraction, seed)
        vae = train_cvae(small, ds, seed, batch_size=batch_size, **train)
        sets = _augmented_sets(small, vae, n_per_class, seed)
        for name, make in _classifiers(seed).items():
            for key, (x, y) in sets.items():
                acc = _accuracy(make, x, y, test)
                rows.append({"seed": seed, "classifier": name, "condition": key, "accuracy": acc})
        for key in ("b", "b_mean", "d", "d_cool"):
            x, y = (part[len(small[0]) :] for part in sets[key])  # the added examples only
            share = float(judge.score(x.flatten(1).numpy() / 16.0, y.numpy()))
            rows.append({"seed": seed, "classifier": FIDELITY, "condition": key, "accuracy": share})
        echo(f"seed {seed}: {len(small[0])} labelled images, {time.perf_counter() - start:.1f} s")
    return pd.DataFrame(rows)


def _t_interval(values: np.ndarray) -> tuple[float, float, float]:
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy and paired difference from (a), each with a 95 % t-interval."""
    rows = []
    for name, part in results.groupby("classifier", sort=False):
        wide = part.pivot(index="seed", columns="condition", values="accuracy")
        for key in [k for k in CONDITIONS if k in wide]:
            mean, lo, hi = _t_interval(wide[key].to_numpy())
            nan = (float("nan"),) * 3
            diff, dlo, dhi = _t_interval((wide[key] - wide["a"]).to_numpy()) if "a" in wide else nan
            rows.append(
                {
                    "classifier": name,
                    "training data": CONDITIONS[key],
                    "accuracy": mean,
                    "95% CI": (lo, hi),
                    "vs (a)": diff,
                    "vs (a) 95% CI": (dlo, dhi),
                    "seeds": len(wide),
                }
            )
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (accuracies in %; the diagnostic rows give shares)."""

    def pct(v: float) -> str:
        return f"{100 * v:.1f}"

    def ci(pair: tuple[float, float], sign: bool = False) -> str:
        f = "{:+.1f}" if sign else "{:.1f}"
        return f"[{f.format(100 * pair[0])}, {f.format(100 * pair[1])}]"

    lines = [
        "| classifier | training data | test accuracy % (95% CI) | vs (a), points (95% CI) |",
        "|---|---|---|---|",
    ]
    for r in summary.itertuples(index=False):
        acc = f"{pct(r.accuracy)} {ci(r[3])}"
        plain = r[1] == CONDITIONS["a"] or np.isnan(r[4])
        diff = "" if plain else f"{100 * r[4]:+.1f} {ci(r[5], True)}"
        lines.append(f"| {r.classifier} | {r[1]} | {acc} | {diff} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.augmentation", description=__doc__)
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds (default 10)")
    parser.add_argument("--epochs", type=int, default=300, help="CVAE epochs (default 300)")
    parser.add_argument("--n-per-class", type=int, default=50, help="CVAE samples per class")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = run_experiment(range(args.seeds), epochs=args.epochs, n_per_class=args.n_per_class)
    print(markdown(summarize(results)))
    print(f"\n{args.seeds} seeds in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
