"""Typed run configuration and its TOML form.

A :class:`RunConfig` holds everything a training run depends on; the resolved
configuration is written next to the run's results (``RUN_DIR/config.toml``, by
:mod:`ppvae.app.rundir`) so that ``ppvae train RUN_DIR/config.toml --out OTHER`` repeats
the run exactly. Files are read with :mod:`tomllib`; :func:`to_toml` covers exactly the
value types a :class:`RunConfig` can hold (scalars, lists of scalars, flat tables).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ppvae.models.registry import GUIDES, LIKELIHOODS, PRIORS, Registry

__all__ = [
    "MAX_SEED",
    "RunConfig",
    "UserError",
    "check_seed",
    "parse_hidden",
    "read_toml",
    "to_toml",
]

ELBOS = ("trace", "meanfield", "iwae", "tcvae", "capacity")
MODELS = ("vae", "vqvae")
VQ_POSTERIORS = ("hard", "soft")
BINARIZE = ("auto", "dynamic", "static", "threshold", "none")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
#: Seeds go to torch, Pyro and NumPy generators; NumPy's legacy seeding takes 32 bits.
MAX_SEED = 2**32 - 1
#: Constructor arguments the VAE supplies itself, and so are no keys of a kwargs table.
_SUPPLIED = frozenset({"latent_dim", "event_shape", "encoder"})


class UserError(ValueError):
    """A mistake in what the user asked for; the CLI prints it as one line and exits 2."""


@dataclass
class RunConfig:
    """Everything a training run depends on.

    ``likelihood = None`` and empty ``likelihood_kwargs`` mean "the dataset's suggested
    observation model"; ``train`` resolves them (digits: Binomial with 16 trials) and
    writes the resolved values, so a saved configuration never depends on defaults.

    ``model = "vqvae"`` trains a vector-quantised VAE (:class:`ppvae.models.vq.VQVAE`)
    with ``num_codes``, ``code_dim``, ``grid`` and ``posterior``; its ``prior`` is
    ``"learned"`` (a per-position categorical and an autoregressive prior, trained for
    ``prior_epochs`` after the VQ-VAE) or ``"uniform"``, and ``latent_dim`` is unused.
    """

    dataset: str = "digits"
    model: str = "vae"
    data_dir: str | None = None
    download: bool = False
    binarize: str = "auto"
    val_fraction: float = 0.1
    prior: str = "normal"
    guide: str = "diagonal"
    likelihood: str | None = None
    encoder: str = "mlp"
    decoder: str = "mlp"
    latent_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    conditional: bool = False
    num_labels: int | None = None
    elbo: str = "trace"
    particles: int = 1
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    beta: float = 1.0
    kl_anneal: int = 0
    capacity: float = 25.0
    capacity_steps: int = 10_000
    gamma: float = 1000.0
    clip_norm: float | None = None
    patience: int | None = None
    seed: int = 0
    device: str = "cpu"
    num_codes: int = 64
    code_dim: int = 16
    grid: list[int] = field(default_factory=lambda: [4])
    posterior: str = "hard"
    prior_epochs: int = 20
    prior_kwargs: dict[str, Any] = field(default_factory=dict)
    likelihood_kwargs: dict[str, Any] = field(default_factory=dict)
    guide_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` for values no run could use."""
        checks = [
            (self.latent_dim >= 1, "latent_dim must be at least 1"),
            (len(self.hidden) >= 1 and min(self.hidden) >= 1, "hidden widths must be >= 1"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.particles >= 1, "particles must be at least 1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number"),
            (self.beta >= 0 and math.isfinite(self.beta), "beta must be >= 0"),
            (self.kl_anneal >= 0, "kl_anneal must be >= 0"),
            (self.capacity >= 0 and self.gamma >= 0, "capacity and gamma must be >= 0"),
            (self.capacity_steps >= 1, "capacity_steps must be at least 1"),
            (
                self.elbo not in ("tcvae", "capacity") or self.kl_anneal == 0,
                f"--kl-anneal does not apply to --elbo {self.elbo}",
            ),
            (
                self.elbo != "capacity" or self.beta == 1,
                "--elbo capacity weights the KL by --gamma, not --beta; drop --beta",
            ),
            (
                self.elbo != "tcvae" or self.guide == "diagonal",
                "--elbo tcvae estimates the TC from factorised posteriors: use --guide diagonal",
            ),
            (self.patience is None or self.patience >= 1, "patience must be at least 1"),
            (self.clip_norm is None or self.clip_norm > 0, "clip_norm must be positive"),
            (0 <= self.val_fraction < 1, "val_fraction must lie in [0, 1)"),
            (self.num_labels is None or self.num_labels >= 2, "num_labels must be >= 2"),
            (self.num_codes >= 2 and self.code_dim >= 1, "num_codes >= 2 and code_dim >= 1"),
            (len(self.grid) >= 1 and min(self.grid) >= 1, "grid sizes must be >= 1"),
            (self.prior_epochs >= 0, "prior_epochs must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{message}: fix the flag or the config file")
        if self.elbo not in ELBOS:
            raise UserError(f"unknown elbo {self.elbo!r}: choose one of {', '.join(ELBOS)}")
        if self.model not in MODELS:
            raise UserError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.posterior not in VQ_POSTERIORS:
            raise UserError(
                f"unknown posterior {self.posterior!r}: choose one of {', '.join(VQ_POSTERIORS)}"
            )
        if self.binarize not in BINARIZE:
            raise UserError(
                f"unknown binarize {self.binarize!r}: choose one of {', '.join(BINARIZE)}"
            )
        check_seed(self.seed, "seed")
        for table, registry, name in (
            ("prior_kwargs", PRIORS, self.prior),
            ("likelihood_kwargs", LIKELIHOODS, self.likelihood),
            ("guide_kwargs", GUIDES, self.guide),
        ):
            _check_kwargs(table, getattr(self, table), registry, name)

    @property
    def binarize_mode(self) -> str | None:
        """The ``binarize`` argument of :func:`ppvae.data.load_dataset`."""
        return None if self.binarize == "none" else self.binarize

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (lists and dicts copied)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "configuration") -> RunConfig:
        """Build from a mapping; unknown keys and wrong types raise :class:`UserError`."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise UserError(
                f"unknown key {unknown[0]!r} in {source}: valid keys are {', '.join(valid)}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> RunConfig:
        """Copy with some fields changed (``None`` values are ignored)."""
        return RunConfig.from_dict(
            {**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}},
            source="command-line flags",
        )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner)
    bad = UserError(
        f"{name} must be {_type_name(tp)}, got {value!r} ({type(value).__name__}): "
        "fix the flag or the config file"
    )
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported field type {tp!r} for {name}")  # a bug, not a user error


def check_seed(seed: int, name: str = "--seed") -> int:
    """Return ``seed`` if it lies in [0, :data:`MAX_SEED`], else raise :class:`UserError`."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{name} must lie in [0, {MAX_SEED}] (2**32 - 1), got {seed}")
    return seed


