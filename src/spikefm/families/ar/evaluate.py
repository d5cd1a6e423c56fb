"""Cross-entropy benchmarks of the autoregressive spike language model, the n-gram baselines and
(on synthetic corpora) the ground-truth oracle, all on the same tokens.

Every row of the evaluated split is tokenized (``[255, c1..cn]`` per bin) and scored separately, so
contexts never cross rows. The scored tokens are all tokens of each row but its first (a separator
that nothing precedes); the model, the n-grams and the oracle score exactly these. A model with
a unit-count prefix gets each window's (num_units, phase) in front of it; the prefix is never
scored.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikefm.corpus.reader import Corpus
from spikefm.families.ar.loader import iter_eval_windows, row_num_units
from spikefm.families.ar.positions import window_prefix
from spikefm.families.ar.tokens import tokenize
from spikefm.families.ar.xent import CrossEntropyAccumulator


@torch.no_grad()
def score_tokens(model, tokens: np.ndarray, seq_len: int, *, device="cpu",
                 batch_windows: int = 8, on_scored=None) -> np.ndarray:
    """Log-probabilities (nats) the model gives to ``tokens[1:]`` of one row, scored in
    consecutive windows of ``seq_len`` tokens. Returns a float64 array of ``len(tokens) - 1``.
    ``on_scored(n)``, when given, is called after each batch of windows with the tokens it scored
    (a progress display inside a row: a session's row can take minutes).

    A model with ``cfg.unit_count_prefix`` gets every window's (num_units, phase), derived from
    the row (which starts with a separator) and the window's start."""
    tokens = np.asarray(tokens)
    cfg = getattr(model, "cfg", None)
    num_units = row_num_units(tokens) if getattr(cfg, "unit_count_prefix", False) else None
    windows = list(iter_eval_windows(tokens, seq_len))
    full = [sw for sw in windows if sw[1].size == seq_len + 1]
    rest = [sw for sw in windows if sw[1].size != seq_len + 1]  # only the last can be short
    out = []
    for group in [full[i:i + batch_windows] for i in range(0, len(full), batch_windows)] + \
            [[sw] for sw in rest]:
        t = torch.from_numpy(np.stack([w for _, w in group]).astype(np.int64)).to(device)
        if num_units is None:
            logits = model(t[:, :-1])
        else:
            prefix_B2 = torch.tensor([window_prefix(num_units, start) for start, _ in group],
                                     device=device)
            logits = model(t[:, :-1], prefix_B2=prefix_B2)
        logp = torch.log_softmax(logits.float(), dim=-1)
        out.append(logp.gather(-1, t[:, 1:, None])[..., 0].double().cpu().numpy().reshape(-1))
        if on_scored is not None:
            on_scored(out[-1].size)
    return np.concatenate(out) if out else np.zeros(0)


def require_rows(corpus: Corpus, split: str, *, to: str = "score") -> None:
    """Refuse a split with no rows: scoring it would give a table of dashes (exit 0), fitting
    the n-grams on an empty train split would give nothing to score with."""
    splits = corpus.manifest.get("splits") or {}
    if int((splits.get(split) or {}).get("num_rows", 0)) > 0:
        return
    other = "train" if split == "test" else "test"
    n = len(corpus.sessions)
    found = f"{corpus.path}: its {split} split has no rows (its {n} session(s) are all in {other})"
    if to == "fit":
        raise ValueError(f"{found}; the n-gram baselines are fitted on the train split: "
                         + corpus.fill_split_advice(split))
    raise ValueError(f"{found}; score --split {other}, or " + corpus.fill_split_advice(split))


def _rows(corpus: Corpus, split: str, max_tokens: int | None):
    """(row, counts) pairs of a split; with ``max_tokens``, rows are taken in order and the last
    one is cut to whole bins covering the remaining tokens (rounded up: up to one bin, n units +
    1 tokens, beyond ``max_tokens``), so every scorer sees the same tokens."""
    seen = 0
    for row in corpus.iter_rows(split, with_extras=False):
        counts = row.spike_counts
        if max_tokens is not None:
            if seen >= max_tokens:
                return
            fit = -(-(max_tokens - seen) // (row.num_units + 1))
            counts = counts[:, :fit]
        seen += counts.shape[1] * (row.num_units + 1)
        yield row, counts


def evaluate_model(model, corpus: Corpus, *, split: str = "test", seq_len: int = 512,
                   max_tokens: int | None = None, device="cpu", progress: bool = False,
                   unit_permutations: int = 0) -> dict:
    """Mean cross-entropy of an AR model over a split (see :class:`CrossEntropyAccumulator`).

    With ``unit_permutations`` = K > 0 every row is scored K times, its units (count matrix
    rows) reordered by permutation k drawn from ``default_rng([k, row index])``, and all K
    scorings pooled: the model's cross-entropy when the unit order carries no information.
    """
    from spikefm.progress import progress_bar

    require_rows(corpus, split)
    model.eval()
    acc = CrossEntropyAccumulator()
    rows = list(_rows(corpus, split, max_tokens))
    orders = range(unit_permutations) if unit_permutations else [None]
    # counted in tokens scored (every token of a row but its first), not rows: by default a row is
    # a whole session, minutes of scoring with nothing to show
    total = sum((counts.shape[0] + 1) * counts.shape[1] - 1 for _, counts in rows) * len(orders)
    with progress_bar(total, f"scoring {split} (tokens)", enabled=progress) as bar:
        for i, (row, counts) in enumerate(rows):
            for k in orders:
                c = counts if k is None else counts[np.random.default_rng([k, i]).permutation(
                    counts.shape[0])]
                tokens = tokenize(c)
                acc.add(score_tokens(model, tokens, seq_len, device=device, on_scored=bar.advance), tokens[1:],
                        row.source_dataset)
    return acc.result()


def fit_ngram(corpus: Corpus, order: int, *, alpha: float = 1.0,
              max_train_tokens: int | None = None, progress: bool = False):
    from spikefm.families.ar.ngram import NGramModel

    require_rows(corpus, "train", to="fit")
    rows = (tokenize(r.spike_counts) for r in corpus.iter_rows("train", with_extras=False))
    return NGramModel(order=order, alpha=alpha).fit(rows, max_tokens=max_train_tokens, progress=progress,
                                                    expected_tokens=_split_tokens(corpus, "train"))


def _split_tokens(corpus: Corpus, split: str) -> int | None:
    """The tokens (separators included) of ``split``'s rows, from the manifest: each bin of a row
    is a separator and a token per unit; None when a session has rows in both splits
    (``--split row``), whose share the manifest does not give."""
    sessions = [s for s in corpus.sessions if s["split"] in (split, "both")]
    if any(s["split"] == "both" for s in sessions):
        return None
    return sum((int(s["num_units"]) + 1) * int(s["num_bins"]) for s in sessions)


def evaluate_ngram(ngram, corpus: Corpus, *, split: str = "test",
                   max_tokens: int | None = None) -> dict:
    require_rows(corpus, split)
    acc = CrossEntropyAccumulator()
    for row, counts in _rows(corpus, split, max_tokens):
        tokens = tokenize(counts)
        acc.add(ngram.log_prob(tokens)[1:], tokens[1:], row.source_dataset)
    return acc.result()


def _truth_for(session: dict) -> dict | None:
    """The synthetic ground truth next to a session's NWB file, if there is one (and it is the
    truth of the recording the corpus was built from: :func:`spikefm.eval.oracle.truth_of_session`)."""
    from spikefm.eval.oracle import truth_file_of_session

    truth = truth_file_of_session(session)
    if truth is None:
        return None
    with np.load(truth, allow_pickle=False) as z:  # the three arrays scoring needs, not the latents
        return {"expected_counts": z["expected_counts"], "t_start_ms": int(z["t_start_ms"]),
                "bin_ms": int(z["bin_ms"])}


def truth_slice(truth: dict, t_start_ms: int, num_bins: int, bin_ms: int) -> np.ndarray:
    """The ground-truth expected counts (units, num_bins) of a row starting at ``t_start_ms``.

    A corpus binned at a multiple k of the truth's bin width gets the sums of k truth bins (the
    expected count of a sum of independent Poisson counts is the sum of theirs)."""
    fine = int(truth["bin_ms"])
    if bin_ms % fine:
        raise ValueError(f"ground truth is on {fine} ms bins, the corpus on {bin_ms} ms (not a multiple); "
                         f"rebuild the corpus with --bin-ms a multiple of {fine} to compare with the oracle")
    k = bin_ms // fine
    offset_ms = t_start_ms - truth["t_start_ms"]
    if offset_ms % fine:
        raise ValueError("row and ground truth bins are not aligned")
    a = offset_ms // fine
    exp = truth["expected_counts"][:, a:a + k * num_bins]
    if a < 0 or exp.shape[1] != k * num_bins:
        raise ValueError(f"ground truth covers {truth['expected_counts'].shape[1]} bins, the row "
                         f"needs bins {a}..{a + k * num_bins}")
    return exp if k == 1 else exp.reshape(exp.shape[0], num_bins, k).sum(axis=2)


def evaluate_oracle(corpus: Corpus, *, split: str = "test",
                    max_tokens: int | None = None) -> dict | None:
    """Cross-entropy of the true rates (Poisson probabilities of each count token; separators
    are certain) on the same tokens; None when the corpus has no ground truth (real data)."""
    from spikefm.families.ar.oracle import poisson_token_logprob

    sessions = {s["session_id"]: s for s in corpus.sessions}
    # only the scored rows' sessions, one at a time: every session's expected counts at once took
    # ~20 MB per session of the corpus whatever was scored (22 GB for 1,000 sessions)
    current: tuple[str | None, dict | None] = (None, None)
    acc = CrossEntropyAccumulator()
    for row, counts in _rows(corpus, split, max_tokens):
        if current[0] != row.session_id:
            current = (row.session_id, _truth_for(sessions.get(row.session_id) or {}))
        truth = current[1]
        if truth is None:
            return None  # real data, or a partial oracle, which would not be comparable
        try:
            exp = truth_slice(truth, row.t_start_ms, counts.shape[1], row.bin_ms)
            if exp.shape[0] != counts.shape[0]:
                raise ValueError(f"session {row.session_id}'s truth has {exp.shape[0]} units, its rows "
                                 f"{counts.shape[0]}")
        except ValueError as exc:  # the oracle is optional: the model and n-grams are still scored
            warnings.warn(f"no oracle: {exc}", RuntimeWarning, stacklevel=2)
            return None
        tokens = tokenize(counts)
        acc.add(poisson_token_logprob(counts, exp)[1:], tokens[1:], row.source_dataset)
    return acc.result()


def write_results(path: str | Path, results: dict[str, Any]) -> None:
    from spikefm.fileio import write_json_atomic

    write_json_atomic(Path(path), results)
