"""Checkpoint files: round trips, atomic writes and every rejection with its message."""

from __future__ import annotations

import os
import random
import struct
import zipfile

import numpy as np
import pyro
import pytest
import torch

from ppvae.inference import checkpoint
from ppvae.inference.checkpoint import (
    FORMAT,
    VERSION,
    checkpoint_digest,
    load,
    load_checkpoint,
    save,
    seal,
)
from ppvae.inference.history import History
from ppvae.inference.integrity import state_digest
from ppvae.inference.rng import rng_state, set_rng_state
from ppvae.models.hierarchical import TwoLayerVAE
from ppvae.models.linear_gaussian import LinearGaussianModel, LinearGuide
from ppvae.models.priors import LearnedNormal, StandardNormal
from ppvae.models.vae import VAE


@pytest.fixture(autouse=True)
def _seed() -> None:
    pyro.set_rng_seed(0)


def _vae(**kw) -> VAE:
    return VAE((6,), 3, hidden=(16,), **kw)


def _outputs(vae: VAE, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    mean, scale = vae.encode(x)
    return mean, scale, vae.decode(mean)


def _perturb(vae: VAE) -> VAE:
    """Move the parameters away from their initial values, so a round trip is informative."""
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p))
    return vae


def test_round_trip_rebuilds_the_model_with_identical_outputs(tmp_path):
    vae = _perturb(_vae(likelihood="gaussian", guide="fullrank"))
    opt = torch.optim.Adam(vae.parameters(), lr=0.01)
    history = History(train_objective=[-3.0, -2.0], epochs_completed=2)
    path = save(vae, tmp_path / "m.pt", optimizer=opt, history=history, config={"lr": 0.01})
    x = torch.rand(4, 6)

    loaded = load(path)

    assert type(loaded) is VAE and loaded.config == vae.config
    for a, b in zip(_outputs(vae, x), _outputs(loaded, x)):
        assert torch.equal(a, b)
    contents = load_checkpoint(path)
    assert contents["format"] == FORMAT and contents["version"] == VERSION
    assert History.from_dict(contents["history"]) == history
    assert contents["config"] == {"lr": 0.01}
    assert contents["optimizer_state"]["param_groups"][0]["lr"] == 0.01
    assert set(contents["versions"]) == {"ppvae", "torch", "pyro"}


def test_load_into_a_given_model(tmp_path):
    vae = _perturb(_vae())
    path = save(vae, tmp_path / "m.pt")
    target = _vae()
    assert load(path, model=target) is target
    assert all(torch.equal(a, b) for a, b in zip(vae.parameters(), target.parameters()))


def test_component_instances_need_a_model_of_the_same_structure(tmp_path):
    vae = _perturb(_vae(prior=LearnedNormal(3)))
    path = save(vae, tmp_path / "m.pt")
    saved = load_checkpoint(path)["model_config"]["prior"]
    assert saved == {"__instance__": "ppvae.models.priors.LearnedNormal"}

    with pytest.raises(ValueError, match=r"LearnedNormal.*pass model="):
        load(path)
    with pytest.raises(ValueError, match=r"prior: saved <ppvae.models.priors.LearnedNormal>"):
        load(path, model=_vae(prior=StandardNormal(3)))
    loaded = load(path, model=_vae(prior=LearnedNormal(3)))
    assert torch.equal(loaded.prior.loc, vae.prior.loc)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = save(_vae(), tmp_path / "m.pt")
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save(_perturb(_vae()), path)

    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no temporary file left behind
    monkeypatch.undo()
    load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*nothing.pt"):
        load(tmp_path / "nothing.pt")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated", r"cannot read checkpoint .*m\.pt: the file is truncated or corrupt"),
        ("empty", r"cannot read checkpoint .*m\.pt: the file is truncated or corrupt"),
        # Bytes that are not a zip archive are read as a legacy pickle, refused as such.
        ("junk", r"m\.pt is not a ppvae checkpoint \(or is corrupt\)"),
    ],
)
def test_corrupt_files_are_rejected(tmp_path, damage, message):
    path = save(_vae(), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "junk": b"not a zip archive", "empty": b""}[damage]
    )
    with pytest.raises(ValueError, match=message):
        load(path)


