"""``ppvae train --model vqvae`` end to end (in-process), and its user errors."""

from __future__ import annotations

import json
import tomllib

import pytest

from ppvae.app.cli import main
from ppvae.inference.checkpoint import load

TINY = [
    "--model", "vqvae", "--num-codes", "8", "--code-dim", "3", "--grid", "2,2",
    "--hidden", "32", "--epochs", "2", "--prior-epochs", "2", "--quiet",
]  # fmt: skip


def cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        status = main([str(a) for a in args])
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def test_train_evaluate_sample_report(tmp_path, capsys):
    run = tmp_path / "vq"
    status, _, err = cli(capsys, "train", *TINY, "--out", run)
    assert status == 0, err
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["model"] == "vqvae" and config["grid"] == [2, 2]
    assert config["prior"] == "learned"  # resolved from the VAE default
    history = json.loads((run / "history.json").read_text())
    assert len(history["metrics"]["perplexity"]) == 2
    model = load(run / "model.pt")
    assert type(model).__name__ == "VQVAE" and model.grid == (2, 2)
    status, out, err = cli(capsys, "evaluate", run, "--num-samples", "5", "--limit", "20")
    assert status == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    bounds = metrics["vq"]["bounds"]
    assert set(bounds) == {"uniform", "per_position", "autoregressive"}
    # with the hard posterior, IS returns the per-position bound itself
    assert metrics["log_likelihood"] == pytest.approx(bounds["per_position"]["nats"], rel=1e-5)
    assert bounds["uniform"]["bits_per_dim"] > 0 and "bits/dim" in out
    status, out, err = cli(capsys, "sample", run, "--n", "8")
    assert status == 0 and (run / "samples.png").is_file(), err
    status, out, err = cli(capsys, "report", run)
    assert status == 0, err
    assert {"codebook.png", "reconstructions.png", "samples.png"} <= {
        p.name for p in (run / "figures").iterdir()
    }
    assert "Codebook usage" in (run / "report.html").read_text()


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--encoder", "conv", "--decoder", "conv", "--grid", "4"], "--grid 7,7"),
        (["--prior", "vamp"], "--prior learned or uniform"),
        (["--posterior", "fuzzy"], "unknown posterior"),
        (["--model", "gan"], "unknown model"),
        (["--grid", "0,3"], "--grid"),
    ],
)
def test_bad_vq_flags_are_one_line_errors(tmp_path, capsys, flags, fragment):
    status, _, err = cli(capsys, "train", "--model", "vqvae", *flags, "--out", tmp_path / "r")
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppvae: error: ") and fragment in lines[0]
    assert not (tmp_path / "r" / "config.toml").exists()
