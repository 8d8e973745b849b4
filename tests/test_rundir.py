"""The run folder (ppvae.app.rundir): atomic writes, records round-trip, clean-up, the lock."""

from __future__ import annotations

import csv
import math
import os
import socket
from pathlib import Path

import pytest
import torch

from ppvae.app.config import RunConfig, UserError
from ppvae.app.rundir import (
    RunDir,
    atomic_write,
    check_writable_dir,
    check_writable_file,
    write_csv,
    write_text,
)


def _failing_writer(tmp: Path) -> None:
    tmp.write_text("half a file")
    raise RuntimeError("disk full")


def test_atomic_write_leaves_no_partial_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "run" / "metrics.json"
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, _failing_writer)
    assert not target.exists() and list(target.parent.iterdir()) == []
    write_text(target, "complete")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, _failing_writer)
    assert target.read_text() == "complete"  # the previous content survives
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_records_round_trip_and_leave_no_temporary_files(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.read_history() is None and run.read_metrics() is None
    run.write_config(RunConfig(epochs=3, hidden=[8]))
    assert run.require().read_config() == RunConfig(epochs=3, hidden=[8])
    run.write_history({"train_objective": [-1.5, math.nan]})
    assert run.read_history() == {"train_objective": [-1.5, None]}  # JSON has no NaN
    run.write_metrics({"split": "test", "log_likelihood": -20.0})
    assert run.read_metrics()["log_likelihood"] == -20.0
    run.write_loglik("test", {"per_datapoint": torch.arange(3.0), "num_samples": 10})
    assert torch.equal(run.read_loglik("test")["per_datapoint"], torch.arange(3.0))
    with pytest.raises(UserError, match="no val evaluation"):
        run.read_loglik("val")
    write_csv(run.scores, ["row", "score"], [[0, 1.5], [1, 2.5]])
    with open(run.scores, newline="") as f:
        assert list(csv.reader(f)) == [["row", "score"], ["0", "1.5"], ["1", "2.5"]]
    assert run.read_bdmc() is None
    run.write_bdmc({"mean_gap": math.inf, "lower": [-1.0, math.nan]})
    assert run.read_bdmc() == {"mean_gap": None, "lower": [-1.0, None]}
    run.write_report("<html></html>\n")
    assert not list(run.root.glob(".*"))


def test_clear_removes_only_what_a_run_writes(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_config(RunConfig())
    run.write_metrics({})
    run.write_loglik("test", {})
    run.write_bdmc({})
    write_text(run.figures / "samples.png", "png")
    write_text(run.root / "notes.txt", "mine")
    run.clear()
    assert sorted(p.name for p in run.root.iterdir()) == ["notes.txt"]
    with pytest.raises(UserError, match="not a ppvae run directory"):
        run.clear()  # without config.toml the folder is not ours to empty
    RunDir(tmp_path / "absent").clear()  # nothing to do


def test_a_missing_model_says_how_to_finish_training(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_config(RunConfig())
    with pytest.raises(UserError, match="has not finished training"):
        run.load_model()
    with pytest.raises(UserError, match="does not exist"):
        RunDir(tmp_path / "nowhere").require()


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_temporary_files_of_killed_writes_are_removed(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_config(RunConfig())
    dead, alive = _dead_pid(), os.getppid()
    killed = [f".metrics.json.tmp{dead}", f".samples.tmp{dead}.png"]
    running = [f".report.html.tmp{alive}"]
    checkpoint = [".last.pt.k2j4_9xz.tmp"]
    for name in killed + running + checkpoint:
        (run.root / name).write_text("half")
    (run.checkpoints).mkdir()
    (run.checkpoints / ".best.pt.abcd1234.tmp").write_text("half")
    run.write_metrics({})  # any successful write removes those of dead writers beside it
    assert sorted(p.name for p in run.root.glob(".*")) == sorted(running + checkpoint)
    with run.lock():  # with the lock held, nobody else writes here: all of them go
        assert list(run.root.rglob(".*")) == []
    assert (run.root / "ppvae.lock").is_file() and run.read_metrics() == {}


def test_the_lock_is_reentrant_within_a_process_and_named_when_held(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.lock(), run.lock():
        text = (run.root / "ppvae.lock").read_text()
        assert f"pid {os.getpid()} on {socket.gethostname()}" in text
    with run.lock():  # released on exit
        pass


def test_writability_checks_create_nothing(tmp_path):
    check_writable_dir(tmp_path / "a" / "b")
    check_writable_file(tmp_path / "c" / "x.csv")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file, not a directory: choose another --out"):
        check_writable_dir(tmp_path / "f" / "run")
    with pytest.raises(UserError, match="is a directory, not a file"):
        check_writable_file(tmp_path)
