"""The ``ppvae`` command: train, evaluate, bdmc, sample, compare, score, report, demo, augment.

This is the only module that parses arguments; the work is done by the command modules
of :mod:`ppvae.app` (``train``, ``evaluate``, ``bdmc``, ``sample``, ``score``, ``report``,
``demo``, ``augment``), which read and write run folders through :mod:`ppvae.app.rundir`. A user
error (a bad value, a missing file, data the model cannot take) is printed as one line,
``ppvae: error: <problem>: <fix>``, with exit status 2; anything else keeps its
traceback, since it is a bug to report.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from ppvae import TrainingDivergedError, __version__
from ppvae.app.bdmc import bdmc_run
from ppvae.app.config import MAX_SEED, RunConfig, UserError, check_seed, parse_hidden, read_toml
from ppvae.app.evaluate import PROPOSALS, compare_runs, evaluate_run
from ppvae.app.launch import LAUNCHED, LOST_GROUP, launch, quiet_unless_main
from ppvae.app.rundir import RunDir
from ppvae.app.summaries import bdmc_sentence, evaluation_rows
from ppvae.app.train import resume_config, train_run
from ppvae.app.vq import vq_rows
from ppvae.inference.distributed import DistributedError, close_process_group, is_main_process

# The commands that draw (sample, report, demo) and `score` import their modules when they
# run, the one exception to imports at the top: the plotting stack (matplotlib, seaborn,
# torchvision) and scikit-learn take longer to load than torch and Pyro together, and
# `--help`, `train`, `evaluate` and `compare` need neither.

__all__ = ["EXAMPLES", "main", "build_parser"]

#: The examples each subcommand's ``--help`` shows; the README's walkthrough runs every
#: one of them (tests/test_readme.py), so they stay correct.
EXAMPLES: dict[str, list[str]] = {
    "train": [
        "ppvae train --dataset digits --prior vamp --guide fullrank --elbo iwae --particles 8 "
        "--epochs 5 --hidden 64,64 --latent-dim 8 --out runs/a",
        "ppvae train runs/a/config.toml --prior normal --guide iaf --out runs/b",
        "ppvae train --resume --out runs/a",
    ],
    "evaluate": [
        "ppvae evaluate runs/a --proposal guide --num-samples 100 --limit 50",
        "ppvae evaluate runs/a --num-samples 100 --limit 50 --ais 5 --ais-steps 100",
    ],
    "bdmc": ["ppvae bdmc runs/a --num-datapoints 4 --steps 100"],
    "sample": ["ppvae sample runs/a --n 64"],
    "compare": ["ppvae compare runs/a runs/b"],
    "score": ["ppvae score runs/a digits --ood noise.npy --num-samples 100"],
    "report": ["ppvae report runs/a"],
    "augment": ["ppvae augment runs/cvae --n-per-class 100 --out aug.npz"],
}


def _seed(text: str) -> int:
    """argparse type of a ``--seed`` flag: an integer in [0, MAX_SEED]."""
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: give an integer in [0, {MAX_SEED}]"
        ) from None


# Flags of `train` that map one-to-one onto RunConfig fields: (flag, field, type, help).
_TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    (
        "--dataset",
        "dataset",
        str,
        "digits, mnist, fashion-mnist, kmnist, dsprites-lite, dsprites or a data file",
    ),
    ("--data-dir", "data_dir", str, "folder holding the dataset's files"),
    ("--binarize", "binarize", str, "auto, dynamic, static, threshold or none"),
    ("--prior", "prior", str, "prior p(z): normal, mixture, vamp, ... (ppvae.models.PRIORS)"),
    ("--guide", "guide", str, "guide q(z|x): diagonal, lowrank, fullrank, iaf, nsf, ..."),
    ("--likelihood", "likelihood", str, "p(x|z) (default: the dataset's suggestion)"),
    ("--encoder", "encoder", str, "mlp or conv"),
    ("--decoder", "decoder", str, "mlp or conv"),
    ("--latent-dim", "latent_dim", int, "size of z"),
    ("--hidden", "hidden", str, "hidden widths, e.g. 400,400"),
    ("--elbo", "elbo", str, "trace, meanfield, iwae, tcvae (beta-TCVAE) or capacity"),
    ("--particles", "particles", int, "particles K of the objective"),
    ("--epochs", "epochs", int, "passes over the training data"),
    ("--batch-size", "batch_size", int, "minibatch size"),
    ("--lr", "lr", float, "learning rate"),
    ("--optimizer", "optimizer", str, "adam, adamw, sgd or rmsprop"),
    ("--beta", "beta", float, "KL weight (beta-VAE); with --elbo tcvae the TC weight"),
    ("--capacity", "capacity", float, "--elbo capacity: final KL capacity C (nats)"),
    ("--capacity-steps", "capacity_steps", int, "--elbo capacity: steps C rises over"),
    ("--gamma", "gamma", float, "--elbo capacity: weight of |KL - C|"),
    ("--kl-anneal", "kl_anneal", int, "epochs over which the KL weight ramps up to beta"),
    ("--clip-norm", "clip_norm", float, "gradient-norm clipping"),
    ("--seed", "seed", _seed, f"random seed in [0, {MAX_SEED}]"),
    ("--model", "model", str, "vae or vqvae (vector-quantised)"),
    ("--num-codes", "num_codes", int, "codebook size K (vqvae)"),
    ("--code-dim", "code_dim", int, "size of a codebook vector (vqvae)"),
    ("--grid", "grid", str, "code grid, e.g. 7,7 (vqvae; 7,7 with the conv networks)"),
    ("--posterior", "posterior", str, "hard or soft (vqvae)"),
    ("--prior-epochs", "prior_epochs", int, "epochs of the learned code prior (vqvae)"),
    ("--device", "device", str, "cpu, cuda, ..."),
    ("--patience", "patience", int, "early stopping after this many epochs without progress"),
]

# What a train flag left out means: the config file's value, else RunConfig's default.
_TRAIN_DEFAULTS = {
    name: ",".join(map(str, value)) if isinstance(value, list) else value
    for name, value in RunConfig().to_dict().items()
    if value is not None and not isinstance(value, dict)
}


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line like every other user error, and every
    option's help line ends with its default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ppvae: error: {message}: see '{self.prog} --help'\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, or where the value comes from when it has none.

    The train flags default to ``None`` (meaning "the config file's value, else
    RunConfig's default"), so their help names RunConfig's default instead.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or not action.option_strings or action.nargs == 0:
            return text  # already says it, a positional, or an on/off switch
        if action.required:
            return text
        if action.default is None:
            return f"{text} (default: {_TRAIN_DEFAULTS.get(action.dest, 'none')})"
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ppvae`` command."""
    parser = _Parser(
        prog="ppvae",
        description="Variational autoencoders as Pyro programs, with importance-sampled "
        "log-likelihoods and PSIS k-hat diagnostics.",
    )
    parser.add_argument("--version", action="version", version=f"ppvae {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch and scikit-learn (default: their own; demo: 1)",
    )
    sub = _Subparsers(
        parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    )
    sub.action.required = True

    _add_train(sub)
    _add_evaluate(sub)
    _add_bdmc(sub)
    _add_sample(sub)
    _add_compare(sub)
    _add_score(sub)
    _add_report(sub)
    _add_demo(sub)
    _add_augment(sub)
    return parser


