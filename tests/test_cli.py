"""The ppvae command end to end: train, evaluate, bdmc, sample, report, compare, score, resume.

The main path runs the real command in subprocesses (``python -m ppvae.app.cli``); the many
user-error cases call :func:`ppvae.app.cli.main` in-process, which is the same code without
the interpreter start-up (an uncaught exception would surface there as a test error).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from ppvae import data as ppvae_data
from ppvae.app import demo, train
from ppvae.app.cli import build_parser
from ppvae.inference.checkpoint import load_checkpoint
from tests.cli_checks import assert_user_error, cli

TINY = ["--latent-dim", "2", "--hidden", "32", "--epochs", "3", "--lr", "0.01", "--quiet"]
K = ["--num-samples", "50"]
METRIC_KEYS = {
    "split",
    "num_samples",
    "num_datapoints",
    "log_likelihood",
    "stderr",
    "mc_stderr",
    "elbo",
    "gap",
    "khat_threshold",
    "share_khat_above_threshold",
    "verdict",
}


def ppvae(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the real command in a fresh interpreter."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore::FutureWarning", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ppvae.app.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    """A tiny trained and evaluated run."""
    run = tmp_path_factory.mktemp("runs") / "a"
    ok(ppvae("train", *TINY, "--seed", "1", "--out", run))
    ok(ppvae("evaluate", run, *K, "--quiet"))
    return run


def test_train_writes_a_complete_run_directory(run_a):
    for name in ("config.toml", "history.json", "model.pt", "checkpoints/last.pt"):
        assert (run_a / name).is_file(), name
    history = json.loads((run_a / "history.json").read_text())
    assert history["epochs_completed"] == 3 and len(history["train_objective"]) == 3
    assert len(history["val_elbo"]) == 3 and all(math.isfinite(v) for v in history["val_elbo"])
    config = tomllib.loads((run_a / "config.toml").read_text())
    assert config["latent_dim"] == 2 and config["hidden"] == [32] and config["seed"] == 1
    assert config["likelihood"] == "binomial"  # the dataset's suggestion, resolved
    assert config["likelihood_kwargs"] == {"total_count": 16}
    saved = load_checkpoint(run_a / "model.pt")
    assert saved["history"]["epochs_completed"] == 3 and saved["config"]["latent_dim"] == 2
    assert not list(run_a.glob(".*"))  # no temporary files left behind


def assert_honest_stderr(metrics: dict, record: dict) -> None:
    """A Monte Carlo s.e. is given exactly where k-hat supports it, and words elsewhere."""
    rejected = ~(record["khat"] <= metrics["khat_threshold"])
    se = record["mc_stderr_per_datapoint"]
    assert torch.equal(se.isnan(), rejected)
    assert metrics["num_without_stderr"] == int(rejected.sum())
    assert (metrics["mc_stderr"] is None) == bool(rejected.any())
    if metrics["mc_stderr"] is None:
        assert metrics["mc_stderr_text"].startswith("not available: k-hat rejects")
        assert f"{int(rejected.sum())} of {metrics['num_datapoints']}" in metrics["mc_stderr_text"]
    else:
        assert metrics["mc_stderr"] > 0
        assert metrics["mc_stderr"] == pytest.approx(se.square().sum().sqrt() / len(se))
    approx = record["mc_stderr_approximate"]
    assert not bool((approx & rejected).any()) and bool((record["khat"][approx] > 0.5).all())
    assert metrics["num_stderr_approximate"] == int(approx.sum())


def assert_estimator_recorded(metrics: dict, record: dict) -> None:
    """metrics.json names the estimator and counts the proposals as the record stores them."""
    n = metrics["num_datapoints"]
    proposals = record["proposal_per_datapoint"]
    assert len(proposals) == n and set(proposals) <= {"guide", "refine"}
    counts = metrics["proposal_counts"]
    assert counts == {p: proposals.count(p) for p in sorted(set(proposals))}
    assert metrics["num_refined"] == n - counts.get("guide", 0)
    assert metrics["estimator"].startswith(f"importance sampling with K = {metrics['num_samples']}")
    guide = metrics.get("guide_only")
    assert (guide is not None) == (metrics["num_refined"] > 0)
    if guide is not None:
        diff = record["per_datapoint"] - record["guide_only_per_datapoint"]
        assert guide["difference"] == pytest.approx(diff.mean().item())
        assert guide["difference_stderr"] == pytest.approx((diff.std() / math.sqrt(n)).item())
        assert guide["log_likelihood"] == pytest.approx(record["guide_only_per_datapoint"].mean())
        good = record["guide_only_khat"] <= metrics["khat_threshold"]
        assert guide["num_reliable"] == int(good.sum())
        # Only refined datapoints differ from the guide's estimate.
        same = torch.tensor([p == "guide" for p in proposals])
        assert torch.equal(record["per_datapoint"][same], record["guide_only_per_datapoint"][same])


def test_evaluate_writes_sane_metrics(run_a):
    metrics = json.loads((run_a / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["split"] == "test" and metrics["num_samples"] == 50
    assert metrics["num_datapoints"] > 300 and metrics["proposal"] == "auto"
    assert math.isfinite(metrics["log_likelihood"]) and metrics["log_likelihood"] < 0
    assert metrics["stderr"] > 0
    assert metrics["elbo"] <= metrics["log_likelihood"] and metrics["gap"] >= 0
    assert 0 <= metrics["share_khat_above_threshold"] <= 1
    assert metrics["khat_threshold"] == pytest.approx(1 - 1 / math.log10(50))
    assert metrics["verdict"].startswith(("reliable", "unreliable"))
    record = torch.load(run_a / "loglik_test.pt", weights_only=True)
    assert record["per_datapoint"].shape == (metrics["num_datapoints"],)
    assert record["khat"].shape == record["ess"].shape == record["per_datapoint"].shape
    assert record["per_datapoint"].mean().item() == pytest.approx(metrics["log_likelihood"])
    assert_honest_stderr(metrics, record)
    assert_estimator_recorded(metrics, record)
    # The guide's k-hat rejects most datapoints of this barely trained model: auto refines.
    assert metrics["num_refined"] > 0


def _copy(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def test_evaluate_with_each_proposal(run_a, tmp_path, capsys):
    run = _copy(run_a, tmp_path)
    seen = {}
    for proposal in ("guide", "refine", "auto"):
        args = ["evaluate", run, "--num-samples", "30", "--limit", "20", "--quiet"]
        status, out, err = cli(capsys, *args, "--proposal", proposal)
        assert status == 0, err
        metrics = json.loads((run / "metrics.json").read_text())
        record = torch.load(run / "loglik_test.pt", weights_only=True)
        assert metrics["proposal"] == proposal and metrics["num_datapoints"] == 20
        assert_honest_stderr(metrics, record)
        assert_estimator_recorded(metrics, record)
        assert f"{metrics['num_refined']} of 20 datapoints needed refinement" in out
        assert metrics["estimator"] in out
        if metrics["mc_stderr"] is None:
            assert re.search(r"Monte Carlo s\.e\.\s+not available: k-hat rejects \d+ of 20", out)
        else:
            assert re.search(r"Monte Carlo s\.e\.\s+\d\.\d{4}", out)
        seen[proposal] = metrics
    assert seen["guide"]["proposal_counts"] == {"guide": 20} and "guide_only" not in seen["guide"]
    assert seen["guide"]["estimator"].endswith("guide proposal")
    assert seen["refine"]["proposal_counts"] == {"refine": 20}
    assert "every one of 20" in seen["refine"]["estimator"]
    assert "guide alone" in out or seen["auto"]["num_refined"] == 0
    # The same seed draws the same guide particles, whatever comes after them.
    for proposal in ("refine", "auto"):
        guide_only = seen[proposal].get("guide_only", seen["guide"])
        assert guide_only["log_likelihood"] == pytest.approx(seen["guide"]["log_likelihood"])
    # The guide's ELBO is the ELBO, whichever proposal made the headline.
    assert seen["refine"]["elbo"] == pytest.approx(seen["guide"]["elbo"])


def test_evaluate_with_ais_then_bdmc_and_the_report_shows_both(run_a, tmp_path, capsys):
    run = _copy(run_a, tmp_path)
    base = ["evaluate", run, "--num-samples", "30", "--limit", "20", "--quiet"]
    status, out, err = cli(capsys, *base, "--ais", "5", "--ais-steps", "10", "--ais-chains", "4")
    assert status == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    record = torch.load(run / "loglik_test.pt", weights_only=True)
    a = metrics["ais"]
    assert (a["num_datapoints"], a["requested"], a["num_steps"], a["num_chains"]) == (5, 5, 10, 4)
    diff = record["per_datapoint"][:5] - record["ais_per_datapoint"]
    assert record["ais_per_datapoint"].shape == (5,)
    assert a["difference"] == pytest.approx(diff.mean().item())
    assert a["difference_stderr"] == pytest.approx((diff.std() / math.sqrt(5)).item())
    assert a["importance_sampling"] == pytest.approx(record["per_datapoint"][:5].mean().item())
    assert a["ais"] == pytest.approx(record["ais_per_datapoint"].mean().item())
    assert a["agree"] == (abs(a["difference"]) <= 2 * a["difference_stderr"])
    assert ("agree within 2 standard errors" in a["sentence"]) == a["agree"]
    assert a["sentence"] in out and "IS − AIS" in out
    # More datapoints than the evaluation holds: AIS runs on all of them, and says so.
    status, out, err = cli(capsys, *base, "--ais", "50", "--ais-steps", "5", "--ais-chains", "2")
    assert status == 0, err
    a = json.loads((run / "metrics.json").read_text())["ais"]
    assert (a["num_datapoints"], a["requested"]) == (20, 50)
    assert "--ais 50 asked for more than the split holds" in out

    status, out, err = cli(
        capsys, "bdmc", run, "--num-datapoints", "3", "--steps", "10", "--chains", "4"
    )
    assert status == 0, err
    b = json.loads((run / "bdmc.json").read_text())
    assert (b["num_datapoints"], b["num_steps"], b["num_chains"]) == (3, 10, 4)
    assert len(b["lower"]) == len(b["upper"]) == len(b["gap"]) == 3
    gap = np.subtract(b["upper"], b["lower"])
    assert np.allclose(b["gap"], gap) and b["mean_gap"] == pytest.approx(gap.mean())
    assert b["mean_lower"] == pytest.approx(np.mean(b["lower"]))
    assert re.search(r"lower bound\s+-\d+\.\d{3} nats", out) and "gap" in out
    assert not list(run.glob(".*"))

    status, out, err = cli(capsys, "report", run)
    assert status == 0, err
    page = (run / "report.html").read_text(encoding="utf-8")
    for text in (
        "Importance sampling vs annealed importance sampling",
        "Bidirectional Monte Carlo",
        "<figcaption><b>Importance sampling vs AIS.</b>",
        "IS − AIS =",
        "10 × 4",
    ):
        assert text in page, text
    assert html.escape(metrics["estimator"]) in page


def test_evaluate_prints_a_table(run_a, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(run_a, run)
    status, out, _ = cli(
        capsys, "evaluate", run, "--num-samples", "20", "--split", "val", "--limit", "50", "--quiet"
    )
    assert status == 0
    assert re.search(r"log p\(x\)\s+-\d+\.\d+ ± \d+\.\d+", out) and "verdict" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["num_datapoints"] == 50
    assert (run / "loglik_val.pt").is_file()


def test_summaries_put_errors_and_agreement_in_words():
    from ppvae.app.summaries import agreement_sentence, bdmc_sentence, mc_stderr_text

    n = {"num_datapoints": 359}
    assert mc_stderr_text({**n, "mc_stderr": None, "num_without_stderr": 2}) == (
        "not available: k-hat rejects 2 of 359 datapoints"
    )
    assert mc_stderr_text({**n, "mc_stderr": math.nan, "num_without_stderr": 0}) == "not available"
    assert mc_stderr_text({**n, "mc_stderr": 0.01234, "num_stderr_approximate": 0}) == "0.0123"
    assert "approximate" in mc_stderr_text({**n, "mc_stderr": 0.01, "num_stderr_approximate": 3})
    base = {"num_datapoints": 20, "difference_mc_stderr": 0.05}
    agree, text = agreement_sentence({**base, "difference": 0.03, "difference_stderr": 0.02})
    assert agree and "+0.030 ± 0.020 nats" in text and "agree within 2" in text
    agree, text = agreement_sentence({**base, "difference": -1.5, "difference_stderr": 0.1})
    assert agree is False and "15.0 standard errors" in text and "importance-sampling" in text
    agree, text = agreement_sentence({**base, "difference": 0.9, "difference_stderr": 0.1})
    assert agree is False and "AIS is likely biased low" in text and "ppvae bdmc" in text
    # One datapoint has no paired s.e.: the Monte Carlo s.e. judges, and says so.
    agree, text = agreement_sentence({**base, "difference": 0.04, "difference_stderr": None})
    assert agree and "Monte Carlo s.e." in text
    agree, text = agreement_sentence({"num_datapoints": 1, "difference": 0.04})
    assert agree is None and "no standard error" in text
    record = {"num_steps": 10, "num_chains": 4, "max_gap": 3.0}
    assert "long enough" in bdmc_sentence({**record, "mean_gap": 0.02})
    assert "use more steps" in bdmc_sentence({**record, "mean_gap": 2.5})


def test_sample_writes_a_png(run_a, tmp_path, capsys):
    out = tmp_path / "grid.png"
    status, printed, err = cli(capsys, "sample", run_a, "--n", "16", "--out", out)
    assert status == 0 and str(out) in printed, err
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 1000


def test_report_has_every_figure_with_its_caption_and_the_verdict(run_a):
    path = Path(ok(ppvae("report", run_a)).strip())
    assert path == run_a / "report.html"
    page = path.read_text(encoding="utf-8")
    titles = [
        "Samples",
        "Reconstructions",
        "Latent interpolation",
        "Latent traversals",
        "Latent space",
        "Training curves",
        "Log-likelihood per datapoint",
        "Pareto k-hat diagnostics",
        "Effective sample size",
    ]
    assert page.count("<img") == len(titles) == page.count('src="data:image/png;base64,')
    captions = re.findall(r"<figcaption><b>([^<]*)\.</b> ([^<]+)</figcaption>", page)
    assert [t for t, _ in captions] == titles and all(len(c) > 20 for _, c in captions)
    assert re.search(r"reliable for \d+\.\d% of test digits \(k-hat ≤ 0\.41", page)
    headline = re.search(r"<p class=headline>log p\(x\) = (-?\d+\.\d\d)", page)
    assert headline and page.index("class=headline") < page.index("<h2>Evaluation")
    assert "held-out test digits" in page
    metrics = json.loads((run_a / "metrics.json").read_text())
    assert metrics["verdict"].split(":")[0] in page
    assert f"estimated by {metrics['estimator']}" in page
    assert "Refined estimate vs the guide alone" in page and "guide alone (left)" in page
    if metrics["mc_stderr"] is None:
        assert "Monte Carlo s.e. not available: k-hat rejects" in page
    assert "Bidirectional Monte Carlo" not in page  # no bdmc.json in this run
    assert sorted(p.name for p in (run_a / "figures").glob("*.png")) == sorted(
        [
            "samples.png",
            "reconstructions.png",
            "interpolation.png",
            "traversals.png",
            "latent.png",
            "elbo.png",
            "loglik_hist.png",
            "khat.png",
            "ess.png",
        ]
    )


def test_compare_two_runs_and_refuse_different_data(run_a, tmp_path, capsys):
    b = tmp_path / "b"
    assert (
        cli(
            capsys,
            "train",
            "--latent-dim",
            "3",
            "--hidden",
            "16",
            "--epochs",
            "2",
            "--quiet",
            "--out",
            b,
        )[0]
        == 0
    )
    assert cli(capsys, "evaluate", b, *K, "--quiet")[0] == 0
    out = ok(ppvae("compare", run_a, b))
    lines = out.strip().splitlines()
    assert "diff" in lines[0] and "mean" in lines[0]
    assert {line.split()[0] for line in lines[2:]} == {"a", "b"}
    # A run on other data (a file holding a subset of digits) cannot be compared.
    digits = torch.load(run_a / "loglik_test.pt", weights_only=True)  # only for its size
    rows = np.random.default_rng(0).integers(0, 17, size=(200, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "other.npy", rows)
    c = tmp_path / "c"
    assert (
        cli(
            capsys,
            "train",
            "--dataset",
            tmp_path / "other.npy",
            "--likelihood",
            "binomial",
            "--latent-dim",
            "2",
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            c,
        )[0]
        == 0
    )
    assert cli(capsys, "evaluate", c, *K, "--quiet")[0] == 0
    assert len(torch.load(c / "loglik_test.pt", weights_only=True)["per_datapoint"]) != len(
        digits["per_datapoint"]
    )
    assert_user_error(*cli(capsys, "compare", run_a, c)[::2], "different data")


def test_score_ranks_noise_above_digits(run_a, tmp_path):
    # Salt-and-pepper noise in the Binomial(16) support: every pixel 0 or 16 at random.
    noise = 16 * np.random.default_rng(0).integers(0, 2, size=(100, 1, 8, 8))
    np.save(tmp_path / "noise.npy", noise.astype(np.float32))
    out_csv = tmp_path / "scores.csv"
    out = ok(
        ppvae(
            "score",
            run_a,
            "digits",
            "--ood",
            tmp_path / "noise.npy",
            *K,
            "--out",
            out_csv,
            "--quiet",
        )
    )
    auc = float(re.search(r"ROC-AUC[^:]*: ([0-9.]+)", out).group(1))
    assert 0.5 < auc <= 1.0
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 359 + 100
    assert {r["ood"] for r in rows[:359]} == {"0"} and {r["ood"] for r in rows[359:]} == {"1"}
    scores = np.array([float(r["score"]) for r in rows])
    assert np.all(np.isfinite(scores)) and scores[359:].mean() > scores[:359].mean()
    assert {r["reliable"] for r in rows} <= {"0", "1"}


def test_score_reads_an_ood_column_from_a_csv(run_a, tmp_path, capsys):
    from ppvae.data import load_dataset

    digits = load_dataset("digits").test[:40].reshape(40, -1).numpy()
    noise = 16 * np.random.default_rng(1).integers(0, 2, size=(40, 64))
    table = np.c_[np.r_[digits, noise], np.r_[np.zeros(40), np.ones(40)]].astype(int)
    path = tmp_path / "mixed.csv"
    header = ",".join([f"p{i}" for i in range(64)] + ["is_ood"])
    np.savetxt(path, table, delimiter=",", fmt="%d", header=header, comments="")
    status, out, err = cli(capsys, "score", run_a, path, *K, "--quiet")
    assert status == 0, err
    auc = float(re.search(r"ROC-AUC[^:]*: ([0-9.]+)", out).group(1))
    assert 0.5 < auc <= 1.0
    assert (run_a / "scores.csv").is_file()


def test_conditional_run_samples_a_chosen_class(tmp_path, capsys):
    run = tmp_path / "cond"
    args = ["--latent-dim", "2", "--hidden", "16", "--epochs", "1", "--quiet", "--out", run]
    assert cli(capsys, "train", "--conditional", *args)[0] == 0
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["conditional"] is True and config["num_labels"] == 10
    for extra in (["--label", "3"], []):
        png = tmp_path / f"samples{len(extra)}.png"
        status, _, err = cli(capsys, "sample", run, *extra, "--n", "20", "--out", png)
        assert status == 0 and png.read_bytes().startswith(b"\x89PNG"), err
    assert_user_error(*cli(capsys, "sample", run, "--label", "10")[::2], "0..9")
    args = ["--num-samples", "20", "--limit", "30", "--ais", "3", "--ais-steps", "5"]
    status, _, err = cli(capsys, "evaluate", run, *args, "--ais-chains", "2", "--quiet")
    assert status == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["log_likelihood"]) and metrics["log_likelihood"] < 0
    assert math.isfinite(metrics["ais"]["ais"]) and metrics["ais"]["num_datapoints"] == 3
    # BDMC simulates given labels, so a conditional model is certified too.
    status, _, err = cli(
        capsys, "bdmc", run, "--num-datapoints", "2", "--steps", "5", "--chains", "2"
    )
    assert status == 0, err
    b = json.loads((run / "bdmc.json").read_text())
    assert len(b["lower"]) == 2 and all(math.isfinite(v) for v in b["lower"] + b["upper"])


def test_resume_after_kill_loses_no_epoch_and_config_reproduces(tmp_path, capsys):
    run = tmp_path / "r"
    # Small batches make an epoch last long enough to be interrupted reliably.
    args = "train --latent-dim 4 --hidden 32 --batch-size 8 --epochs 5 --seed 3 --quiet".split()
    args += ["--out", str(run)]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "ppvae.app.cli", *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        last = run / "checkpoints" / "last.pt"
        deadline = time.monotonic() + 180
        while not last.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)  # mid-run: the first epoch has just been saved
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, log.read_text()
    before = load_checkpoint(last)["history"]
    done = before["epochs_completed"]
    assert 1 <= done < 5 and not (run / "model.pt").exists()

    assert cli(capsys, "train", "--resume", "--quiet", "--out", run)[0] == 0
    history = json.loads((run / "history.json").read_text())
    assert history["epochs_completed"] == 5
    for key in ("train_objective", "val_elbo", "seconds", "beta"):
        assert len(history[key]) == 5, key  # each epoch exactly once
    assert history["train_objective"][:done] == before["train_objective"][:done]  # nothing redone
    assert history["val_elbo"][:done] == before["val_elbo"][:done]

    # The saved configuration repeats the run exactly, interrupted or not.
    other = tmp_path / "s"
    assert cli(capsys, "train", run / "config.toml", "--quiet", "--out", other)[0] == 0
    assert (other / "config.toml").read_text() == (run / "config.toml").read_text()
    again = json.loads((other / "history.json").read_text())
    assert again["train_objective"] == history["train_objective"]
    assert again["val_elbo"] == history["val_elbo"]


def test_a_user_error_in_a_real_process_is_one_line(tmp_path):
    proc = ppvae("evaluate", tmp_path / "nowhere")
    assert_user_error(proc.returncode, proc.stderr, "does not exist")


def test_user_errors_are_one_line_with_status_2(run_a, tmp_path, capsys):
    metrics = json.loads((run_a / "metrics.json").read_text())
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("epochs = 2\nlatent = 3\n")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("config.toml", "history.json"):
        (corrupt / name).write_bytes((run_a / name).read_bytes())
    (corrupt / "model.pt").write_bytes((run_a / "model.pt").read_bytes()[:500])
    outside = tmp_path / "outside.npy"
    np.save(outside, np.full((5, 1, 8, 8), 17.0, dtype=np.float32))
    x = tmp_path / "x"
    cases = [
        (["train", bad_toml, "--out", x], "'latent'"),
        (["train", "--dataset", "nosuchset", "--out", x], "unknown dataset"),
        (["train", "--epochs", "many", "--out", x], "invalid int value"),
        (["train", tmp_path / "missing.toml", "--out", x], "does not exist"),
        (["train", "--elbo", "renyi", "--out", x], "unknown elbo"),
        (["train", "--hidden", "4,a", "--out", x], "--hidden"),
        (["train", "--lr", "-1", "--out", x], "lr must be"),
        (["train", "--prior", "nope", "--epochs", "1", "--out", x], "unknown prior"),
        (["train", "--device", "toaster", "--out", x], "unknown device"),
        (["train", "--device", "cuda:7", "--out", x], "cuda:7"),
        (["--threads", "0", "evaluate", run_a], "--threads"),
        (["train", "--likelihood", "bernoulli", "--epochs", "1", "--out", x], "bernoulli"),
        (["train", "--out", run_a], "--resume"),
        (["train", "--resume", "--out", tmp_path / "none"], "no run to resume"),
        (["train", "--resume", "--latent-dim", "7", "--out", run_a], "latent_dim"),
        (["evaluate", corrupt], "truncated or corrupt"),
        (["evaluate", tmp_path], "not a ppvae run directory"),
        (["evaluate", run_a, "--num-samples", "1"], "num-samples"),
        (["sample", run_a, "--label", "3"], "conditional"),
        (["score", run_a, outside, *K], "binomial"),
        (["score", run_a, tmp_path / "absent.npy"], "does not exist"),
        (["score", run_a, "nosuchset"], "unknown dataset"),
        (["compare", run_a], "at least two"),
        (["compare", run_a, corrupt], "no test evaluation"),
        (["evaluate", run_a, "--split", "everything"], "invalid choice"),
        (["evaluate", run_a, "--proposal", "nope"], "invalid choice"),
        (["evaluate", run_a, "--ais", "0"], "--ais must be at least 1"),
        (["evaluate", run_a, "--ais", "-3"], "--ais must be at least 1"),
        (["evaluate", run_a, "--ais", "many"], "invalid int value"),
        (["evaluate", run_a, "--ais", "2", "--ais-steps", "0"], "--ais-steps"),
        (["evaluate", run_a, "--ais", "2", "--ais-chains", "1"], "--ais-chains"),
        (["evaluate", run_a, "--limit", "0"], "--limit"),
        (["bdmc", run_a, "--num-datapoints", "0"], "--num-datapoints"),
        (["bdmc", run_a, "--steps", "0"], "--steps"),
        (["bdmc", run_a, "--chains", "0"], "--chains"),
        (["bdmc", tmp_path / "nowhere"], "does not exist"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ]
    for args, fragment in cases:
        status, _, err = cli(capsys, *args)
        assert_user_error(status, err, fragment)
    assert not x.exists()  # a refused run leaves nothing behind
    assert json.loads((run_a / "metrics.json").read_text()) == metrics  # refused before work
    assert not (run_a / "bdmc.json").exists()


def test_hostile_inputs_name_the_key_file_or_flag(run_a, tmp_path, capsys):
    tables = {
        "prior.toml": ("[prior_kwargs]\nfoo = 1\n", "unknown key 'foo' in [prior_kwargs]"),
        "lik.toml": (
            'likelihood = "binomial"\n[likelihood_kwargs]\ntotal_count = "a"\n',
            "[likelihood_kwargs] total_count must be int",
        ),
        "guide.toml": (
            'guide = "iaf"\n[guide_kwargs.inner]\nx = 1\n',
            "unknown key 'inner' in [guide_kwargs] for iaf guide: accepted keys are num_flows",
        ),
    }
    words = tmp_path / "words.npy"
    np.save(words, np.array([["a", "b"], ["c", "d"]]))
    x, png = tmp_path / "x", tmp_path / "grid.txt"
    cases = [(["train", tmp_path / name, "--out", x], why) for name, (_, why) in tables.items()]
    for name, (text, _) in tables.items():
        (tmp_path / name).write_text(text)
    cases += [
        (["train", "--seed", str(2**70), "--out", x], "invalid seed"),
        (["evaluate", run_a, "--seed", "-1"], "invalid seed"),
        (["score", run_a, words], "words.npy holds"),
        (["evaluate", run_a / "config.toml"], "is a file, not a run directory"),
        (["train", "--data-dir", tmp_path / "nodata", "--out", x], "nodata (--data-dir)"),
        (["sample", run_a, "--out", png], "must end in .png"),
    ]
    for args, fragment in cases:
        status, _, err = cli(capsys, *args)
        assert_user_error(status, err, fragment)
    assert not x.exists() and not png.exists()


def test_every_option_has_a_help_line_with_its_default():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"ppvae {name}: {action.dest} has no help line"
            shown = formatter._get_help_string(action)
            if action.option_strings and action.nargs != 0 and not action.required:
                assert "(default: " in shown, f"ppvae {name} {action.option_strings}: {shown}"
        text = command.format_help()
        for action in command._actions:
            for flag in action.option_strings:
                assert flag in text


def test_demo_without_fashion_mnist_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    import ppvae.data

    # Hide every place the data could be: the system folder, $PPVAE_DATA and ~/.cache.
    monkeypatch.setattr(ppvae.data, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setenv("PPVAE_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    status, _, err = cli(capsys, "demo", "--dataset", "fashion-mnist", "--out", tmp_path / "d")
    assert_user_error(
        status,
        err,
        "apt-get install dataset-fashion-mnist",
        "--data-dir",
        "PPVAE_DATA",
        "--download",
    )
    assert not (tmp_path / "d").exists()


def test_version_and_help(capsys):
    from ppvae import __version__

    status, out, _ = cli(capsys, "--version")
    assert status == 0 and out.strip() == f"ppvae {__version__}"
    status, out, _ = cli(capsys, "--help")
    assert status == 0
    for command in ("train", "evaluate", "bdmc", "sample", "compare", "score", "report", "demo"):
        assert command in out
        status, sub, _ = cli(capsys, command, "--help")
        assert status == 0 and f"ppvae {command}" in sub


def test_demo_loads_the_dataset_once_and_hands_it_along(tmp_path, monkeypatch):
    calls: list[str] = []
    real = ppvae_data.load_dataset

    def counting(name, *args, **kwargs):
        calls.append(str(name))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ppvae_data, "load_dataset", counting)
    monkeypatch.setattr(train, "load_dataset", counting)
    monkeypatch.setattr(demo, "DEMO_NUM_SAMPLES", 20)  # small settings: the path is the point
    monkeypatch.setattr(demo, "DEMO_EVAL_LIMIT", {"digits": 40})
    lines: list[str] = []
    out = tmp_path / "demo"
    metrics = demo.run_demo("digits", out, epochs=1, progress=False, echo=lines.append)
    assert calls == ["digits"]
    assert metrics["num_datapoints"] == 40 and metrics["num_samples"] == 20
    assert (out / "model.pt").is_file() and (out / "report.html").is_file()
    assert lines[-1].startswith(f"report: {out / 'report.html'}")
    # The headline says how it was estimated, how much was refined and what the guide gave.
    text = "\n".join(lines)
    assert f"estimator: {metrics['estimator']}" in text
    assert f"{metrics['num_refined']} of 40 digits refined" in text
    assert f"for {metrics['num_reliable']} of 40 digits" in text
    assert ("guide alone: " in text) == (metrics["num_refined"] > 0)
    if metrics["mc_stderr"] is None:
        assert "Monte Carlo s.e. not available: k-hat rejects" in text
    else:
        assert re.search(r"Monte Carlo s\.e\. \d\.\d{3}", text)
