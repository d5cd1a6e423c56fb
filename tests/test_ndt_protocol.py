"""The NDT protocol options: named protocols (jiang2025), scheme-balanced validation, per-chunk
forward prediction, behaviour decoding, decoding classes and confidence intervals, and the
fine-tuning strategies chosen on validation windows."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spikefm import families
from spikefm.cli import main
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.reader import Corpus
from spikefm.corpus.synth import synthesize

SMALL = ["--set", "train.batch_size=4", "--set", "train.eval_every=0", "--set", "train.ckpt_every=0",
         "--set", "data.window_bins=50", "--set", "data.pre_ms=200", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ndt_protocol")
    synthesize(root / "nwb", num_sessions=3, seed=3, duration_s=90.0, units_range=(20, 40))
    build_corpus([str(root / "nwb")], root / "corpus", BuildConfig(test_fraction=0.2), progress=False)
    return root / "corpus"


@pytest.fixture(scope="module")
def held_out(corpus_dir):
    return Corpus(corpus_dir).session_ids("test")[0]


@pytest.fixture(scope="module")
def pretrained(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pre"
    assert main(["train", "--model", "ndt", "--data", str(corpus_dir), "--out", str(out), "--steps", "12",
                 *SMALL]) == 0
    return out


def test_defaults_train_neuron_and_random_causal_masking(pretrained):
    cfg = families.load_run_config(pretrained)
    assert cfg.data.schemes == "neuron,causal" and cfg.data.causal_mode == "random"
    assert cfg.data.neuron_ratio == 0.1 and cfg.optim.lr == 3e-3 and cfg.train.batch_size == 4
    assert cfg.optim.warmup_steps is None  # a tenth of the run


def test_a_run_records_how_many_regions_each_session_has(pretrained, corpus_dir):
    """The evaluation needs it to tell whether the region schemes could be trained at all."""
    import json

    from spikefm.data.windows import load_all_windows

    info = json.loads((pretrained / "config.json").read_text())["family_info"]
    windows = load_all_windows(Corpus(corpus_dir), list(info["session_regions"]))
    assert set(info["session_regions"]) == set(info["window_splits"])
    assert info["session_regions"] == {sid: len(set(w.unit_regions)) for sid, w in windows.items()}
    assert min(info["session_regions"].values()) >= 2


def test_jiang2025_protocol_is_recorded_in_config_and_results(corpus_dir, held_out, tmp_path):
    cfg = families.run_config("ndt", preset="tiny", corpus=str(corpus_dir), protocol="jiang2025")
    assert cfg.data.window_bins == 150 and tuple(cfg.data.split_fractions) == (0.8, 0.1, 0.1)
    assert cfg.data.decode_layer == 3 and cfg.data.intra_ratio == 0.3 and cfg.data.label_classes == "choice=-1,1"
    assert cfg.model.n_layers == 5 and cfg.model.dropout == 0.4 and cfg.model.max_bins == 150
    assert families.run_config("ndt", protocol="jiang2025").model.dim == 512  # the base preset by default
    with pytest.raises(ValueError, match="unknown protocol 'nope'.*jiang2025"):
        families.run_config("ndt", protocol="nope")
    # a decoding block the model does not have is refused when the config is made, not after training
    with pytest.raises(ValueError, match=r"data.decode_layer=3 .*model.n_layers=2.*1\.\.2"):
        families.run_config("ndt", preset="tiny", protocol="jiang2025", overrides=["model.n_layers=2"])
    assert main(["train", "--model", "ndt", "--data", str(corpus_dir), "--out", str(tmp_path / "bad"),
                 "--set", "data.decode_layer=4", "--quiet"]) == 2
    assert not (tmp_path / "bad").exists()
    run = tmp_path / "jiang"
    assert main(["train", "--model", "ndt", "--protocol", "jiang2025", "--preset", "tiny", "--data",
                 str(corpus_dir), "--out", str(run), "--steps", "2", "--sessions", held_out,
                 "--set", "train.batch_size=2", "--set", "train.eval_every=0", "--quiet"]) == 0
    info = json.loads((run / "config.json").read_text())
    assert info["config"]["data"]["window_bins"] == 150 and info["config"]["data"]["decode_layer"] == 3
    assert info["config"]["data"]["split_fractions"] == [0.8, 0.1, 0.1]
    n = info["num_windows"] if "num_windows" in info else info["family_info"]["num_windows"][held_out]
    total = sum(n.values())
    assert n["val"] == round(0.1 * total) and n["test"] == round(0.1 * total)
    res = families.evaluate(run, corpus_dir, tasks=["co-smoothing", "choice-decoding"])
    assert res["decode_layer"] == 3 and res["window_bins"] == 150
    assert res["split_fractions"] == [0.8, 0.1, 0.1] and res["windows_per_split"] == n
    choice = res["results"]["tasks"].get("choice-decoding")
    if choice is not None:
        assert choice["decode_layer"] == 3  # the block the results' top level names (it said 2, the index)


def test_validation_loss_is_balanced_across_schemes(pretrained):
    from spikefm.families.ndt.family import NDTFamily  # noqa: F401  (the registry's class)

    from spikefm.train.loop import validation_metrics

    fam = families.get("ndt")
    model = families.load_model(pretrained)
    with torch.no_grad():
        out = fam.validate(model, model.run_config, 0, 1)
        metrics = validation_metrics(fam, model, model.run_config)
    per = {k: num / den for k, (num, den) in out.items() if k.startswith("val_loss/") and den > 0}
    assert set(per) == {"val_loss/neuron", "val_loss/causal"}
    assert {k: v for k, v in metrics.items() if k != "val_loss"} == per
    assert metrics["val_loss"] == pytest.approx(sum(per.values()) / 2)


@pytest.mark.parametrize("family_name", ["ndt", "neds"])
def test_validation_does_not_depend_on_the_number_of_ranks(family_name, corpus_dir, tmp_path):
    """Under torchrun each rank drew its validation masks from a seed with its rank in it and
    took every world_size-th window, and the NDT's balanced loss was the mean of per-rank means:
    the same weights scored 0.3768 in one process and 0.3731 on two (NEDS 8.666 vs 8.547), and the
    per-scheme losses were not logged at all. The ranks' sums (added up as the loop's all-reduce
    does) now give one process's numbers."""
    from spikefm.train.loop import validation_metrics

    fam = families.get(family_name)
    cfg = families.run_config(family_name, preset="tiny", corpus=str(corpus_dir), overrides=[
        "train.batch_size=6", "train.device=cpu", "train.precision=fp32", "train.steps=1"])
    with torch.device("meta"):
        model = fam.build_model(cfg)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    fam.init_weights(model)
    model.eval()
    with torch.no_grad():
        one = validation_metrics(fam, model, cfg)
        for world in (2, 3):
            calls, rows = [], []
            forward = model.forward

            def counted(*args, **kwargs):
                calls[-1] += 1
                rows[-1] = max(rows[-1], args[0].shape[0])
                return forward(*args, **kwargs)

            model.forward = counted
            shares = []
            for r in range(world):
                calls.append(0)
                rows.append(0)
                shares.append(fam.validate(model, cfg, r, world))
            del model.forward
            # FSDP: every rank calls forward equally often; none on more rows than its training micro-batch
            assert len(set(calls)) == 1 and max(rows) <= cfg.train.micro_batch_size(world), (calls, rows)
            assert all(set(s) == set(shares[0]) for s in shares)  # the same names on every rank
            sums = {n: [sum(s[n][k] for s in shares) for k in (0, 1)] for n in shares[0]}
            means = {n: num / den for n, (num, den) in sums.items() if den > 0}
            combine = getattr(fam, "combine_validation", None)
            got = {**means, **combine(means)} if combine else means
            assert got.keys() == one.keys() and "val_loss" in got
            for n in one:
                assert got[n] == pytest.approx(one[n], rel=1e-9), (world, n)


