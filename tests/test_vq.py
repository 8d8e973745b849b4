"""The VQ-VAE: programs, objectives, training with codebook upkeep, save/load."""

import pyro
import pytest
import torch

import ppvae
from ppvae.inference.checkpoint import load, save
from ppvae.models import VQVAE, Codebook, PixelCNNPrior


@pytest.fixture(scope="module")
def digits():
    return ppvae.load_dataset("digits")


def _small(digits, **kw) -> VQVAE:
    opts = dict(num_codes=16, code_dim=4, grid=4, hidden=(32,), likelihood="binomial")
    return VQVAE(digits.event_shape, **{**opts, **kw})


def test_programs_draw_codes_in_data_and_grid_plates(digits):
    vq = _small(digits, posterior="soft")
    x = digits.train[:7]
    trace = pyro.poutine.trace(vq.guide).get_trace(x)
    site = trace.nodes["codes"]
    assert site["value"].shape == (4, 7)  # (grid, data)
    assert {f.name: f.dim for f in site["cond_indep_stack"]} == {"data": -1, "grid": -2}
    model_trace = pyro.poutine.trace(pyro.poutine.replay(vq.model, trace=trace)).get_trace(x)
    assert model_trace.nodes["x"]["fn"].batch_shape == (1, 7)
    torch.testing.assert_close(model_trace.nodes["z_q"]["value"], vq.codebook.weight[site["value"]])


def test_hard_guide_is_the_nearest_code_with_log_q_zero(digits):
    vq = _small(digits)
    x = digits.train[:5]
    site = pyro.poutine.trace(vq.guide).get_trace(x).nodes["codes"]
    assert torch.equal(site["value"].T, vq.encode(x))
    assert torch.equal(site["fn"].log_prob(site["value"]), torch.zeros(4, 5))


def test_conv_networks_use_a_seven_by_seven_grid():
    vq = VQVAE((1, 28, 28), num_codes=8, code_dim=3, grid=(7, 7), encoder="conv", decoder="conv")
    x = torch.rand(2, 1, 28, 28).round()
    assert vq.encode(x).shape == (2, 49)
    assert vq.reconstruct(x).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="7×7 code grid"):
        VQVAE((1, 28, 28), grid=4, encoder="conv", decoder="conv")


def test_bad_arguments_and_data_are_refused(digits):
    with pytest.raises(ValueError, match="posterior must be one of"):
        _small(digits, posterior="fuzzy")
    with pytest.raises(ValueError, match="prior must be one of"):
        _small(digits, prior="vamp")
    with pytest.raises(ValueError, match="datapoint shape"):
        _small(digits).check_data(torch.zeros(3, 5))


@pytest.mark.parametrize(
    "posterior,objective,ema",
    [
        ("hard", ppvae.VQ_ELBO(), False),
        ("hard", ppvae.VQ_ELBO(), True),
        ("soft", ppvae.SoftVQ_ELBO(), False),
    ],
)
def test_fit_trains_and_records_codebook_statistics(digits, posterior, objective, ema):
    vq = _small(digits, posterior=posterior, ema=ema)
    x, val = digits.train[:400], digits.val[:100]
    before = objective.loss(vq.model, vq.guide, val)
    hist = ppvae.fit(vq, x, val=val, elbo=objective, epochs=4, seed=0, progress=False)
    assert objective.loss(vq.model, vq.guide, val) < before
    usage, perplexity = hist.metrics["codebook_usage"], hist.metrics["perplexity"]
    assert len(usage) == len(perplexity) == 4
    assert all(0 < u <= 1 for u in usage) and all(1 <= p <= 16 + 1e-9 for p in perplexity)
    assert not vq.codebook.weight.requires_grad if ema else vq.codebook.weight.requires_grad


def test_dead_codes_are_reinitialised_from_encoder_outputs(digits):
    vq = _small(digits)
    with torch.no_grad():  # every encoder output lands on code 0 at first
        vq.codebook.weight.fill_(100.0)
        vq.codebook.weight[0] = 0.0
    objective = ppvae.VQ_ELBO(init_from_data=False)
    x = digits.train[:64]
    objective.differentiable_loss(vq.model, vq.guide, x)
    z_e = vq.encoder(x).detach().reshape(-1, 4)
    stats = objective.end_epoch()
    assert stats["codebook_usage"] == pytest.approx(1 / 16)
    assert stats["perplexity"] == pytest.approx(1.0)
    assert stats["dead_codes_reinitialised"] == 15
    rows = vq.codebook.weight[1:].detach()
    assert torch.cdist(rows, z_e).min(-1).values.max() < 1e-3  # each is an encoder output
    off = ppvae.VQ_ELBO(reinit_dead=False, init_from_data=False)
    off.differentiable_loss(vq.model, vq.guide, x)
    assert off.end_epoch()["dead_codes_reinitialised"] == 0


