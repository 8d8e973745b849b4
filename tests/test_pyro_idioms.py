"""Pyro users' idioms on ppvae models: ``pyro.infer.SVI`` with ``pyro.optim``, the same
trajectory as ``ppvae.fit``, no global side effect of ``import ppvae``, and the one
combination that cannot work refused with its reason."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO, ELBOModule

import ppvae
from ppvae.inference.batches import BatchLoader
from ppvae.inference.rng import derive_seeds, seeded
from ppvae.models import LinearGaussianModel, LinearGuide
from ppvae.models.programs import LOCAL_SVI_REFUSAL, ParamModeError, store_names

MODELS = {
    "vae": {},
    "vamp": {"prior": "vamp", "prior_kwargs": {"num_components": 3}},
    "mixture": {"prior": "mixture"},
    "learned_normal": {"prior": "learned_normal"},
    "ard": {"prior": "ard"},
    "lowrank": {"guide": "lowrank"},
    "fullrank": {"guide": "fullrank"},
    "iaf": {"guide": "iaf"},
    "nsf": {"guide": "nsf"},
    "conditional": {"num_labels": 3},
    "two_layer": {"two_layer": True},
    "two_layer_conditional": {"two_layer": True, "num_labels": 3},
}
ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "iwae": lambda: ppvae.IWAE_ELBO(4),
    "iwae_dreg": lambda: ppvae.IWAE_ELBO(4, dreg=True),
}


def _model(options: dict) -> torch.nn.Module:
    options = dict(options)
    if options.pop("two_layer", False):
        return ppvae.TwoLayerVAE((6,), (3, 2), hidden=(8,), latent_hidden=(5,), **options)
    return ppvae.VAE((6,), 2, hidden=(8,), **options)


def _data(n: int = 12, labels: bool = False) -> tuple[torch.Tensor, ...]:
    x = torch.bernoulli(torch.full((n, 6), 0.4))
    return (x, torch.arange(n) % 3) if labels else (x,)


@pytest.mark.parametrize("elbo", list(ELBOS))
@pytest.mark.parametrize("name", list(MODELS))
def test_svi_with_pyro_optim_trains_every_parameter(name, elbo):
    options = MODELS[name]
    if elbo == "meanfield" and options.get("two_layer"):
        pytest.skip("not mean-field: see test_meanfield_on_a_two_layer_vae_is_refused")
    vae = _model(options)
    args = _data(labels="num_labels" in options)
    before = {k: p.detach().clone() for k, p in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), ELBOS[elbo]())

    losses = [svi.step(*args, num_data=100) for _ in range(2)]

    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in losses)
    unchanged = [k for k, p in vae.named_parameters() if torch.equal(p, before[k])]
    assert unchanged == []
    # The collision check reads exactly the names SVI registered (and their tensors).
    store = pyro.get_param_store()
    names = dict(store_names(vae))
    assert set(names) == set(store.keys())
    assert all(store[k].unconstrained() is t for k, t in names.items())


def test_svi_trains_the_linear_gaussian_model():
    model, guide = LinearGaussianModel(6, 2), LinearGuide(6, 2)
    x = torch.randn(20, 6)
    svi = SVI(model.model, guide.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert {"weight", "bias", "noise_scale", "scale_tril"} <= set(pyro.get_param_store())


def _svi_as_fit(vae, x, elbo, *, epochs: int, batch_size: int, lr: float, seed: int):
    """SVI over the batches ``fit`` draws, on the stream it samples from."""
    loader_seed, sampling_seed = derive_seeds(seed, 2)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), elbo)
    losses = []
    with seeded(sampling_seed):
        loader = BatchLoader(x, batch_size=batch_size, seed=loader_seed)
        for _ in range(epochs):
            losses += [svi.step(xb, num_data=len(x)) for xb, _ in loader]
    return losses


@pytest.mark.parametrize(
    ("name", "fit_elbo", "svi_elbo"),
    [
        ("trace", "trace", Trace_ELBO),
        ("meanfield", "meanfield", TraceMeanField_ELBO),
        ("iwae", "iwae", lambda: ppvae.IWAE_ELBO(4)),
    ],
)
def test_svi_follows_the_loss_trajectory_of_fit(name, fit_elbo, svi_elbo):
    x = _data(16)[0]
    start = _model({"prior": "learned_normal"}).state_dict()
    settings = {"epochs": 6, "batch_size": 16, "lr": 1e-2, "seed": 3}
    # One batch per epoch, so fit's per-epoch objective is its per-step loss.
    fitted = _model({"prior": "learned_normal"})
    fitted.load_state_dict(start)
    history = ppvae.fit(
        fitted,
        x,
        elbo=fit_elbo,
        num_particles=4 if name == "iwae" else 1,
        optimizer="adam",  # torch.optim.Adam; pyro.optim.Adam wraps it per parameter
        progress=False,
        **settings,
    )
    stepped = _model({"prior": "learned_normal"})
    stepped.load_state_dict(start)

    losses = _svi_as_fit(stepped, x, svi_elbo(), **settings)

    fit_losses = [-v * len(x) for v in history.train_objective]
    assert losses == pytest.approx(fit_losses, rel=1e-5)
    assert losses[-1] < losses[0] - 1.0  # it trained, so equal trajectories say something
    for (k, a), b in zip(fitted.state_dict().items(), stepped.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k


def test_svi_under_module_local_params_is_refused_with_the_way_out():
    vae = _model({})
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    with pyro.settings.context(module_local_params=True):
        with pytest.raises(ParamModeError, match="global param store.*ppvae.fit") as err:
            svi.step(*_data())
    assert str(err.value) == LOCAL_SVI_REFUSAL and "\n" not in LOCAL_SVI_REFUSAL
    svi.step(*_data())  # under Pyro's default mode the same SVI object works


def test_meanfield_on_a_two_layer_vae_is_refused():
    vae = _model({"two_layer": True})
    with pytest.raises(ValueError, match="elbo='meanfield' cannot train a TwoLayerVAE.*'trace'"):
        ppvae.fit(vae, _data()[0], elbo="meanfield", epochs=1, progress=False)
    # Pyro's own check, under SVI, says that the guide is not mean-field.
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    with pytest.warns(UserWarning, match="mean field restriction"):
        svi.step(*_data())


def test_iwae_elbo_is_a_pyro_elbo():
    vae = _model({"prior": "ard"})
    elbo = ppvae.IWAE_ELBO(8)
    assert isinstance(elbo, ELBO)
    module = elbo(vae.model, vae.guide)
    assert isinstance(module, ELBOModule)
    loss = module(*_data(), num_data=50)
    assert loss.requires_grad and torch.isfinite(loss)
    assert {id(p) for p in module.parameters()} == {id(p) for p in vae.parameters()}


def test_ppvae_entry_points_leave_the_global_param_store_alone():
    a = _model({"prior": "learned_normal"})
    svi = SVI(a.model, a.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(*_data())
    store = pyro.get_param_store().get_state()["params"]  # the unconstrained tensors
    snapshot = {k: v.detach().clone() for k, v in store.items()}
    b = _model({"prior": "learned_normal"})  # the same parameter names as a's
    own = {k: p for k, p in b.named_parameters()}

    ppvae.fit(b, _data()[0], epochs=2, batch_size=6, progress=False, seed=0)
    ppvae.log_likelihood(b.model, b.guide, _data(4)[0], num_samples=8, proposal="guide", seed=0)
    b.sample(3)

    now = pyro.get_param_store().get_state()["params"]
    assert now.keys() == store.keys()
    for k, v in now.items():
        assert v is store[k] and torch.equal(v, snapshot[k]), k
    assert all(p is own[k] for k, p in b.named_parameters())  # b kept its own tensors
    assert not {id(p) for p in b.parameters()} & {id(p) for p in a.parameters()}


_USER_SCRIPT = textwrap.dedent(
    """
    import json
    import pyro, pyro.distributions as dist, torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro.nn import PyroModule, PyroParam

    class Regression(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[torch.nn.Linear](1, 1)
            self.noise = PyroParam(torch.tensor(1.0), constraint=dist.constraints.positive)

        def forward(self, x, y=None):
            shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
            with pyro.plate("data", len(x)):
                loc = self.linear(x).squeeze(-1) + shift
                return pyro.sample("y", dist.Normal(loc, self.noise), obs=y)

    def state():
        return {"pyro": {k: repr(v) for k, v in pyro.settings.get().items()},
                "validation": pyro.infer.util.is_validation_enabled(),
                "dtype": str(torch.get_default_dtype()), "threads": torch.get_num_threads(),
                "grad": torch.is_grad_enabled(),
                "deterministic": torch.are_deterministic_algorithms_enabled(),
                "warning_filters": len(__import__("warnings").filters)}

    def train():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        x = torch.randn(30, 1)
        y = 2 * x.squeeze(-1) + 0.3 * torch.randn(30)
        model = Regression()
        svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        losses = [svi.step(x, y) for _ in range(5)]
        return {"losses": losses, "store": sorted(pyro.get_param_store().keys())}

    runs = {"without": train(), "before": state()}
    import ppvae  # noqa: E402, F401
    runs.update(after=state(), with_ppvae=train())
    print(json.dumps(runs))
    """
)


def test_import_ppvae_changes_no_global_setting():
    # A fresh interpreter: the user's own PyroModule trains with SVI, then ppvae is imported
    # and the same training runs again.
    out = subprocess.run(
        [sys.executable, "-c", _USER_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["before"] == runs["after"]
    assert runs["with_ppvae"] == runs["without"]  # losses bit for bit, the same store
    assert "linear.weight" in runs["without"]["store"]  # trained through the param store


def test_svi_on_a_second_model_of_the_same_structure_needs_a_cleared_store():
    first = _model({"prior": "learned_normal"})
    SVI(first.model, first.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()).step(*_data())
    second = _model({"prior": "learned_normal"})
    own = dict(second.named_parameters())
    svi = SVI(second.model, second.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())

    with pytest.raises(ParamModeError, match=r"pyro.clear_param_store\(\)") as err:
        svi.step(*_data())
    assert "\n" not in str(err.value)
    assert all(p is own[k] for k, p in second.named_parameters())  # nothing adopted
    pyro.clear_param_store()
    before = {k: p.detach().clone() for k, p in second.named_parameters()}
    svi.step(*_data())
    assert all(not torch.equal(p, before[k]) for k, p in second.named_parameters())
    svi.step(*_data())  # the store now holds the second model's own tensors