def test_walk_chunks_and_behaviour_decoding(pretrained, corpus_dir, tmp_path):
    ft = tmp_path / "ft"
    held = Corpus(corpus_dir).session_ids("test")[0]
    families.finetune(pretrained, corpus_dir, held, ft, strategy="frozen", steps=6, eval_every=3, patience=2)
    preds = tmp_path / "preds"
    res = families.evaluate(ft, corpus_dir, tasks=["forward-prediction-walk", "behavior-decoding"],
                            save_predictions=str(preds))
    walk = res["results"]["tasks"]["forward-prediction-walk"]
    z = np.load(preds / "forward-prediction-walk.npz")
    from spikefm.eval.metrics import bps_pooled

    starts = [c["start_bin"] for c in walk["chunks"]]
    assert starts == list(range(10, 50, 10))  # from the event bin (200 ms / 20 ms) in 10-bin steps
    for c in walk["chunks"]:
        sl = slice(c["start_bin"], c["end_bin"])
        assert c["model"]["bps_pooled"] == pytest.approx(bps_pooled(z["rates"][:, sl], z["counts"][:, sl]))
        assert "oracle" in c
    beh = res["results"]["tasks"]["behavior-decoding"]
    assert beh["channels"] and set(beh) >= {"hidden", "rates", "counts", "oracle"}
    for feat in ("hidden", "rates", "counts", "oracle"):
        for ch in beh["channels"]:
            assert math.isfinite(beh[feat][ch]["r2"]) and beh[feat][ch]["r2"] <= 1.0
    # the saved traces are the test windows' behaviour and the hidden-state decoding the R² scores
    with np.load(preds / "behavior-decoding.npz") as tr:
        assert list(tr["channels"]) == beh["channels"]
        true_KTC, pred_KTC = tr["true"].astype(np.float64), tr["predicted"].astype(np.float64)
    assert true_KTC.shape == pred_KTC.shape and true_KTC.shape[0] == beh["n_test"]
    for c, ch in enumerate(beh["channels"]):
        ok = np.isfinite(true_KTC[..., c])
        y, yhat = true_KTC[..., c][ok], pred_KTC[..., c][ok]
        r2 = 1 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2)
        assert r2 == pytest.approx(beh["hidden"][ch]["r2"], abs=1e-5)


