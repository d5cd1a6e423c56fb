"""The autoregressive model end to end on a synthetic corpus: train (CLI), evaluate against the
n-gram baselines and the ground-truth oracle, generate, and the 2-process FSDP run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spikefm import Corpus, load_model
from spikefm.cli import main as cli_main
from spikefm.families import get as get_family, run_config, train
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.synth import synthesize
from spikefm.families.ar.tokens import SEPARATOR, tokenize
from spikefm.families.ar.evaluate import evaluate_oracle, score_tokens, truth_slice, _truth_for
from conftest import torchrun_failure_report


@pytest.fixture(scope="module")
def synth_corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ar")
    # Small populations (20-30 units, a bin every 21-31 tokens) so that a tiny model sees several
    # bins per context and learns within a CPU test.
    synthesize(tmp / "nwb", num_sessions=3, seed=1, duration_s=60.0, units_range=(20, 30))
    build_corpus([str(tmp / "nwb")], tmp / "corpus",
                 BuildConfig(test_fraction=0.2, split="row", max_row_tokens=10_000),
                 progress=False)
    return tmp / "corpus"


@pytest.fixture(scope="module")
def trained_run(synth_corpus, tmp_path_factory):
    torch.set_num_threads(1)  # tiny matrices: threads cost more than they give on 2 cores
    out = tmp_path_factory.mktemp("run") / "run"
    rc = cli_main(["train", "--model", "ar", "--preset", "tiny", "--data", str(synth_corpus),
                   "--out", str(out), "--steps", "150", "--set", "data.seq_len=256",
                   "--set", "optim.lr=3e-3", "--set", "optim.warmup_steps=10",
                   "--set", "train.log_every=25", "--set", "train.ckpt_every=1000",
                   "--set", "train.precision=fp32", "--quiet"])
    assert rc == 0
    return out


def test_eval_refuses_a_model_that_cannot_score_spike_tokens_before_fitting_baselines(trained_run, synth_corpus,
                                                                                       tmp_path, capsys, monkeypatch):
    """NaN weights said 'logprob_nats contains NaN; fix the model output before scoring', and a
    vocabulary of 200 'tokens_BL must lie in [0, 200) ... tokenize counts with ...', both after
    the n-gram baselines were fitted (minutes on a large corpus), neither naming the run."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file, save_file

    from spikefm.families.ar import evaluate as ar_evaluate
    from spikefm.families.ar.family import ARFamily
    from spikefm.families.ar.model import Llama

    def no_fit(*a, **k):
        raise AssertionError("a baseline was fitted before the model was checked")

    monkeypatch.setattr(ar_evaluate, "fit_ngram", no_fit)
    bad = tmp_path / "bad"
    shutil.copytree(trained_run, bad)
    weights = load_file(str(bad / "model.safetensors"))
    name = sorted(k for k in weights if k.startswith("output"))[0]
    weights[name][0, 0] = float("nan")
    save_file(weights, str(bad / "model.safetensors"))
    out = tmp_path / "x.json"
    assert cli_main(["eval", str(bad), "--data", str(synth_corpus), "--ngram", "1,9", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"spikefm: error: {bad}: the model's weights hold NaN or infinite values (first in {name}): they are damaged "
        "or its training diverged; nothing was scored: evaluate an earlier run or retrain"]
    assert not out.exists()
    # a compared run that cannot score is refused before the first run is scored
    assert cli_main(["eval", str(trained_run), "--data", str(synth_corpus), "--ngram", "1", "--compare-run",
                     str(bad), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"spikefm: error: {bad}: the model's weights hold NaN or infinite values (first in {name}): they are damaged "
        "or its training diverged; nothing was scored: evaluate an earlier run or retrain"]
    assert not out.exists()
    small, _ = ARFamily().load(str(trained_run))
    small = Llama(dataclasses.replace(small.cfg, vocab_size=200))
    monkeypatch.setattr(ARFamily, "load", lambda self, run_dir, **k: (small, None))
    assert cli_main(["eval", str(trained_run), "--data", str(synth_corpus), "--ngram", "1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"spikefm: error: {trained_run}: the model's vocabulary has 200 tokens; spike tokens need 256 (counts 0-254 "
        "and the separator 255), so it cannot score them: evaluate a model trained on them"]
    assert not out.exists()


def test_eval_on_the_runs_corpus_rebuilt_since_warns(trained_run, synth_corpus, tmp_path):
    """eval of an AR run on its corpus rebuilt with another split scored rows it trained on as held
    out, with no word (the NDT's eval warns of a changed manifest)."""
    import shutil
    import warnings

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    info = json.loads((run / "config.json").read_text())
    fam = get_family("ar")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the corpus it trained on, unchanged: no word
        fam.evaluate(str(run), str(synth_corpus), max_tokens=2000)
    info["family_info"]["corpus_manifest_sha256"] = "0" * 64  # as after a rebuild of that corpus
    (run / "config.json").write_text(json.dumps(info))
    with pytest.warns(RuntimeWarning, match=rf"^{synth_corpus} changed since the run trained on it \(its manifest hash "
                                            r"differs: rebuilt\?\), so its held-out rows may include rows the run "
                                            r"trained on"):
        fam.evaluate(str(run), str(synth_corpus), max_tokens=2000)


def test_a_corpus_rebuilt_while_a_run_starts_is_refused(synth_corpus, tmp_path, monkeypatch):
    """The run recorded the corpus's manifest when it described the data, and its loaders opened
    the corpus again later (every rank, some after the token cache was built): a rebuild between
    the two trained on one corpus while config.json named the other."""
    from spikefm.families.ar.family import ARFamily

    real = ARFamily.describe

    def describe_then_rebuilt(self, cfg):
        out = real(self, cfg)
        return {**out, "corpus_manifest_sha256": "0" * 64}  # as if the corpus changed after this

    monkeypatch.setattr(ARFamily, "describe", describe_then_rebuilt)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"^the corpus {synth_corpus} changed while this run was starting \(rebuilt\? "
                                         r"its manifest is no longer the one the run recorded\); nothing was trained"):
        train(run_config("ar", corpus=str(synth_corpus), overrides=["train.steps=2", "data.seq_len=64",
                                                                       "data.token_cache=false"]), out, progress=False)
    assert not out.exists()


def test_run_directory_describes_itself(trained_run, synth_corpus):
    info = json.loads((trained_run / "config.json").read_text())
    assert info["family"] == "ar" and info["world_size"] == 1
    assert info["family_info"]["corpus_manifest_sha256"] == Corpus(synth_corpus).manifest_hash
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "tokens_per_s", "mfu"} <= set(rows[-1])
    assert rows[-1]["loss"] < rows[0]["loss"]
    # the weights get the permissions of the run's other files (safetensors wrote them 0600)
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (trained_run / "config.json", trained_run / "model.safetensors")}
    assert modes == {"config.json": 0o666 & ~umask, "model.safetensors": 0o666 & ~umask}


