"""The run folder (ppvae.app.rundir): atomic writes, records round-trip, clean-up."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from ppvae.app.config import RunConfig, UserError
from ppvae.app.rundir import RunDir, atomic_write, write_csv, write_text


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