def test_behaviour_ridge_recovers_a_linear_readout_of_counts(pretrained, corpus_dir):
    from spikefm.families.ndt.evaluate import session_windows_for_run
    from spikefm.families.ndt.tasks import decode_behavior

    model = families.load_model(pretrained)
    sid = next(iter(model.session_units))
    w = session_windows_for_run(pretrained, Corpus(corpus_dir), sid)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(w.num_units, 2))
    w.behavior = (w.counts.astype(np.float64) @ weights).astype(np.float32)
    w.behavior_names = ["a", "b"]
    out = decode_behavior(model, w)
    assert out["counts"]["a"]["r2"] > 0.99 and out["counts"]["b"]["psth_r2"] > 0.99
    w.behavior = rng.normal(size=w.behavior.shape).astype(np.float32)  # unrelated to anything
    out = decode_behavior(model, w)
    assert out["counts"]["mean"]["r2"] < 0.05 and out["hidden"]["mean"]["r2"] < 0.05


def test_wilson_interval_matches_the_quadratic_roots():
    from spikefm.families.ndt.tasks import wilson_interval

    z = 1.959964
    for k, n in ((15, 20), (0, 12), (12, 12), (7, 30)):
        p = k / n
        # (p - x)^2 = z^2 x (1 - x) / n  <=>  (1 + z^2/n) x^2 - (2p + z^2/n) x + p^2 = 0
        roots = np.sort(np.roots([1 + z * z / n, -(2 * p + z * z / n), p * p]).real)
        lo, hi = wilson_interval(k, n)
        assert lo == pytest.approx(max(roots[0], 0.0), abs=1e-9) and hi == pytest.approx(min(roots[1], 1.0), abs=1e-9)


def test_auto_finetune_keeps_the_best_candidate_on_validation(pretrained, corpus_dir, held_out, tmp_path, capsys):
    out = tmp_path / "auto"
    assert main(["finetune", str(pretrained), "--data", str(corpus_dir), "--session", held_out, "--out", str(out),
                 "--steps", "6", "--eval-every", "3", "--patience", "2", "--quiet"]) == 0
    summary = json.loads((out / "finetune.json").read_text())
    vals = {k: v["best_val_loss"] for k, v in summary["candidates"].items()}
    # the NDT ranks the greedy weight average of the three by default (finetune_soup): it is a
    # candidate exactly when it averages two or more of them
    assert {"frozen", "full", "unfreeze"} <= set(vals) <= {"frozen", "full", "unfreeze", "soup"}
    assert ("soup" in vals) == (len(summary["soup"]["ingredients"]) > 1)
    assert summary["soup"]["ingredients"][0] == min(("frozen", "full", "unfreeze"), key=vals.get)
    assert summary["strategy"] == min(vals, key=vals.get)
    chosen = out / "candidates" / summary["strategy"] / "model.safetensors"
    a, b = load_file(str(chosen)), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary["pretraining_gain"] == pytest.approx(summary["single_session"]["best_val_loss"] - vals[summary["strategy"]])
    printed = capsys.readouterr().out
    assert "single-session" in printed and "<- chosen" in printed
    # the frozen candidate kept the pretrained core
    pre = load_file(str(pretrained / "model.safetensors"))
    frozen = load_file(str(out / "candidates" / "frozen" / "model.safetensors"))
    assert all(torch.equal(pre[k], frozen[k]) for k in pre if not k.startswith("sessions."))


