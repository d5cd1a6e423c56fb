"""The unit-count prefix (``model.unit_count_prefix``): derived positions against a plain walk,
KV-cache and causality equivalence, windows that never cross rows, evaluation windows getting
their own (num_units, phase), generation, the refused Hugging Face export, and a short training
run; plus ``spikefm eval --compare-run`` (held-out sessions beside held-out rows)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.reader import Corpus
from spikefm.corpus.synth import synthesize
from spikefm.families.ar.evaluate import score_tokens
from spikefm.families.ar.hf import from_hf_config, save_hf, to_hf_config
from spikefm.families.ar.loader import ARTokenLoader, iter_eval_windows
from spikefm.families.ar.model import KVCache, Llama, count_parameters, generate, llama_preset
from spikefm.families.ar.positions import STATE_CAP, bin_positions, window_prefix
from spikefm.families.ar.tokens import SEPARATOR, tokenize


def _model(layout: str, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(llama_preset("tiny"), positions=layout, unit_count_prefix=True,
                              n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96)
    return Llama(cfg).eval()


def test_bin_positions_with_a_prefix_are_exact_from_the_first_token():
    n, start = 4, 7  # a window starting at token 7 of a row of 4-unit bins: phase 2
    row = tokenize(np.random.default_rng(1).integers(0, 3, size=(n, 6)))
    window = torch.from_numpy(row[start:start + 20].astype(np.int64))[None]
    assert window_prefix(n, start) == (n, 2)
    pos = bin_positions(window, torch.tensor([window_prefix(n, start)]))
    units = [(start + i) % (n + 1) for i in range(20)]  # unit index in the row, by arithmetic
    assert pos.unit_BL[0].tolist() == units
    assert pos.state_BL[0].tolist() == [2 + min(n - u, STATE_CAP) for u in units]
    # from the first separator on, the same as without a prefix
    plain = bin_positions(window)
    first_sep = int((window[0] == SEPARATOR).nonzero()[0])
    assert pos.bin_BL.tolist() == plain.bin_BL.tolist()
    assert pos.unit_BL[0, first_sep:].tolist() == plain.unit_BL[0, first_sep:].tolist()
    assert plain.state_BL[0, :first_sep].tolist() == [0] * first_sep  # unknown without it


@pytest.mark.parametrize("layout", ["plain", "bin"])
def test_prefix_model_is_causal_and_cache_equivalent(layout):
    model = _model(layout)
    n = 5
    row = tokenize(np.random.default_rng(0).poisson(1.0, size=(n, 8)))
    x = torch.from_numpy(row[3:40].astype(np.int64))[None]
    prefix = torch.tensor([window_prefix(n, 3)])
    with torch.no_grad():
        full = model(x, prefix_B2=prefix)
        cache = KVCache.for_model(model, 1, 64)
        parts = [model(x[:, :10], kv_cache=cache, prefix_B2=prefix), model(x[:, 10:11], kv_cache=cache),
                 model(x[:, 11:], kv_cache=cache)]
        torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
        assert cache.pos == x.shape[1] + 1  # the prefix takes one cache position
        changed = x.clone()
        changed[:, 20:] = 0
        torch.testing.assert_close(model(changed, prefix_B2=prefix)[:, :20], full[:, :20])
        # the prefix is information the model uses
        assert not torch.allclose(model(x, prefix_B2=torch.tensor([[n + 1, 3]])), full)
    with pytest.raises(ValueError, match="unit-count prefix"):
        model(x)
    with pytest.raises(ValueError, match=r"num_units >= 1, 0 <= phase"):
        model(x, prefix_B2=torch.tensor([[n, n + 1]]))
    with pytest.raises(ValueError, match="already given"):
        model(x[:, :2], kv_cache=cache, prefix_B2=prefix)
    plain = Llama(dataclasses.replace(model.cfg, unit_count_prefix=False))
    with pytest.raises(ValueError, match="drop it"):
        plain(x, prefix_B2=prefix)
    assert count_parameters(model.cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("layout", ["plain", "bin"])
def test_prefix_generation_cached_equals_recomputed(layout):
    model = _model(layout, seed=1)
    prompt = torch.from_numpy(tokenize(np.random.default_rng(2).poisson(1.0, size=(6, 3)))
                              .astype(np.int64))[None].repeat(2, 1)
    kw = dict(prompt_tokens=prompt, temperature=1.0)
    cached = generate(model, 6, 4, generator=torch.Generator().manual_seed(3), **kw)
    recomputed = generate(model, 6, 4, generator=torch.Generator().manual_seed(3),
                          use_kv_cache=False, **kw)
    assert torch.equal(cached, recomputed)
    assert cached.shape == (2, 4 * 7)
    assert bool((cached.reshape(2, 4, 7)[..., 0] == SEPARATOR).all())


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two corpora of the same 4 synthetic sessions: split by session and split by row."""
    tmp = tmp_path_factory.mktemp("prefix")
    synthesize(tmp / "nwb", num_sessions=4, seed=7, duration_s=10.0, units_range=(20, 30))
    out = {}
    for kind in ("session", "row"):
        build_corpus([str(tmp / "nwb")], tmp / kind,
                     BuildConfig(test_fraction=0.3, split=kind, max_row_tokens=3000), progress=False)
        out[kind] = Corpus(tmp / kind)
    return out


def _windows(loader, n_batches):
    return [(x[i], y[i], p[i]) for x, y, p in (next(loader) for _ in range(n_batches))
            for i in range(x.shape[0])]


