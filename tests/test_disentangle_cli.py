"""The command line on a dataset with factors: β-TCVAE training, scores in metrics.json and
the report, and one-line errors for flags that do not fit together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ppvae.sprites import render_sprites
from tests.cli_checks import cli

TINY = ["--latent-dim", "4", "--hidden", "32", "--epochs", "2", "--lr", "0.01", "--quiet"]


@pytest.fixture
def sprites_file(tmp_path):
    sp = render_sprites(16, (2, 2, 2, 4, 4))
    path = tmp_path / "sprites.npz"
    np.savez(path, x=sp.images, factors=sp.factors, factor_names=np.array(sp.factor_names))
    return path


def test_tcvae_run_reports_disentanglement(sprites_file, tmp_path, capsys):
    run = tmp_path / "run"
    status, _, err = cli(
        capsys,
        "train",
        "--dataset",
        sprites_file,
        "--elbo",
        "tcvae",
        "--beta",
        "6",
        *TINY,
        "--out",
        run,
    )
    assert status == 0, err
    status, _, err = cli(capsys, "evaluate", run, "--num-samples", "10", "--quiet")
    assert status == 0, err
    dis = json.loads((run / "metrics.json").read_text())["disentanglement"]
    assert set(dis["scores"]) >= {"mig", "dci_disentanglement", "factor_vae", "beta_vae", "sap"}
    assert all(0 <= v <= 1 for v in dis["scores"].values())
    assert dis["factor_names"][0] == "shape" and np.shape(dis["normalised_mi"]) == (4, 5)
    assert dis["num_codes"] == 128
    status, _, err = cli(capsys, "report", run)
    assert status == 0, err
    page = (run / "report.html").read_text()
    assert "Disentanglement" in page and "Traversals ordered by factor" in page
    assert (run / "figures" / "mutual_information.png").is_file()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--elbo", "capacity", "--beta", "4"], "--gamma, not --beta"),
        (["--elbo", "tcvae", "--guide", "fullrank"], "--guide diagonal"),
        (["--elbo", "tcvae", "--kl-anneal", "3"], "--kl-anneal does not apply"),
    ],
)
def test_flags_that_do_not_fit_together(flags, fragment, tmp_path, capsys):
    status, _, err = cli(capsys, "train", *flags, *TINY, "--out", tmp_path / "r")
    assert status == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "r").exists()