class _Subparsers:
    """Adds each subcommand's examples (:data:`EXAMPLES`) to its ``--help``."""

    def __init__(self, action: Any) -> None:
        self.action = action

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        examples = EXAMPLES.get(name)
        if examples:
            kwargs["epilog"] = "examples:\n" + "\n".join(f"  {e}" for e in examples)
        return self.action.add_parser(name, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.action, name)  # everything else as argparse's own


def _add_train(sub: Any) -> None:
    """The ``ppvae train`` subcommand."""
    p = sub.add_parser(
        "train",
        help="train a VAE into a run directory",
        description="Train a VAE into a run directory. Flags override CONFIG.toml; the "
        "TOML keys without a flag are listed in the README (Command line).",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.toml", help="run configuration")
    for flag, dest, tp, text in _TRAIN_FLAGS:
        p.add_argument(flag, dest=dest, type=tp, default=None, help=text)
    p.add_argument("--download", action="store_true", default=None, help="fetch missing data")
    p.add_argument(
        "--conditional", action="store_true", default=None, help="condition on class labels"
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train on N local processes (torchrun --standalone --nproc-per-node N)",
    )
    p.set_defaults(func=_train)


def _add_evaluate(sub: Any) -> None:
    """The ``ppvae evaluate`` subcommand."""
    p = sub.add_parser("evaluate", help="importance-sampled log-likelihood and k-hat")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'ppvae train'")
    p.add_argument("--num-samples", type=int, default=1000, help="particles K per datapoint")
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="data split")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.add_argument("--limit", type=int, default=None, help="only the first N datapoints")
    p.add_argument(
        "--proposal",
        default="auto",
        choices=PROPOSALS,
        help="auto: the guide, refined where k-hat rejects it; guide: the guide alone; "
        "refine: every datapoint refined",
    )
    p.add_argument(
        "--ais",
        type=int,
        default=None,
        metavar="N",
        help="also run AIS on the first N datapoints and compare it with the estimate",
    )
    p.add_argument("--ais-steps", type=int, default=1000, help="AIS annealing steps")
    p.add_argument("--ais-chains", type=int, default=16, help="AIS chains per datapoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)


def _add_bdmc(sub: Any) -> None:
    """The ``ppvae bdmc`` subcommand."""
    p = sub.add_parser("bdmc", help="certify an AIS schedule by bidirectional Monte Carlo")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'ppvae train'")
    p.add_argument(
        "--num-datapoints", type=int, default=10, help="datapoints simulated from the model"
    )
    p.add_argument("--steps", type=int, default=1000, help="AIS annealing steps")
    p.add_argument("--chains", type=int, default=16, help="AIS chains per datapoint")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.set_defaults(func=_bdmc)


def _add_sample(sub: Any) -> None:
    """The ``ppvae sample`` subcommand."""
    p = sub.add_parser("sample", help="a PNG grid of samples")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'ppvae train'")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--label", type=int, default=None, help="class (conditional models)")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE.png",
        help="where to write (default: RUN_DIR/samples.png)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.set_defaults(func=_sample)