def test_prefix_loader_windows_stay_in_one_row_and_resume(corpora):
    corpus = corpora["row"]
    rows = [tokenize(r.spike_counts) for r in corpus.iter_rows("train", with_extras=False)]
    kw = dict(seq_len=90, batch_size=3, seed=2, token_cache=False, unit_count_prefix=True)
    loader = ARTokenLoader(corpus, **kw)
    got = _windows(loader, 8)
    for x, y, (n, phase) in got:
        window = torch.cat([x, y[-1:]]).numpy()
        # the window is a stretch of one row starting at a token with that (n, phase)
        hits = [r for r in rows if r.size > n and (r[n + 1] == SEPARATOR) and any(
            np.array_equal(r[s:s + window.size], window)
            for s in range(phase, r.size - window.size + 1, n + 1))]
        assert hits, (n, phase)
        assert int(n) == int(np.flatnonzero(hits[0][1:] == SEPARATOR)[0])
    first = ARTokenLoader(corpus, **kw)
    head = _windows(first, 3)
    resumed = ARTokenLoader(corpus, **kw)
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(head + _windows(resumed, 5), got):
        for u, v in zip(a, b):
            assert torch.equal(u, v)
    with pytest.warns(UserWarning, match="skipping rows shorter"):
        short = ARTokenLoader(corpus, **{**kw, "seq_len": max(r.size for r in rows) - 1})
        next(short)


def test_prefix_evaluation_gives_each_window_its_phase(corpora):
    model = _model("bin", seed=4)
    row = next(corpora["session"].iter_rows("test", with_extras=False))
    tokens = tokenize(row.spike_counts)
    got = score_tokens(model, tokens, 50, batch_windows=3)
    expected = []
    with torch.no_grad():
        for start, w in iter_eval_windows(tokens, 50):
            t = torch.from_numpy(w.astype(np.int64))[None]
            logp = torch.log_softmax(model(t[:, :-1], prefix_B2=torch.tensor(
                [window_prefix(row.num_units, start)])), -1)
            expected.append(logp.gather(-1, t[:, 1:, None])[0, :, 0].double().numpy())
    np.testing.assert_allclose(got, np.concatenate(expected), atol=1e-5)
    assert got.size == tokens.size - 1


def test_prefix_model_refuses_a_lossy_hf_export(tmp_path):
    model = _model("plain")
    with pytest.raises(ValueError, match="unit_count_prefix"):
        save_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    config = to_hf_config(llama_preset("tiny"))
    assert config["spikefm_layout"] == {"positions": "plain", "unit_count_prefix": False}
    assert from_hf_config(config) == llama_preset("tiny")
    with pytest.raises(ValueError, match="spikefm_layout"):
        from_hf_config({**config, "spikefm_layout": {"positions": "plain", "unit_count_prefix": True}})


def test_train_with_prefix_then_compare_session_and_row_splits(corpora, tmp_path, capsys):
    from spikefm.cli import main as cli_main
    from spikefm.families import get

    torch.set_num_threads(1)
    runs = {}
    for kind, corpus in corpora.items():
        runs[kind] = tmp_path / f"run_{kind}"
        assert cli_main(["train", "--model", "ar", "--preset", "tiny", "--data", str(corpus.path),
                         "--out", str(runs[kind]), "--steps", "8", "--set", "data.seq_len=64",
                         "--set", "train.log_every=1",
                         "--set", "model.unit_count_prefix=true", "--set", "model.n_layers=1",
                         "--set", "train.batch_size=2", "--set", "train.precision=fp32",
                         "--set", "optim.lr=3e-3", "--quiet"]) == 0
    losses = [json.loads(x)["loss"] for x in (runs["row"] / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert losses[-1] < losses[0]
    out = tmp_path / "res.json"
    capsys.readouterr()
    assert cli_main(["eval", str(runs["session"]), "--data", str(corpora["session"].path),
                     "--compare-run", str(runs["row"]), "--ngram", "1", "--max-tokens", "600",
                     "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "held-out sessions" in printed and "held-out rows" in printed
    res = json.loads(out.read_text())
    assert res["held_out"] == "held-out sessions"
    assert res["compare"]["held_out"] == "held-out rows"
    assert res["compare"]["corpus"] == str(corpora["row"].path.resolve())  # from its config
    alone = get("ar").evaluate(str(runs["row"]), str(corpora["row"].path), ngram=(1,),
                               max_tokens=600)
    assert res["compare"]["results"]["model"] == alone["results"]["model"]
    assert res["compare"]["results"]["1-gram"] == alone["results"]["1-gram"]
    # the report shows the compared run's table too, each cell pointing into "compare"
    from test_report import _parse, _resolve

    assert cli_main(["report", str(out), "--out", str(tmp_path / "cmp.html")]) == 0
    cells = {c[1]: c for c in _parse((tmp_path / "cmp.html").read_text()).cells}
    ptr = "/compare/results/model/overall/all/bits"
    assert ptr in cells and float(cells[ptr][2]) == _resolve(res, ptr)
    assert "/results/model/overall/all/bits" in cells
    with pytest.warns(UserWarning, match="both corpora are split by 'session'"):
        get("ar").evaluate(str(runs["session"]), str(corpora["session"].path),
                           compare_run=str(runs["session"]), max_tokens=300)
    with pytest.raises(ValueError, match="--compare-run"):
        get("ar").evaluate(str(runs["session"]), str(corpora["session"].path),
                           compare_data=str(corpora["row"].path))
    # a corpus where the second run belongs: named as --compare-run's mistake (it said config.json not found)
    with pytest.raises(ValueError, match=rf"^--compare-run {corpora['row'].path}: not a run folder \(no config.json\)"):
        get("ar").evaluate(str(runs["session"]), str(corpora["session"].path), compare_run=str(corpora["row"].path))
