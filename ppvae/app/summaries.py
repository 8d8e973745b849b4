"""What an evaluation says, in numbers for ``metrics.json`` and in words for people.

The command line, the demo and the report all describe an estimate the same way, and
this module is where that description lives: which estimator produced the headline
(:func:`estimator_text`), its Monte Carlo standard error or why there is none
(:func:`mc_stderr_text`), how the final estimate differs from the guide's alone
(:func:`guide_comparison`), whether importance sampling agrees with annealed importance
sampling on the same datapoints (:func:`ais_comparison`) and what a bidirectional Monte
Carlo run certifies (:func:`bdmc_record`). Everything returned is plain JSON data
(non-finite floats are mapped to null when written, see :func:`ppvae.app.rundir.write_json`).

A difference between two estimates of the same datapoints is judged by its paired
standard error, sd_n(d_n)/√N of the per-datapoint differences d_n (Vehtari, Gelman &
Gabry 2017): both estimate the same log p(x_n), so the spread of d_n is their Monte
Carlo error and any bias, measured without trusting either estimator's own s.e.

References
----------
Vehtari, Gelman & Gabry (2017), "Practical Bayesian model evaluation using leave-one-out
cross-validation and WAIC", Statistics and Computing 27 (paired differences).
Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
bidirectional Monte Carlo", arXiv:1511.02543.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch

from ppvae.inference import BDMCResult, LogLikelihoodResult, khat_summary

__all__ = [
    "PROPOSAL_NAMES",
    "BDMC_GOOD_GAP",
    "proposal_counts",
    "estimator_text",
    "mc_stderr_text",
    "paired_difference",
    "guide_comparison",
    "ais_comparison",
    "agreement_sentence",
    "bdmc_record",
    "bdmc_sentence",
    "evaluation_rows",
    "guide_sentence",
    "is_stale",
    "stale_sentence",
    "headline_sentence",
    "objective_name",
]

#: How each proposal code of ``LogLikelihoodResult.proposal`` reads in a sentence.
PROPOSAL_NAMES = {
    "guide": "the guide",
    "refine": "a refined proposal",
    "custom": "a custom proposal",
    "ais": "AIS",
}

# A difference within this many paired standard errors of zero counts as agreement.
_AGREE_SE = 2.0
#: The mean BDMC gap (nats per datapoint) below which an AIS schedule counts as long enough.
BDMC_GOOD_GAP = 0.1


def proposal_counts(res: LogLikelihoodResult) -> dict[str, int]:
    """How many datapoints each proposal estimated, e.g. ``{"guide": 3, "refine": 356}``."""
    counts = Counter(res.proposal or ["guide"] * len(res))
    return {name: int(counts[name]) for name in sorted(counts)}


def estimator_text(res: LogLikelihoodResult, proposal: str, noun: str = "datapoints") -> str:
    """One phrase naming the estimator of the headline, e.g. for ``metrics.json``."""
    n, refined = len(res), res.num_refined
    base = f"importance sampling with K = {res.num_samples}"
    if proposal == "guide":
        return f"{base}, guide proposal"
    if proposal == "refine":
        return f"{base}, refined proposal on every one of {n} {noun}"
    if refined == 0:
        return f"{base}, guide proposal (no {noun} needed refinement)"
    return f"{base}, guide proposal refined on {refined} of {n} {noun}"


def mc_stderr_text(metrics: Mapping[str, Any], digits: int = 4, noun: str = "datapoints") -> str:
    """The headline's Monte Carlo s.e., or in words why the diagnostics give none."""
    se = metrics.get("mc_stderr")
    n = metrics.get("num_datapoints")
    if se is None or not math.isfinite(float(se)):
        rejected = metrics.get("num_without_stderr")
        if rejected:
            return f"not available: k-hat rejects {rejected} of {n} {noun}"
        return "not available"
    text = f"{float(se):.{digits}f}"
    approximate = metrics.get("num_stderr_approximate") or 0
    if approximate:
        text += f" (approximate: 0.5 < k-hat ≤ threshold on {approximate} of {n} {noun})"
    return text


