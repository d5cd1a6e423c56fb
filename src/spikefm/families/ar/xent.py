"""Token cross-entropy split into separators and count tokens (numpy only).

Every model that assigns a probability to each token of a Neural Pile row (the autoregressive
model, the n-gram baselines, an oracle) reports through :class:`CrossEntropyAccumulator`, so the
numbers are computed the same way everywhere: sum the negative log-probabilities and the token
counts per source and per token kind, reduce (``merge`` / ``state_dict``), divide once.

Token kinds follow :func:`spikefm.families.ar.tokens.tokenize`: the separator 255 opens every 20 ms bin,
every other token is a spike count. Cross-entropy is the mean negative log-probability per token:
``nats = -sum(log p) / n`` and ``bits = nats / ln 2``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from spikefm.families.ar.tokens import SEPARATOR

__all__ = ["CrossEntropyAccumulator", "format_table", "KINDS"]

#: Row names of every result, in display order.
KINDS = ("all", "counts", "separators")

_STATE_VERSION = 1
# A log-probability of a discrete token is <= 0; allow float round-off of a model's normaliser.
_LOGPROB_TOLERANCE_NATS = 1e-6


def _summary(nll_nats: float, num_tokens: int) -> dict[str, Any]:
    if num_tokens == 0:
        # No tokens of this kind: there is no mean to report (None keeps the result JSON-clean).
        return {"nats": None, "bits": None, "num_tokens": 0}
    nats = nll_nats / num_tokens
    return {"nats": nats, "bits": nats / math.log(2.0), "num_tokens": num_tokens}


class CrossEntropyAccumulator:
    """Running sums of token negative log-likelihood, per source and per token kind.

    Sums are float64 nats and int token counts; nothing is averaged until :meth:`result`, so
    accumulators filled on different ranks, workers or shards can be combined exactly with
    :meth:`merge` (or ``state_dict`` -> gather -> ``load_state_dict`` + ``merge``).
    """

    def __init__(self) -> None:
        # source -> [nll_nats_counts, num_counts, nll_nats_separators, num_separators]
        self._sums: dict[str, list] = {}

    def add(self, logprob_nats: np.ndarray, tokens: np.ndarray, source: str) -> None:
        """Add the model's log-probabilities of some tokens.

        Args:
            logprob_nats: float array, any shape; ``logprob_nats[i]`` is the natural-log probability
                the model gave to ``tokens[i]``. Must be <= 0 (log-probabilities, not losses) and
                not NaN; ``-inf`` is accepted and makes the result infinite (no clipping).
            tokens: integer array of the same shape, values 0..255; 255 is the bin separator.
            source: name of the data source (dataset, session group) the tokens come from.
        """
        if not isinstance(source, str):
            raise TypeError(f"source must be a str naming the data source, got {type(source).__name__}")
        logprob = np.asarray(logprob_nats)
        toks = np.asarray(tokens)
        if logprob.shape != toks.shape:
            raise ValueError(
                f"logprob_nats and tokens must have the same shape, got {logprob.shape} and "
                f"{toks.shape}; pass one log-probability per token"
            )
        if not np.issubdtype(logprob.dtype, np.floating):
            raise TypeError(f"logprob_nats must be a float array, got dtype {logprob.dtype}")
        if not (np.issubdtype(toks.dtype, np.integer) or toks.dtype == np.bool_):
            raise TypeError(f"tokens must be an integer array, got dtype {toks.dtype}")
        logprob = logprob.astype(np.float64, copy=False).reshape(-1)
        toks = toks.reshape(-1)
        if np.isnan(logprob).any():
            raise ValueError("logprob_nats contains NaN; fix the model output before scoring")
        if logprob.size and logprob.max() > _LOGPROB_TOLERANCE_NATS:
            raise ValueError(
                f"logprob_nats must be <= 0 (log-probabilities in nats), got max {logprob.max():.6g}; "
                "if you have per-token losses, pass their negation"
            )
        is_sep = toks == SEPARATOR
        num_sep = int(np.count_nonzero(is_sep))
        nll_sep = -float(logprob[is_sep].sum())
        nll_counts = -float(logprob[~is_sep].sum())
        sums = self._sums.setdefault(source, [0.0, 0, 0.0, 0])
        sums[0] += nll_counts
        sums[1] += logprob.size - num_sep
        sums[2] += nll_sep
        sums[3] += num_sep

    def merge(self, other: "CrossEntropyAccumulator") -> "CrossEntropyAccumulator":
        """Add ``other``'s sums into this accumulator (in place) and return ``self``."""
        if not isinstance(other, CrossEntropyAccumulator):
            raise TypeError(f"can only merge a CrossEntropyAccumulator, got {type(other).__name__}")
        for source, theirs in other._sums.items():
            mine = self._sums.setdefault(source, [0.0, 0, 0.0, 0])
            for i, value in enumerate(theirs):
                mine[i] += value
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python sums (picklable, JSON-able) for checkpoints and cross-rank gathering."""
        return {
            "version": _STATE_VERSION,
            "sources": {
                source: {
                    "nll_nats_counts": float(s[0]),
                    "num_counts": int(s[1]),
                    "nll_nats_separators": float(s[2]),
                    "num_separators": int(s[3]),
                }
                for source, s in self._sums.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the sums with those of ``state`` (from :meth:`state_dict`)."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            got = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"expected a CrossEntropyAccumulator state_dict with version {_STATE_VERSION}, got {got!r}"
            )
        sums = {}
        for source, s in state["sources"].items():
            sums[str(source)] = [
                float(s["nll_nats_counts"]),
                int(s["num_counts"]),
                float(s["nll_nats_separators"]),
                int(s["num_separators"]),
            ]
        self._sums = sums

    @property
    def sources(self) -> list[str]:
        """Source names seen so far, sorted."""
        return sorted(self._sums)

    @staticmethod
    def _group(s: list) -> dict[str, dict[str, Any]]:
        return {
            "all": _summary(s[0] + s[2], s[1] + s[3]),
            "counts": _summary(s[0], s[1]),
            "separators": _summary(s[2], s[3]),
        }

    def result(self) -> dict[str, Any]:
        """Mean cross-entropy per token, overall and per source.

        Returns:
            ``{"overall": G, "per_source": {name: G}}`` where ``G`` maps ``"all"``, ``"counts"``
            and ``"separators"`` to ``{"nats", "bits", "num_tokens"}``. ``overall`` pools every
            token of every source (token-weighted, not a mean of source means). ``nats``/``bits``
            are None where ``num_tokens`` is 0.
        """
        total = [0.0, 0, 0.0, 0]
        for s in self._sums.values():
            for i, value in enumerate(s):
                total[i] += value
        return {
            "overall": self._group(total),
            "per_source": {source: self._group(self._sums[source]) for source in self.sources},
        }


def format_table(
    results: dict[str, dict[str, Any]], title: str = "cross-entropy (bits/token)", source: str | None = None
) -> str:
    """Plain-text table of several results side by side, in bits per token.

    Args:
        results: model name -> ``CrossEntropyAccumulator.result()`` output.
        title: first line of the table.
        source: show this source's numbers instead of the pooled ``"overall"`` ones.

    Returns:
        The table as one string: rows ``all / counts / separators``, one column per model; a
        missing value (no tokens, or source absent) prints as ``-``.
    """
    from spikefm.tables import render_table

    names = list(results)
    rows = []
    for kind in KINDS:
        row: list[object] = [kind]
        for name in names:
            res = results[name]
            group = res["overall"] if source is None else res.get("per_source", {}).get(source)
            row.append(None if group is None else group[kind]["bits"])
        rows.append(row)
    return render_table(["", *names], rows, title=title if source is None else f"{title} [{source}]")
