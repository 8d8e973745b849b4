"""Run the benchmarks: ``python -m bench.run [--quick] [--device cpu|cuda] [--anchor]``.

Every ratio is against a reference measured in the same run on the same machine. Results
go to ``bench/results/<date>-<host>.json`` (raw timings, settings, ratios, targets) and
``.md`` (the table, also printed and copied into ``bench/README.md``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import missing, missing_proposals, training_images
from bench.machine import machine_info, matmul_peak
from bench.report import markdown_report, update_readme, write_json, write_text

__all__ = ["main", "SETTINGS"]

HERE = Path(__file__).resolve().parent
SECTIONS = ("training", "importance", "memory", "accuracy", "refined", "ais")

# Full: about 20 minutes on 2 CPU cores; quick: about 3 minutes.
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "training": {"num_images": 10_000, "rounds": 5, "batch_sizes": (128, 512)},
        "importance": {"settings": {1000: (100, 8), 5000: (20, 2)}, "repeats": 3},
        "memory": {"num_data": 32},
        "accuracy": {
            "train_size": None,
            "epochs": 3,
            "test_size": 1000,
            "num_samples": 1000,
            "iwae": {5: (None, 3), 50: (10_000, 1)},
        },
        "refined": {"epochs": 250, "num_samples": 1000, "repeats": 3},
        "ais": {"epochs": 250, "num_data": 20, "num_steps": 200, "repeats": 7, "wide": (100, 20)},
        "profile_steps": 20,
        "overhead_calls": 200,
    },
    "quick": {
        "training": {"num_images": 2048, "rounds": 3, "batch_sizes": (128, 512)},
        "importance": {"settings": {1000: (100, 4), 5000: (8, 1)}, "repeats": 1},
        "memory": {"num_data": 8},
        "accuracy": {
            "train_size": 5000,
            "epochs": 1,
            "test_size": 100,
            "num_samples": 1000,
            "iwae": {5: (5000, 1), 50: (1000, 1)},
        },
        # The demo model trained for 100 epochs instead of 250, to save time.
        "refined": {"epochs": 100, "num_samples": 1000, "repeats": 1},
        "ais": {"epochs": 100, "num_data": 20, "num_steps": 100, "repeats": 5, "wide": None},
        "profile_steps": 8,
        "overhead_calls": 50,
    },
}


def _training(s: dict[str, Any], device: str) -> dict[str, Any]:
    from bench.throughput import training_throughput

    x, source = training_images(s["num_images"])
    return training_throughput(
        x,
        batch_sizes=s["batch_sizes"],
        rounds=s["rounds"],
        device=device,
        data_source=source,
    )


def _importance(s: dict[str, Any], device: str, peak: float) -> dict[str, Any]:
    from bench.importance import importance_throughput

    n = max(n for n, _ in s["settings"].values())
    x = torch.bernoulli(training_images(n)[0], generator=torch.Generator().manual_seed(0))
    return importance_throughput(
        x, settings=s["settings"], repeats=s["repeats"], device=device, peak_flops=peak
    )


def _memory(s: dict[str, Any], device: str) -> dict[str, Any]:
    from bench.memory import memory_benchmark

    return memory_benchmark(num_data=s["num_data"], device=device)


def _accuracy(s: dict[str, Any], device: str) -> dict[str, Any]:
    from bench.accuracy import accuracy_benchmark

    out: dict[str, Any] = {"rows": [], "notes": [], "runs": []}
    common = {"test_size": s["test_size"], "num_samples": s["num_samples"], "device": device}
    first = accuracy_benchmark(train_size=s["train_size"], epochs=s["epochs"], **common)
    out["runs"].append(first)
    out["rows"] += first["rows"]
    out["notes"] += first.get("notes", [])
    if "skipped" in first:
        out["skipped"] = first["skipped"]
        return out
    from bench.accuracy import iwae_benchmark

    for k, (size, epochs) in s["iwae"].items():
        res = iwae_benchmark(k, train_size=size, epochs=epochs, vae_result=first, **common)
        out["runs"].append(res)
        out["rows"] += res["rows"]
        out["notes"] += res.get("notes", [])
    return out


def _refined(s: dict[str, Any], device: str) -> dict[str, Any]:
    from bench.refined import refined_evaluation

    return refined_evaluation(**s, device=device)


def _ais(s: dict[str, Any], device: str) -> dict[str, Any]:
    from bench.ais_throughput import ais_throughput

    return ais_throughput(**s, device=device)


def _skipped(section: str, why: str) -> dict[str, Any]:
    row = {"metric": section, "ppvae": "skipped", "reference": why, "ratio": ""}
    row.update(target="", met=None)
    return {"skipped": why, "rows": [row], "notes": [f"{section} skipped: {why}"]}


def _none() -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 3 minutes instead of 20")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--profile", action="store_true", help="profile fit even if on target")
    parser.add_argument("--anchor", action="store_true", help="Burda et al. schedule (GPU)")
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    parser.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}: choose from {', '.join(SECTIONS)}")

    mode = "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    started, stamp = time.perf_counter(), datetime.datetime.now()
    device = args.device
    info = machine_info(device)
    print(
        f"ppvae benchmarks ({mode}) on {info['cpu']}: {info['cores']} cores, "
        f"torch threads: {info['torch_threads']}, torch {info['torch']}, pyro {info['pyro']}, "
        f"device {device}",
        flush=True,
    )
    peak = matmul_peak(device)
    print(f"float32 matmul peak: {peak['flops'] / 1e9:.1f} GFLOP/s", flush=True)

    needs: dict[str, Callable[[], str | None]] = {
        "training": lambda: missing("ppvae.inference.train"),
        "importance": lambda: missing("ppvae.inference.importance"),
        "memory": lambda: missing("ppvae.inference.importance"),
        "accuracy": lambda: missing("ppvae.inference.train"),
        "refined": lambda: missing("ppvae.inference.proposals") or missing_proposals(),
        "ais": lambda: missing("ppvae.inference.ais"),
    }
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "training": lambda: _training(settings["training"], device),
        "importance": lambda: _importance(settings["importance"], device, peak["flops"]),
        "memory": lambda: _memory(settings["memory"], device),
        "accuracy": lambda: _accuracy(settings["accuracy"], device),
        "refined": lambda: _refined(settings["refined"], device),
        "ais": lambda: _ais(settings["ais"], device),
    }
    if args.anchor:
        from bench.anchor import run_anchor

        only, runners["anchor"], needs["anchor"] = ["anchor"], lambda: run_anchor(device), _none
    sections: dict[str, Any] = {}
    for name in only:
        why = needs[name]()
        t0 = time.perf_counter()
        print(f"\n== {name} ==", flush=True)
        sections[name] = _skipped(name, why) if why else runners[name]()
        sections[name]["seconds"] = time.perf_counter() - t0
        for row in sections[name]["rows"]:
            print(f"  {row['metric']}: ppvae {row['ppvae']} | {row['reference']} | {row['ratio']}")
        print(f"  ({sections[name]['seconds']:.0f} s)", flush=True)

    training = sections.get("training", {}).get("by_batch_size", {})
    short = [int(bs) for bs, r in training.items() if not r["met"]]
    if args.profile and "training" in only and not short:
        short = [int(bs) for bs in training] or list(settings["training"]["batch_sizes"])
    if short and not args.anchor:
        from bench.profile import (
            format_overhead,
            format_profile,
            profile_training,
            step_overhead,
        )

        print("\n== profile of a training step ==", flush=True)
        prof: dict[str, Any] = {"by_batch_size": {}, "rows": []}
        for bs in short:
            prof["by_batch_size"][str(bs)] = profile_training(bs, settings["profile_steps"], device)
            print(f"batch {bs}:\n{format_profile(prof['by_batch_size'][str(bs)])}", flush=True)
        prof["overhead"] = step_overhead(settings["overhead_calls"], device)
        print(format_overhead(prof["overhead"]), flush=True)
        sections["profile"] = prof

    # Quick, anchor and partial runs get their own files, so as not to overwrite a full run's.
    kind = "anchor" if args.anchor else mode
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {
        "started": stamp.strftime("%Y-%m-%d %H:%M"),
        "command": command.strip(),
        "mode": kind,
        "settings": settings,
        "machine": info,
        "matmul_peak": peak,
        "sections": sections,
        "seconds_total": time.perf_counter() - started,
        "load_average_end": os.getloadavg(),
    }
    suffix = "" if kind == "full" else f"-{kind}"
    partial = not args.anchor and set(only) != set(SECTIONS)
    if partial:
        # Some sections only: their own file, and the README's table is left alone.
        suffix += "-" + "-".join(only)
    name = f"{stamp:%Y-%m-%d}-{info['host']}{suffix}"
    report = markdown_report(results)
    write_json(args.output_dir / f"{name}.json", results)
    write_text(args.output_dir / f"{name}.md", report)
    if not args.no_readme and not partial:
        update_readme(HERE / "README.md", report)
    print("\n" + report)
    print(f"wrote {args.output_dir / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