def paired_difference(
    a: torch.Tensor,
    b: torch.Tensor,
    se_a: torch.Tensor | None = None,
    se_b: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Mean of ``a − b`` over datapoints with its paired s.e. (and MC s.e. when given)."""
    d = (a.double() - b.double()).cpu()
    n = len(d)
    out: dict[str, Any] = {
        "difference": float(d.mean()),
        "difference_stderr": float(d.std() / math.sqrt(n)) if n > 1 else math.nan,
    }
    if se_a is not None and se_b is not None:
        var = se_a.double().cpu().square() + se_b.double().cpu().square()
        # NaN when either estimate has a datapoint without an s.e.: never filled with 0.
        out["difference_mc_stderr"] = float(var.sum().sqrt() / n)
    return out


def guide_comparison(res: LogLikelihoodResult) -> dict[str, Any] | None:
    """The guide's estimate alone next to the headline; None when the guide is the headline."""
    guide = res.guide_only
    if guide is None:
        return None
    summary = khat_summary(guide)
    counts = summary["counts"]
    return {
        "log_likelihood": guide.mean,
        "mc_stderr": guide.mc_stderr,
        "num_without_stderr": guide.num_without_stderr,
        "share_khat_above_threshold": summary["share_above_threshold"],
        "num_reliable": int(counts["good"]),
        "verdict": summary["verdict"],
        # headline − guide: how much the refinement raised the estimate.
        **paired_difference(res.per_datapoint, guide.per_datapoint),
    }


def ais_comparison(
    res: LogLikelihoodResult,
    ais: LogLikelihoodResult,
    *,
    num_steps: int,
    requested: int,
    seconds: float,
) -> dict[str, Any]:
    """Importance sampling against AIS on the first ``len(ais)`` datapoints, paired."""
    n = len(ais)
    is_se = res.mc_stderr_per_datapoint[:n]
    out: dict[str, Any] = {
        "num_datapoints": n,
        "requested": requested,
        "num_steps": num_steps,
        "num_chains": ais.num_samples,
        "importance_sampling": float(res.per_datapoint[:n].mean()),
        "ais": ais.mean,
        "ais_mc_stderr": ais.mc_stderr,
        "accept_rate": float(ais.extras["accept_rate"].mean())
        if "accept_rate" in ais.extras
        else None,
        **paired_difference(
            res.per_datapoint[:n], ais.per_datapoint, is_se, ais.mc_stderr_per_datapoint
        ),
        "seconds": seconds,
    }
    out["agree"], out["sentence"] = agreement_sentence(out)
    return out


def agreement_sentence(cmp: Mapping[str, Any]) -> tuple[bool | None, str]:
    """Whether IS and AIS agree within the stated error, and a sentence saying so."""
    n, d = cmp["num_datapoints"], float(cmp["difference"])
    se = cmp.get("difference_stderr")
    kind = "paired s.e. over datapoints"
    if se is None or not math.isfinite(float(se)):
        se, kind = cmp.get("difference_mc_stderr"), "Monte Carlo s.e."
    head = f"On the first {n} datapoints, IS − AIS = {d:+.3f}"
    if se is None or not math.isfinite(float(se)):
        return None, f"{head} nats; no standard error is available to judge agreement."
    se = float(se)
    head += f" ± {se:.3f} nats ({kind})"
    if abs(d) <= _AGREE_SE * se:
        return True, f"{head}: the two agree within {_AGREE_SE:g} standard errors."
    if d < 0:
        why = "the importance-sampling estimate is likely biased low (heavy-tailed weights)"
    else:
        why = "AIS is likely biased low: its schedule is too short (check with 'ppvae bdmc')"
    return False, f"{head}: they disagree by {abs(d) / se:.1f} standard errors; {why}."


def bdmc_record(result: BDMCResult, *, seed: int | None, seconds: float) -> dict[str, Any]:
    """What ``RUN_DIR/bdmc.json`` holds: the AIS settings, both bounds and their gap."""
    s = result.settings
    gap = result.gap
    return {
        "num_datapoints": len(result.lower),
        "num_steps": s.num_steps,
        "num_chains": s.num_chains,
        "leapfrog_steps": s.leapfrog_steps,
        "target_accept": s.target_accept,
        "seed": seed,
        "mean_lower": float(result.lower.mean()),
        "mean_upper": float(result.upper.mean()),
        "mean_gap": result.mean_gap,
        "max_gap": float(gap.max()),
        "lower": result.lower.tolist(),
        "upper": result.upper.tolist(),
        "gap": gap.tolist(),
        "seconds": seconds,
    }


def bdmc_sentence(record: Mapping[str, Any]) -> str:
    """What a BDMC run says about its AIS schedule, in one sentence."""
    gap, worst = float(record["mean_gap"]), float(record["max_gap"])
    settings = f"{record['num_steps']} steps × {record['num_chains']} chains"
    head = f"The BDMC gap is {gap:+.3f} nats per datapoint on average (largest {worst:.3f})"
    if gap < 0:
        head += ", below zero only by Monte Carlo noise"
    if gap < BDMC_GOOD_GAP:
        return (
            f"{head}: AIS with {settings} is that close to log p(x) on data simulated from "
            "the model, so the schedule is long enough there."
        )
    return (
        f"{head}: AIS with {settings} may fall that far below log p(x); use more steps "
        "(--ais-steps, --steps) before trusting it."
    )


def evaluation_rows(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The table ``ppvae evaluate`` prints: (label, text) rows from the metrics."""
    n = m["num_datapoints"]
    rows = [
        ("split", f"{m['split']} ({n} datapoints)"),
        ("estimator", str(m["estimator"])),
        ("refined", f"{m['num_refined']} of {n} datapoints needed refinement"),
        ("log p(x)", f"{m['log_likelihood']:.3f} ± {m['stderr']:.3f} nats (s.e. over datapoints)"),
        ("Monte Carlo s.e.", mc_stderr_text(m)),
        ("ELBO", f"{m['elbo']:.3f} (the guide's)"),
        ("gap", f"{m['gap']:.3f}"),
        ("k-hat > threshold", f"{100 * m['share_khat_above_threshold']:.1f}% "
         f"(threshold {m['khat_threshold']:.2f})"),
    ]  # fmt: skip
    guide = m.get("guide_only")
    if guide:
        rows.append(("guide alone", guide_sentence(m)))
    ais = m.get("ais")
    if ais:
        rows.append(("AIS", f"{ais['ais']:.3f} nats on the first {ais['num_datapoints']} "
                     f"datapoints ({ais['num_steps']} steps × {ais['num_chains']} chains; "
                     f"importance sampling {ais['importance_sampling']:.3f} there)"))  # fmt: skip
        if ais["requested"] > ais["num_datapoints"]:
            rows.append(("", f"(--ais {ais['requested']} asked for more than the split holds)"))
        rows.append(("IS vs AIS", str(ais["sentence"])))
    rows.append(("verdict", str(m["verdict"])))
    dis = m.get("disentanglement")
    if dis:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in dis["scores"].items())
        rows.append(("disentanglement", f"{scores} (on {dis['num_codes']} guide means)"))
    return rows


def guide_sentence(m: Mapping[str, Any], noun: str = "datapoints") -> str:
    """The guide-only estimate next to the headline, in one sentence."""
    g, n = m["guide_only"], m["num_datapoints"]
    se = g.get("difference_stderr")
    pm = "" if se is None or not math.isfinite(float(se)) else f" ± {float(se):.3f}"
    d = float(g["difference"])
    return (
        f"{g['log_likelihood']:.3f} nats, reliable (k-hat ≤ {m['khat_threshold']:.2f}) on "
        f"{g['num_reliable']} of {n} {noun}; the headline is {'higher' if d >= 0 else 'lower'} "
        f"by {abs(d):.3f}{pm} nats (paired s.e.)"
    )


def is_stale(record: Mapping[str, Any], digest: str | None) -> bool:
    """Whether an evaluation record was made on another checkpoint than ``digest``'s.

    A record without a digest (written before records carried one) counts as stale.
    """
    return record.get("checkpoint_sha256") != digest


def stale_sentence(run_dir: Any) -> str:
    """What to say about a stale evaluation record of ``run_dir``."""
    return f"evaluated on an older checkpoint; rerun ppvae evaluate {run_dir}"


def objective_name(elbo: str, particles: int = 1, beta: float = 1.0, model: str = "vae") -> str:
    """What a run's training objective is called: "ELBO", "IWAE bound (K=8)", ...

    Labels of training curves and summaries use it, so that a run trained on the
    importance-weighted bound (Burda et al. 2016), or on an objective that is no bound on
    log p(x) at all (β-TCVAE, annealed capacity, a VQ-VAE's codebook terms), does not show
    it as an ELBO.
    """
    if model == "vqvae":
        return "VQ-VAE objective (ELBO + codebook terms)"
    if elbo == "tcvae":
        return f"β-TCVAE objective (β={beta:g})"
    if elbo == "capacity":
        return "annealed-capacity objective"
    if elbo == "iwae":
        name = f"IWAE bound (K={particles})"
    else:
        name = "mean-field ELBO" if elbo == "meanfield" else "ELBO"
    return name if beta == 1.0 else f"β-weighted {name} (β={beta:g})"


def headline_sentence(m: Mapping[str, Any], noun: str = "datapoints") -> str:
    """The headline of an evaluation in words: estimate, error, data and verdict.

    For example "log p(x) = −95.32 ± 0.41 nats per datapoint on 359 held-out test digits;
    reliable: k-hat ≤ 0.67 for 98.1 % of them; Monte Carlo s.e. 0.0012".
    """
    n, split = m.get("num_datapoints"), m.get("split", "test")
    se = m.get("stderr")
    pm = f" ± {float(se):.2f}" if se is not None and math.isfinite(float(se)) else ""
    where = f"held-out {split}" if split != "train" else "training"
    text = (
        f"log p(x) = {float(m['log_likelihood']):.2f}{pm} nats per datapoint on {n} {where} {noun}"
    )
    share = m.get("share_khat_above_threshold")
    if share is not None:
        ok = 100.0 * (1.0 - float(share))
        word = "reliable" if share == 0 else ("mostly reliable" if ok >= 90 else "unreliable")
        only = "only " if word == "unreliable" else ""
        thr = float(m["khat_threshold"])
        text += f"; {word}: k-hat ≤ {thr:.2f} for {only}{ok:.1f} % of them"
    text += f"; Monte Carlo s.e. {mc_stderr_text(m, noun=noun)}"
    return text + " (± is the standard error over datapoints)."
