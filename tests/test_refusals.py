"""Refused commands on run folders: one line, exit status 2, checked first, nothing left behind.

Outputs that cannot be written (a file where a folder is expected, a folder where a file
is expected, a read-only place), training settings that ``fit`` would refuse, and a
checkpoint that does not belong to the run's configuration.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ppvae.app import evaluate
from ppvae.app.cli import main
from tests.cli_checks import assert_user_error, cli_err

TINY = "--latent-dim 2 --hidden 16 --batch-size 128 --epochs 1 --seed 1 --quiet".split()
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("refusals") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(run, dest)
    return dest


def test_train_refuses_an_output_it_cannot_write(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    assert_user_error(*cli_err(capsys, "train", *TINY, "--out", a_file), "not a directory", "--out")
    assert_user_error(*cli_err(capsys, "train", *TINY, "--out", a_file / "run"), "not a directory")
    assert a_file.read_text() == "mine"
    if Path("/proc/self").is_dir():  # read-only for every user, root included
        assert_user_error(
            *cli_err(capsys, "train", *TINY, "--out", "/proc/ppvae-run"), "not writable"
        )


def test_evaluate_checks_its_outputs_before_estimating(trained, tmp_path, capsys, monkeypatch):
    run = _copy(trained, tmp_path)
    (run / "metrics.json").mkdir()

    def estimate(*args, **kwargs):
        raise AssertionError("the estimate ran before the output was checked")

    monkeypatch.setattr(evaluate, "log_likelihood", estimate)
    assert_user_error(*cli_err(capsys, "evaluate", run), "metrics.json", "is a directory")
    assert not (run / "loglik_test.pt").exists()


def test_report_sample_and_score_refuse_unwritable_outputs(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    (run / "figures").write_text("not a folder")
    assert_user_error(*cli_err(capsys, "report", run), "figures", "not a directory")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert_user_error(*cli_err(capsys, "sample", run, "--out", folder), "is a directory", "--out")
    assert_user_error(*cli_err(capsys, "score", run, "digits", "--out", folder), "is a directory")
    (run / "scores.csv").mkdir()
    assert_user_error(*cli_err(capsys, "score", run, "digits"), "scores.csv", "is a directory")
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.mark.skipif(ROOT, reason="permission bits do not stop root")
def test_commands_refuse_a_read_only_run(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    run.chmod(0o555)
    try:
        for command in (["evaluate", run], ["report", run], ["sample", run]):
            assert_user_error(*cli_err(capsys, *command), "not writable")
    finally:
        run.chmod(0o755)


def _bad_support_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((60, 8))
    x[:, 0] = 2.0  # outside [0, 1], in the training rows only
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, x_test=rng.random((10, 8)))
    return path


@pytest.mark.parametrize(
    "case",
    ["optimizer", "iwae-beta", "patience-without-validation", "training-data-outside-support"],
)
def test_settings_fit_would_refuse_leave_no_run_directory(case, tmp_path, capsys):
    out = tmp_path / "run"
    args, fragment = {
        "optimizer": (["--optimizer", "foo"], "unknown optimizer 'foo'"),
        "iwae-beta": (["--beta", "2", "--elbo", "iwae"], "--elbo iwae"),
        "patience-without-validation": (["--patience", "2"], "val_fraction"),
        "training-data-outside-support": (
            ["--dataset", _bad_support_data(tmp_path), "--binarize", "none"]
            + ["--likelihood", "continuous_bernoulli"],
            "outside [0, 1]",
        ),
    }[case]
    if case == "patience-without-validation":
        config = tmp_path / "config.toml"
        config.write_text("val_fraction = 0\n")
        args = [config, *args]
    assert_user_error(*cli_err(capsys, "train", *args, *TINY, "--out", out), fragment)
    assert not out.exists()


def test_a_checkpoint_of_another_architecture_is_refused(trained, tmp_path, capsys):
    other = tmp_path / "other"
    args = [*TINY, "--latent-dim", "3", "--hidden", "24"]
    assert cli_err(capsys, "train", *args, "--out", other)[0] == 0
    run = _copy(trained, tmp_path)
    shutil.copyfile(other / "model.pt", run / "model.pt")
    for command in (["evaluate", run, "--num-samples", "10"], ["sample", run]):
        assert_user_error(
            *cli_err(capsys, *command), "latent_dim: 2 in config.toml, 3 in the checkpoint"
        )
    assert not (run / "metrics.json").exists() and not (run / "samples.png").exists()


def test_a_checkpoint_for_other_datapoints_is_refused(trained, tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "counts.npz"
    np.savez(data, x=rng.integers(0, 17, (60, 8)), x_test=rng.integers(0, 17, (10, 8)))
    config = tmp_path / "config.toml"
    config.write_text('likelihood = "binomial"\n\n[likelihood_kwargs]\ntotal_count = 16\n')
    other = tmp_path / "other"
    args = ["--dataset", data, "--binarize", "none", *TINY, "--out", other]
    assert cli_err(capsys, "train", config, *args)[0] == 0
    run = _copy(trained, tmp_path)
    shutil.copyfile(other / "model.pt", run / "model.pt")  # same arguments, 8 features
    status, err = cli_err(capsys, "evaluate", run, "--num-samples", "10")
    assert_user_error(
        status, err, "event_shape: [1, 8, 8] in config.toml's dataset digits, [8] in the"
    )
