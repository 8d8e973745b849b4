"""RunConfig: typed fields, validation, and the TOML round trip."""

from __future__ import annotations

import math
import tomllib

import pytest

from ppvae.app.config import RunConfig, UserError, parse_hidden, to_toml
from ppvae.app.rundir import load_config, save_config


def _unusual() -> RunConfig:
    return RunConfig(
        dataset='my "data"\\set\n\tü.npz',
        data_dir="/tmp/a b",
        download=True,
        binarize="none",
        likelihood=None,  # the dataset's: any table keys pass, to test odd TOML keys
        latent_dim=3,
        hidden=[7, 5, 3],
        conditional=True,
        num_labels=4,
        elbo="iwae",
        particles=5,
        epochs=2,
        lr=1e-5,
        beta=0.25,
        clip_norm=10.0,
        patience=3,
        seed=4294967295,
        likelihood_kwargs={"total_count": 16, "odd key": "x\x01y", "ratio": 0.5, "flag": False},
        prior="mixture",
        prior_kwargs={"num_components": 10},
    )


def test_toml_round_trip_preserves_every_field():
    cfg = _unusual()
    back = RunConfig.from_dict(tomllib.loads(to_toml(cfg.to_dict())))
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    assert isinstance(back.lr, float) and back.lr == 1e-5


def test_defaults_round_trip_and_none_fields_are_left_out():
    cfg = RunConfig()
    text = to_toml(cfg.to_dict())
    assert "patience" not in text and "data_dir" not in text  # TOML has no null
    assert RunConfig.from_dict(tomllib.loads(text)) == cfg


def test_non_finite_floats_round_trip():
    values = tomllib.loads(to_toml({"a": math.inf, "b": -math.inf, "c": math.nan, "d": 1.0}))
    assert values["a"] == math.inf and values["b"] == -math.inf and math.isnan(values["c"])
    assert isinstance(values["d"], float)


def test_save_and_load_file(tmp_path):
    cfg = _unusual()
    path = save_config(cfg, tmp_path / "run" / "config.toml")
    assert load_config(path) == cfg
    assert load_config(tmp_path / "run") == cfg  # a run directory works too
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.toml"]  # no temp file


def test_unknown_key_names_it_and_the_valid_keys():
    with pytest.raises(UserError) as info:
        RunConfig.from_dict({"latent_dim": 4, "laten_dim": 4}, source="x.toml")
    text = str(info.value)
    assert "'laten_dim'" in text and "x.toml" in text and "latent_dim" in text
    assert "\n" not in text


@pytest.mark.parametrize(
    "key, value",
    [
        ("epochs", "3"),
        ("epochs", 2.5),
        ("epochs", True),
        ("lr", "0.1"),
        ("lr", False),
        ("hidden", "400,400"),
        ("hidden", [400, "a"]),
        ("conditional", 1),
        ("likelihood_kwargs", [1, 2]),
        ("dataset", 3),
        ("patience", 1.5),
    ],
)
def test_wrong_types_are_user_errors(key, value):
    with pytest.raises(UserError, match=key.split("[")[0]):
        RunConfig.from_dict({key: value})


def test_ints_are_accepted_for_floats():
    cfg = RunConfig(lr=1, beta=0)
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0 and isinstance(cfg.beta, float)


@pytest.mark.parametrize(
    "changes",
    [
        {"epochs": 0},
        {"latent_dim": 0},
        {"batch_size": -1},
        {"lr": 0.0},
        {"lr": math.nan},
        {"beta": -1.0},
        {"hidden": []},
        {"hidden": [4, 0]},
        {"elbo": "renyi"},
        {"binarize": "sometimes"},
        {"val_fraction": 1.0},
        {"patience": 0},
    ],
)
def test_invalid_values_are_user_errors(changes):
    with pytest.raises(UserError):
        RunConfig(**changes)


def test_replace_ignores_none_and_validates():
    cfg = RunConfig(epochs=5)
    assert cfg.replace(epochs=None, lr=0.01) == RunConfig(epochs=5, lr=0.01)
    with pytest.raises(UserError):
        cfg.replace(epochs="many")


def test_binarize_mode_maps_none():
    assert RunConfig(binarize="none").binarize_mode is None
    assert RunConfig(binarize="dynamic").binarize_mode == "dynamic"


def test_parse_hidden():
    assert parse_hidden("400,400") == [400, 400]
    assert parse_hidden("32") == [32]
    for bad in ("", "a,b", "4,-1", "0"):
        with pytest.raises(UserError, match="hidden"):
            parse_hidden(bad)


def test_load_config_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(UserError, match="TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("epochs = 3\ncolour = 'red'\n")
    with pytest.raises(UserError, match="'colour'"):
        load_config(unknown)


def test_kwargs_tables_are_checked_against_the_component_constructor():
    with pytest.raises(UserError, match=r"unknown key 'foo' in \[prior_kwargs\] for mixture prior"):
        RunConfig(prior="mixture", prior_kwargs={"foo": 1})
    with pytest.raises(UserError, match=r"accepted keys are num_components, init_scale"):
        RunConfig(prior="mixture", prior_kwargs={"latent_dim": 3})  # the VAE supplies it
    with pytest.raises(UserError, match=r"\[likelihood_kwargs\] total_count must be int"):
        RunConfig(likelihood="binomial", likelihood_kwargs={"total_count": "a"})
    with pytest.raises(UserError, match=r"\[guide_kwargs\] hidden_dims\[0\] must be int"):
        RunConfig(guide="iaf", guide_kwargs={"hidden_dims": ["wide"]})
    cfg = RunConfig(guide="nsf", guide_kwargs={"num_flows": 3, "bound": 4, "order": "linear"})
    assert cfg.guide_kwargs["bound"] == 4  # ints pass for floats, as in the top table
    with pytest.raises(UserError, match=r"seed must lie in \[0, 4294967295\]"):
        RunConfig(seed=2**70)