def test_model_beats_unigram_and_oracle_beats_model(trained_run, synth_corpus, tmp_path, capsys):
    out = tmp_path / "results.json"
    rc = cli_main(["eval", str(trained_run), "--data", str(synth_corpus), "--ngram", "1,9",
                   "--max-tokens", "60000", "--out", str(out), "--quiet"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "oracle" in table and "1-gram" in table
    written = json.loads(out.read_text())
    # the options that chose the scored tokens, and where run and corpus are (as typed, they were
    # relative to a working directory the file does not record)
    assert {k: written[k] for k in ("max_tokens", "max_train_tokens", "permutations", "run_dir", "corpus")} == {
        "max_tokens": 60000, "max_train_tokens": None, "permutations": 0,
        "run_dir": str(trained_run.resolve()), "corpus": str(synth_corpus.resolve())}
    res = written["results"]
    bits = {k: v["overall"]["all"]["bits"] for k, v in res.items()}
    assert res["model"]["overall"]["all"]["num_tokens"] == res["oracle"]["overall"]["all"]["num_tokens"]
    assert bits["oracle"] < bits["model"] < min(bits["1-gram"], bits["9-gram"])
    # Per source reported too.
    assert set(res["model"]["per_source"]) == {"nwb"}


def test_oracle_matches_an_independent_poisson_computation(synth_corpus):
    from scipy.stats import poisson

    corpus = Corpus(synth_corpus)
    row = next(corpus.iter_rows("test"))
    res = evaluate_oracle(corpus, max_tokens=row.num_bins * (row.num_units + 1))  # first row only
    exp = truth_slice(_truth_for(corpus.session(row.session_id)), row.t_start_ms, row.num_bins,
                      row.bin_ms)
    c = np.minimum(row.spike_counts.astype(int), 254)
    lp = np.where(c < 254, poisson.logpmf(c, exp), poisson.logsf(253, exp))
    expected_bits = -lp.sum() / np.log(2) / (row.num_bins * (row.num_units + 1) - 1)
    assert res["overall"]["all"]["bits"] == pytest.approx(expected_bits, rel=1e-9)
    assert res["overall"]["separators"]["bits"] == 0.0


def test_oracle_reads_the_truth_of_the_scored_rows_sessions_only(synth_corpus, monkeypatch):
    """Every session's expected counts were loaded (about 20 MB each) to score a few tokens."""
    from spikefm.families.ar import evaluate as ev

    corpus = Corpus(synth_corpus)
    row = next(corpus.iter_rows("test"))
    read = []
    real = ev._truth_for
    monkeypatch.setattr(ev, "_truth_for", lambda s: read.append(s.get("session_id")) or real(s))
    res = ev.evaluate_oracle(corpus, max_tokens=row.num_bins * (row.num_units + 1))  # first row only
    assert read == [row.session_id] and res is not None
    assert len(corpus.sessions) > 1


def test_no_oracle_from_the_truth_of_a_regenerated_recording(tmp_path):
    """Recordings regenerated into the corpus's folder (synth --overwrite, another seed or
    --region-tuning) left the corpus as it was and put a new truth beside the files: the oracle
    scored the old counts against it without a word (NDT 0.508 -> -1.29 bits/spike; AR failed
    on a unit-count mismatch)."""
    from spikefm.eval.oracle import session_truth
    from spikefm.families.ar import evaluate as ev

    synthesize(tmp_path / "nwb", num_sessions=2, seed=1, duration_s=20.0, units_range=(20, 22))
    build_corpus([str(tmp_path / "nwb")], tmp_path / "c", BuildConfig(test_fraction=0.5, seed=0), progress=False)
    corpus = Corpus(tmp_path / "c")
    sid = corpus.sessions[0]["session_id"]
    assert session_truth(corpus, sid) is not None and ev.evaluate_oracle(corpus) is not None
    import shutil

    synthesize(tmp_path / "nwb2", num_sessions=2, seed=2, duration_s=20.0, units_range=(20, 22))
    shutil.copytree(tmp_path / "nwb2", tmp_path / "nwb", dirs_exist_ok=True)  # as synth --overwrite leaves it
    with pytest.warns(RuntimeWarning, match=rf"^no oracle for session {sid}: .*{sid}\.nwb changed since the corpus "
                                            r"was built from it \(regenerated\?\), so the truth file beside it is "
                                            r"not that of the corpus's counts; rebuild the corpus"):
        assert session_truth(corpus, sid) is None
    with pytest.warns(RuntimeWarning, match=r"changed since the corpus was built from it"):
        assert ev.evaluate_oracle(corpus) is None


def test_oracle_on_a_40_ms_corpus_sums_pairs_of_truth_bins(synth_corpus, tmp_path):
    """A 40 ms corpus of the synthetic recordings made eval and ngram fail ("ground truth is on
    20 ms bins"); its oracle is the true rate summed over each pair of 20 ms bins (computed here
    from the truth file with scipy), and a width that is not a multiple gives no oracle, with a
    warning, instead of an error."""
    from scipy.stats import poisson

    nwb = Path(Corpus(synth_corpus).sessions[0]["provenance"]["path"]).parents[1]
    build_corpus([str(nwb)], tmp_path / "c40", BuildConfig(bin_ms=40, test_fraction=0.2, split="row",
                                                           max_row_tokens=10_000), progress=False)
    corpus = Corpus(tmp_path / "c40")
    row = next(corpus.iter_rows("test"))
    res = evaluate_oracle(corpus, max_tokens=row.num_bins * (row.num_units + 1))  # first row only
    with np.load(Path(corpus.session(row.session_id)["provenance"]["path"][:-4] + ".truth.npz")) as z:
        fine, t0 = z["expected_counts"], int(z["t_start_ms"])
    a = (row.t_start_ms - t0) // 20
    exp = fine[:, a:a + 2 * row.num_bins:2] + fine[:, a + 1:a + 2 * row.num_bins:2]
    c = np.minimum(row.spike_counts.astype(int), 254)
    lp = np.where(c < 254, poisson.logpmf(c, exp), poisson.logsf(253, exp))
    assert res["overall"]["all"]["bits"] == pytest.approx(-lp.sum() / np.log(2) / (c.size + row.num_bins - 1),
                                                          rel=1e-9)
    build_corpus([str(nwb)], tmp_path / "c30", BuildConfig(bin_ms=30, test_fraction=0.2), progress=False)
    with pytest.warns(RuntimeWarning, match="no oracle: ground truth is on 20 ms bins, the corpus on 30 ms"):
        assert evaluate_oracle(Corpus(tmp_path / "c30")) is None


def test_eval_refuses_a_corpus_of_another_bin_width(trained_run, synth_corpus, tmp_path, capsys):
    """A run trained on 20 ms bins was scored on a 40 ms corpus without a word."""
    nwb = Path(Corpus(synth_corpus).sessions[0]["provenance"]["path"]).parents[1]
    build_corpus([str(nwb)], tmp_path / "c40", BuildConfig(bin_ms=40, test_fraction=0.2), progress=False)
    assert cli_main(["eval", str(trained_run), "--data", str(tmp_path / "c40"), "--max-tokens", "2000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (f"spikefm: error: {trained_run} was trained on 20 ms bins ({synth_corpus}), "
                                        f"{tmp_path / 'c40'} is binned at 40 ms: its counts per bin are not what the "
                                        "model read; score it on a corpus built with --bin-ms 20")
    # a prompt from it was accepted, and 40 ms bins continued by a model of 20 ms bins
    session = Corpus(tmp_path / "c40").sessions[0]
    assert cli_main(["generate", str(trained_run), "--units", str(session["num_units"]), "--bins", "2",
                     "--prompt", f"{tmp_path / 'c40'}:{session['session_id']}:0", "--prompt-bins", "2",
                     "--out", str(tmp_path / "g40.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (f"spikefm: error: {trained_run} was trained on 20 ms bins ({synth_corpus}), "
                                        f"{tmp_path / 'c40'} is binned at 40 ms: its counts per bin are not what the "
                                        "model read; prompt it from a corpus built with --bin-ms 20")
    assert not (tmp_path / "g40.npz").exists() and not (tmp_path / "g40.png").exists()


def test_max_train_tokens_without_an_ngram_is_refused(trained_run, synth_corpus, capsys):
    """It was ignored silently (the same table as without it)."""
    assert cli_main(["eval", str(trained_run), "--data", str(synth_corpus), "--max-train-tokens", "10"]) == 2
    assert capsys.readouterr().err.strip() == (
        "spikefm: error: max_train_tokens (--max-train-tokens) caps the n-gram baselines' training tokens, and no "
        "n-gram is fitted; give the orders too (--ngram 1,9) or drop it")


def test_seq_len_for_a_run_is_said_to_be_ignored(trained_run, synth_corpus):
    from spikefm.families import get

    with pytest.warns(RuntimeWarning, match=r"--seq-len 64 applies to a Hugging Face folder; .* data.seq_len=256"):
        res = get("ar").evaluate(str(trained_run), str(synth_corpus), seq_len=64, max_tokens=500)
    assert res["seq_len"] == 256


def test_scoring_is_causal_and_matches_full_forward(trained_run):
    model = load_model(trained_run)
    rng = np.random.default_rng(0)
    tokens = tokenize(rng.poisson(0.2, (5, 30)).astype(np.uint8))
    lp = score_tokens(model, tokens, seq_len=len(tokens) - 1)
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens[None, :-1].astype(np.int64)))
    ref = torch.log_softmax(logits[0], -1).gather(-1, torch.from_numpy(
        tokens[1:, None].astype(np.int64)))[:, 0].numpy()
    np.testing.assert_allclose(lp, ref, atol=1e-5)
    changed = tokens.copy()
    changed[100:] = np.where(changed[100:] == SEPARATOR, SEPARATOR, 3)
    lp2 = score_tokens(model, changed, seq_len=len(tokens) - 1)
    np.testing.assert_allclose(lp2[:99], lp[:99], atol=1e-6)


def test_generate_cli_shape_separators_and_prompted_raster(trained_run, synth_corpus, tmp_path, capsys):
    corpus = Corpus(synth_corpus)
    session = corpus.sessions[0]
    out = tmp_path / "gen.npz"
    rc = cli_main(["generate", str(trained_run), "--units", str(session["num_units"]),
                   "--bins", "6", "--prompt", f"{synth_corpus}:{session['session_id']}:10",
                   "--prompt-bins", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    z = np.load(out)
    assert z["counts"].shape == (session["num_units"], 6) and z["counts"].dtype == np.uint8
    assert z["real"].shape == (session["num_units"], 6) and z["prompt"].shape[1] == 2
    assert int(z["bin_ms"]) == corpus.manifest["bin_ms"]  # the report's time axis reads it
    # a prompt that ends at (or near) the session's end: said, and the .npz holds what real bins there are
    end = session["num_bins"]
    for start, real_bins in ((end - 4, 2), (end - 2, 0)):
        with pytest.warns(RuntimeWarning, match=f"ends {real_bins} bin"):
            assert cli_main(["generate", str(trained_run), "--units", str(session["num_units"]), "--bins", "6",
                             "--prompt", f"{synth_corpus}:{session['session_id']}:{start}", "--prompt-bins", "2",
                             "--out", str(tmp_path / "end.npz")]) == 0
        with np.load(tmp_path / "end.npz") as e:
            assert ("real" in e) == bool(real_bins) and (not real_bins or e["real"].shape[1] == real_bins)
    assert out.with_suffix(".png").stat().st_size > 1000
    rc = cli_main(["generate", str(trained_run), "--units", "3", "--bins", "2", "--prompt",
                   f"{synth_corpus}:{session['session_id']}:0", "--out", str(tmp_path / "x.npz")])
    assert rc == 2  # unit count of the prompt session does not match
    # a negative START_BIN, a prompt past the session's end, a prompt longer than the context:
    # each refused with the fix that applies (it said "generate fewer bins" for a prompt alone
    # over the model's max_seq_len, and "-1 + 2 prompt bins does not fit" for a negative start)
    sid, units = session["session_id"], str(session["num_units"])
    for prompt, bins, expect in (
            (f"{synth_corpus}:{sid}:-1", "2", "START_BIN must be >= 0 (a bin of the session, 0.."),
            (f"{synth_corpus}:{sid}:{end - 1}", "2", f"start at most at bin {end - 2}, or give fewer --prompt-bins"),
            # more prompt bins than the session has: no start fits ('start at most at bin 0' did not)
            (f"{synth_corpus}:{sid}:0", str(end + 1), f"does not fit: give --prompt-bins {end} or fewer"),
            (f"{synth_corpus}:{sid}:0", str(end),  # the prompt alone overflows: the most prompt bins that fit
             f"generate with a shorter prompt: at most {8193 // (session['num_units'] + 1) - 2} prompt bin(s) "
             "fit before 2 generated bins")):
        capsys.readouterr()
        assert cli_main(["generate", str(trained_run), "--units", units, "--bins", "2", "--prompt", prompt,
                         "--prompt-bins", bins, "--out", str(tmp_path / "p.npz")]) == 2
        err = capsys.readouterr().err.strip()
        assert expect in err and len(err.splitlines()) == 1, err
    # --prompt-bins without a --prompt was ignored silently (exit 0)
    capsys.readouterr()
    assert cli_main(["generate", str(trained_run), "--units", "3", "--bins", "2", "--prompt-bins", "5",
                     "--out", str(tmp_path / "np.npz")]) == 2
    assert capsys.readouterr().err.strip() == (
        "spikefm: error: --prompt-bins 5 applies to a --prompt (CORPUS_DIR:SESSION_ID:START_BIN, the recording "
        "that starts the generation); give one, or drop --prompt-bins to generate from nothing")
    assert not (tmp_path / "np.npz").exists()
    # a .png of the user's where the raster would go is kept (it was replaced); an earlier
    # generate's own pair is rewritten
    (tmp_path / "mine.png").write_bytes(b"my figure")
    capsys.readouterr()
    assert cli_main(["generate", str(trained_run), "--units", "3", "--bins", "2",
                     "--out", str(tmp_path / "mine.npz")]) == 2
    assert "mine.png exists and is not the raster of an earlier spikefm generate" in capsys.readouterr().err
    assert (tmp_path / "mine.png").read_bytes() == b"my figure" and not (tmp_path / "mine.npz").exists()
    for _ in range(2):
        assert cli_main(["generate", str(trained_run), "--units", "3", "--bins", "2",
                         "--out", str(tmp_path / "pair.npz")]) == 0
    assert int(np.load(tmp_path / "pair.npz")["bin_ms"]) == corpus.manifest["bin_ms"]  # the run's corpus
    # --device auto on a machine without CUDA samples on the CPU: the default's spikes, exactly
    auto = tmp_path / "auto.npz"
    assert cli_main(["generate", str(trained_run), "--units", str(session["num_units"]),
                     "--bins", "6", "--prompt", f"{synth_corpus}:{session['session_id']}:10",
                     "--prompt-bins", "2", "--device", "auto", "--out", str(auto)]) == 0
    if not torch.cuda.is_available():
        np.testing.assert_array_equal(np.load(auto)["counts"], z["counts"])
        kept = tmp_path / "c.npz"
        kept.write_bytes(b"an earlier result")
        capsys.readouterr()
        rc = cli_main(["generate", str(trained_run), "--units", "3", "--bins", "2",
                       "--device", "cuda", "--out", str(kept)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert "--device='cuda' but no CUDA device is available; use 'cpu' or 'auto'" in err
        assert kept.read_bytes() == b"an earlier result"  # nothing written over


def test_generate_past_the_trained_context_warns_and_a_prompt_too_long_names_what_fits(trained_run, synth_corpus,
                                                                                         tmp_path):
    """Generation ran far past the 256 tokens the model was trained on (data.seq_len) without a word;
    a prompt over the model's max_seq_len was told "fewer prompt bins" without how many."""
    import warnings

    from spikefm.families.ar.generation import generate_to_file

    session = Corpus(synth_corpus).sessions[0]
    units, width = session["num_units"], session["num_units"] + 1
    prompt = f"{synth_corpus}:{session['session_id']}:0"
    with pytest.warns(RuntimeWarning) as caught:
        generate_to_file(trained_run, num_units=units, num_bins=20, prompt=prompt, prompt_bins=2,
                         out=tmp_path / "long.npz")
    said = [str(w.message) for w in caught if "context" in str(w.message)]
    fed = 22 * width - 1  # every token but the last generated one is read
    assert said == [f"generation reads {fed:,} tokens of context, more than the 256 the model was trained on "
                    f"(data.seq_len): bins past that are sampled at positions it never saw; --bins "
                    f"{257 // width - 2} or fewer stay within it"]
    assert np.load(tmp_path / "long.npz")["counts"].shape == (units, 20)  # warned, not refused
    within = 257 // width - 2  # (2 + within) * width - 1 <= 256 < (3 + within) * width - 1
    assert (2 + within) * width - 1 <= 256 < (3 + within) * width - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all within the trained context
        generate_to_file(trained_run, num_units=units, num_bins=within, prompt=prompt, prompt_bins=2,
                         out=tmp_path / "within.npz")
    fit = 8193 // width  # bins, prompt and generated, within max_seq_len 8192
    with pytest.raises(ValueError, match=rf"shorter prompt: at most {fit - 3} prompt bin\(s\) fit before 3 generated"):
        generate_to_file(trained_run, num_units=units, num_bins=3, prompt=prompt, prompt_bins=fit,
                         out=tmp_path / "p.npz")
    with pytest.raises(ValueError, match=rf"generate with fewer bins \(at most {fit - 3}\), or a shorter prompt "
                                         rf"\(at most 2 prompt bin\(s\) before {fit - 2} bins\)$"):
        generate_to_file(trained_run, num_units=units, num_bins=fit - 2, prompt=prompt, prompt_bins=3,
                         out=tmp_path / "p.npz")
    assert not (tmp_path / "p.npz").exists()


def test_generate_checks_both_outputs_before_writing_either(trained_run, tmp_path, capsys, monkeypatch):
    """With gen.png a folder, generate sampled, replaced gen.npz and only then failed on the .png;
    an --out below a file was found after sampling."""
    from spikefm.families.ar import model as ar_model

    sampled = []
    real = ar_model.generate
    monkeypatch.setattr(ar_model, "generate", lambda *a, **k: sampled.append(1) or real(*a, **k))
    (tmp_path / "gen.npz").write_bytes(b"an earlier result")
    (tmp_path / "gen.png").mkdir()
    (tmp_path / "e1.json").write_text("{}")
    for out, line in ((tmp_path / "gen.npz", f"{tmp_path / 'gen.png'} is a folder, not a file; give the path of a "
                                             "file to write (a new name, or a file to replace)"),
                      (tmp_path / "e1.json" / "x.npz", f"cannot write {tmp_path / 'e1.json' / 'x.npz'}: "
                                                       f"{tmp_path / 'e1.json'} is a file, not a folder; choose "
                                                       "another path")):
        capsys.readouterr()
        assert cli_main(["generate", str(trained_run), "--units", "3", "--bins", "2", "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"spikefm: error: {line}"]
    assert not sampled
    assert (tmp_path / "gen.npz").read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1.json", "gen.npz", "gen.png"]
    # the same command again is a rerun, whatever the case of --out's suffix (G.NPZ was refused:
    # the check looked for G.npz beside G.png)
    for _ in range(2):
        assert cli_main(["generate", str(trained_run), "--units", "3", "--bins", "2", "--out",
                         str(tmp_path / "G.NPZ")]) == 0
    assert (tmp_path / "G.NPZ").is_file() and (tmp_path / "G.png").is_file()


def _run_trained_elsewhere(trained_run, where):
    """A copy of ``trained_run`` whose config.json records its corpus as typed in the folder
    training ran in (``--data corpus``): relative, beside the absolute path in family_info."""
    import shutil

    run = where / "run2"
    shutil.copytree(trained_run, run)
    info = json.loads((run / "config.json").read_text())
    info["config"]["data"]["corpus"] = "corpus"
    (run / "config.json").write_text(json.dumps(info))
    return run


def test_compare_run_and_generate_find_a_relative_training_corpus_from_any_folder(trained_run, synth_corpus,
                                                                                   tmp_path, monkeypatch, capsys):
    """From another working directory, --compare-run failed 'corpus: no such file or folder' and
    generate's .npz got no bin_ms, though the run records its corpus's absolute path; with
    --split train both blocks of the comparison said 'training rows' and named no run."""
    run2 = _run_trained_elsewhere(trained_run, tmp_path / "elsewhere")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # no ./corpus here
    out = tmp_path / "cmp.json"
    capsys.readouterr()
    assert cli_main(["eval", str(trained_run), "--data", str(synth_corpus), "--compare-run", str(run2),
                     "--split", "train", "--max-tokens", "200", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["compare"]["corpus"] == str(synth_corpus.resolve()) == res["corpus"]
    assert res["compare"]["run_dir"] == str(run2.resolve())
    labels = {line.split("  ")[0] for line in printed.splitlines() if line.startswith("training rows")}
    assert labels == {f"training rows of {synth_corpus.name} (run)", f"training rows of {synth_corpus.name} (run2)"}
    assert cli_main(["generate", str(run2), "--units", "3", "--bins", "2", "--out", "g.npz", "--quiet"]) == 0
    assert int(np.load(work / "g.npz")["bin_ms"]) == Corpus(synth_corpus).manifest["bin_ms"]


def test_compare_run_of_another_family_or_with_damaged_weights_is_refused_before_scoring(
        trained_run, synth_corpus, tmp_path, monkeypatch, capsys):
    """An NDT --compare-run failed on its corpus path; a bad --data or --compare-data, an --out that
    is a folder or below a file, or a second run that cannot be loaded was found after scoring."""
    from spikefm.families.ar import evaluate as ev

    scored = []
    for name in ("evaluate_model", "fit_ngram"):
        real = getattr(ev, name)
        monkeypatch.setattr(ev, name, lambda *a, _real=real, _name=name, **k: scored.append(_name) or _real(*a, **k))
    ndt = tmp_path / "ndt_run"
    ndt.mkdir()
    (ndt / "config.json").write_text(json.dumps({"family": "ndt", "config": {"data": {"corpus": "corpus"}}}))
    broken = _run_trained_elsewhere(trained_run, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a torn header
    (tmp_path / "res_dir.json").mkdir()
    (tmp_path / "e1.json").write_text("{}")
    base = ["eval", str(trained_run), "--ngram", "1", "--max-tokens", "200"]
    cases = [
        (["--data", str(synth_corpus), "--compare-run", str(ndt)],
         f"--compare-run {ndt} is an ndt run, not an autoregressive (ar) run; compare two ar runs (spikefm train "
         "--model ar)"),
        (["--data", str(synth_corpus), "--compare-run", str(ndt), "--compare-data", str(synth_corpus)],
         f"--compare-run {ndt} is an ndt run"),
        (["--data", str(tmp_path / "nope"), "--compare-run", str(trained_run)], f"{tmp_path / 'nope'}: no such file"),
        (["--data", str(synth_corpus), "--compare-run", str(trained_run), "--compare-data", str(tmp_path / "nope")],
         f"--compare-data {tmp_path / 'nope'}: no such file"),
        (["--data", str(synth_corpus), "--compare-run", str(broken)],
         f"{(broken / 'model.safetensors').resolve()} is not a valid safetensors file"),
        (["--data", str(synth_corpus), "--out", str(tmp_path / "res_dir.json")],
         f"{tmp_path / 'res_dir.json'} is a folder, not a file"),
        (["--data", str(synth_corpus), "--out", str(tmp_path / "e1.json" / "x.json")],
         f"cannot write {tmp_path / 'e1.json' / 'x.json'}: {tmp_path / 'e1.json'} is a file, not a folder"),
    ]
    for extra, start in cases:
        capsys.readouterr()
        assert cli_main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"spikefm: error: {start}"), (extra, err)
        assert scored == [], extra
    # ngram: an --out that cannot be written is refused before the fit
    for out in (tmp_path / "res_dir.json", tmp_path / "e1.json" / "x.json"):
        assert cli_main(["ngram", "--data", str(synth_corpus), "--order", "1", "--out", str(out), "--quiet"]) == 2
    assert scored == [] and (tmp_path / "e1.json").read_text() == "{}"


def test_generate_to_file_keeps_the_notebook_backend(trained_run, synth_corpus, tmp_path):
    """generate_to_file switched matplotlib's global backend to Agg (a notebook's 'svg' was lost)."""
    import matplotlib

    from spikefm.families.ar.generation import generate_to_file

    session = Corpus(synth_corpus).sessions[0]
    before = matplotlib.get_backend()
    try:
        matplotlib.use("svg")
        paths = generate_to_file(trained_run, num_units=session["num_units"], num_bins=3,
                                 prompt=f"{synth_corpus}:{session['session_id']}:10", prompt_bins=2,
                                 out=tmp_path / "nb.npz")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert [p.name for p in paths] == ["nb.npz", "nb.png"]
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].stat().st_size > 1000


def test_bad_train_config_gives_one_line_errors(synth_corpus, tmp_path, capsys):
    cases = [(["--preset", "huge"], "valid"), (["--set", "optim.lrr=1"], "valid keys"),
             (["--set", "train.steps=abc"], "int"), (["--model", "gpt"], "registered")]
    for extra, needle in cases:
        rc = cli_main(["train", "--data", str(synth_corpus), "--out", str(tmp_path / "r"),
                       *extra, "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    rc = cli_main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--quiet"])
    assert rc == 2 and "not a spikefm corpus" in capsys.readouterr().err


def test_hf_export_of_a_run_loads_in_transformers(trained_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from spikefm.families.ar.hf import save_hf

    model = load_model(trained_run)
    save_hf(model, tmp_path / "hf")
    modes = {(tmp_path / "hf" / n).stat().st_mode & 0o777 for n in ("config.json", "model.safetensors")}
    assert len(modes) == 1  # the weights are not 0600 beside a 0644 config.json
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)
    assert isinstance(load_model(tmp_path / "hf"), type(model))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Interleaved:
    """Micro-batch 2k is loaders[0]'s k-th batch, 2k + 1 is loaders[1]'s (resumable)."""

    def __init__(self, loaders):
        self.loaders, self.i = loaders, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.loaders[self.i % len(self.loaders)])
        self.i += 1
        return batch

    def state_dict(self):
        return {"i": self.i, "loaders": [ld.state_dict() for ld in self.loaders]}

    def load_state_dict(self, state):
        self.i = state["i"]
        for ld, st in zip(self.loaders, state["loaders"]):
            ld.load_state_dict(st)


def _two_rank_data_family():
    """The AR family, but its one-process loader yields the batches that ranks 0 and 1 of a
    two-process run read, one per micro-step: with grad_accum=2 one process then computes the
    same mean loss and gradient per optimizer step as the two-process run (the AR loader shards
    row groups by rank, so a plain one-process run reads other data)."""
    import dataclasses

    from spikefm.families.ar.family import ARFamily

    class TwoRankData(ARFamily):
        def train_loader(self, cfg, rank, world_size):
            assert (rank, world_size) == (0, 1)
            per_rank = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_accum=1))
            return _Interleaved([ARFamily.train_loader(self, per_rank, r, 2) for r in (0, 1)])

    return TwoRankData()


def _metric(run, key):
    return [json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)]


@pytest.mark.distributed
def test_torchrun_two_process_fsdp_ar_run_equals_one_process(synth_corpus, tmp_path):
    from spikefm.families import run_config
    from spikefm.families import train as fam_train
    from spikefm.train.loop import train as loop_train

    sets = ["train.batch_size=4", "data.seq_len=64", "optim.warmup_steps=1", "train.ckpt_every=2",
            "train.precision=fp32", "train.log_every=1", "train.device=cpu"]
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "spikefm.cli", "train", "--model", "ar", "--preset", "tiny",
           "--data", str(synth_corpus), "--out", str(out), "--steps", "4", "--quiet",
           *[a for x in sets for a in ("--set", x)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0 and "gloo" in proc.stderr.lower() and "address" in proc.stderr.lower():
        pytest.skip(f"gloo could not bind: {proc.stderr[-300:]}")
    assert proc.returncode == 0, torchrun_failure_report(proc)
    info = json.loads((out / "config.json").read_text())
    assert info["world_size"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]

    # the same run in one process: same global batches (2 micro-steps = the 2 ranks' batches)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = run_config("ar", preset="tiny", corpus=str(synth_corpus),
                         overrides=[*sets, "train.steps=4", "train.grad_accum=2"])
        loop_train(cfg, tmp_path / "one", _two_rank_data_family(), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert _metric(out, "step") == _metric(tmp_path / "one", "step") == [1, 2, 3, 4]
    np.testing.assert_allclose(_metric(out, "loss"), _metric(tmp_path / "one", "loss"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_metric(out, "grad_norm"), _metric(tmp_path / "one", "grad_norm"), rtol=1e-4)
    assert _metric(out, "tokens") == _metric(tmp_path / "one", "tokens") == [4 * 64 * s for s in (1, 2, 3, 4)]
    sharded, single = load_model(out).state_dict(), load_model(tmp_path / "one").state_dict()
    assert sharded.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(sharded[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    # and it is not the plain one-process run (which reads other data): the comparison has teeth
    plain = run_config("ar", preset="tiny", corpus=str(synth_corpus), overrides=[*sets, "train.steps=1"])
    torch.set_num_threads(1)
    try:
        fam_train(plain, tmp_path / "plain", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert abs(_metric(tmp_path / "plain", "loss")[0] - _metric(out, "loss")[0]) > 1e-4


def test_ar_run_stopped_and_resumed_equals_uninterrupted(synth_corpus, tmp_path):
    from spikefm.families import train
    from spikefm.families.ar.family import ARDataConfig
    from spikefm.families.ar.model import llama_preset
    from spikefm.train.config import OptimConfig, RunConfig, TrainConfig

    cfg = RunConfig(family="ar", model=llama_preset("tiny"),
                    data=ARDataConfig(corpus=str(synth_corpus), seq_len=64),
                    optim=OptimConfig(lr=3e-3, warmup_steps=2),
                    train=TrainConfig(steps=8, batch_size=4, log_every=1, ckpt_every=4,
                                      precision="fp32", device="cpu"))

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(x)]

    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=4)
    train(cfg, tmp_path / "split", progress=False, resume=True)
    assert losses(tmp_path / "split") == losses(tmp_path / "full")
    assert len(losses(tmp_path / "full")) == 8


def test_the_bin_width_check_holds_for_a_run_shared_without_its_corpus_and_its_hf_export(
        trained_run, synth_corpus, tmp_path, capsys):
    """The width was read from the training corpus, so a run shared without it (or whose corpus
    was rebuilt) scored a 40 ms corpus without a word, and so did its Hugging Face export."""
    import json
    import shutil

    from spikefm.families.ar.hf import TRAIN_BIN_MS_KEY, save_hf
    from spikefm.families import load_model

    assert json.loads((trained_run / "config.json").read_text())["family_info"]["bin_ms"] == 20
    nwb = Path(Corpus(synth_corpus).sessions[0]["provenance"]["path"]).parents[1]
    build_corpus([str(nwb)], tmp_path / "c40", BuildConfig(bin_ms=40, test_fraction=0.2), progress=False)
    shared = tmp_path / "shared"
    shutil.copytree(trained_run, shared)
    info = json.loads((shared / "config.json").read_text())
    info["config"]["data"]["corpus"] = str(tmp_path / "gone")  # its corpus is not there
    info["family_info"]["corpus"] = str(tmp_path / "gone")
    (shared / "config.json").write_text(json.dumps(info))
    hf = tmp_path / "hf"
    save_hf(load_model(str(shared)), hf)
    assert json.loads((hf / "config.json").read_text())[TRAIN_BIN_MS_KEY] == 20
    for run, where in ((shared, str(tmp_path / "gone")), (hf, "as its config.json records")):
        assert cli_main(["eval", str(run), "--data", str(tmp_path / "c40"), "--max-tokens", "2000"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"spikefm: error: {run} was trained on 20 ms bins ({where}), {tmp_path / 'c40'} is binned at "
                       "40 ms: its counts per bin are not what the model read; score it on a corpus built with "
                       "--bin-ms 20"]


def test_save_hf_refuses_a_run_or_corpus_folder(trained_run, synth_corpus, tmp_path):
    """save_hf(model, RUN) replaced the run's own config.json (it could no longer be resumed), and
    wrote a model into a corpus folder."""
    from spikefm.families import load_model
    from spikefm.families.ar.hf import save_hf

    model = load_model(str(trained_run))
    before = (trained_run / "config.json").read_bytes()
    with pytest.raises(ValueError, match=rf"^{trained_run} is a spikefm run \(its config.json describes the run\)"):
        save_hf(model, trained_run)
    assert (trained_run / "config.json").read_bytes() == before
    with pytest.raises(ValueError, match=r"is a spikefm corpus \(manifest.json\)"):
        save_hf(model, synth_corpus)
    assert not (synth_corpus / "config.json").exists()
    out = save_hf(model, tmp_path / "hf")
    assert save_hf(model, out) == out  # an export folder again: replaced, as before


def test_the_ngram_fits_expected_tokens_are_the_train_rows_tokens(synth_corpus, tmp_path):
    from spikefm.corpus.reader import Corpus
    from spikefm.families.ar.evaluate import _split_tokens
    from spikefm.families.ar.tokens import tokenize

    build_corpus([str(synth_corpus.parent / "nwb")], tmp_path / "sessions",
                 BuildConfig(test_fraction=0.3, max_row_tokens=10_000), progress=False)
    corpus = Corpus(tmp_path / "sessions")
    for split in ("train", "test"):
        assert _split_tokens(corpus, split) == sum(tokenize(r.spike_counts).size for r in corpus.iter_rows(split))
    # split by rows (the fixture's corpus): a session's share of each split is not in the manifest
    assert _split_tokens(Corpus(synth_corpus), "train") is None


def test_eval_and_ngram_out_replace_only_their_own_earlier_results(trained_run, synth_corpus, tmp_path, capsys):
    """--out replaced any .json: a notes file, or another command's results (eval over ngram's),
    and only after the whole evaluation. Refused before any work now; an earlier result of the
    same command is replaced, as a rerun expects."""
    notes = tmp_path / "notes.json"
    notes.write_text("my notes\n")
    eval_cmd = ["eval", str(trained_run), "--data", str(synth_corpus), "--max-tokens", "300", "--quiet"]
    ngram_cmd = ["ngram", "--data", str(synth_corpus), "--order", "1", "--max-tokens", "300", "--quiet"]
    for cmd in (eval_cmd, ngram_cmd):
        assert cli_main(cmd + ["--out", str(notes)]) == 2
        err = capsys.readouterr()
        assert err.out == "" and notes.read_text() == "my notes\n"  # refused before the work
        assert f"--out {notes}: exists and is not the results of an earlier spikefm" in err.err
    ev, ng = tmp_path / "ev.json", tmp_path / "ng.json"
    assert cli_main(eval_cmd + ["--out", str(ev)]) == 0 and cli_main(ngram_cmd + ["--out", str(ng)]) == 0
    assert cli_main(eval_cmd + ["--out", str(ev)]) == 0 and cli_main(ngram_cmd + ["--out", str(ng)]) == 0  # reruns
    before = (ev.read_bytes(), ng.read_bytes())
    assert cli_main(eval_cmd + ["--out", str(ng)]) == 2 and cli_main(ngram_cmd + ["--out", str(ev)]) == 2
    assert (ev.read_bytes(), ng.read_bytes()) == before
    err = capsys.readouterr().err
    assert "not the results of an earlier spikefm eval" in err and "not the results of an earlier spikefm ngram" in err
    # a copy of a run's config.json (it names the family too) is no result either
    saved = tmp_path / "saved_config.json"
    saved.write_bytes((trained_run / "config.json").read_bytes())
    assert cli_main(eval_cmd + ["--out", str(saved)]) == 2
    assert saved.read_bytes() == (trained_run / "config.json").read_bytes()
