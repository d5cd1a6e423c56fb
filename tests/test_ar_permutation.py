"""Units have no natural order: permutation augmentation in the AR loader and the
cross-entropy of a model under random unit permutations of the evaluated rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.reader import Corpus
from spikefm.corpus.synth import synthesize
from spikefm.families.ar.evaluate import evaluate_model, score_tokens
from spikefm.families.ar.loader import ARTokenLoader, permute_row_units, row_num_units
from spikefm.families.ar.tokens import SEPARATOR, tokenize
from spikefm.families.ar.xent import CrossEntropyAccumulator


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("perm")
    synthesize(tmp / "nwb", num_sessions=2, seed=5, duration_s=12.0, units_range=(20, 26))
    build_corpus([str(tmp / "nwb")], tmp / "corpus",
                 BuildConfig(test_fraction=0.5, split="row", max_row_tokens=4000), progress=False)
    return Corpus(tmp / "corpus")


def test_permute_row_units_is_tokenize_of_permuted_counts():
    counts = np.random.default_rng(0).poisson(1.5, size=(9, 7))
    tokens = tokenize(counts)
    assert row_num_units(tokens) == 9
    got = permute_row_units(tokens, np.random.default_rng(3))
    perm = np.random.default_rng(3).permutation(9)
    np.testing.assert_array_equal(got, tokenize(counts[perm]))
    with pytest.raises(ValueError, match="start with the separator"):
        row_num_units(tokens[1:])


def _stream(loader, n_batches):
    return np.concatenate([torch.cat([x, y[:, -1:]], 1).numpy().reshape(-1)
                           for x, y in (next(loader) for _ in range(n_batches))])


def test_loader_permutes_within_bins_reproducibly_and_resumes(corpus):
    kw = dict(seq_len=63, batch_size=2, seed=4, token_cache=False)
    plain = _stream(ARTokenLoader(corpus, **kw), 6)
    perm_loader = ARTokenLoader(corpus, permute_units=True, **kw)
    permuted = _stream(perm_loader, 6)
    assert not np.array_equal(plain, permuted)
    # separators stay where they were; each bin holds the same counts in another order
    np.testing.assert_array_equal(plain == SEPARATOR, permuted == SEPARATOR)
    seps = np.flatnonzero(plain == SEPARATOR)
    for a, b in zip(seps[:-1], seps[1:]):
        np.testing.assert_array_equal(np.sort(plain[a:b]), np.sort(permuted[a:b]))
    # same seed, same stream; a restored loader continues the same stream
    again = ARTokenLoader(corpus, permute_units=True, **kw)
    first = _stream(again, 3)
    state = again.state_dict()
    resumed = ARTokenLoader(corpus, permute_units=True, **kw)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([first, _stream(resumed, 3)]), permuted)


class _OrderSensitive(torch.nn.Module):
    """Predicts that the next token repeats the current one (unit order matters to it)."""

    def forward(self, tokens_BL):
        return torch.nn.functional.one_hot(tokens_BL, 256).float() * 3.0


def test_permuted_evaluation_scores_permuted_rows(corpus):
    model = _OrderSensitive()
    got = evaluate_model(model, corpus, split="test", seq_len=100, unit_permutations=2)
    acc = CrossEntropyAccumulator()
    for i, row in enumerate(corpus.iter_rows("test", with_extras=False)):
        for k in range(2):
            perm = np.random.default_rng([k, i]).permutation(row.num_units)
            tokens = tokenize(row.spike_counts[perm])
            acc.add(score_tokens(model, tokens, 100), tokens[1:], row.source_dataset)
    assert got == acc.result()
    plain = evaluate_model(model, corpus, split="test", seq_len=100)
    assert plain["overall"]["all"]["num_tokens"] * 2 == got["overall"]["all"]["num_tokens"]
    assert plain["overall"]["counts"]["bits"] != pytest.approx(got["overall"]["counts"]["bits"])


def test_eval_command_reports_permuted_units(corpus, tmp_path, capsys):
    from spikefm.cli import main as cli_main

    torch.set_num_threads(1)
    run = tmp_path / "run"
    assert cli_main(["train", "--model", "ar", "--preset", "tiny", "--data", str(corpus.path),
                     "--out", str(run), "--steps", "3", "--set", "data.seq_len=64",
                     "--set", "data.permute_units=true", "--set", "model.positions=bin",
                     "--set", "model.n_layers=1", "--set", "train.batch_size=2",
                     "--set", "train.precision=fp32", "--quiet"]) == 0
    out = tmp_path / "res.json"
    assert cli_main(["eval", str(run), "--data", str(corpus.path), "--permutations", "2",
                     "--max-tokens", "400", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if "(units permuted)" in line)
    assert header.count("permuted") == 1  # one permuted column (it was printed twice, once as a baseline)
    import json

    res = json.loads(out.read_text())["results"]
    assert res["model-permuted"]["overall"]["all"]["num_tokens"] == \
        2 * res["model"]["overall"]["all"]["num_tokens"]


def test_scoring_progress_counts_the_tokens_scored(corpus, monkeypatch):
    """The display advanced once per row, and a row is a whole session by default: minutes at
    0/1. It counts tokens now, advanced after each batch of windows, ending at the total."""
    import contextlib

    import spikefm.progress as progress

    seen = {}

    @contextlib.contextmanager
    def recording_bar(total, description, enabled=True, **kw):
        seen.update(total=total, description=description, steps=[])
        yield type("Bar", (), {"advance": lambda self, n=1, **f: seen["steps"].append(n),
                               "update": lambda self, **f: None})()

    monkeypatch.setattr(progress, "progress_bar", recording_bar)
    got = evaluate_model(_OrderSensitive(), corpus, split="test", seq_len=100, progress=True, unit_permutations=2)
    scored = got["overall"]["all"]["num_tokens"]
    assert seen["total"] == scored == sum(seen["steps"]) and seen["description"] == "scoring test (tokens)"
    rows = sum(1 for _ in corpus.iter_rows("test", with_extras=False))
    assert len(seen["steps"]) > 2 * rows  # within rows, not once per row
