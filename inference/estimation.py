"""The passes of one ``log_likelihood`` call over the data, and their merge into a result.

A pass estimates a set of datapoints with one proposal (the guide, or a proposal
callable such as the refined one), batch by batch; :meth:`Estimation.result` merges
passes, a later pass overriding an earlier one on the datapoints it covered, and applies
the rule of :func:`ppvae.inference.passes.honest_stderr`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from ppvae.inference.local_target import LocalTarget
from ppvae.inference.passes import PassRecord, batches, block_sizes, fingerprint, honest_stderr
from ppvae.inference.proposals import ProposalFn, call_proposal
from ppvae.inference.result import DIAGNOSTIC_FIELDS, LogLikelihoodResult
from ppvae.inference.traces import global_latent_sites
from ppvae.inference.weights import per_datapoint_log_weights

__all__ = ["Estimation"]


class Estimation:
    """The settings of one ``log_likelihood`` call, and its passes over the data."""

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        x: torch.Tensor,
        y: torch.Tensor | None,
        k: int,
        batch_size: int | None,
        chunk_size: int | None,
        diagnostics: Callable | None,
        keep_log_weights: bool,
        progress: bool,
        global_sites: str,
        data_plate: str,
        max_plate_nesting: int,
    ) -> None:
        self.model, self.guide, self.x, self.y, self.k = model, guide, x, y, k
        self.sizes = (batch_size, chunk_size)
        self.diagnostics, self.keep_log_weights = diagnostics, keep_log_weights
        self.progress, self.global_sites = progress, global_sites
        self.opts = {"data_plate": data_plate, "max_plate_nesting": max_plate_nesting}
        # The whole of x, not a slice: a guide may hold per-datapoint parameters.
        first = (x,) if y is None else (x, y)
        # Datapoints that share each particle's θ_k have correlated errors: the s.e. of
        # the mean then needs the log-weights, batch by batch.
        self.shared = bool(global_latent_sites(guide, first, {}, **self.opts))

    def _record(self, rec: PassRecord, idx: torch.Tensor, lw: torch.Tensor, **extras) -> None:
        keep = self.keep_log_weights or self.shared
        rec.add(idx, lw, diagnostics=self.diagnostics, keep_log_weights=keep, **extras)

    def guide_pass(self) -> PassRecord:
        n = len(self.x)
        size, chunk = block_sizes(self.x, self.k, *self.sizes)
        rec = PassRecord()
        steps = batches(self.x, self.y, torch.arange(n), size)
        with torch.no_grad():
            for idx, args in tqdm(steps, "log p(x)", -(-n // size), disable=not self.progress):
                lw = torch.cat(
                    [
                        per_datapoint_log_weights(
                            self.model,
                            self.guide,
                            args,
                            {},
                            min(chunk, self.k - k0),
                            global_sites=self.global_sites,
                            **self.opts,
                        )
                        for k0 in range(0, self.k, chunk)
                    ]
                )
                self._record(rec, idx, lw)
        return rec

    def proposal_pass(self, proposal: ProposalFn, index: torch.Tensor | None) -> PassRecord:
        index = torch.arange(len(self.x)) if index is None else index.cpu()
        size, chunk = block_sizes(self.x[index.to(self.x.device)], self.k, *self.sizes)
        rec = PassRecord()
        steps = batches(self.x, self.y, index.to(self.x.device), size)
        total = -(-len(index) // size)
        for idx, args in tqdm(steps, "refine", total, disable=not self.progress):
            target = LocalTarget(self.model, self.guide, args, **self.opts)
            lw, extras = call_proposal(proposal, target, self.k, chunk)
            self._record(rec, idx, lw, extras=extras)
        return rec

    def result(self, passes: dict[str, PassRecord], seed: int | None) -> LogLikelihoodResult:
        """Merge passes (a later pass's datapoints override an earlier's) into a result."""
        n = len(self.x)
        source = torch.zeros(n, dtype=torch.long)
        fields: dict[str, torch.Tensor] = {}
        for code, rec in enumerate(passes.values()):
            idx, values = rec.merged()
            source[idx] = code
            for key, value in values.items():
                if key == "elbo" and code > 0 and "guide" in passes:
                    continue  # the ELBO is the guide's bound, whoever estimated log p(x)
                if key not in fields:
                    fill = False if value.dtype == torch.bool else float("nan")
                    fields[key] = torch.full((n, *value.shape[1:]), fill, dtype=value.dtype)
                fields[key][idx] = value
        names = list(passes)
        khat = fields.pop("khat", None)
        stderr, approximate = honest_stderr(fields.pop("se"), khat, self.k)
        shared = None
        if self.shared:
            shared = sum(
                float(rec.shared_variance(source == code, n))
                for code, rec in enumerate(passes.values())
            )
        log_weights = fields.pop("log_weights", None)
        return LogLikelihoodResult(
            per_datapoint=fields.pop("est"),
            mc_stderr_per_datapoint=stderr,
            elbo_per_datapoint=fields.pop("elbo"),
            num_samples=self.k,
            log_weights=log_weights if self.keep_log_weights else None,
            data_fingerprint=fingerprint(self.x, self.y),
            seed=seed,
            khat=khat,
            **{name: fields.pop(name) for name in DIAGNOSTIC_FIELDS[1:] if name in fields},
            extras=fields,
            proposal=[names[i] for i in source.tolist()],
            mc_stderr_approximate=approximate,
            mean_mc_variance=shared,
        )
