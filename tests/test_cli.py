"""Every ``spikefm`` command run from its command line, on tiny synthetic data.

In process (``spikefm.cli.main([...])``): what each command writes and prints is checked against
an independent expectation (a hand computation, or the Python API called with the same inputs).
As real subprocesses (``python -m spikefm.cli ...``): exit codes, and that a bad input gives
exactly one ``spikefm: error: ...`` line on stderr and no traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spikefm import Corpus, families, load_model  # noqa: E402
from spikefm.cli import main  # noqa: E402
from spikefm.families.ar.tokens import tokenize  # noqa: E402
from spikefm.fileio import folder_lock  # noqa: E402
from test_train_stack import one_torch_thread, same_weights  # noqa: E402,F401  (autouse: one thread)

AR_SETS = ["data.seq_len=64", "train.batch_size=4", "train.ckpt_every=3", "train.log_every=1",
           "train.precision=fp32", "optim.warmup_steps=1", "train.device=cpu"]
AR_STEPS = 6


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def ar_train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "ar", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
            "--steps", str(AR_STEPS), *sets(AR_SETS), "--quiet", *extra]


def rows_of(run: Path, key: str) -> list:
    return [json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """`spikefm synth` (3 sessions) then `spikefm corpus build` (1 train, 2 test sessions)."""
    root = tmp_path_factory.mktemp("cli")
    torch.set_num_threads(1)
    assert main(["synth", str(root / "nwb"), "--sessions", "3", "--seed", "3", "--duration-s", "30",
                 "--units", "20,24", "--quiet"]) == 0
    assert main(["corpus", "build", str(root / "nwb"), "--out", str(root / "corpus"),
                 "--test-fraction", "0.34", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def ar_run(data):
    torch.set_num_threads(1)
    out = data / "run"
    assert main(ar_train_args(data / "corpus", out)) == 0
    return out


# ------------------------------------------------------------------------------------ in process


def test_synth_writes_what_the_python_api_writes(data, tmp_path, capsys):
    import h5py

    from spikefm.corpus.synth import synthesize

    assert main(["synth", str(tmp_path / "cli"), "--sessions", "2", "--seed", "5", "--duration-s", "12",
                 "--units", "20,22", "--preset", "motor", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    paths = synthesize(tmp_path / "api", num_sessions=2, seed=5, preset="motor", duration_s=12.0,
                       units_range=(20, 22), progress=False)
    assert out[0] == f"wrote 2 NWB files (+ .truth.npz ground truth) under {tmp_path / 'cli'}"
    assert [line.strip() for line in out[1:]] == [str(p).replace("/api/", "/cli/") for p in paths]
    for p in paths:
        cli = Path(str(p).replace("/api/", "/cli/"))
        with h5py.File(p, "r") as a, h5py.File(cli, "r") as b:
            np.testing.assert_array_equal(a["units/spike_times"][:], b["units/spike_times"][:])
            np.testing.assert_array_equal(a["units/spike_times_index"][:], b["units/spike_times_index"][:])
        ta, tb = np.load(p.with_suffix(".truth.npz")), np.load(cli.with_suffix(".truth.npz"))
        assert ta.files == tb.files and all(np.array_equal(ta[k], tb[k]) for k in ta.files)


def test_synth_region_tuning_and_choice_signal_flags_reach_the_generator(tmp_path, capsys):
    from spikefm.corpus.synth import load_truth, synthesize

    assert main(["synth", str(tmp_path / "cli"), "--sessions", "1", "--seed", "3", "--duration-s", "12",
                 "--units", "20,22", "--region-tuning", "1", "--choice-signal", "0.5", "--quiet"]) == 0
    (p,) = synthesize(tmp_path / "api", num_sessions=1, seed=3, duration_s=12.0, units_range=(20, 22),
                      region_tuning=1.0, choice_signal=0.5)
    (plain,) = synthesize(tmp_path / "plain", num_sessions=1, seed=3, duration_s=12.0, units_range=(20, 22))
    cli, api, base = (load_truth(x) for x in (Path(str(p).replace("/api/", "/cli/")), p, plain))
    assert all(np.array_equal(cli[k], api[k]) for k in api) and "region_mean_loadings" in cli
    c = list(base["latent_names"]).index("choice")
    np.testing.assert_allclose(cli["latents"][:, c], 0.5 * base["latents"][:, c])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "bad"), "--choice-signal", "-1"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--choice-signal" in err and "expected a number >= 0, got '-1'" in err
    assert not (tmp_path / "bad").exists()
    # another preset has no choice latent: the flag changed nothing but was recorded as if it had
    for preset in ("motor", "spontaneous"):
        assert main(["synth", str(tmp_path / "bad"), "--preset", preset, "--choice-signal", "0.5", "--quiet"]) != 0
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (f"spikefm: error: --choice-signal applies to --preset ibl only (its choice latent); the "
                       f"'{preset}' preset has no choice, got --choice-signal 0.5: drop the flag or use --preset ibl")
        assert not (tmp_path / "bad").exists()
    # from Python (a benchmark passing its default to every preset): a warning, and the output unchanged
    from spikefm.corpus.synth import synthesize

    kw = dict(num_sessions=1, duration_s=20.0, preset="motor", units_range=(20, 22))
    with pytest.warns(RuntimeWarning, match=r"choice_signal=0.5 has no effect on the 'motor' preset"):
        (half,) = synthesize(tmp_path / "m_half", choice_signal=0.5, **kw)
    (plain,) = synthesize(tmp_path / "m_plain", **kw)
    a, b = load_truth(half), load_truth(plain)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_corpus_info_numbers_are_the_corpus_numbers(data, capsys):
    from spikefm.corpus.info import corpus_info, format_info

    corpus = Corpus(data / "corpus")
    assert main(["corpus", "info", str(data / "corpus"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == json.loads(json.dumps(corpus_info(corpus)))
    counts = [r.spike_counts for split in ("train", "test") for r in corpus.iter_rows(split, with_extras=False)]
    assert info["num_sessions"] == 3 and info["splits"]["train"]["sessions"] == 1
    assert info["splits"]["test"]["sessions"] == 2
    assert info["units"]["total"] == sum(s["num_units"] for s in corpus.sessions)
    cells = sum(c.size for c in counts)
    zeros = sum(int((c == 0).sum()) for c in counts)
    assert info["count_stats"]["fraction_zero"] == pytest.approx(zeros / cells, rel=1e-12)
    assert info["count_stats"]["mean_count"] == pytest.approx(
        sum(int(c.sum(dtype=np.int64)) for c in counts) / cells, rel=1e-12)
    assert main(["corpus", "info", str(data / "corpus")]) == 0
    assert capsys.readouterr().out.strip() == format_info(corpus_info(corpus)).strip()


def test_corpus_plot_writes_the_figures(data, tmp_path, capsys):
    from spikefm.corpus.plots import plot_corpus

    assert main(["corpus", "plot", str(data / "corpus"), "--out", str(tmp_path / "figs")]) == 0
    printed = [Path(p) for p in capsys.readouterr().out.split()]
    api = plot_corpus(Corpus(data / "corpus"), tmp_path / "api")
    assert sorted(p.name for p in printed) == sorted(Path(p).name for p in api)
    assert {"units_per_session.png", "session_length.png", "token_marginals.png"} <= {p.name for p in printed}
    for p in printed:
        assert p.parent == tmp_path / "figs" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corpus_import_of_a_local_published_folder(tmp_path, capsys):
    from test_import import published_rows, write_pyarrow

    from spikefm.corpus.importer import import_neural_pile

    rows = published_rows(seed=4)
    folder = tmp_path / "pub"
    write_pyarrow(rows[:-3], folder / "data" / "train-00000-of-00001.parquet")
    write_pyarrow(rows[-3:], folder / "data" / "test-00000-of-00001.parquet")
    assert main(["corpus", "import", str(folder), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    sessions = {(r["source_dataset"], r["session_id"]) for r in rows}
    tokens = {"train": sum(r["spike_counts"].size for r in rows[:-3]),
              "test": sum(r["spike_counts"].size for r in rows[-3:])}
    corpus = Corpus(tmp_path / "cli")
    m = corpus.manifest
    assert m["num_sessions"] == len(sessions)
    assert line == (f"imported {len(sessions)} sessions into {tmp_path / 'cli'}: " + ", ".join(
        f"{k} {v['num_tokens']:,} tokens" for k, v in m["splits"].items()))
    assert {k: v["num_tokens"] for k, v in m["splits"].items()} == tokens  # units x bins per row
    import_neural_pile(str(folder), tmp_path / "api", progress=False)
    api = Corpus(tmp_path / "api")
    for split in ("train", "test"):
        a = sorted((r.session_id, r.t_start_ms, r.spike_counts.tobytes()) for r in api.iter_rows(split))
        b = sorted((r.session_id, r.t_start_ms, r.spike_counts.tobytes()) for r in corpus.iter_rows(split))
        assert a == b and len(a) > 0


def test_ngram_equals_a_hand_computed_unigram(data, tmp_path, capsys):
    from spikefm.families.ar.evaluate import evaluate_oracle

    alpha = 0.5
    out = tmp_path / "ngram.json"
    assert main(["ngram", "--data", str(data / "corpus"), "--order", "1", "--alpha", str(alpha),
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    corpus = Corpus(data / "corpus")
    train = np.concatenate([tokenize(r.spike_counts) for r in corpus.iter_rows("train")])
    freq = np.bincount(train, minlength=256)
    logp = np.log((freq + alpha) / (train.size + alpha * 256))
    scored = np.concatenate([tokenize(r.spike_counts)[1:] for r in corpus.iter_rows("test")])
    bits = -logp[scored].sum() / scored.size / math.log(2)
    got = res["results"]["1-gram"]["overall"]["all"]
    assert got["num_tokens"] == scored.size and got["bits"] == pytest.approx(bits, rel=1e-12)
    sep = scored == 255
    assert res["results"]["1-gram"]["overall"]["separators"]["bits"] == pytest.approx(
        -logp[255] / math.log(2), rel=1e-12)
    assert res["results"]["1-gram"]["overall"]["counts"]["num_tokens"] == int((~sep).sum())
    assert res["results"]["oracle"] == json.loads(json.dumps(evaluate_oracle(corpus, split="test")))
    assert f"{bits:.4f}" in printed and res["order"] == 1 and res["alpha"] == alpha


def test_train_prints_and_writes_the_run(ar_run, capsys):
    rows = rows_of(ar_run, "loss")
    assert rows_of(ar_run, "step") == list(range(1, AR_STEPS + 1))
    assert rows_of(ar_run, "tokens")[-1] == AR_STEPS * 4 * 64
    info = json.loads((ar_run / "config.json").read_text())
    assert info["family"] == "ar" and info["config"]["train"]["steps"] == AR_STEPS
    assert (ar_run / "model.safetensors").is_file() and len(rows) == AR_STEPS


def test_train_resume_continues_exactly_and_refuses_to_overwrite(data, ar_run, tmp_path, capsys):
    cfg = families.run_config("ar", preset="tiny", corpus=str(data / "corpus"),
                              overrides=[*AR_SETS, f"train.steps={AR_STEPS}"])
    families.train(cfg, tmp_path / "cut", progress=False, stop_after=4)  # checkpoints 3 and 4
    capsys.readouterr()
    assert main(ar_train_args(data / "corpus", tmp_path / "cut", "--resume")) == 0
    out = capsys.readouterr().out.strip()
    assert rows_of(tmp_path / "cut", "loss") == rows_of(ar_run, "loss")  # bit-identical
    assert same_weights(ar_run, tmp_path / "cut")
    assert out.startswith(f"trained {AR_STEPS} steps ({AR_STEPS * 4 * 64:,} tokens, ")
    assert out.endswith(f"last loss {rows_of(ar_run, 'loss')[-1]:.4f}; run in {tmp_path / 'cut'}")

    # resuming the finished run: says so, changes nothing, exit 0
    before = {p: p.read_bytes() for p in (tmp_path / "cut").rglob("*") if p.is_file() and p.name != ".spikefm.lock"}
    assert main(ar_train_args(data / "corpus", tmp_path / "cut", "--resume")) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"spikefm: {tmp_path / 'cut'} is already finished (step {AR_STEPS} of {AR_STEPS}, "
        "model.safetensors exported); nothing to do"]
    # a new run into it is refused
    assert main(ar_train_args(data / "corpus", tmp_path / "cut")) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "already holds a finished run (model.safetensors)" in err[0]
    after = {p: p.read_bytes() for p in (tmp_path / "cut").rglob("*") if p.is_file() and p.name != ".spikefm.lock"}
    assert after == before

    # killed after the last checkpoint, before the export: the resume only exports (exit 0; the
    # summary line formatted a missing loss and failed with exit 2)
    import shutil
    shutil.copytree(tmp_path / "cut", tmp_path / "noexport")
    (tmp_path / "noexport" / "model.safetensors").unlink()
    assert main(ar_train_args(data / "corpus", tmp_path / "noexport", "--resume")) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith(f"no step was left to run (exported the last checkpoint); run in {tmp_path / 'noexport'}")
    assert out.startswith(f"trained {AR_STEPS} steps") and same_weights(ar_run, tmp_path / "noexport")

    # a damaged newest checkpoint: one warning line, the older one is used, the result is exact
    families.train(cfg, tmp_path / "dmg", progress=False, stop_after=5)
    model_pt = tmp_path / "dmg" / "checkpoints" / "step_00000005" / "model.pt"
    model_pt.write_bytes(model_pt.read_bytes()[:1000])
    capsys.readouterr()
    assert main(ar_train_args(data / "corpus", tmp_path / "dmg", "--resume")) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("spikefm: warning: checkpoint step_00000005 is damaged "
                                              "(model.pt has 1000 bytes, the manifest says ")
    assert err[0].endswith("resuming from step_00000003")
    assert rows_of(tmp_path / "dmg", "loss") == rows_of(ar_run, "loss")

    # --resume into a folder with no checkpoint (a requeued job's first start, or a mistyped
    # --out): trains from step 0, exactly the plain run, and says so in one warning line
    capsys.readouterr()
    assert main(ar_train_args(data / "corpus", tmp_path / "typo", "--resume")) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"spikefm: warning: --resume: {tmp_path / 'typo'} holds no checkpoint to continue, so training "
                   "starts at step 0 (if you meant to continue another run, check --out)"]
    assert rows_of(tmp_path / "typo", "loss") == rows_of(ar_run, "loss")
    assert same_weights(ar_run, tmp_path / "dmg")


def test_a_bare_resume_continues_with_the_runs_own_settings(data, ar_run, tmp_path, capsys):
    """``spikefm train --data C --out RUN --resume`` without the original flags: the run's recorded
    settings, not the family's defaults (which changed train.steps and the lr schedule, and trained
    to the default step count), so the result is the uninterrupted run's."""
    cfg = families.run_config("ar", preset="tiny", corpus=str(data / "corpus"),
                              overrides=[*AR_SETS, f"train.steps={AR_STEPS}"])
    families.train(cfg, tmp_path / "cut", progress=False, stop_after=4)
    capsys.readouterr()
    assert main(["train", "--data", str(data / "corpus"), "--out", str(tmp_path / "cut"), "--resume", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "changed settings" not in captured.err, captured.err
    assert rows_of(tmp_path / "cut", "loss") == rows_of(ar_run, "loss") and same_weights(ar_run, tmp_path / "cut")
    # a flag given with the bare resume changes that setting (and the loop names it)
    families.train(cfg, tmp_path / "cut2", progress=False, stop_after=4)
    capsys.readouterr()
    assert main(["train", "--data", str(data / "corpus"), "--out", str(tmp_path / "cut2"), "--resume",
                 "--steps", str(AR_STEPS + 2), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "with changed settings: train.steps" in err and len(rows_of(tmp_path / "cut2", "loss")) == AR_STEPS + 2


def test_a_resume_naming_the_corpus_another_way_continues(data, ar_run, tmp_path, monkeypatch, capsys):
    """--data ./corpus (or corpus/, or its full path) for a run started with --data corpus was
    refused: "'data' differs from the checkpoint's config", naming neither the key nor the values."""
    cfg = families.run_config("ar", preset="tiny", corpus="corpus", overrides=[*AR_SETS, f"train.steps={AR_STEPS}"])
    monkeypatch.chdir(data)
    families.train(cfg, tmp_path / "cut", progress=False, stop_after=4)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "--data", str(data / "corpus") + "/", "--out", str(tmp_path / "cut"), "--resume",
                 "--quiet"]) == 0
    assert "changed settings" not in capsys.readouterr().err
    assert rows_of(tmp_path / "cut", "loss") == rows_of(ar_run, "loss") and same_weights(ar_run, tmp_path / "cut")
    # another corpus is still another corpus, and the refusal names the setting and both values
    from spikefm.train.config import apply_overrides

    other = apply_overrides(cfg, ["data.seq_len=32", f"data.corpus={data / 'corpus'}"])
    with pytest.raises(ValueError, match=r"'data' differs from the checkpoint's config \(seq_len: 64 in the run, "
                                         r"32 now\); resume with the same"):
        families.train(other, tmp_path / "cut", resume=True, progress=False)


def test_a_resume_into_a_folder_another_training_holds_is_refused_without_the_step_0_warning(data, tmp_path,
                                                                                               capsys):
    """It first warned '--resume: RUN holds no checkpoint to continue, so training starts at step 0',
    then was refused because the folder was in use."""
    from spikefm.fileio import folder_lock

    run = tmp_path / "run"
    run.mkdir()
    capsys.readouterr()
    with folder_lock(run, "training run", command="spikefm train (the other one)"):
        assert main(ar_train_args(data / "corpus", run, "--resume")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in use by another process (PID " in err[0] and "spikefm train (the other one)" in err[0]
    assert main(ar_train_args(data / "corpus", tmp_path / "new", "--resume", "--steps", "1")) == 0
    assert "--resume: " + str(tmp_path / "new") + " holds no checkpoint to continue" in capsys.readouterr().err


def test_resume_after_the_corpus_was_rebuilt_says_so(data, tmp_path, capsys):
    """A corpus rebuilt in place between a checkpoint and the resume (other sessions in train)
    was continued silently; the resume now names the change of its manifest in one warning."""
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(data / "corpus", corpus, symlinks=True)
    cfg = families.run_config("ar", preset="tiny", corpus=str(corpus), overrides=[*AR_SETS, f"train.steps={AR_STEPS}"])
    families.train(cfg, tmp_path / "cut", progress=False, stop_after=3)
    before = json.loads((tmp_path / "cut" / "config.json").read_text())["family_info"]["corpus_manifest_sha256"]
    assert main(["corpus", "build", str(data / "nwb"), "--out", str(corpus), "--test-fraction", "0.34",
                 "--seed", "1", "--overwrite", "--quiet"]) == 0
    after = Corpus(corpus).manifest_hash
    assert after != before
    capsys.readouterr()
    assert main(ar_train_args(corpus, tmp_path / "cut", "--resume")) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"spikefm: warning: resuming from {tmp_path / 'cut' / 'checkpoints' / 'step_00000003'}: the corpus "
                   f"at {corpus.resolve()} changed since the run started (manifest sha256 {before[:12]}... -> "
                   f"{after[:12]}...; rebuilt or re-imported): training continues on its current contents"]


def test_eval_of_a_run_and_of_its_hugging_face_export_agree(data, ar_run, tmp_path, capsys):
    from spikefm.families.ar.hf import save_hf

    corpus = str(data / "corpus")
    assert main(["eval", str(ar_run), "--data", corpus, "--max-tokens", "3000", "--ngram", "1",
                 "--out", str(tmp_path / "run.json"), "--quiet"]) == 0
    table = capsys.readouterr().out
    run_res = json.loads((tmp_path / "run.json").read_text())
    api = families.evaluate(ar_run, corpus, max_tokens=3000, ngram=[1])
    assert run_res == json.loads(json.dumps(api))
    assert f"{run_res['results']['model']['overall']['all']['bits']:.4f}" in table

    save_hf(load_model(ar_run), tmp_path / "hf")
    assert main(["eval", str(tmp_path / "hf"), "--data", corpus, "--max-tokens", "3000",
                 "--seq-len", "64", "--out", str(tmp_path / "hf.json"), "--quiet"]) == 0
    hf_res = json.loads((tmp_path / "hf.json").read_text())
    assert hf_res["family"] == "ar" and hf_res["seq_len"] == 64 and set(hf_res["results"]) == {"model", "oracle"}
    assert hf_res["results"]["model"] == run_res["results"]["model"]  # same weights, same tokens
    # without --seq-len the folder is scored with the context save_hf recorded (it was 512: other
    # windows, other numbers than the run's)
    assert main(["eval", str(tmp_path / "hf"), "--data", corpus, "--max-tokens", "3000",
                 "--out", str(tmp_path / "hf2.json"), "--quiet"]) == 0
    hf2 = json.loads((tmp_path / "hf2.json").read_text())
    assert hf2["seq_len"] == run_res["seq_len"] and hf2["results"]["model"] == run_res["results"]["model"]
    # a folder from elsewhere (no recorded context) with fewer positions than 512: scored within them
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config.pop("spikefm_train_seq_len")
    config["max_position_embeddings"] = 48
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(tmp_path / "hf"), "--data", corpus, "--max-tokens", "3000",
                 "--out", str(tmp_path / "hf3.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "hf3.json").read_text())["seq_len"] == 48
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "hf"), "--data", corpus, "--seq-len", "64", "--quiet"]) == 2
    assert "--seq-len 64 exceeds" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "hf"), "--data", corpus, "--tasks", "co-smoothing"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("spikefm: error: --tasks does not apply to a 'ar' run")


