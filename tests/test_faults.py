"""Faults around run folders: kills at injected points, the folder lock, stale evaluations.

The kills are real: the command runs in a subprocess through a small wrapper script that
replaces ``os.replace`` or ``torch.save`` by a ``SIGKILL`` of its own process on their
N-th call for a given file, then calls :func:`ppvae.app.cli.main`. Nothing in the library
knows about it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppvae.app.cli import main
from ppvae.app.rundir import file_digest
from ppvae.inference.checkpoint import load_checkpoint
from tests.cli_checks import assert_user_error, cli_err

TINY = "--latent-dim 2 --hidden 16 --batch-size 64 --lr 0.01 --seed 1 --quiet".split()
PATIENT = [*TINY, "--epochs", "3", "--patience", "3"]
EVAL = "--num-samples 10 --proposal guide --limit 40 --quiet".split()

WRAPPER = """
import os, signal, sys, time
from pathlib import Path
import torch

mode, name, nth, *args = sys.argv[1:]
nth, calls = int(nth), [0]


def hit(path):
    if name in os.path.basename(str(path)):
        calls[0] += 1
        return calls[0] == nth
    return False


real_replace, real_save = os.replace, torch.save


def replace(src, dst, *a, **k):
    if mode == "kill-replace" and hit(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    out = real_replace(src, dst, *a, **k)
    if mode == "pause" and hit(dst):  # hold the run here until the test says go
        Path(os.environ["READY"]).touch()
        while not Path(os.environ["GO"]).exists():
            time.sleep(0.02)
    return out


def save(obj, f, *a, **k):
    if mode == "kill-save" and hit(getattr(f, "name", f)):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)


os.replace, torch.save = replace, save
from ppvae.app.cli import main

sys.exit(main(args))
"""


def _wrapped(tmp_path: Path, mode: str, name: str, nth: int, *args: str, **env: str):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **env}
    cmd = [sys.executable, str(script), mode, name, str(nth), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env)


def _temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.rglob(".*"))


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("faults") / "whole"
    assert main(["train", *PATIENT, "--out", str(run)]) == 0
    # Every epoch improves, so the last one writes best.pt: the kills below hit that write.
    assert json.loads((run / "history.json").read_text())["best_epoch"] == 3
    return run


def _assert_resumes_to(run: Path, reference: Path, capsys) -> None:
    assert cli_err(capsys, "train", "--resume", "--epochs", "3", "--quiet", "--out", run)[0] == 0
    assert _temporaries(run) == []  # the killed write's temporary file is gone
    assert _same(_params(run / "model.pt"), _params(reference / "model.pt"))
    best = run / "checkpoints" / "best.pt"
    assert _same(_params(best), _params(reference / "checkpoints" / "best.pt"))
    _assert_pair_agrees(run)
    history = json.loads((run / "history.json").read_text())
    assert history == json.loads((reference / "history.json").read_text()) | {
        "seconds": history["seconds"],
        "images_per_second": history["images_per_second"],
    }


def _assert_pair_agrees(run: Path) -> None:
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    extra = load_checkpoint(last)["extra"]
    assert extra["best"]["sha256"] == file_digest(best)
    assert _same(_params(best), extra["best_state"])


def test_kill_between_best_and_last_checkpoint_resumes_exactly(uninterrupted, tmp_path, capsys):
    run = tmp_path / "r"
    # Killed as last.pt of the last epoch is moved into place: best.pt already holds it.
    child = _wrapped(tmp_path, "kill-replace", "last.pt", 3, "train", *PATIENT, "--out", run)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["history"]["epochs_completed"] == 2
    assert load_checkpoint(best)["history"]["epochs_completed"] == 3  # the pair disagrees
    # Resuming without redoing epoch 3 ends on epoch 2's best, and best.pt says so too.
    assert cli_err(capsys, "train", "--resume", "--epochs", "2", "--quiet", "--out", run)[0] == 0
    _assert_pair_agrees(run)
    assert _same(_params(run / "model.pt"), _params(best))
    assert load_checkpoint(best)["history"]["epochs_completed"] == 2
    _assert_resumes_to(run, uninterrupted, capsys)


def test_kill_while_best_checkpoint_is_written_resumes_exactly(uninterrupted, tmp_path, capsys):
    run = tmp_path / "r"
    child = _wrapped(tmp_path, "kill-save", "best.pt", 3, "train", *PATIENT, "--out", run)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    leftovers = _temporaries(run)
    assert len(leftovers) == 1 and leftovers[0].startswith(".best.pt."), leftovers
    _assert_resumes_to(run, uninterrupted, capsys)


def test_a_second_command_on_a_run_being_trained_is_refused_naming_the_holder(tmp_path, capsys):
    run, ready, go = tmp_path / "r", tmp_path / "ready", tmp_path / "go"
    args = ["train", *TINY, "--epochs", "1", "--out", run]
    first = _wrapped(tmp_path, "pause", "config.toml", 1, *args, READY=ready, GO=go)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), first.communicate()[1].decode()
        second = subprocess.run(
            [sys.executable, "-m", "ppvae.app.cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
        )
        assert_user_error(
            second.returncode, second.stderr, "in use by", f"pid {first.pid}", "train"
        )
        # Other commands on the folder refuse too, rather than read a half-trained run.
        assert_user_error(
            *cli_err(capsys, "evaluate", run, "--num-samples", "10"), f"pid {first.pid}"
        )
        assert_user_error(
            *cli_err(capsys, "demo", "--out", run, "--epochs", "1"), f"pid {first.pid}"
        )
        assert (run / "config.toml").is_file()  # the demo cleared nothing
    finally:
        go.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    assert load_checkpoint(run / "model.pt")["config"]["epochs"] == 1


def test_resume_cannot_shrink_epochs_and_extending_makes_evaluations_stale(tmp_path, capsys):
    run = tmp_path / "r"
    assert cli_err(capsys, "train", *TINY, "--epochs", "2", "--out", run)[0] == 0
    assert cli_err(capsys, "evaluate", run, *EVAL)[0] == 0
    digest = file_digest(run / "model.pt")
    assert json.loads((run / "metrics.json").read_text())["checkpoint_sha256"] == digest
    config = (run / "config.toml").read_text()
    assert_user_error(
        *cli_err(capsys, "train", "--resume", "--epochs", "1", "--out", run), "--epochs 2"
    )
    assert (run / "config.toml").read_text() == config  # the history is not rewritten

    assert cli_err(capsys, "train", "--resume", "--epochs", "3", "--quiet", "--out", run)[0] == 0
    assert "epochs = 3" in (run / "config.toml").read_text()
    assert json.loads((run / "history.json").read_text())["epochs_completed"] == 3
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.toml", "model.pt", "loglik_test.pt", "metrics.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    assert cli_err(capsys, "report", run)[0] == 0
    page = (run / "report.html").read_text()
    assert f"evaluated on an older checkpoint; rerun ppvae evaluate {run}" in page
    status, err = cli_err(capsys, "compare", run, copy)
    assert_user_error(status, err, "evaluated on an older checkpoint; rerun ppvae evaluate")
    assert cli_err(capsys, "evaluate", run, *EVAL)[0] == 0
    assert cli_err(capsys, "evaluate", copy, *EVAL)[0] == 0
    assert cli_err(capsys, "compare", run, copy)[0] == 0
    assert cli_err(capsys, "report", run)[0] == 0
    assert "older checkpoint" not in (run / "report.html").read_text()