def test_eval_on_validation_windows_scores_exactly_those(pretrained, corpus_dir, tmp_path):
    """``--split val`` scores the run's validation windows (to choose settings), never the test ones."""
    from spikefm.families.ndt.evaluate import session_windows_for_run

    model = families.load_model(pretrained)
    sid = sorted(model.session_units)[0]
    w = session_windows_for_run(pretrained, Corpus(corpus_dir), sid)
    results = {}
    for split in ("val", "test"):
        preds = tmp_path / split
        assert main(["eval", str(pretrained), "--data", str(corpus_dir), "--session", sid, "--split", split,
                     "--tasks", "co-smoothing", "--save-predictions", str(preds),
                     "--out", str(tmp_path / f"{split}.json"), "--quiet"]) == 0
        results[split] = json.loads((tmp_path / f"{split}.json").read_text())
        assert results[split]["split"] == split
        with np.load(preds / "co-smoothing.npz") as z:
            counts = z["counts"]
        want = w.counts[w.indices(split)].astype(np.float64)
        assert counts.shape == want.shape and results[split]["results"]["num_test_windows"] == len(want)
        scored = ~np.isnan(counts)
        assert scored.any() and np.array_equal(counts[scored], want[scored])
    assert main(["eval", str(pretrained), "--data", str(corpus_dir), "--split", "train", "--session", sid,
                 "--quiet"]) == 2
    # what the tasks fit on (their "train" and "val": decoders, nulls, baselines) never holds a test
    # window: --split val relabelled the test windows "val", so decoders were fitted on them
    n = {k: int(w.indices(k).size) for k in ("train", "val", "test")}
    assert results["val"]["windows_per_split"] == {"train": n["train"], "val": 0, "test": n["val"],
                                                   "unscored": n["test"]}
    from spikefm.families.ndt.evaluate import UNSCORED, scored_as_test

    roles = scored_as_test(w, "val").split
    assert set(roles[w.indices("test")]) == {UNSCORED} and set(roles[w.indices("val")]) == {"test"}
    assert np.array_equal(roles[w.indices("train")], w.split[w.indices("train")])
    assert scored_as_test(w, "test") is w
    # the report cuts the windows the results scored (it paired val predictions with the test
    # windows' conditions, silently when the counts agreed, else refusing conditions and regions)
    from spikefm.report import build_report
    from spikefm.report.evaluation import load_test_windows

    assert n["val"] != n["test"]
    for split in ("val", "test"):
        cut = load_test_windows(pretrained, corpus_dir, sid, split)
        assert cut.num_windows == n[split]
        for name, values in cut.labels.items():
            assert np.array_equal(values, np.asarray(w.labels[name])[w.indices(split)]), name
        page = build_report(tmp_path / f"{split}.json", predictions=tmp_path / split).html()
        assert "the predictions hold" not in page and "could not be cut again" not in page
        assert ("population PSTH per " in page) if cut.labels else (f"PSTH over all {split} windows" in page)


def test_choice_decoding_reports_the_ideal_observer_of_the_spikes(pretrained, corpus_dir):
    """Recomputed from the truth file with scipy's Poisson pmf: for each scored window, the spikes'
    likelihood with the choice latent as it is against the same with it flipped."""
    from _ideal_observer import ideal_observer_hits

    from spikefm.corpus.synth import load_truth
    from spikefm.families.ndt.evaluate import session_windows_for_run

    model = families.load_model(pretrained)
    sid = next(iter(model.session_units))
    res = families.evaluate(pretrained, corpus_dir, tasks=["choice-decoding"], session=sid)
    choice = res["results"]["tasks"]["choice-decoding"]
    corpus = Corpus(corpus_dir)
    w = session_windows_for_run(pretrained, corpus, sid)
    t = load_truth(corpus.session(sid)["provenance"]["path"])
    scored = np.flatnonzero(w.split == "test") if choice["method"] == "holdout" else np.arange(w.num_windows)
    hits = ideal_observer_hits(t, w, scored)
    assert choice["ideal_observer"]["accuracy"] == pytest.approx(hits / scored.size)
    lo, hi = choice["ideal_observer"]["accuracy_ci95"]
    assert lo <= choice["ideal_observer"]["accuracy"] <= hi
    from spikefm.families.ndt.tasks import format_benchmark_table

    assert "accuracy (ideal observer of the spikes)" in format_benchmark_table({"m": res["results"]})