@pytest.mark.filterwarnings("ignore:.*validation loss was still falling")
def test_finetune_via_the_command_line_equals_the_python_api(data, tmp_path, capsys):
    corpus = Corpus(data / "corpus")
    session = corpus.session_ids("test")[0]
    pre = tmp_path / "pre"
    assert main(["train", "--model", "ndt", "--preset", "tiny", "--data", str(data / "corpus"),
                 "--out", str(pre), "--steps", "6", *sets(["train.batch_size=4", "train.ckpt_every=6",
                 "train.precision=fp32", "train.device=cpu", "optim.warmup_steps=1"]), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["finetune", str(pre), "--data", str(data / "corpus"), "--session", session,
                 "--out", str(tmp_path / "ft"), "--steps", "6", "--eval-every", "2", "--patience", "2",
                 "--freeze-core", "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    summary = json.loads((tmp_path / "ft" / "early_stopping.json").read_text())
    api = families.finetune(pre, data / "corpus", session, tmp_path / "api", steps=6, eval_every=2,
                            patience=2, freeze_core=True)
    assert summary["history"] == api["history"] and summary["best_step"] == api["best_step"]
    assert [h["step"] for h in summary["history"]][:1] == [2]
    best = min(summary["history"], key=lambda h: h["val_loss"])
    assert summary["best_val_loss"] == best["val_loss"] and summary["best_step"] == best["step"]
    assert line.startswith(f"best val loss {summary['best_val_loss']:.4f} at step {summary['best_step']} "
                           f"(stopped at step {summary['stopped_at']}")
    assert line.endswith(f"; run in {tmp_path / 'ft'}")
    assert same_weights(tmp_path / "ft", tmp_path / "api")
    info = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert info["config"]["data"]["sessions"] == session and info["config"]["data"]["freeze_core"]


def test_real_recording_is_found_through_spikefm_real_data(tmp_path, monkeypatch):
    import conftest

    nested = tmp_path / "000207" / "sub-4" / "sub-4_ses-4_ecephys+image.nwb"
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"")
    monkeypatch.setenv("SPIKEFM_REAL_DATA", str(tmp_path))
    assert conftest.find_real_nwb()[0] == nested
    monkeypatch.setenv("SPIKEFM_REAL_DATA", str(nested))
    assert conftest.find_real_nwb()[0] == nested


# ------------------------------------------------------------------------------- as subprocesses


def spikefm(*args: str, timeout: int = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("SPIKEFM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "spikefm.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def one_error_line(proc: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].startswith("spikefm")
    return lines[0]


def test_bad_inputs_are_one_line_with_exit_codes(data, ar_run, tmp_path):
    corpus = str(data / "corpus")
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    cases = [
        (["corpus", "info", str(tmp_path / "missing")], 2, r"^spikefm: error: .*missing: no such file or folder; give a spikefm corpus folder"),
        (["eval", str(tmp_path / "missing"), "--data", corpus], 2, r"missing does not exist; expected a spikefm run directory"),
        (["train", "--data", corpus, "--out", str(tmp_path / "r"), "--set", "optim.lr=nan"], 2,
         r"invalid value for 'optim.lr': expected a finite float"),
        (["ngram", "--data", corpus, "--order", "1", "--alpha", "inf"], 2, r"argument --alpha: expected a number \(finite\)"),
        (["train", "--data", corpus, "--out", str(tmp_path / "r"), "--bogus"], 2, r"unrecognized arguments: --bogus"),
        (["train", "--data", corpus, "--out", str(blocker / "run"), "--steps", "2"], 2,
         rf"cannot create the run folder {re.escape(str(blocker / 'run'))}: {re.escape(str(blocker))} is a file"),
        (["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")], 2, r"not a spikefm corpus"),
    ]
    for args, code, pattern in cases:
        one_error_line(spikefm(*args), code, pattern)
    assert not (tmp_path / "r").exists()  # refused before anything was created
    assert blocker.read_text() == "mine"

    # wrong format: a run folder whose weights are not safetensors
    bad = tmp_path / "bad_run"
    bad.mkdir()
    (bad / "config.json").write_bytes((ar_run / "config.json").read_bytes())
    (bad / "model.safetensors").write_bytes(b"PK\x03\x04 a zip file, not safetensors" * 10)
    one_error_line(spikefm("eval", str(bad), "--data", corpus), 2, r"is not a valid safetensors file")

    # unreadable: a path the process cannot read (a folder where config.json should be, as root)
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        (bad / "model.safetensors").write_bytes((ar_run / "model.safetensors").read_bytes())
        (bad / "config.json").chmod(0)
        one_error_line(spikefm("eval", str(bad), "--data", corpus), 2, r"Permission denied|not a readable")
    else:
        (bad / "config.json").unlink()
        (bad / "config.json").mkdir()
        one_error_line(spikefm("eval", str(bad), "--data", corpus), 2, r"config.json not found")


def test_hugging_face_folder_with_an_escaping_index_is_one_line(ar_run, data, tmp_path):
    from safetensors.torch import load_file, save_file

    from spikefm.families.ar.hf import save_hf

    folder = save_hf(load_model(ar_run), tmp_path / "hf")
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    save_file(tensors, str(tmp_path / "outside.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "../outside.safetensors" for k in tensors}}))
    one_error_line(spikefm("eval", str(folder), "--data", str(data / "corpus")), 2,
                   r"'\.\./outside\.safetensors' is not a plain relative path")


def test_locked_run_folder_and_finished_run_from_the_command_line(data, ar_run, tmp_path):
    corpus = data / "corpus"
    locked = tmp_path / "locked"
    locked.mkdir()
    with folder_lock(locked, what="training run"):
        one_error_line(spikefm(*ar_train_args(corpus, locked)), 2,
                       rf"the training run is in use by another process \(PID {os.getpid()}: ")
    assert [p.name for p in locked.iterdir()] == [".spikefm.lock"]

    proc = spikefm(*ar_train_args(corpus, ar_run, "--resume"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"spikefm: {ar_run} is already finished (step {AR_STEPS} of "
                                        f"{AR_STEPS}, model.safetensors exported); nothing to do"]


def test_two_concurrent_trainings_into_one_folder(data, tmp_path):
    """The reported bug, from the command line: the second `spikefm train` must fail at once,
    naming the first's PID, and leave the folder to the first run."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "spikefm.cli", *ar_train_args(data / "corpus", run),
                              "--steps", "100000", "--set", "train.seed=11"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.05)
        second = spikefm(*ar_train_args(data / "corpus", run), "--set", "train.seed=12")
        running = first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert running
    one_error_line(second, 2, rf"the training run is in use by another process \(PID {first.pid}: ")
    info = json.loads((run / "config.json").read_text())
    assert info["seed"] == 11 and info["config"]["train"]["seed"] == 11


def test_eval_help_names_each_familys_default_tasks():
    """`spikefm eval --help` lists the tasks a plain `spikefm eval` runs (it once left one out)."""
    import re

    from spikefm.cli import build_parser
    from spikefm.families.ndt.tasks import DEFAULT_TASKS
    from spikefm.families.neds.evaluate import TASKS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    help_text = re.sub(r"-\s+", "-", " ".join(sub.choices["eval"].format_help().split()))  # undo wrapping at hyphens
    ndt = re.search(r"ndt default: ([^;]+);", help_text).group(1)
    neds = re.search(r"neds default: ([^)]+)\)", help_text).group(1)
    assert [t.strip() for t in ndt.split(",")] == list(DEFAULT_TASKS)
    assert [t.strip() for t in neds.split(",")] == list(TASKS)


def test_synth_refuses_to_overwrite_other_recordings_unless_overwrite(tmp_path, capsys):
    """`spikefm synth` over recordings of another seed replaced them silently; a rerun of the same
    command is still allowed (identical files), other settings need --overwrite."""
    args = ["synth", str(tmp_path / "nwb"), "--sessions", "1", "--duration-s", "12", "--units", "20,22", "--quiet"]
    assert main(args) == 0
    assert main(args) == 0  # the same settings: allowed (NWB files carry their creation time)
    files = sorted(p for p in (tmp_path / "nwb").rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    capsys.readouterr()
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"spikefm: error: {tmp_path / 'nwb'}: already holds 1 NWB "
                                               "recording(s) with other settings (e.g. ")
    assert err[0].endswith("nothing was changed: pass --overwrite to replace them, or give another folder")
    assert {p: p.read_bytes() for p in files} == before
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    assert {p: p.read_bytes() for p in files} != before
    # recordings that spikefm synth did not write (no record) are refused too
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "rec.nwb").write_bytes(b"mine")
    assert main(["synth", str(tmp_path / "mine"), "--sessions", "1", "--duration-s", "12", "--quiet"]) == 2
    assert "with no spikefm synth record of its settings" in capsys.readouterr().err
    assert (tmp_path / "mine" / "rec.nwb").read_bytes() == b"mine"
    # more sessions with the same settings only add recordings: allowed
    assert main([*args[:3], "2", *args[4:], "--seed", "1"]) == 0
    assert len(list((tmp_path / "nwb").rglob("*.nwb"))) == 2
    # a value only the generator refuses: the record goes back to what it was; a folder made for
    # it (parents included) is removed again
    record = (tmp_path / "nwb" / ".spikefm-synth.json").read_bytes()
    for p in (tmp_path / "nwb").rglob("*.nwb"):
        p.unlink()  # no recordings left: the settings check lets the command through
    capsys.readouterr()
    assert main([*args, "--units", "5,6"]) == 2
    assert "units_range" in capsys.readouterr().err
    assert (tmp_path / "nwb" / ".spikefm-synth.json").read_bytes() == record
    assert main(["synth", str(tmp_path / "a" / "b" / "c"), "--units", "5,6", "--quiet"]) == 2
    assert not (tmp_path / "a").exists()
    assert main([*args[:3], "2", *args[4:], "--seed", "1"]) == 0
    # growing past the file names' digits (ses-000..ses-999, then ses-0000..) needs --overwrite
    rec = json.loads((tmp_path / "nwb" / ".spikefm-synth.json").read_text())
    from spikefm.cli import check_synth_out

    with pytest.raises(ValueError, match="with other settings"):
        check_synth_out(tmp_path / "nwb", {**rec, "sessions": 1001}, overwrite=False)
    check_synth_out(tmp_path / "nwb", {**rec, "sessions": 1000}, overwrite=False)  # ses-000..ses-999
    # the record does not disturb a corpus build of the folder
    assert main(["corpus", "build", str(tmp_path / "nwb"), "--out", str(tmp_path / "c"), "--quiet"]) == 0


def test_train_refuses_a_vocabulary_smaller_than_the_spike_tokens(data, tmp_path, capsys):
    """model.vocab_size=10 crashed in step 1 (IndexError, an internal error) after writing the run
    folder; it is refused before anything is written."""
    out = tmp_path / "run"
    assert main(ar_train_args(data / "corpus", out, "--set", "model.vocab_size=10")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["spikefm: error: model.vocab_size must be at least 256 (spike tokens are counts 0-254 and "
                   "the bin separator 255), got 10; drop the --set or give 256"]
    assert not out.exists()


def test_eval_of_a_run_folder_named_like_a_baseline_prints_both_columns(data, ar_run, tmp_path, capsys):
    """A run folder called "oracle" printed the model under "oracle" and lost the oracle's column."""
    import shutil

    run = tmp_path / "oracle"
    shutil.copytree(ar_run, run)
    assert main(["eval", str(run), "--data", str(data / "corpus"), "--max-tokens", "3000",
                 "--out", str(tmp_path / "r.json"), "--quiet"]) == 0
    table = capsys.readouterr().out
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    assert "oracle (model)" in table
    for name in ("model", "oracle"):
        assert f"{res[name]['overall']['all']['bits']:.4f}" in table


def test_ar_scores_of_an_empty_split_are_refused(ar_run, tmp_path, nwb_factory, capsys):
    """A one-recording corpus (the README's real-file example) has no test rows: eval printed a
    table of dashes and exited 0."""
    from spikefm.corpus.build import BuildConfig, build_corpus

    path, _ = nwb_factory("sub-1_ses-1", num_units=4, duration_s=10.0)
    build_corpus([str(path)], tmp_path / "one", BuildConfig(), progress=False)
    # the build said so (it printed each split's tokens, test 0, and nothing else)
    assert capsys.readouterr().err.strip() == (
        "spikefm: warning: --test-fraction 0.01 put nothing in the test split: the session split needs at "
        "least 2 sessions and the corpus has 1; give more sessions, or --split row with rows shorter than a "
        "session (a smaller --max-row-tokens)")
    build_corpus([str(path)], tmp_path / "row", BuildConfig(split="row", test_fraction=0.3), progress=False)
    assert capsys.readouterr().err.strip() == (
        "spikefm: warning: --test-fraction 0.3 put nothing in the test split: the row split needs at least 2 "
        "rows and the corpus has 1; cut the sessions into more rows with a smaller --max-row-tokens")
    build_corpus([str(path)], tmp_path / "rows", BuildConfig(split="row", test_fraction=0.3, max_row_tokens=500),
                 progress=False)  # several rows: some go to test, no warning
    assert "warning" not in capsys.readouterr().err
    for argv in (["eval", str(ar_run), "--data", str(tmp_path / "one"), "--out", str(tmp_path / "r.json")],
                 ["ngram", "--data", str(tmp_path / "one"), "--order", "2"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err == (f"spikefm: error: {tmp_path / 'one'}: its test split has no rows (its 1 session(s) are all "
                       "in train); score --split train, or rebuild the corpus so that test gets some (more "
                       "sessions, a larger --test-fraction, or --split row with a --max-row-tokens that cuts "
                       "each session into several rows)"), err
    assert not (tmp_path / "r.json").exists()
    assert main(["ngram", "--data", str(tmp_path / "one"), "--order", "2", "--split", "train", "--quiet"]) == 0
    # an imported corpus's splits are its source's: the advice says so (not --test-fraction, an option
    # of corpus build, nor "fewer ranks" than one)
    from spikefm.corpus.importer import import_neural_pile

    only_test = tmp_path / "pile" / "data" / "test-00000-of-00001.parquet"
    only_test.parent.mkdir(parents=True)
    __import__("shutil").copy(next((tmp_path / "one" / "data").glob("train-*.parquet")), only_test)
    import_neural_pile(str(tmp_path / "pile"), tmp_path / "imported", progress=False)
    capsys.readouterr()
    assert main(["train", "--model", "ar", "--preset", "tiny", "--data", str(tmp_path / "imported"), "--out",
                 str(tmp_path / "run_imp"), "--steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"spikefm: error: split 'train' of {tmp_path / 'imported'} has no rows; its splits are the "
                          "imported source's") and "import a source whose train split has files" in err, err
    assert "world_size" not in err and "--test-fraction" not in err and not (tmp_path / "run_imp").exists()


def test_generate_names_a_foreign_model_folder_and_refuses_an_oversized_seed(ar_run, tmp_path, capsys):
    """A Hugging Face folder of another model type read 'is a None run'; a seed beyond a torch
    generator's range was a bare 'Overflow when unpacking long long'."""
    from spikefm.families.ar.hf import save_hf

    save_hf(load_model(ar_run), tmp_path / "gpt2")
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "gpt2"), "--units", "3", "--bins", "2",
                 "--out", str(tmp_path / "g.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a model of type 'gpt2', not a spikefm run or a Hugging Face Llama folder" in err, err
    with pytest.raises(SystemExit) as info:
        main(["generate", str(ar_run), "--units", "3", "--bins", "2", "--seed", str(2**70),
              "--out", str(tmp_path / "g.npz")])
    assert info.value.code == 2 and "a torch generator's seed" in capsys.readouterr().err
    assert not (tmp_path / "g.npz").exists()


def test_an_empty_train_split_is_refused_for_fitting_with_advice_for_fitting():
    from types import SimpleNamespace

    from spikefm.families.ar.evaluate import require_rows

    from spikefm.corpus.reader import Corpus

    corpus = SimpleNamespace(path="c", sessions=[{}], manifest={"splits": {"train": {"num_rows": 0},
                                                                           "test": {"num_rows": 3}}})
    corpus.fill_split_advice = lambda split: Corpus.fill_split_advice(corpus, split)
    with pytest.raises(ValueError, match=r"^c: its train split has no rows \(its 1 session\(s\) are all in test\); "
                                         r"the n-gram baselines are fitted on the train split: rebuild the corpus "
                                         r"so that train gets some \(more sessions, a smaller --test-fraction"):
        require_rows(corpus, "train", to="fit")
    require_rows(corpus, "test")  # rows: nothing said


def test_synth_with_fewer_sessions_or_into_a_corpus_or_run_folder(data, ar_run, tmp_path, capsys):
    """Fewer --sessions over a folder of more left the others behind (a later corpus build read
    them all) and recorded the smaller count; synth wrote recordings into a corpus or run folder."""
    args = ["synth", str(tmp_path / "nwb"), "--duration-s", "12", "--units", "20,22", "--quiet"]
    assert main([*args, "--sessions", "3"]) == 0
    files = {p: p.read_bytes() for p in (tmp_path / "nwb").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*args, "--sessions", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "already holds the recordings of --sessions 3" in err[0] \
        and "--overwrite to keep only 2" in err[0]
    assert {p: p.read_bytes() for p in (tmp_path / "nwb").rglob("*") if p.is_file()} == files
    # --overwrite: exactly the requested recordings remain, ground truth included
    (tmp_path / "nwb" / "mine.nwb").write_bytes(b"mine")
    (tmp_path / "nwb" / "LAB.NWB").write_bytes(b"mine too")
    (tmp_path / "nwb" / "sub-lab").mkdir()  # a user's recording named as synth names them, no ground truth
    (tmp_path / "nwb" / "sub-lab" / "sub-lab_ses-9.nwb").write_bytes(b"a real one")
    with pytest.warns(UserWarning, match="3 other NWB file"):
        assert main([*args, "--sessions", "2", "--overwrite"]) == 0
    nwb = sorted(p.name for p in (tmp_path / "nwb").rglob("*") if p.suffix.lower() == ".nwb")
    truth = sorted(p.name for p in (tmp_path / "nwb").rglob("*.truth.npz"))
    assert nwb == ["LAB.NWB", "mine.nwb", "sub-ibl01_ses-000.nwb", "sub-ibl01_ses-001.nwb", "sub-lab_ses-9.nwb"]
    assert truth == ["sub-ibl01_ses-000.truth.npz", "sub-ibl01_ses-001.truth.npz"]
    # a corpus folder or a run folder is never a place for recordings, --overwrite or not
    capsys.readouterr()
    for folder, what in ((data / "corpus", "a spikefm corpus (manifest.json)"),
                         (ar_run, "a training run or model (config.json)")):
        before = sorted(folder.rglob("*"))
        for extra in ([], ["--overwrite"]):
            assert main(["synth", str(folder), "--sessions", "1", "--duration-s", "12", "--quiet", *extra]) == 2
            line = capsys.readouterr().err.strip()
            assert line == (f"spikefm: error: {folder}: holds {what}; synth writes recordings into a folder of "
                            "their own (corpus build would refuse the mix): give another OUT_DIR")
        assert sorted(folder.rglob("*")) == before


def test_synth_help_states_the_minimums_the_generator_enforces(tmp_path, capsys):
    from spikefm.corpus.synth import MIN_DURATION_S, PRESETS, min_units, synthesize

    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"at least {MIN_DURATION_S:g})" in text
    for preset in PRESETS:
        assert f"{min_units(preset)} for {preset}" in text
        with pytest.raises(ValueError, match="units_range"):  # one below the stated minimum is refused
            synthesize(tmp_path / preset, num_sessions=1, preset=preset, duration_s=MIN_DURATION_S,
                       units_range=(min_units(preset) - 1, min_units(preset)), progress=False)
    paths = synthesize(tmp_path / "ok", num_sessions=1, preset="motor", duration_s=MIN_DURATION_S,
                       units_range=(min_units("motor"),) * 2, progress=False)
    assert len(paths) == 1


def test_corpus_build_source_is_a_name_not_a_path(data, tmp_path, capsys):
    nwb = data / "nwb"
    with pytest.raises(SystemExit) as ended:
        main(["corpus", "build", str(nwb), "--out", str(tmp_path / "c"), "--source", " ", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert ended.value.code == 2 and err == ("spikefm corpus build: error: argument --source: expected a "
                                             "non-empty name, got ' ' (see spikefm corpus build -h)")
    assert not (tmp_path / "c").exists()
    assert main(["corpus", "build", str(nwb), "--out", str(tmp_path / "c"), "--source", "lab-x", "--quiet"]) == 0
    assert {s["source_dataset"] for s in Corpus(tmp_path / "c").sessions} == {"lab-x"}


def test_a_reader_that_leaves_early_ends_the_command_quietly(data):
    """`spikefm corpus info C --json | head -1` printed 'spikefm: error: Broken pipe' and exited 1."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SPIKEFM_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "spikefm.cli", "corpus", "info", str(data / "corpus"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the command writes (it takes a second to start)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_corpus_plot_replaces_its_own_figures_only(data, tmp_path, capsys):
    figs = tmp_path / "figs"
    assert main(["corpus", "plot", str(data / "corpus"), "--out", str(figs)]) == 0
    assert main(["corpus", "plot", str(data / "corpus"), "--out", str(figs)]) == 0  # its own: replaced
    capsys.readouterr()
    (figs / "session_length.png").write_bytes(b"my own figure")
    before = {p.name: p.read_bytes() for p in figs.iterdir()}
    assert main(["corpus", "plot", str(data / "corpus"), "--out", str(figs)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"spikefm: error: {figs / 'session_length.png'} exists and is not a figure of spikefm corpus plot; "
        "nothing was written: move it or give another --out")
    assert {p.name: p.read_bytes() for p in figs.iterdir()} == before
    # another corpus's raster (an earlier plot into this folder) goes; a file of the user's stays
    (figs / "session_length.png").unlink()
    assert main(["corpus", "build", str(data / "nwb"), "--out", str(tmp_path / "other"), "--source", "lab-x",
                 "--quiet"]) == 0
    assert main(["corpus", "plot", str(tmp_path / "other"), "--out", str(figs)]) == 0
    assert (figs / "raster_lab-x.png").is_file()
    (figs / "raster_mine.png").write_bytes(b"mine")
    assert main(["corpus", "plot", str(data / "corpus"), "--out", str(figs)]) == 0
    rasters = sorted(p.name for p in figs.glob("raster_*.png"))
    expected = sorted(f"raster_{s}.png" for s in {s["source_dataset"] for s in Corpus(data / "corpus").sessions})
    assert rasters == sorted([*expected, "raster_mine.png"])
    capsys.readouterr()
    before = sorted((data / "corpus").rglob("*"))
    assert main(["corpus", "plot", str(data / "corpus"), "--out", str(data / "corpus")]) == 2
    assert "holds a spikefm corpus (manifest.json); figures go into a folder of their own" in capsys.readouterr().err
    assert sorted((data / "corpus").rglob("*")) == before
