"""The vector-quantised VAE in the command-line app: building, its code priors, its bounds.

``ppvae train --model vqvae`` builds a :class:`ppvae.models.vq.VQVAE` from the run
configuration (:func:`build_vqvae`), trains it with the objective that fits its posterior
(:func:`ppvae.inference.vq_objectives.vq_elbo`), then fits its learned priors over codes
on the training codes (:func:`train_code_priors`): the per-position categorical of the
model and the autoregressive prior that ``ppvae sample`` draws from. ``ppvae evaluate``
adds :func:`vq_bounds`: the hard-posterior bound log p(x | k*) + log p(k*) under each
prior, in nats and bits per dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ppvae.app.config import RunConfig, UserError
from ppvae.data import Dataset
from ppvae.inference import bits_per_dim, fit, vq_elbo
from ppvae.models import VQVAE

__all__ = ["VQ_PRIORS", "build_vqvae", "vq_objective", "train_code_priors", "vq_bounds", "vq_rows"]

VQ_PRIORS = ("learned", "uniform")


def vq_arguments(cfg: RunConfig) -> dict[str, Any]:
    """The VQ-VAE's constructor arguments (all but the event shape) a configuration gives."""
    return dict(
        num_codes=cfg.num_codes,
        code_dim=cfg.code_dim,
        grid=list(cfg.grid),
        likelihood=cfg.likelihood,
        encoder=cfg.encoder,
        decoder=cfg.decoder,
        hidden=list(cfg.hidden),
        activation=cfg.activation,
        posterior=cfg.posterior,
        prior=cfg.prior,
        likelihood_kwargs=dict(cfg.likelihood_kwargs),
    )


def build_vqvae(cfg: RunConfig, event_shape: Sequence[int]) -> VQVAE:
    """The VQ-VAE a (resolved) configuration describes; bad settings are user errors."""
    if cfg.prior not in VQ_PRIORS:
        raise UserError(
            f"--prior {cfg.prior} is not a prior over codes: use --prior learned or uniform "
            "with --model vqvae"
        )
    if "conv" in (cfg.encoder, cfg.decoder) and list(cfg.grid) not in ([7, 7], [49]):
        raise UserError(
            f"the conv networks use a 7×7 code grid, got --grid {','.join(map(str, cfg.grid))}: "
            "pass --grid 7,7 (or --encoder mlp --decoder mlp)"
        )
    if cfg.conditional:
        raise UserError("--model vqvae is not conditional: drop --conditional")
    try:
        return VQVAE(event_shape, **{**vq_arguments(cfg), "grid": tuple(cfg.grid)})
    except ValueError as err:
        raise UserError(f"cannot build the VQ-VAE ({err}): fix the flags") from None


def vq_objective(vq: VQVAE) -> Any:
    """The training objective of ``vq``'s posterior (hard: VQ-VAE loss; soft: relaxed)."""
    return vq_elbo(vq)


def train_code_priors(
    vq: VQVAE, ds: Dataset, cfg: RunConfig, *, progress: bool, echo: Callable[[str], None]
) -> dict[str, float]:
    """Fit the learned priors over codes on the training codes; returns their val log p(k)."""
    if vq.prior_kind != "learned":
        return {}
    vq.eval()
    device = torch.device(cfg.device)
    codes = _codes(vq, ds.train.to(device))
    val = _codes(vq, ds.val.to(device)) if len(ds.val) else None
    vq.fit_code_prior(codes)
    out: dict[str, float] = {}
    if cfg.prior_epochs:
        history = fit(
            vq.code_prior,
            codes,
            val=val,
            epochs=cfg.prior_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=cfg.seed,
            device=cfg.device,
            progress=progress,
        )
        if history.val_elbo:
            out["autoregressive_val_log_prior"] = history.val_elbo[-1]
    if val is not None:
        per_position = torch.distributions.Categorical(logits=vq.prior_logits)
        out["per_position_val_log_prior"] = float(per_position.log_prob(val).sum(-1).mean())
        echo(
            "code priors: validation log p(k) "
            + ", ".join(f"{k.removesuffix('_val_log_prior')} {v:.2f}" for k, v in out.items())
            + " nats"
        )
    return out


def _codes(vq: VQVAE, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    return torch.cat([vq.encode(x[i : i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def vq_bounds(vq: VQVAE, x: torch.Tensor) -> dict[str, Any]:
    """Mean of log p(x | k*) + log p(k*) at the nearest codes k*, under each code prior.

    With the hard posterior each is the ELBO, a lower bound on log p(x); stated in nats
    and in bits per dimension.
    """
    dims = math.prod(vq.event_shape)
    uniform = -vq.num_positions * math.log(vq.num_codes)
    codes = _codes(vq, x)
    flat = vq.log_joint_at_codes(x, codes, code_log_prob=lambda k: torch.zeros(len(k)))
    priors: dict[str, torch.Tensor] = {"uniform": flat + uniform}
    if vq.prior_kind == "learned":
        priors["per_position"] = vq.log_joint_at_codes(x, codes)
        priors["autoregressive"] = vq.log_joint_at_codes(x, codes, vq.code_prior.log_prob)
    out = {}
    for name, values in priors.items():
        nats = float(values.mean())
        out[name] = {"nats": nats, "bits_per_dim": float(bits_per_dim(nats, dims))}
    note = (
        "hard posterior: the importance-sampled log p(x) equals the per-position bound"
        if vq.posterior == "hard"
        else "soft posterior: the bounds use the nearest codes, not the guide's ELBO"
    )
    return {"bounds": out, "num_dims": dims, "note": note}


def vq_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for ``ppvae evaluate``'s table: each prior's bound in nats and bits/dim."""
    vq = metrics.get("vq", {})
    rows = [
        (f"VQ bound, {name} prior", f"{b['nats']:.2f} nats ({b['bits_per_dim']:.4f} bits/dim)")
        for name, b in vq.get("bounds", {}).items()
    ]
    return rows + ([("VQ note", vq["note"])] if "note" in vq else [])