def _add_compare(sub: Any) -> None:
    """The ``ppvae compare`` subcommand."""
    p = sub.add_parser("compare", help="compare evaluated runs on the same data")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="evaluated run directories")
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="data split")
    p.set_defaults(func=_compare)


def _add_score(sub: Any) -> None:
    """The ``ppvae score`` subcommand."""
    p = sub.add_parser("score", help="anomaly scores -log p(x), ROC-AUC with --ood")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'ppvae train'")
    p.add_argument("data", metavar="DATA", help="dataset name (test split) or data file")
    p.add_argument("--ood", default=None, metavar="DATA2", help="out-of-distribution data")
    p.add_argument(
        "--out",
        default=None,
        metavar="scores.csv",
        help="where to write the scores (default: RUN_DIR/scores.csv)",
    )
    p.add_argument("--num-samples", type=int, default=1000, help="particles K per datapoint")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_score)


def _add_report(sub: Any) -> None:
    """The ``ppvae report`` subcommand."""
    p = sub.add_parser("report", help="write RUN_DIR/report.html")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'ppvae train'")
    p.add_argument(
        "--interpolation",
        default="slerp",
        choices=("slerp", "linear"),
        help="path between latent codes in the interpolation figure",
    )
    p.add_argument(
        "--projection",
        default="pca",
        choices=("pca", "tsne"),
        help="2-D projection of the latent codes",
    )
    p.set_defaults(func=_report)


def _add_demo(sub: Any) -> None:
    """The ``ppvae demo`` subcommand."""
    p = sub.add_parser("demo", help="train, evaluate and report on a small dataset")
    p.add_argument(
        "--dataset", default="digits", choices=("digits", "fashion-mnist"), help="dataset"
    )
    p.add_argument("--out", default="runs/demo", metavar="RUN_DIR", help="run directory")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default: 250 on digits, 10 otherwise)",
    )
    p.add_argument("--data-dir", default=None, help="folder holding the dataset's files")
    p.add_argument("--download", action="store_true", help="fetch missing data")
    p.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    p.set_defaults(func=_demo)