@pytest.mark.parametrize(
    "content",
    [{"weights": torch.zeros(2)}, torch.zeros(3), torch.nn.Linear(2, 2)],
    ids=["dict", "tensor", "pickled-module"],
)
def test_foreign_files_are_rejected(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=r"other\.pt is not a ppvae checkpoint"):
        load(path)


def test_other_format_version_is_rejected(tmp_path):
    path = save(_vae(), tmp_path / "m.pt")
    contents = load_checkpoint(path)
    contents["version"] = VERSION + 1
    torch.save(contents, path)
    with pytest.raises(
        ValueError, match=rf"format version {VERSION + 1} .* reads version {VERSION}"
    ):
        load(path)


def test_mismatched_arguments_are_rejected(tmp_path):
    path = save(_vae(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"other arguments \(hidden: saved \[16\], model \[8\]\)"):
        load(path, model=VAE((6,), 3, hidden=(8,)))
    with pytest.raises(ValueError, match="holds a VAE but model= is a Linear"):
        load(path, model=torch.nn.Linear(2, 2))


def test_state_that_does_not_fit_is_rejected(tmp_path):
    path = save(_vae(), tmp_path / "m.pt")
    contents = load_checkpoint(path)
    state = contents["model_state"]
    name = next(k for k in state if k.endswith("weight"))
    state[name] = torch.zeros(1, 1)
    state["stray.weight"] = torch.zeros(2)
    del state[next(k for k in state if k.endswith("bias"))]
    torch.save(contents, path)
    with pytest.raises(ValueError, match="integrity check"):
        load(path)
    contents["model_digest"] = state_digest(state)
    torch.save(seal(contents), path)  # as a crafted file would be: its digests agree
    with pytest.raises(ValueError, match="do not fit") as err:
        load(path)
    message = str(err.value)
    assert "missing" in message and "unexpected stray.weight" in message
    assert f"shape mismatch {name} saved (1, 1)" in message
    assert "\n" not in message


def test_unknown_class_needs_a_model(tmp_path):
    module = torch.nn.Linear(3, 2)
    path = save(module, tmp_path / "lin.pt")
    with pytest.raises(ValueError, match="Linear that cannot be rebuilt.*pass model="):
        load(path)
    target = torch.nn.Linear(3, 2)
    load(path, model=target)
    assert torch.equal(target.weight, module.weight)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    path = save(_vae(), tmp_path / "m.pt")  # records the global RNG states
    expected = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    set_rng_state(load_checkpoint(path)["rng_state"])
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]  # noqa: NPY002
    assert isinstance(rng_state()["random"], list)


# ---------------------------------------------------------------- every class, integrity
ROUND_TRIPS = [
    ("VAE", {}),
    ("VAE", {"prior": "vamp", "prior_kwargs": {"num_components": 3}, "guide": "lowrank"}),
    ("VAE", {"prior": "ard", "likelihood": "gaussian", "guide": "iaf"}),
    ("VAE", {"prior": "mixture", "guide": "nsf", "likelihood": "continuous_bernoulli"}),
    ("VAE", {"prior": "learned_normal", "guide": "fullrank", "num_labels": 3}),
    (
        "VAE",
        {"prior": "student_t", "likelihood": "binomial", "likelihood_kwargs": {"total_count": 4}},
    ),
    ("TwoLayerVAE", {}),
    ("TwoLayerVAE", {"guide": "fullrank", "likelihood": "gaussian", "num_labels": 3}),
]


def _build(cls: str, options: dict) -> torch.nn.Module:
    if cls == "TwoLayerVAE":
        return TwoLayerVAE((6,), (3, 2), hidden=(8,), latent_hidden=(5,), **options)
    return VAE((6,), 3, hidden=(8,), **options)