def test_fresh_codebook_starts_at_encoder_outputs(digits):
    vq = _small(digits)
    objective = ppvae.VQ_ELBO()
    x = digits.train[:64]
    objective.differentiable_loss(vq.model, vq.guide, x)  # the first step records outputs
    assert not vq.codebook.initialised
    objective.differentiable_loss(vq.model, vq.guide, x)  # ... and the next applies them
    assert vq.codebook.initialised
    z_e = vq.encoder(x).detach().reshape(-1, 4)
    assert torch.cdist(vq.codebook.weight.detach(), z_e).min(-1).values.max() < 1e-3


def test_ema_codebook_moves_towards_assigned_outputs():
    book = Codebook(4, 2, ema=True, decay=0.5)
    z = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    codes = torch.tensor([2, 2])
    for _ in range(30):
        book.ema_update(z, codes)
    torch.testing.assert_close(book.weight[2], torch.tensor([2.0, 2.0]), atol=1e-3, rtol=0)


def test_vq_objective_gradients_reach_encoder_decoder_and_codebook(digits):
    for posterior, objective in (("hard", ppvae.VQ_ELBO()), ("soft", ppvae.SoftVQ_ELBO())):
        vq = _small(digits, posterior=posterior)
        objective.differentiable_loss(vq.model, vq.guide, digits.train[:32]).backward()
        missing = [n for n, p in vq.named_parameters() if p.grad is None or not p.grad.any()]
        assert missing == [], (posterior, missing)


def test_objective_runs_under_pyro_svi(digits):
    vq = _small(digits)
    svi = pyro.infer.SVI(vq.model, vq.guide, pyro.optim.Adam({"lr": 1e-3}), ppvae.VQ_ELBO())
    before = {k: v.detach().clone() for k, v in vq.named_parameters()}
    loss = svi.step(digits.train[:32])
    assert loss > 0 and loss == loss
    # Pyro's SVI finds every parameter (encoder, decoder, codebook) through the param store.
    unchanged = [k for k, v in vq.named_parameters() if torch.equal(v.detach(), before[k])]
    assert unchanged == []


def test_learned_prior_and_save_load_round_trip(digits, tmp_path):
    vq = _small(digits, prior="learned", posterior="soft")
    ppvae.fit(vq, digits.train[:200], elbo=ppvae.SoftVQ_ELBO(), epochs=1, seed=0, progress=False)
    codes = vq.encode(digits.train)
    vq.fit_code_prior(codes)
    freq = torch.bincount(codes[:, 0], minlength=16) + 1.0
    torch.testing.assert_close(vq.prior_logits[0].exp(), freq / freq.sum())
    save(vq, tmp_path / "vq.pt")
    back = load(tmp_path / "vq.pt")
    assert isinstance(back, VQVAE) and back.config == vq.config
    x = digits.test[:5]
    torch.testing.assert_close(back.reconstruct(x), vq.reconstruct(x))
    torch.testing.assert_close(back.prior_logits, vq.prior_logits)
    assert back.sample(3).shape == (3, *digits.event_shape)
    with pytest.raises(ValueError, match="prior='learned'"):
        _small(digits).fit_code_prior(codes)


def test_pixelcnn_prior_is_causal_exact_and_trains(digits):
    prior = PixelCNNPrior((2, 3), 8, channels=16, layers=1)
    codes = torch.randint(8, (1, 6))
    changed = codes.clone()
    changed[0, 3] = (codes[0, 3] + 1) % 8
    a, b = prior.logits(codes), prior.logits(changed)
    torch.testing.assert_close(a[0, :4], b[0, :4])  # positions up to 3 do not see k_3
    assert not torch.allclose(a[0, 4:], b[0, 4:])
    # The Pyro program's log-density is log p(k), exactly.
    trace = pyro.poutine.trace(prior.model).get_trace(codes)
    assert trace.log_prob_sum().item() == pytest.approx(prior.log_prob(codes).item(), rel=1e-6)
    # Codes with a dependency a per-position prior cannot capture: k_1 = k_0.
    first = torch.randint(8, (600, 1))
    data = torch.cat([first, first, torch.randint(8, (600, 4))], 1)
    ppvae.fit(prior, data, epochs=15, lr=1e-2, batch_size=100, seed=0, progress=False)
    independent = -6 * torch.tensor(8.0).log()
    assert prior.log_prob(data).mean() > independent + 1.0  # learned about log 8 nats
    samples = prior.sample(200)
    assert samples.shape == (200, 6) and (samples[:, 1] == samples[:, 0]).float().mean() > 0.5


def test_bound_at_codes_and_bits_per_dim(digits):
    vq = _small(digits)
    x = digits.test[:4]
    bound = vq.log_joint_at_codes(x)
    loss = ppvae.VQ_ELBO().loss(vq.model, vq.guide, x)
    assert bound.sum().item() == pytest.approx(-loss, rel=1e-5)
    flat = vq.log_joint_at_codes(x, code_log_prob=lambda k: torch.zeros(len(k)))
    torch.testing.assert_close(flat - bound, torch.full((4,), 4 * torch.tensor(16.0).log()))
    assert ppvae.bits_per_dim(-64 * torch.tensor(2.0).log(), 64) == pytest.approx(1.0)