def _add_augment(sub: Any) -> None:
    """The ``ppvae augment`` subcommand."""
    p = sub.add_parser("augment", help="an augmented dataset (.npz) from a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'ppvae train'")
    p.add_argument("--n-per-class", type=int, default=None, metavar="N", help="per class")
    p.add_argument("--n", type=int, default=None, metavar="N", help="in all (instead)")
    p.add_argument("--labels", default=None, metavar="0,3,7", help="classes to generate")
    p.add_argument(
        "--mode",
        default="prior",
        choices=("prior", "posterior"),
        help="prior: z ~ p(z) (per class); posterior: neighbours of --source",
    )
    p.add_argument("--source", default=None, metavar="DATA", help="data to encode (posterior)")
    p.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="posterior spread (0..1)"
    )
    p.add_argument(
        "--output",
        default="sample",
        choices=("sample", "mean"),
        help="sample: x ~ p(x|z) on the data's scale; mean: E[x|z]",
    )
    p.add_argument("--out", required=True, metavar="FILE.npz", help="the .npz to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.set_defaults(func=_augment)


def _echo(quiet: bool) -> Any:
    return (lambda _: None) if quiet else print


def _requested(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration values given explicitly: the config file's keys, then the flags."""
    values = {} if args.config is None else read_toml(args.config)
    fields = [dest for _, dest, _, _ in _TRAIN_FLAGS] + ["download", "conditional"]
    flags = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    if "hidden" in flags:
        flags["hidden"] = parse_hidden(flags["hidden"])
    if "grid" in flags:
        flags["grid"] = parse_hidden(flags["grid"], flag="--grid")
    return {**values, **flags}


def _train(args: argparse.Namespace) -> int:
    requested = _requested(args)
    if args.resume:
        cfg = resume_config(args.out, requested)
    else:
        cfg = RunConfig.from_dict(requested, source=args.config or "command-line flags")
    if args.nproc is not None:  # the configuration was checked above, before any launch
        return launch(args.argv, args.nproc)
    history = train_run(
        cfg, args.out, resume=args.resume, progress=not args.quiet, echo=_echo(args.quiet)
    )
    if not args.quiet:
        print(
            f"trained {history['epochs_completed']} epochs in {sum(history['seconds']):.1f} s; "
            f"model in {args.out}/model.pt"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    m = evaluate_run(
        args.run_dir,
        num_samples=args.num_samples,
        split=args.split,
        seed=args.seed,
        limit=args.limit,
        progress=not args.quiet,
        proposal=args.proposal,
        ais=args.ais,
        ais_steps=args.ais_steps,
        ais_chains=args.ais_chains,
    )
    _print_rows(evaluation_rows(m) + vq_rows(m))
    return 0


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _bdmc(args: argparse.Namespace) -> int:
    with RunDir(args.run_dir).require().check_writable("RUN_DIR").lock():
        r = bdmc_run(
            args.run_dir,
            num_datapoints=args.num_datapoints,
            num_steps=args.steps,
            num_chains=args.chains,
            seed=args.seed,
        )
    settings = f"{r['num_steps']} steps × {r['num_chains']} chains"
    _print_rows(
        [
            ("simulated", f"{r['num_datapoints']} datapoints from the model ({settings})"),
            ("lower bound", f"{r['mean_lower']:.3f} nats (forward AIS, mean)"),
            ("upper bound", f"{r['mean_upper']:.3f} nats (reverse AIS, mean)"),
            ("gap", f"{r['mean_gap']:.4f} nats (mean; max {r['max_gap']:.4f})"),
            ("verdict", bdmc_sentence(r)),
            ("time", f"{r['seconds']:.1f} s; written to {Path(args.run_dir) / 'bdmc.json'}"),
        ]
    )
    return 0


def _headless() -> None:
    """Load the plotting stack with matplotlib's display-free backend."""
    from ppvae.plots import use_headless_backend

    use_headless_backend()


def _sample(args: argparse.Namespace) -> int:
    from ppvae.app.sample import sample_run

    # (A folder given as --out is reported as such by sample_run's writability check.)
    out = None if args.out is None else Path(args.out)
    if out is not None and not out.is_dir() and out.suffix.lower() != ".png":
        raise UserError(f"--out {args.out} must end in .png: sample writes a PNG grid")
    _headless()
    path = sample_run(args.run_dir, n=args.n, label=args.label, out=args.out, seed=args.seed)
    print(path)
    return 0


def _compare(args: argparse.Namespace) -> int:
    table = compare_runs(args.run_dirs, split=args.split)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


def _score(args: argparse.Namespace) -> int:
    from ppvae.app.score import score_run

    s = score_run(
        args.run_dir,
        args.data,
        ood=args.ood,
        out=args.out,
        num_samples=args.num_samples,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"scored {s['num_datapoints']} datapoints (K = {s['num_samples']}): {s['out']}")
    if s.get("mean_score_in") is not None:
        print(f"mean score: in-distribution {s['mean_score_in']:.2f}, ", end="")
        print(f"out-of-distribution {s['mean_score_ood']:.2f}")
    if s["auc"] is not None:
        print(f"ROC-AUC (score separates ood from in-distribution): {s['auc']:.4f}")
    print(f"k-hat above threshold (unreliable scores): {100 * s['share_unreliable']:.1f}%")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ppvae.app.report import report_run

    _headless()
    print(report_run(args.run_dir, interpolation=args.interpolation, projection=args.projection))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ppvae.app.demo import run_demo

    _headless()
    run_demo(
        args.dataset,
        args.out,
        epochs=args.epochs,
        data_dir=args.data_dir,
        download=args.download,
        progress=not args.quiet,
    )
    return 0


def _augment(args: argparse.Namespace) -> int:
    from ppvae.app.augment import augment_run, parse_labels

    _headless()
    r = augment_run(
        args.run_dir,
        out=args.out,
        n_per_class=args.n_per_class,
        n=args.n,
        labels=parse_labels(args.labels),
        mode=args.mode,
        source=args.source,
        temperature=args.temperature,
        output=args.output,
        seed=args.seed,
        force=args.force,
    )
    classes = "" if r["classes"] is None else f", classes {r['classes']}"
    print(f"wrote {r['num_examples']} examples{classes} to {r['out']}")
    if r["grid"] is not None:
        print(f"grid of the first examples: {r['grid']}")
    return 0


def _set_threads(n: int) -> None:
    """Limit torch's and the numerical libraries' CPU threads to ``n``."""
    if n < 1:
        raise UserError(f"--threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    threadpool_limits(n)  # called, not entered: the limit holds for the rest of the process


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, ValueError | FileNotFoundError | TrainingDivergedError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ppvae`` command; returns the exit status."""
    # ArviZ announces its refactor once a day on import; it is no concern of a user here.
    warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    quiet_unless_main()  # under torchrun, rank 0 alone prints
    try:
        # The demo's small networks train faster on one thread than on two, and ten times
        # faster when other processes compete for the cores (threads then wait on each
        # other); elsewhere torch's default stands unless --threads says otherwise.
        demo = args.command == "demo"
        threads = (1 if demo else None) if args.threads is None else args.threads
        if threads is not None:
            _set_threads(threads)
        status = args.func(args)
        close_process_group()  # under torchrun: the ranks end together
        return status
    except KeyboardInterrupt:
        print("ppvae: interrupted", file=sys.stderr)
        return 130
    except DistributedError as err:
        # Another rank died: one line, no traceback (under `--nproc`, the launcher's).
        if LAUNCHED not in os.environ:
            print(f"ppvae: error: {' '.join(str(err).split())}", file=sys.stderr)
        return LOST_GROUP
    except Exception as err:
        if not _is_user_error(err):
            raise
        if is_main_process():  # every rank meets the same bad input; one says so
            message = " ".join(str(err).split()) or type(err).__name__
            print(f"ppvae: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