@pytest.mark.parametrize(("cls", "options"), ROUND_TRIPS, ids=lambda v: str(v))
def test_every_model_class_round_trips(tmp_path, cls, options):
    vae = _perturb(_build(cls, options))
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    if options.get("likelihood") == "binomial":
        x = torch.randint(0, 5, (5, 6)).float()
    args = (x,) if "num_labels" not in options else (x, torch.arange(5) % 3)

    loaded = load(save(vae, tmp_path / "m.pt"))

    assert type(loaded) is type(vae) and loaded.config == vae.config
    assert all(
        torch.equal(a, b) for a, b in zip(vae.state_dict().values(), loaded.state_dict().values())
    )
    losses = []
    for model in (vae, loaded):
        pyro.set_rng_seed(1)
        with pyro.settings.context(module_local_params=True):
            losses.append(pyro.infer.Trace_ELBO().loss(model.model, model.guide, *args))
    assert losses[0] == losses[1]
    y = None if "num_labels" not in options else 1
    assert torch.equal(vae.decode(torch.ones(2, 3), y), loaded.decode(torch.ones(2, 3), y))


def _tensor_payload(path) -> tuple[int, int]:
    """Offset and size of the largest tensor record inside a checkpoint's zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


@pytest.mark.parametrize("cls", [LinearGaussianModel, LinearGuide])
def test_linear_gaussian_classes_round_trip(tmp_path, cls):
    module = _perturb(cls(6, 2))
    loaded = load(save(module, tmp_path / "m.pt"))
    assert type(loaded) is cls and loaded.config == {"data_dim": 6, "latent_dim": 2}
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), loaded.parameters()))


def test_flipped_bytes_in_tensor_data_are_refused(tmp_path):
    path = save(_perturb(VAE((6,), 3, hidden=(64,))), tmp_path / "m.pt")
    start, size = _tensor_payload(path)
    data = bytearray(path.read_bytes())
    middle = start + size // 2 - 32
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match=r"checkpoint .*m\.pt fails its SHA-256 integrity") as err:
        load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="integrity"):
        checkpoint_digest(path)


@pytest.mark.parametrize("where", [0.02, 0.5, 0.98])
def test_flipped_bytes_anywhere_give_one_clear_line(tmp_path, where):
    path = save(_perturb(VAE((6,), 3, hidden=(64,))), tmp_path / "m.pt")
    data = bytearray(path.read_bytes())
    at = int(where * (len(data) - 64))
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"m\.pt") as err:
        load(path)
    assert "\n" not in str(err.value)


def test_stored_sizes_are_checked_before_the_network_is_built(tmp_path, monkeypatch):
    path = save(_vae(), tmp_path / "m.pt")
    contents = load_checkpoint(path)
    contents["model_config"]["hidden"] = [200000, 200000]
    torch.save(seal(contents), path)  # a crafted file: its digests agree
    built = []
    monkeypatch.setitem(checkpoint.MODEL_CLASSES, "VAE", lambda **kw: built.append(kw))

    with pytest.raises(ValueError, match=r"hidden=\[200000, 200000\].*refusing to build") as err:
        load(path)
    assert built == []  # refused before any constructor ran
    assert "\n" not in str(err.value)


def test_checkpoint_digest_identifies_the_weights(tmp_path):
    vae = _perturb(_vae())
    a = save(vae, tmp_path / "a.pt", history={"epochs_completed": 1})
    b = save(vae, tmp_path / "b.pt", history={"epochs_completed": 2})
    assert checkpoint_digest(a) == checkpoint_digest(b) == state_digest(vae.state_dict())
    assert len(checkpoint_digest(a)) == 64
    assert load_checkpoint(a)["digest"] != load_checkpoint(b)["digest"]
    _perturb(vae)
    assert checkpoint_digest(save(vae, tmp_path / "c.pt")) != checkpoint_digest(a)


def test_version_2_files_load_without_verification(tmp_path):
    vae = _perturb(_vae())
    contents = load_checkpoint(save(vae, tmp_path / "m.pt"))
    for key in ("digest", "model_digest"):
        del contents[key]
    contents["version"] = 2
    torch.save(contents, tmp_path / "old.pt")
    loaded = load(tmp_path / "old.pt")
    assert all(torch.equal(a, b) for a, b in zip(vae.parameters(), loaded.parameters()))
    assert checkpoint_digest(tmp_path / "old.pt") == state_digest(vae.state_dict())