def _check_kwargs(table: str, values: dict[str, Any], registry: Registry, name: Any) -> None:
    """Check a ``[*_kwargs]`` table against the named component's constructor.

    Every key must be a parameter of the constructor (other than those the VAE supplies)
    and its value must have the annotated scalar type, so that a typo or a quoted number
    is reported here, naming the table and the key, rather than as a TypeError or a
    failed ``int()`` inside the model.
    """
    if not values or not isinstance(name, str) or name not in registry:
        return  # an unknown name is reported by the model's registry, with the choices
    factory = registry[name]
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    try:
        hints = typing.get_type_hints(factory.__init__)
    except (NameError, TypeError):
        hints = {}
    accepted = [
        k for k in params if k not in _SUPPLIED and _toml_type(hints.get(k, Any)) is not None
    ]
    for key, value in values.items():
        if key not in accepted:
            raise UserError(
                f"unknown key {key!r} in [{table}] for {name} {registry.kind}: accepted keys "
                f"are {', '.join(accepted) or 'none'}"
            )
        tp = _toml_type(hints.get(key, Any))
        if tp is not Any:
            _coerce(f"[{table}] {key}", value, tp)


def _toml_type(tp: Any) -> Any:
    """The TOML-expressible form of a constructor annotation, or ``None`` for none."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) != 1:
            return Any
        found = _toml_type(inner[0])
        return None if found is None else found | None
    if origin in (list, tuple, collections.abc.Sequence):
        (item, *_) = typing.get_args(tp) or (Any,)
        return list[item] if item in (int, float, str, bool) else Any
    if tp in (int, float, str, bool) or tp is Any:
        return tp
    return None  # tensors, modules: not something a TOML file can hold


def parse_hidden(text: str, flag: str = "--hidden") -> list[int]:
    """Parse ``"400,400"`` into ``[400, 400]`` (``flag`` names the option in errors)."""
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise UserError(
            f"invalid {flag} {text!r}: give comma-separated positive sizes such as 400,400"
        )
    return widths


# ---------------------------------------------------------------------------- TOML
def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def to_toml(values: dict[str, Any]) -> str:
    """Serialise a flat mapping whose values are scalars, lists or flat tables.

    ``None`` values are left out: TOML has no null, and every optional field of a
    :class:`RunConfig` defaults to ``None``.
    """
    lines, tables = [], []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, table in tables:
        lines.append(f"\n[{_toml_key(key)}]")
        lines.extend(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None
        )
    return "\n".join(lines) + "\n"


def read_toml(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """The table of a TOML file; a missing or malformed file raises :class:`UserError`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist: check the path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"cannot parse {what} {path} ({err}): fix its TOML syntax") from None
