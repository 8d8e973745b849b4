"""Training and evaluation on two processes with gloo, launched by torchrun, against one process.

The two-process parts run this file as a torchrun script (``python -m torch.distributed.run
--standalone --nproc-per-node 2 tests/test_distributed.py WORKER OUT``); rank 0 saves what
it computed and the tests compare it with the same computation in the test process. Every
launch has a timeout, so that a failure cannot hang the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppvae
from ppvae.app.cli import main
from ppvae.inference.checkpoint import load_checkpoint
from ppvae.models.linear_gaussian import LinearGaussianModel, PosteriorGuide

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
LAUNCH_TIMEOUT = 120  # seconds; a launch takes about 10 on two idle cores


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PPVAE_DIST_TIMEOUT": "30", "PYTHONUNBUFFERED": "1"}


def _torchrun(nproc: int = 2) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def _launch(*args: str, timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    cmd = _torchrun() + list(args)
    return subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


class FixedNoiseVAE(nn.Module):
    """A VAE whose reparameterisation noise is part of the data (x = [data, ε]), so that
    its loss on a batch is a fixed function of the parameters; with a site outside the data
    plate, a parameter only some batches use, and one no batch uses."""

    def __init__(self, d: int = 3, k: int = 2) -> None:
        super().__init__()
        self.d, self.k = d, k
        self.encoder = nn.Linear(d, 2 * k)
        self.decoder = nn.Linear(k, d)
        self.prior_scale = nn.Parameter(torch.zeros(()))
        self.rare = nn.Parameter(torch.zeros(d))
        self.unused = nn.Parameter(torch.zeros(1))

    def _plate(self, x: torch.Tensor, num_data: int | None) -> pyro.plate:
        n = num_data or len(x)
        return pyro.plate("data", n, subsample=torch.arange(len(x)), dim=-1)

    def model(self, x: torch.Tensor, *, num_data: int | None = None) -> None:
        data = x[:, : self.d]
        pyro.factor("hyper", -self.prior_scale.square())  # outside the plate: once per loss
        with self._plate(x, num_data):
            scale = self.prior_scale.exp().expand(self.k)
            z = pyro.sample("z", dist.Normal(0.0, scale).to_event(1))
            mean = self.decoder(z)
            flagged = data[:, :1] > 2.5
            if flagged.any():
                mean = mean + flagged * self.rare
            pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=data)

    def guide(self, x: torch.Tensor, *, num_data: int | None = None) -> None:
        data, eps = x[:, : self.d], x[:, self.d :]
        loc, log_scale = self.encoder(data).chunk(2, -1)
        q = dist.Normal(loc, log_scale.exp())
        z = loc + log_scale.exp() * eps
        with self._plate(x, num_data):
            pyro.sample("z", dist.Delta(z, log_density=q.log_prob(z).sum(-1), event_dim=1))


def _fixed_noise_problem() -> tuple[FixedNoiseVAE, torch.Tensor]:
    torch.manual_seed(0)
    vae = FixedNoiseVAE().double()
    x = torch.randn(7, 5, dtype=torch.float64)
    x[3, 0] = 3.0  # the one datapoint that uses vae.rare
    return vae, x


def _fit_fixed_noise(vae: FixedNoiseVAE, x: torch.Tensor, distributed: bool | None) -> dict:
    # 7 datapoints in batches of 4 and 3: shares of 2 + 2 and 1 + 2 on two ranks.
    hist = ppvae.fit(
        vae, x, epochs=2, batch_size=4, lr=0.05, seed=5, progress=False, distributed=distributed
    )
    return {"state": vae.state_dict(), "objective": hist.train_objective}


def _ppca() -> tuple[LinearGaussianModel, torch.Tensor]:
    torch.manual_seed(1)
    model = LinearGaussianModel(4, 2, bias=torch.randn(4), noise_scale=0.5).double()
    return model, model.marginal().sample((11,))


def _evaluate(model: LinearGaussianModel, x: torch.Tensor) -> dict:
    exact = ppvae.log_likelihood(
        model.model, PosteriorGuide(model).guide, x, num_samples=8, proposal="guide", seed=2
    )
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3).guide
    runs = [
        ppvae.log_likelihood(model.model, guide, x, num_samples=300, proposal="guide", seed=3)
        for _ in range(2)
    ]
    ais = ppvae.ais_log_likelihood(model.model, guide, x[:5], num_steps=30, num_chains=4, seed=4)

    def fails_on_rank_1(target: object, k: int, chunk: int | None) -> torch.Tensor:
        if torch.distributed.get_rank() == 1:
            raise ValueError("bad datapoints on rank 1")
        return torch.zeros(k, target.batch_size)

    # proposal="auto": its pool rule must read the k-hat of all datapoints, not a shard's.
    narrow = PosteriorGuide(model, scale_factor=0.75).guide
    auto = ppvae.log_likelihood(model.model, narrow, x, num_samples=100, seed=5, pool_share=0.42)

    try:  # every rank raises what one rank's shard raised, instead of waiting for it
        ppvae.log_likelihood(model.model, guide, x, num_samples=4, proposal=fails_on_rank_1)
        raised = None
    except ValueError as err:
        raised = str(err)
    return {
        "auto": auto.per_datapoint,
        "auto_proposal": auto.proposal,
        "auto_guide_khat": (auto.guide_only or auto).khat,
        "raised": raised,
        "exact": exact.per_datapoint,
        "est": [r.per_datapoint for r in runs],
        "se": runs[0].mc_stderr_per_datapoint,
        "fingerprint": runs[0].data_fingerprint,
        "ais": ais.per_datapoint,
        "ais_se": ais.mc_stderr_per_datapoint,
    }


def _vq_states_agree() -> bool:
    """Train a VQ-VAE whose codebook moves outside gradients (initialisation from encoder
    outputs, moving averages, dead codes) on this rank's data; whether all ranks agree."""
    torch.manual_seed(0)
    x = torch.randint(0, 17, (48, 1, 8, 8)).double()
    vq = ppvae.VQVAE((1, 8, 8), num_codes=8, code_dim=2, grid=2, hidden=(8,), ema=True,
                     likelihood="binomial")  # fmt: skip
    ppvae.fit(vq, x, elbo=ppvae.VQ_ELBO(), epochs=2, batch_size=16, seed=0, progress=False)
    flat = torch.cat([t.detach().double().flatten() for t in vq.state_dict().values()])
    gathered = [torch.zeros_like(flat) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, flat)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _worker_fit_and_evaluate(out: Path) -> None:
    torch.set_default_dtype(torch.float64)
    fitted = _fit_fixed_noise(*_fixed_noise_problem(), distributed=None)
    evaluated = _evaluate(*_ppca())
    vq_agree = _vq_states_agree()
    if torch.distributed.get_rank() == 0:
        torch.save({"fit": fitted, "eval": evaluated, "vq_agree": vq_agree}, out / "rank0.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("two_ranks")
    proc = _launch(__file__, "fit_and_evaluate", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["rank0.pt"]
    return torch.load(out / "rank0.pt", weights_only=False)


def test_two_ranks_take_the_single_process_steps(two_ranks, float64):
    vae, x = _fixed_noise_problem()
    one = _fit_fixed_noise(vae, x, distributed=False)
    two = two_ranks["fit"]
    for name, value in one["state"].items():
        torch.testing.assert_close(two["state"][name], value, rtol=1e-10, atol=1e-12, msg=name)
    # The parameter no batch used was left alone, as in one process; the rare one moved.
    assert two["state"]["unused"].eq(0).all()
    assert two["state"]["rare"].ne(0).any()
    torch.testing.assert_close(torch.tensor(two["objective"]), torch.tensor(one["objective"]))


def test_codebook_upkeep_leaves_the_ranks_in_agreement(two_ranks):
    assert two_ranks["vq_agree"] is True


def test_sharded_evaluation_keeps_every_datapoint_once_in_order(two_ranks, float64):
    model, x = _ppca()
    sharded = two_ranks["eval"]
    # With the exact posterior as proposal every estimate is exact: a shuffled, missing
    # or doubled datapoint would show.
    torch.testing.assert_close(sharded["exact"], model.exact_log_likelihood(x).detach())
    assert sharded["est"][0].shape == (len(x),) and sharded["ais"].shape == (5,)
    torch.testing.assert_close(sharded["est"][0], sharded["est"][1], rtol=0, atol=0)
    assert sharded["raised"] == "bad datapoints on rank 1"
    # Rank 0's shard (the first 5) alone has too few high k-hat to refine all of its
    # datapoints, all 11 together have enough: every datapoint was refined, as in one process.
    bad = sharded["auto_guide_khat"] > 0.5
    assert bad[:5].double().mean() <= 0.42 < bad.double().mean()
    assert sharded["auto_proposal"] == ["refine"] * len(x)
    exact = model.exact_log_likelihood(x).detach()
    assert (sharded["auto"] - exact).abs().max() < 0.1
    guide = PosteriorGuide(model, scale_factor=1.5, shift=0.3).guide
    one = ppvae.log_likelihood(model.model, guide, x, num_samples=300, proposal="guide", seed=3)
    assert sharded["fingerprint"] == one.data_fingerprint
    diff = sharded["est"][0] - one.per_datapoint
    se = (sharded["se"].square() + one.mc_stderr_per_datapoint.square()).sum().sqrt() / len(x)
    assert diff.abs().max() > 0  # different draws on the second shard
    assert abs(float(diff.mean())) < 3 * float(se)
    ais = ppvae.ais_log_likelihood(model.model, guide, x[:5], num_steps=30, num_chains=4, seed=4)
    d_ais = sharded["ais"] - ais.per_datapoint
    se_ais = (sharded["ais_se"].square() + ais.mc_stderr_per_datapoint.square()).sum().sqrt() / 5
    assert abs(float(d_ais.mean())) < 3 * float(se_ais)


def test_cli_trains_on_two_ranks_and_resumes_on_one(tmp_path):
    run = tmp_path / "run"
    flags = ["--dataset", "digits", "--latent-dim", "2", "--hidden", "16", "--batch-size", "256"]
    proc = _launch("-m", "ppvae", "train", *flags, "--epochs", "2", "--out", str(run), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = load_checkpoint(run / "checkpoints" / "last.pt")
    assert first["history"]["epochs_completed"] == 2
    # Rank 0 alone wrote (and locked): one set of files, no temporary or per-rank leftovers.
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert files == sorted(
        [
            "config.toml",
            "history.json",
            "model.pt",
            "ppvae.lock",
            "checkpoints/last.pt",
            "checkpoints/best.pt",
        ]
    )
    assert main(["train", "--resume", "--epochs", "3", "--out", str(run), "--quiet"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["history"]["epochs_completed"] == 3


def test_bad_nproc_is_one_line_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--nproc", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "ppvae: error: --nproc must be at least 1, got 0"
    ]
    assert not out.exists()


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [c for child in map(int, children) for c in (child, *_descendants(child))]


def _rank_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [e[5:].decode() for e in env if e.startswith(b"RANK=")]
    return found[0] if found else None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks in /proc")
def test_a_dead_rank_stops_the_group_and_the_checkpoint_survives(tmp_path):
    run = tmp_path / "run"
    flags = ["--dataset", "digits", "--latent-dim", "2", "--hidden", "16", "--batch-size", "256"]
    cmd = [PYTHON, "-m", "ppvae", "train", *flags, "--epochs", "10000", "--out", str(run)]
    proc = subprocess.Popen(
        [*cmd, "--nproc", "2", "--quiet"], cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (run / "checkpoints" / "last.pt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.2)
        (rank1,) = [p for p in _descendants(proc.pid) if _rank_of(p) == "1"]
        os.kill(rank1, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    lines = stderr.strip().splitlines()
    # One line: rank 0's (the exchange failed) or the launcher's (rank 0 was stopped first).
    assert len(lines) == 1 and lines[0].startswith("ppvae: error: rank "), stderr[-2000:]
    assert "died (SIGKILL)" in lines[0] or "lost the process group" in lines[0]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["history"]["epochs_completed"] >= 1


if __name__ == "__main__":
    {"fit_and_evaluate": _worker_fit_and_evaluate}[sys.argv[1]](Path(sys.argv[2]))
