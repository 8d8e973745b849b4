"""A run's HTML report: one self-contained page (figures embedded as base64 PNG data URIs).

:func:`render_report` turns a run's configuration, metrics (the headline, the estimator
that produced it, its comparisons with the guide alone and with AIS), a bidirectional
Monte Carlo check, training history and figures into HTML; :func:`write_report` writes
it atomically; :func:`report_run` does both for a run folder (``ppvae report RUN_DIR``),
drawing the figures first. Every string that comes from the user or the data (paths,
config values, captions) is escaped.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ppvae.app.disentangle import disentanglement_figures, disentanglement_html
from ppvae.app.figures import FigureRecord, make_run_figures
from ppvae.app.rundir import RunDir, write_text
from ppvae.app.summaries import (
    BDMC_GOOD_GAP,
    bdmc_sentence,
    guide_sentence,
    headline_sentence,
    is_stale,
    mc_stderr_text,
    objective_name,
    stale_sentence,
)
from ppvae.app.train import check_event_shape, load_model, load_run_dataset, split_data
from ppvae.data import Dataset

__all__ = [
    "reliability_sentence",
    "training_summary",
    "render_report",
    "write_report",
    "report_run",
]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem;
       border-bottom: 1px solid #ddd; } h3 { font-size: 1.05rem; margin-top: 1.5rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
td, th { border: 1px solid #ddd; padding: 0.2rem 0.6rem; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-family: monospace; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #444; }
.headline { font-size: 1.2rem; font-weight: 600; margin: 0.5rem 0 1rem; }
.verdict { background: #f3f8f3; border-left: 4px solid #1b9e77; padding: 0.5rem 1rem; }
.warn { background: #fdf3ec; border-left: 4px solid #d95f02; padding: 0.5rem 1rem; }
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isfinite(value) and value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def _table(rows: Mapping[str, Any], header: tuple[str, str] = ("setting", "value")) -> str:
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td class=num>{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows.items()
    )
    return (
        f"<table><tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"
        f"{body}</table>"
    )


def reliability_sentence(metrics: Mapping[str, Any], noun: str = "datapoints") -> str:
    """Plain-words summary of the k-hat diagnostics of an evaluation."""
    share_above = metrics.get("share_khat_above_threshold")
    if share_above is None:
        return "No k-hat diagnostics were computed for this evaluation."
    thr = float(metrics["khat_threshold"])
    split = metrics.get("split", "test")
    ok = 100.0 * (1.0 - float(share_above))
    text = (
        f"The log-likelihood estimates are reliable for {ok:.1f}% of {split} {noun} "
        f"(k-hat ≤ {thr:.2f} with S = {metrics.get('num_samples')} importance samples)."
    )
    if share_above > 0:
        text += (
            f" For the other {100 - ok:.1f}% the importance weights are too heavy-tailed: "
            "their estimates may be biased low and have no Monte Carlo standard error, so "
            "the reported log-likelihood is best read as a lower bound there."
        )
    return text


def training_summary(history: Mapping[str, Any], objective: str = "ELBO") -> dict[str, Any]:
    """Epochs, total time, throughput and final objective values of a training history.

    ``objective`` names the training objective (:func:`objective_name`).
    """
    seconds = list(history.get("seconds") or [])
    ips = list(history.get("images_per_second") or [])
    out: dict[str, Any] = {
        "epochs": history.get("epochs_completed", len(seconds)),
        "training time (s)": float(sum(seconds)),
        "images per second (mean)": float(sum(ips) / len(ips)) if ips else None,
    }
    if history.get("train_objective"):
        out[f"final training {objective} (nats)"] = float(history["train_objective"][-1])
    if history.get("val_elbo"):
        out["final validation ELBO (nats)"] = float(history["val_elbo"][-1])
    if history.get("best_epoch") is not None:
        out["best epoch (validation)"] = history["best_epoch"]
    if history.get("stopped_early"):
        out["stopped early"] = True
    return out


def _figure_html(folder: Path, record: FigureRecord) -> str:
    data = base64.b64encode((folder / record.name).read_bytes()).decode("ascii")
    title, caption = html.escape(record.title), html.escape(record.caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{title}">'
        f"<figcaption><b>{title}.</b> {caption}</figcaption></figure>"
    )


# Metrics shown in sections of their own rather than in the evaluation table.
_OWN_SECTIONS = ("guide_only", "ais", "mc_stderr_text", "estimator")


def _evaluation_html(metrics: Mapping[str, Any], noun: str) -> list[str]:
    """The evaluation: reliability, headline and its estimator, and the metrics table."""
    cls = "verdict" if not metrics.get("share_khat_above_threshold") else "warn"
    parts = []
    if metrics.get("log_likelihood") is not None:
        parts.append(f"<p class=headline>{html.escape(headline_sentence(metrics, noun))}</p>")
    parts.append(f"<p class={cls}>{html.escape(reliability_sentence(metrics, noun))}</p>")
    if metrics.get("verdict"):
        parts.append(f"<p>{html.escape(str(metrics['verdict']))}</p>")
    parts.append("<h2>Evaluation</h2>")
    if metrics.get("estimator") and metrics.get("log_likelihood") is not None:
        se = metrics.get("stderr")
        pm = f" ± {se:.2f}" if isinstance(se, float) and math.isfinite(se) else ""
        parts.append(
            f"<p>Headline: log p(x) = {metrics['log_likelihood']:.2f}{pm} nats per datapoint "
            f"(s.e. over {noun}), estimated by {html.escape(str(metrics['estimator']))}; "
            f"Monte Carlo s.e. {html.escape(mc_stderr_text(metrics, noun=noun))}.</p>"
        )
    rows = {k: v for k, v in metrics.items() if k not in _OWN_SECTIONS}
    if "mc_stderr" in rows:
        rows["mc_stderr"] = mc_stderr_text(metrics, noun=noun)
    parts.append("<details><summary>All metrics (the keys of metrics.json)</summary>")
    parts += [_table(rows, ("metric", "value")), "</details>"]
    if metrics.get("guide_only"):
        g = metrics["guide_only"]
        parts += [
            "<h3>Refined estimate vs the guide alone</h3>",
            f"<p>The guide alone gives {html.escape(guide_sentence(metrics, noun))}.</p>",
            _table(
                {
                    "log p(x), guide alone": g["log_likelihood"],
                    "log p(x), headline": metrics["log_likelihood"],
                    "headline − guide alone (nats)": g["difference"],
                    "paired s.e. of the difference": g.get("difference_stderr"),
                    f"{noun} reliable with the guide alone": g["num_reliable"],
                    f"{noun} reliable in the headline": metrics.get("num_reliable"),
                    "guide-alone Monte Carlo s.e.": mc_stderr_text(
                        {**g, "num_datapoints": metrics["num_datapoints"]}, noun=noun
                    ),
                    "guide-alone verdict": g.get("verdict"),
                },
                ("quantity", "value"),
            ),
        ]
    if metrics.get("ais"):
        parts += _ais_html(metrics["ais"])
    if metrics.get("disentanglement"):
        parts.append(disentanglement_html(metrics["disentanglement"]))
    return parts


def _ais_html(a: Mapping[str, Any]) -> list[str]:
    cls = "verdict" if a.get("agree") else "warn"
    return [
        "<h3>Importance sampling vs annealed importance sampling</h3>",
        f"<p class={cls}>{html.escape(str(a['sentence']))}</p>",
        _table(
            {
                "datapoints (the first of the split)": a["num_datapoints"],
                "AIS steps × chains": f"{a['num_steps']} × {a['num_chains']}",
                "log p(x), importance sampling": a["importance_sampling"],
                "log p(x), AIS": a["ais"],
                "IS − AIS (nats)": a["difference"],
                "paired s.e. of the difference": a.get("difference_stderr"),
                "Monte Carlo s.e. of the difference": a.get("difference_mc_stderr"),
                "AIS acceptance rate (mean)": a.get("accept_rate"),
                "AIS time (s)": a.get("seconds"),
            },
            ("quantity", "value"),
        ),
    ]


def _bdmc_html(b: Mapping[str, Any]) -> list[str]:
    cls = "verdict" if float(b["mean_gap"]) < BDMC_GOOD_GAP else "warn"
    return [
        "<h2>Bidirectional Monte Carlo</h2>",
        f"<p>Forward and reverse AIS on {b['num_datapoints']} datapoints simulated from the "
        "model sandwich their log p(x) (Grosse et al. 2015); the gap bounds the error of AIS "
        "with the same settings on data like the model's own.</p>",
        f"<p class={cls}>{html.escape(bdmc_sentence(b))}</p>",
        _table(
            {
                "AIS steps × chains": f"{b['num_steps']} × {b['num_chains']}",
                "lower bound (forward AIS, mean)": b["mean_lower"],
                "upper bound (reverse AIS, mean)": b["mean_upper"],
                "gap (mean)": b["mean_gap"],
                "gap (max)": b["max_gap"],
                "seed": b.get("seed"),
                "time (s)": b.get("seconds"),
            },
            ("quantity", "value"),
        ),
    ]


def render_report(
    *,
    title: str,
    config: Mapping[str, Any],
    figures: Sequence[FigureRecord],
    figures_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any] | None = None,
    history: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    noun: str = "datapoints",
    bdmc: Mapping[str, Any] | None = None,
    stale: str | None = None,
    objective: str = "ELBO",
) -> str:
    """The report as one HTML string with every figure embedded.

    ``stale`` is a sentence saying that the metrics were computed on an older checkpoint;
    ``objective`` names the training objective (:func:`objective_name`).
    """
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if metrics and stale:
        parts.append(f"<p class=warn>{html.escape(stale)}</p>")
    if metrics:
        parts += _evaluation_html(metrics, noun)
    else:
        parts.append(
            "<p class=warn>This run has not been evaluated yet: run <code>ppvae evaluate "
            "RUN_DIR</code> for its log-likelihood and diagnostics.</p>"
        )
    if bdmc:
        parts += _bdmc_html(bdmc)
    if history:
        parts += [
            "<h2>Training</h2>",
            _table(training_summary(history, objective), ("quantity", "value")),
        ]
    parts += ["<h2>Configuration</h2>", _table(config)]
    parts.append("<h2>Figures</h2>")
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    parts += [_figure_html(Path(figures_dir), rec) for rec in figures]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | os.PathLike[str], content: str) -> Path:
    """Write the report atomically (a reader never sees half a page)."""
    return write_text(path, content)


def report_run(
    run_dir: str | os.PathLike[str],
    *,
    interpolation: str = "slerp",
    projection: str = "pca",
    dataset: Dataset | None = None,
) -> Path:
    """Draw the run's figures and write ``report.html``; returns its path.

    ``dataset`` is the run's data when the caller has loaded it already; otherwise it is
    loaded as the run's configuration says.
    """
    run = RunDir(run_dir).require().check_writable("RUN_DIR")
    with run.lock():
        return _report(run, interpolation, projection, dataset)


def _report(run: RunDir, interpolation: str, projection: str, dataset: Dataset | None) -> Path:
    """:func:`report_run` once the run folder's lock is held."""
    cfg, vae = load_model(run.root)
    objective = objective_name(cfg.elbo, cfg.particles, cfg.beta, model=cfg.model)
    metrics = run.read_metrics()
    stale = None
    if metrics is not None and is_stale(metrics, run.model_digest()):
        stale = f"This evaluation is stale: {stale_sentence(run.root)}."
    history = run.read_history()
    split = metrics["split"] if metrics else "test"
    loglik = None
    if metrics is not None and run.loglik(split).is_file():
        loglik = run.read_loglik(split)
    ds = load_run_dataset(cfg) if dataset is None else dataset
    check_event_shape(run.root, vae, ds)
    x, y = split_data(ds, split)
    records, notes = make_run_figures(
        vae,
        x.to(cfg.device),
        y,
        run.figures,
        split=split,
        history=history,
        loglik=loglik,
        seed=cfg.seed,
        interpolation=interpolation,
        projection=projection,
        objective=objective,
    )
    if metrics and metrics.get("disentanglement"):
        summary = metrics["disentanglement"]
        records += disentanglement_figures(vae, ds, summary, run.figures, cfg.device)
    noun = "digits" if cfg.dataset == "digits" else "datapoints"
    content = render_report(
        title=f"ppvae run {run.root.resolve().name}: {cfg.dataset}",
        config=cfg.to_dict(),
        figures=records,
        figures_dir=run.figures,
        metrics=metrics,
        history=history,
        notes=notes,
        noun=noun,
        bdmc=run.read_bdmc(),
        stale=stale,
        objective=objective,
    )
    return run.write_report(content)
