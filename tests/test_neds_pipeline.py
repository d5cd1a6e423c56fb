"""End to end for the NEDS family: synthesize -> corpus (one session held out) -> pretrain via the
CLI -> fine-tune on the held-out session -> `spikefm eval` (encoding, decoding, region)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spikefm.cli import main
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.reader import Corpus
from spikefm.corpus.synth import synthesize
from spikefm.eval.metrics import bps_pooled
from spikefm.families import get as get_family, load_run_config

STEPS = 24
TRAIN_ARGS = ["--set", "train.batch_size=4", "--set", "optim.warmup_steps=2", "--set", "train.ckpt_every=0",
              "--set", "train.log_every=4", "--set", "train.eval_every=12", "--set", "data.window_bins=50",
              "--set", "data.pre_ms=200", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("neds_pipeline")
    synthesize(root / "nwb", num_sessions=3, seed=1, duration_s=60.0)
    build_corpus([str(root / "nwb")], root / "corpus", BuildConfig(test_fraction=0.2), progress=False)
    return root / "corpus"


@pytest.fixture(scope="module")
def held_out(corpus_dir):
    (sid,) = Corpus(corpus_dir).session_ids("test")
    return sid


@pytest.fixture(scope="module")
def pretrained(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pre"
    assert main(["train", "--model", "neds", "--preset", "tiny", "--data", str(corpus_dir), "--out", str(out),
                 "--steps", str(STEPS), *TRAIN_ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def finetuned(pretrained, corpus_dir, held_out, tmp_path_factory):
    from spikefm.families import finetune

    out = tmp_path_factory.mktemp("runs") / "ft"
    summary = finetune(pretrained, corpus_dir, held_out, out, freeze_core=True, steps=16, eval_every=8, patience=2)
    return out, summary


def test_pretraining_records_modalities_and_holds_out_the_test_session(pretrained, held_out):
    info = json.loads((pretrained / "config.json").read_text())["family_info"]
    assert held_out not in info["sessions"] and len(info["sessions"]) == 2
    assert info["modalities"]["channels"] == ["wheel_speed", "whisker_motion_energy"]
    assert "choice" in info["modalities"]["labels"]
    assert info["modalities"]["labels"]["choice"] == [-1.0, 1.0]
    rows = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/val_loss" in r for r in rows)
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_readout_bias_starts_at_each_units_log_mean_train_count(corpus_dir):
    from spikefm.families import run_config

    fam = get_family("neds")
    cfg = run_config("neds", preset="tiny", corpus=str(corpus_dir), overrides=["data.window_bins=50", "data.pre_ms=200"])
    model = fam.build_model(cfg)
    fam.init_weights(model)
    windows, _, _ = fam.prepared(cfg.data)
    for sid, w in windows.items():
        train = w.counts[w.indices("train")].astype(np.float64)
        mean = train.sum(axis=(0, 1)) / (train.shape[0] * train.shape[1])
        expected = np.log(np.maximum(mean, 1e-3))  # the NDT's floor, not an added constant
        np.testing.assert_allclose(model.stitcher(sid).read_out.bias.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_validation_loss_scores_the_task_schemes_on_every_val_window(pretrained):
    import dataclasses

    from spikefm.train.checkpoint import load_exported_model

    fam = get_family("neds")
    cfg = load_run_config(pretrained)
    model = load_exported_model(pretrained, fam, cfg).eval()

    def val(seed=None, **data):
        c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data))
        if seed is not None:
            c = dataclasses.replace(c, train=dataclasses.replace(c.train, seed=seed))
        with torch.no_grad():
            num, den = fam.validate(model, c, 0, 1)["val_loss"]
        return num / den

    enc, dec = val(val_schemes="encoding"), val(val_schemes="decoding")
    assert val() == pytest.approx(enc + dec, rel=1e-6)  # the default: both task schemes, summed
    # the task schemes hide fixed entries: no draw, so the seed does not move them
    assert val(seed=123, val_schemes="encoding") == pytest.approx(enc, rel=1e-6)
    # "train" is the training mixture (one scheme drawn per window), another number
    assert val(val_schemes="train") != pytest.approx(enc + dec, rel=1e-3)
    # a run that trains neither task scheme is validated on its own mixture
    own = dict(schemes="spike,behavior", scheme_weights=())
    assert val(**own) == pytest.approx(val(val_schemes="train", **own), rel=1e-6)
    with pytest.raises(ValueError, match="data.val_schemes"):
        dataclasses.replace(cfg.data, val_schemes="encodign")


def test_capped_validation_labels_use_each_sessions_train_class_frequencies(pretrained):
    """data.val_label_cap: the label part of the validation loss is each label's cross-entropy capped
    at that of the session's train-window class frequencies (one added per class), recomputed here
    from the windows by hand."""
    import dataclasses

    from spikefm.families.neds.family import masked_forward
    from spikefm.families.neds.batches import collate
    from spikefm.families.neds.masking import SCHEMES
    from spikefm.train.checkpoint import load_exported_model

    fam = get_family("neds")
    cfg = load_run_config(pretrained)
    cap = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_label_cap=True, val_schemes="decoding"))
    plain = dataclasses.replace(cap, data=dataclasses.replace(cap.data, val_label_cap=False))
    model = load_exported_model(pretrained, fam, cfg).eval()
    windows, mods, arrays = fam.prepared(cfg.data)
    items = [(sid, int(k)) for sid in sorted(windows) for k in windows[sid].indices("val")]
    batch = collate(windows, arrays, items)
    # a confidently wrong choice head (it favours the val windows' rarer class), so the cap binds
    y0 = batch["labels_BJ"][:, 0][batch["label_valid_BJ"][:, 0]]
    rare = int(torch.bincount(y0, minlength=2).argmin())
    with torch.no_grad():
        model.label_heads[0].bias.copy_(torch.tensor([12.0, -12.0]) * (1 if rare == 0 else -1))
        masks, out = masked_forward(model, batch, torch.full((len(items),), SCHEMES.index("decoding")), 0.3,
                                    torch.Generator().manual_seed(0))
        got_cap = fam.validate(model, cap, 0, 1)["val_loss"]
        got_plain = fam.validate(model, plain, 0, 1)["val_loss"]
    # by hand: per label, the model's and the prior's cross-entropy over the scored val windows
    diff_expected = 0.0
    bs = cfg.train.micro_batch_size(1)
    for i in range(0, len(items), bs):
        chunk = slice(i, i + bs)
        terms_model, terms_cap = [], []
        for j, (name, values) in enumerate(mods.labels):
            rows = np.flatnonzero(masks.label_scored_BJ[chunk, j].numpy())
            if not rows.size:
                continue
            z = out["label_logits"][j][chunk].double().numpy()[rows]
            y = batch["labels_BJ"][chunk, j].numpy()[rows]
            ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(rows.size), y])
            prior_ce = []
            for r, label in zip(rows, y):
                sid, _ = items[i + r]
                w = windows[sid]
                train = arrays[sid].labels_KJ[w.indices("train"), j]
                freq = (np.array([(train == c).sum() for c in range(len(values))]) + 1.0)
                prior_ce.append(-np.log(freq[label] / freq.sum()))
            terms_model.append(ce)
            terms_cap.append(min(ce, float(np.mean(prior_ce))))
        n = len(items[chunk])
        diff_expected += (np.mean(terms_cap) - np.mean(terms_model)) * cfg.data.label_weight * n
    assert diff_expected < -0.1  # the premise: the wrong head costs more than its prior
    assert got_cap[1] == got_plain[1] == len(items)
    assert got_cap[0] - got_plain[0] == pytest.approx(diff_expected, rel=1e-4, abs=1e-6)
    with pytest.raises(TypeError, match="data.val_label_cap"):
        dataclasses.replace(cfg.data, val_label_cap="yes")


@pytest.mark.parametrize("cap", [True, False])
def test_per_window_validation_losses_average_to_the_validation_loss(finetuned, cap):
    """`validate_windows` (finetune's one-se rule) scores each val window alone; on one session,
    whose windows score the same number of entries, their mean is `validate`'s loss, with the
    label cap (the default, which binds here) and without it."""
    import dataclasses

    from spikefm.train.checkpoint import load_exported_model

    out, _ = finetuned
    fam = get_family("neds")
    cfg = load_run_config(out)
    assert cfg.data.val_label_cap  # the default
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_label_cap=cap))
    model = load_exported_model(out, fam, cfg).eval()
    with torch.no_grad():
        per = fam.validate_windows(model, cfg)
        num, den = fam.validate(model, cfg, 0, 1)["val_loss"]
        other = fam.validate(model, dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_label_cap=not cap)),
                             0, 1)["val_loss"]
    assert other[0] != pytest.approx(num, rel=1e-4)  # the premise: the cap binds on these windows
    windows, _, _ = fam.prepared(cfg.data)
    assert per.shape == (sum(w.indices("val").size for w in windows.values()),) == (den,)
    assert per.mean() == pytest.approx(num / den, rel=1e-5)
    assert per.std() > 0  # windows differ: a constant would not be per-window


def test_unfreeze_run_windows_include_the_pretraining_sessions(pretrained, corpus_dir, held_out, tmp_path):
    """`unfreeze` starts from its frozen stage, which starts from the pretrained run: the multi-session
    baselines (RRR) must still see the pretraining sessions, as they do for `frozen` and `full`."""
    from pathlib import Path

    from spikefm.families import finetune
    from spikefm.families.neds.evaluate import run_windows

    out = tmp_path / "uf"
    finetune(pretrained, corpus_dir, held_out, out, strategy="unfreeze", steps=8, eval_every=2, patience=2)
    run = json.loads((out / "config.json").read_text())
    info = run["family_info"]
    # trained from the deleted frozen stage; the recorded provenance names the pretrained run
    assert Path(info["init_from"]) == Path(pretrained).resolve()
    assert Path(run["config"]["data"]["init_from"]) == Path(pretrained).resolve()
    stage1 = run["finetune_stage1"]
    assert stage1["strategy"] == "frozen" and not Path(stage1["deleted_folder"]).exists()
    assert 1 <= stage1["best_step"] <= 4 and stage1["best_val_loss"] > 0
    assert load_run_config(out).data.init_from == str(Path(pretrained).resolve())
    # so do the checkpoints' copies of the config, and each still passes its manifest's checksums
    from spikefm.train.checkpoint import checkpoint_problem, list_checkpoints

    ckpts = list_checkpoints(out)
    assert ckpts
    for _, ck in ckpts:
        copy = json.loads((ck / "config.json").read_text())
        assert Path(copy["config"]["data"]["init_from"]) == Path(pretrained).resolve()
        assert copy["finetune_stage1"] == stage1
        assert checkpoint_problem(ck) is None
    pre = set(json.loads((pretrained / "config.json").read_text())["family_info"]["sessions"])
    windows = run_windows(out, Corpus(corpus_dir))
    assert set(windows) == pre | {held_out}
    for sid in pre:  # the pretrained run's own splits
        split = json.loads((pretrained / "config.json").read_text())["family_info"]["window_splits"][sid]["split"]
        assert [str(x) for x in windows[sid].split] == split


def test_loader_resumes_with_identical_batches_and_masks(pretrained):
    fam = get_family("neds")
    cfg = load_run_config(pretrained)
    a = fam.train_loader(cfg, 0, 1)
    for _ in range(3):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(2)]
    b = fam.train_loader(cfg, 0, 1)
    b.load_state_dict(state)
    for want in expected:
        got = next(b)
        assert got["session_ids"] == want["session_ids"] and int(got["mask_seed"]) == int(want["mask_seed"])
        for k in ("counts_BTN", "behavior_BTC", "labels_BJ", "label_valid_BJ"):
            assert torch.equal(got[k], want[k]), k


def test_finetune_frozen_core_changes_only_session_parameters(pretrained, finetuned, held_out):
    out, summary = finetuned
    pre, ft = load_file(str(pretrained / "model.safetensors")), load_file(str(out / "model.safetensors"))
    core = [k for k in pre if not k.startswith("sessions.")]
    assert core and all(torch.equal(pre[k], ft[k]) for k in core)
    new = [k for k in ft if k.startswith("sessions.")]
    assert new and not any(k in pre for k in new)  # the held-out session's own parameters
    cfg = load_run_config(out)
    assert cfg.data.sessions == held_out and cfg.data.labels.startswith("choice=")
    assert summary["best_step"] >= 1


def test_eval_cli_scores_encoding_decoding_region_with_baselines(finetuned, corpus_dir, held_out, tmp_path):
    out, _ = finetuned
    res_path = tmp_path / "eval.json"
    assert main(["eval", str(out), "--data", str(corpus_dir), "--out", str(res_path), "--quiet"]) == 0
    res = json.loads(res_path.read_text())
    assert res["family"] == "neds" and res["session_id"] == held_out and res["oracle"]
    enc = res["results"]["encoding"]
    assert set(enc) == {"neds", "linear", "rrr", "oracle"}
    # The oracle's bps equals bps_pooled of the true rates on the run's saved test windows.
    from spikefm.families.neds.evaluate import _truth, run_windows

    corpus = Corpus(corpus_dir)
    w = run_windows(out, corpus)[held_out]
    te = w.indices("test")
    saved = json.loads((out / "config.json").read_text())["family_info"]["window_splits"][held_out]
    assert te.size == saved["split"].count("test")
    truth = _truth(corpus, w)
    assert np.isclose(enc["oracle"]["bps_pooled"], bps_pooled(truth["rates_KTN"][te], w.counts[te].astype(float)))
    assert enc["oracle"]["bps_pooled"] > 0
    dec = res["results"]["decoding"]
    assert {"neds", "neds_probe", "linear", "rrr", "oracle"} <= set(dec)
    for model in ("neds", "neds_probe"):
        assert "choice" in dec[model] and "wheel_speed" in dec[model]
    assert 0.0 <= dec["neds"]["choice"]["accuracy"] <= 1.0
    # Small test sets: every accuracy carries its 95 % Wilson interval (scipy's, computed apart).
    from scipy.stats import binomtest

    for model in ("neds", "linear"):
        c = dec[model]["choice"]
        k = int(round(c["accuracy"] * c["n"]))
        ci = binomtest(k, c["n"]).proportion_ci(confidence_level=0.95, method="wilson")
        np.testing.assert_allclose(c["accuracy_ci95"], [ci.low, ci.high], atol=1e-6)
    region = res["results"]["region"]
    assert set(region) == {"embedding", "embedding_tuning", "firing_stats", "psth_counts"}
    # The ideal observer of choice, recomputed from the truth file with scipy's Poisson pmf: per test
    # window, the choice latent flipped or not, every other latent at its true value.
    from _ideal_observer import ideal_observer_hits

    from spikefm.corpus.synth import load_truth

    hits = ideal_observer_hits(load_truth(corpus.session(held_out)["provenance"]["path"]), w, te)
    assert dec["ideal_observer"]["choice"]["accuracy"] == pytest.approx(hits / te.size)
    # Paired differences on the same test windows: the value is the difference of the two scores.
    comp = res["results"]["comparisons"]
    assert set(comp["encoding"]) == set(comp["decoding"]) == {"neds - linear", "neds - rrr"}
    for base in ("linear", "rrr"):
        e = comp["encoding"][f"neds - {base}"]["bps_pooled"]
        assert e["value"] == pytest.approx(enc["neds"]["bps_pooled"] - enc[base]["bps_pooled"], rel=1e-9)
        assert e["ci95"][0] < e["value"] < e["ci95"][1]
        d = comp["decoding"][f"neds - {base}"]
        assert d["choice"]["accuracy"]["value"] == pytest.approx(
            dec["neds"]["choice"]["accuracy"] - dec[base]["choice"]["accuracy"], abs=1e-12)
        assert d["wheel_speed"]["r2_single_trial"]["value"] == pytest.approx(
            dec["neds"]["wheel_speed"]["r2_single_trial"] - dec[base]["wheel_speed"]["r2_single_trial"], abs=1e-9)
    from spikefm.families.neds.evaluate import format_results

    assert "neds - linear" in format_results({"ft": res}) and "encoding difference" in format_results({"ft": res})
    # spikefm report renders every table of the results JSON; each number points back into it.
    from test_report import _parse, _resolve

    html_path = tmp_path / "neds_report.html"
    assert main(["report", str(res_path), "--out", str(html_path)]) == 0
    cells = {c[1]: c for c in _parse(html_path.read_text()).cells}
    for ptr in ("/results/encoding/neds/bps_pooled", "/results/encoding/oracle/r2_psth",
                "/results/decoding/linear/choice/accuracy", "/results/decoding/neds/wheel_speed/r2_single_trial",
                "/results/comparisons/encoding/neds - rrr/bps_pooled/value",
                "/results/comparisons/decoding/neds - linear/choice/accuracy/ci95/1",
                "/results/region/embedding/balanced_accuracy", "/results/region/firing_stats/confusion/0/0"):
        assert ptr in cells, ptr
    for src, ptr, exact, shown in cells.values():
        value = _resolve(res, ptr)
        if isinstance(value, float) and np.isfinite(value):
            assert float(exact) == value
    # the confusion matrix shown is the whole matrix: its cells add up to the units classified
    emb = res["results"]["region"]["embedding"]
    shown = [int(c[2]) for p, c in cells.items() if p.startswith("/results/region/embedding/confusion/")]
    assert len(shown) == len(emb["classes"]) ** 2 and sum(shown) == emb["num_units"]
    assert main(["report", str(res_path), "--predictions", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 2
    assert not (tmp_path / "x.html").exists()
    _check_in_browser(html_path, res)


def _check_in_browser(html_path, res):
    """The NEDS report in the system's headless Chromium (as tests/test_report_browser.py opens
    the other reports): no script error, every figure drawn, every cell's text is its JSON value."""
    import tempfile

    import test_report_browser as rb

    if not rb.CHROMIUM.exists():
        return  # the browser tests are skipped without the system's Chromium; so is this part
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=str(rb.CHROMIUM), headless=True,
                                                       args=rb.LAUNCH_ARGS, viewport={"width": 1280, "height": 900})
        context.set_offline(True)
        loaded = rb._open(context, html_path)
        assert loaded.errors == []
        figures = loaded.page.evaluate(rb.FIGURES_JS, list(rb.MARGINS))
        assert len(figures) >= 4 and all(f["drawn"] == "1" and f["marks"] > 0 for f in figures), figures
        cells = loaded.page.evaluate(rb.CELLS_JS)
        context.close()
    assert len(cells) >= 50
    for src, ptr, exact, text in cells:
        assert rb._shown_as(text, rb._resolve(res, ptr)), (ptr, text)


def test_eval_on_val_windows_scores_them_and_fits_baselines_without_them(finetuned, corpus_dir, held_out,
                                                                        monkeypatch):
    # For choosing settings: --split val scores the val windows, and no baseline is fitted on them.
    from spikefm.families.neds import evaluate as ev

    out, _ = finetuned
    seen = {}
    real = ev._decoders

    def spy(windows, arrays, sid, rank, idx, *a, **k):
        seen.update({key: np.asarray(v).copy() for key, v in idx.items()})
        return real(windows, arrays, sid, rank, idx, *a, **k)

    real_probe = ev.neds_probe

    def spy_probe(hidden, a, fit_idx, te, mods):
        seen.update(probe_fit=np.asarray(fit_idx).copy(), probe_test=np.asarray(te).copy())
        return real_probe(hidden, a, fit_idx, te, mods)

    from spikefm.eval import rrr

    fitted_rows = []  # rows of the held-out session in every GLM / RRR fit (encoders and decoders)
    real_fit = rrr.MultiSessionRRR.fit

    def spy_fit(self, X, Y, *a, **k):
        fitted_rows.append(len(X[held_out]) if held_out in X else None)
        return real_fit(self, X, Y, *a, **k)

    monkeypatch.setattr(ev, "_decoders", spy)
    monkeypatch.setattr(ev, "neds_probe", spy_probe)
    monkeypatch.setattr(rrr.MultiSessionRRR, "fit", spy_fit)
    res = ev.evaluate_run(str(out), str(corpus_dir), tasks=["encoding", "decoding"], split="val")
    w = ev.run_windows(out, Corpus(corpus_dir))[held_out]
    val, train = w.indices("val"), w.indices("train")
    assert res["split"] == "val" and res["num_windows"]["val"] == val.size > 0
    np.testing.assert_array_equal(seen["test"], val)
    np.testing.assert_array_equal(seen["probe_test"], val)
    assert set(seen["probe_fit"]) == set(train)  # the hidden-state probe never sees a val window either
    assert set(seen["train"]) | set(seen["val"]) == set(train) and not set(seen["train"]) & set(seen["val"])
    # the penalty-choosing windows (train's last eighth) are never among the fitted ones: a fit on
    # all train windows chose the smallest penalty every time (linear encoding -0.224 vs 0.001 bps)
    # (encoders and behaviour decoders fit one row per bin, label decoders one per window)
    assert fitted_rows and None not in fitted_rows
    assert max(fitted_rows) <= len(seen["train"]) * w.num_bins, (fitted_rows, len(seen["train"]))
    truth = ev._truth(Corpus(corpus_dir), w)
    assert np.isclose(res["results"]["encoding"]["oracle"]["bps_pooled"],
                      bps_pooled(truth["rates_KTN"][val], w.counts[val].astype(float)))
    with pytest.raises(ValueError, match="expected 'test' or 'val'"):
        ev.evaluate_run(str(out), str(corpus_dir), tasks=["encoding"], split="train")
    # what is printed and rendered says which windows were scored (both said "test")
    assert ev.format_results({"ft": res}).splitlines()[0].strip() == \
        f"NEDS evaluation (ft: session {held_out}, val windows ({val.size}))"
    from spikefm.report import build_report

    html = build_report(_write_json(out.parent / "val.json", res)).html()
    assert "same val windows" in html and "same test windows" not in html
    # the region task's unit features (firing statistics, PSTHs, model states) came from every
    # window, test windows included
    from spikefm.eval import probes

    sizes, real_stats = [], probes.firing_statistics

    def spy_stats(counts, bin_ms, **k):
        sizes.append(counts.shape[0])
        return real_stats(counts, bin_ms, **k)

    monkeypatch.setattr(probes, "firing_statistics", spy_stats)
    ev.evaluate_run(str(out), str(corpus_dir), tasks=["region"], split="val")
    ev.evaluate_run(str(out), str(corpus_dir), tasks=["region"])
    assert sizes == [train.size + val.size, w.num_windows]
    # a fine-tuned run knows one session: a region error says where all sessions' units are classified
    def one_region(*a, **k):
        raise ValueError("region classification needs >= 2 regions it can learn, found 1 (CA1)")

    monkeypatch.setattr(probes, "classify_regions", one_region)
    region = ev.evaluate_run(str(out), str(corpus_dir), tasks=["region"])["results"]["region"]
    assert region and all(v["error"].endswith("(this run knows one session, so only that session's units are "
                                              "classified: the pretrained run's evaluation classifies the units of "
                                              "all its sessions)") for v in region.values())


def test_eval_of_multi_session_run_needs_session(pretrained, corpus_dir, capsys):
    assert main(["eval", str(pretrained), "--data", str(corpus_dir), "--quiet"]) != 0
    assert "--session" in capsys.readouterr().err


def test_continuous_windows_and_motor_preset_modalities(tmp_path):
    synthesize(tmp_path / "nwb", num_sessions=2, seed=3, duration_s=30.0, preset="motor", units_range=(20, 30))
    build_corpus([str(tmp_path / "nwb")], tmp_path / "corpus", BuildConfig(test_fraction=0.0), progress=False)
    fam = get_family("neds")
    from spikefm.families import run_config

    cfg = run_config("neds", preset="tiny", corpus=str(tmp_path / "corpus"),
                     overrides=["data.window_bins=25", "data.pre_ms=200"])
    _, mods, arrays = fam.prepared(cfg.data)
    assert mods.channels == ("hand_position_0", "hand_position_1", "hand_velocity_0", "hand_velocity_1")
    assert mods.label_names == ["target_angle"] and 2 <= mods.num_classes[0] <= 8
    assert np.allclose(np.array(mods.labels[0][1]) / (np.pi / 4), np.round(np.array(mods.labels[0][1]) / (np.pi / 4)))
    cont = run_config("neds", preset="tiny", corpus=str(tmp_path / "corpus"),
                      overrides=["data.window_bins=25", "data.align=", "train.steps=4", "train.batch_size=4",
                                 "train.eval_every=0", "train.ckpt_every=0", "data.labels="])
    _, mods_c, arr_c = fam.prepared(cont.data)
    assert mods_c.labels == () and len(mods_c.channels) == 4
    # z-scoring uses the train windows: mean 0, sd 1 there
    for a in arr_c.values():
        z = a.behavior_KTC.reshape(-1, 4)
        assert np.allclose(np.nanmean(z, 0), 0, atol=0.2)
    from spikefm.families import train

    summary = train(cont, tmp_path / "run", progress=False)
    assert summary["step"] == 4 and np.isfinite(summary["loss"])
    # continuous windows have no trials: PSTH R² (a trial average) is nan, not a number of
    # unaligned windows averaged together (it read -6.5 for the oracle's hand position)
    from spikefm.families.neds.evaluate import evaluate_run

    sid = sorted(arr_c)[0]
    res = evaluate_run(str(tmp_path / "run"), str(tmp_path / "corpus"), tasks=["encoding", "decoding"], session=sid)
    enc, dec = res["results"]["encoding"], res["results"]["decoding"]
    assert {"neds", "oracle"} <= set(enc) and {"neds", "linear"} <= set(dec)
    assert all(np.isnan(v["r2_psth"]) and np.isfinite(v["r2_single_trial"]) for v in enc.values())
    channel_scores = [v for model in dec.values() for v in model.values() if isinstance(v, dict) and "r2_psth" in v]
    assert channel_scores and all(np.isnan(v["r2_psth"]) and np.isfinite(v["r2_single_trial"]) for v in channel_scores)


def _write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_decoding_a_run_with_nothing_to_decode_is_skipped_with_the_reason(tmp_path):
    """A corpus without behaviour or trial labels (the spontaneous preset, or the real DANDI
    file) gave an empty decoding table, exit 0 and no reason."""
    from spikefm.families import run_config, train
    from spikefm.families.neds.evaluate import evaluate_run, format_results

    synthesize(tmp_path / "nwb", num_sessions=2, seed=4, duration_s=30.0, preset="spontaneous", units_range=(20, 24))
    build_corpus([str(tmp_path / "nwb")], tmp_path / "corpus", BuildConfig(test_fraction=0.0), progress=False)
    sid = Corpus(tmp_path / "corpus").session_ids()[0]
    cfg = run_config("neds", preset="tiny", corpus=str(tmp_path / "corpus"),
                     overrides=[f"data.sessions={sid}", "data.align=", "train.steps=2", "train.batch_size=4",
                                "train.precision=fp32", "train.device=cpu"])
    # with nothing but spikes, the behaviour-only schemes score nothing: said when training
    with pytest.warns(RuntimeWarning, match=r"schemes decoding, behavior score nothing \(45% of the training "
                                            r"draws\); set data.schemes=encoding,spike,cross"):
        train(cfg, tmp_path / "run", progress=False)
    from spikefm.train.config import apply_overrides

    with pytest.raises(ValueError, match="data.schemes='decoding' scores only behaviour"):
        train(apply_overrides(cfg, ["data.schemes=decoding"]), tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2" / "model.safetensors").exists()
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # evaluation trains nothing: not said again
        warnings.simplefilter("always")
        res = evaluate_run(str(tmp_path / "run"), str(tmp_path / "corpus"), tasks=["encoding", "decoding"])
    assert not [w for w in caught if "score nothing" in str(w.message)]
    assert "decoding" not in res["results"] and res["tasks"] == ["encoding"]
    assert res["results"]["skipped"]["decoding"].startswith("the run decodes no behaviour channel or trial label")
    assert format_results({"run": res}).splitlines()[-1] == f"run: decoding skipped: {res['results']['skipped']['decoding']}"


def test_finetuning_to_a_session_without_the_pretrained_channels(pretrained, tmp_path, nwb_factory, recwarn):
    """A session without behaviour (the real DANDI file) could not be fine-tuned: the pretrained
    run's channels were refused ('which no session holds'), and leaving them out broke the core's
    heads. It fine-tunes encoding-only now, with one warning; the single-session model of the
    same settings gets the channels the session holds (none)."""
    from spikefm.families import finetune
    from spikefm.families.neds.evaluate import evaluate_run

    path, _ = nwb_factory("sub-x_ses-1", num_units=20, duration_s=40.0)
    build_corpus([str(path)], tmp_path / "c", BuildConfig(test_fraction=0.0), progress=False)
    (sid,) = Corpus(tmp_path / "c").session_ids()
    assert not Corpus(tmp_path / "c").session(sid)["behavior_names"]
    fam = get_family("neds")
    scratch = fam.finetune_config(str(pretrained), str(tmp_path / "c"), sid, from_scratch=True, steps=8)
    assert scratch.data.behavior == ""
    # nor the labels it lacks (a new run refuses labels no session holds)
    from spikefm.data.windows import session_label_names

    held = set(session_label_names(tmp_path / "c", sid, scratch.data.trial_table))
    assert "choice" not in held and "choice" not in scratch.data.labels
    from spikefm.families.neds.batches import parse_label_spec

    assert all(name in held for name, _ in parse_label_spec(scratch.data.labels))
    fam.sessions(scratch.data)  # resolves its modalities: nothing refused
    out = tmp_path / "ft"
    summary = finetune(pretrained, tmp_path / "c", sid, out, freeze_core=True, steps=8, eval_every=4, patience=2)
    assert (out / "model.safetensors").is_file() and summary
    said = [str(w.message) for w in recwarn if "hold none of the pretrained run's channel" in str(w.message)]
    assert len(said) == 1 and "wheel_speed, whisker_motion_energy" in said[0]
    res = evaluate_run(str(out), str(tmp_path / "c"), tasks=["encoding", "decoding"], baselines=False)
    assert np.isfinite(res["results"]["encoding"]["neds"]["bps_pooled"])
    # nothing of the session to decode: skipped with the reason (it was an empty table, exit 0)
    assert "decoding" not in res["results"] and res["tasks"] == ["encoding"]
    assert "holds none of the run's behaviour channels or trial labels" in res["results"]["skipped"]["decoding"]


def test_a_session_too_short_for_the_baselines_is_warned_and_every_task_reports(tmp_path, capsys):
    """Sessions of 15 s (3 train, 0 validation windows): the baselines' numbers were absurd with no
    word, a label left out of decoding had no reason, and region features of sessions with
    different trial conditions failed inside numpy."""
    from spikefm.families.neds import evaluate as ev

    synthesize(tmp_path / "nwb", num_sessions=3, seed=3, duration_s=15.0)
    build_corpus([str(tmp_path / "nwb")], tmp_path / "c", BuildConfig(test_fraction=0.2), progress=False)
    run = tmp_path / "pre"
    assert main(["train", "--model", "neds", "--preset", "tiny", "--data", str(tmp_path / "c"), "--out", str(run),
                 "--steps", "2", *TRAIN_ARGS]) == 0
    session = sorted(json.loads((run / "config.json").read_text())["family_info"]["sessions"])[0]
    capsys.readouterr()
    with pytest.warns(RuntimeWarning, match=r"has \d+ train and \d+ validation windows for the baselines "
                                            r"\(fewer than 5\)"):
        res = ev.evaluate_run(str(run), str(tmp_path / "c"), session=session)
    region = res["results"]["region"]
    for name, v in region.items():  # scored, or a reason in words, never a numpy message
        assert "error" not in v or "input array dimensions" not in v["error"], (name, v)
    text = ev.format_results({"pre": res})
    skipped = res["results"].get("skipped", {})
    for task, why in skipped.items():
        assert f"pre: {task} skipped: {why}" in text.splitlines()
    decoded = {t for m in res["results"].get("decoding", {}).values() for t in m}
    for label in res["modalities"]["labels"]:
        name = label[0] if isinstance(label, (list, tuple)) else label
        if "decoding" in res["results"] and name not in decoded:  # left out: said why
            assert any(k.startswith(f"decoding {name}") for k in skipped), (name, skipped)


def test_the_no_targets_warning_names_the_trial_columns_data_labels_can_use(real_nwb, tmp_path):
    """On the real DANDI file's encoding_table NEDS finds no choice / block labels and said only
    'no behaviour channels or trial labels', though the table's stimCategory trains and decodes
    with data.labels=stimCategory."""
    from spikefm.families import run_config, train

    build_corpus([str(real_nwb)], tmp_path / "corpus", BuildConfig(test_fraction=0.0), progress=False)
    cfg = run_config("neds", preset="tiny", corpus=str(tmp_path / "corpus"),
                     overrides=["data.trial_table=encoding_table", "train.steps=1", "train.batch_size=4",
                                "train.precision=fp32", "train.device=cpu"])
    with pytest.warns(RuntimeWarning, match=r"score nothing .* to spend every draw on the spikes; or name trial "
                                            r"columns as labels: data.labels=stimCategory \(the sessions' trial "
                                            r"columns: stimCategory\)"):
        train(cfg, tmp_path / "run", progress=False)


@pytest.mark.slow  # about a minute: the encoding baselines over the 47-minute file's windows
def test_eval_says_a_missing_trial_table_once(real_nwb, tmp_path):
    """The run's windows were read twice in evaluation (to build the model, then with the saved
    splits); the warning that the session has no 'trials' table came twice. The model is now
    built from the run's record, and the windows read once."""
    import warnings

    from spikefm.families import run_config, train
    from spikefm.families.neds.evaluate import evaluate_run

    build_corpus([str(real_nwb)], tmp_path / "corpus", BuildConfig(test_fraction=0.0), progress=False)
    cfg = run_config("neds", preset="tiny", corpus=str(tmp_path / "corpus"),
                     overrides=["train.steps=1", "train.batch_size=4", "train.precision=fp32", "train.device=cpu",
                                "data.schemes=encoding,spike,cross"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(cfg, tmp_path / "run", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_run(str(tmp_path / "run"), str(tmp_path / "corpus"), tasks=["encoding"])
    said = [str(w.message) for w in caught if "trial table" in str(w.message)]
    assert len(said) == 1 and "has no 'trials' trial table (its trial tables: encoding_table" in said[0], said


def test_a_run_folder_loads_and_evaluates_without_the_corpus_it_names(finetuned, corpus_dir, held_out, tmp_path,
                                                                        monkeypatch):
    """Loading a NEDS run rebuilt it from the corpus its config names (to count units and find
    modalities): a run folder shared without that corpus, or with the corpus moved, could not be
    loaded. It is built from what the run recorded; evaluation reads the corpus given to it."""
    from conftest import copy_run_naming_a_gone_corpus, load_model_reading_no_windows
    from spikefm import load_model
    from spikefm.families.neds.evaluate import evaluate_run

    out, _ = finetuned
    copy = tmp_path / "ft_copy"
    copy_run_naming_a_gone_corpus(out, copy)
    original = load_model(out)
    loaded = load_model_reading_no_windows(copy, monkeypatch)
    assert loaded.session_units == original.session_units == {held_out: Corpus(corpus_dir).session(held_out)["num_units"]}
    assert loaded.modalities == original.modalities and loaded.modalities.label_names == ["choice", "block_prior"]
    a, b = original.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    got = evaluate_run(str(copy), str(corpus_dir), tasks=["encoding"], baselines=False)
    want = evaluate_run(str(out), str(corpus_dir), tasks=["encoding"], baselines=False)
    assert got["results"] == want["results"] and got["results"]["encoding"]["neds"]["bps_pooled"] is not None


def test_windows_longer_than_the_model_are_refused_before_any_data_is_read(tmp_path):
    """NEDS checked data.window_bins against model.max_bins only when the model was built, after
    every session's windows were cut; it is now its check_config, run by run_config (the NDT's
    rule, one function for both)."""
    from spikefm.families import run_config

    for fam in ("neds", "ndt"):
        with pytest.raises(ValueError) as err:
            run_config(fam, preset="tiny", corpus=str(tmp_path / "no_corpus_here"),
                       overrides=["data.window_bins=129", "model.max_bins=128"])
        assert str(err.value) == ("data.window_bins (129) exceeds model.max_bins (128); lower data.window_bins "
                                  "or raise model.max_bins")


def test_a_finetuning_keeps_the_pretrained_window_settings(pretrained, corpus_dir, held_out, tmp_path):
    """--set data.window_bins=40 (or data.pre_ms=100) fine-tuned, then eval failed: it cuts the
    pretraining sessions with the fine-tuned run's settings ('splits were saved for 50-bin
    windows ...'). Refused up front now, in one line; the same value is accepted."""
    from spikefm.families import finetune

    with pytest.raises(ValueError) as err:
        finetune(pretrained, corpus_dir, held_out, tmp_path / "ft", strategy="frozen", steps=2,
                 overrides=["data.window_bins=40", "data.pre_ms=100"])
    assert str(err.value) == (
        "data.window_bins=40 (the pretrained run's: 50), data.pre_ms=100 (the pretrained run's: 200): a fine-tuning "
        "of this family keeps the pretrained run's data.window_bins, data.align, data.trial_table, data.pre_ms, "
        "data.event_rounding, data.min_rate_hz (its evaluation cuts the pretraining sessions' windows with the "
        "fine-tuned run's settings); drop the --set, or pretrain a run with that setting")
    assert not (tmp_path / "ft").exists()
    finetune(pretrained, corpus_dir, held_out, tmp_path / "ft", strategy="frozen", steps=2, eval_every=1,
             overrides=["data.window_bins=50"])
    assert (tmp_path / "ft" / "model.safetensors").is_file()
    # the single-session model starts from nothing of the pretrained run's: its windows may differ
    finetune(pretrained, corpus_dir, held_out, tmp_path / "ss", strategy="scratch", steps=1, eval_every=1,
             overrides=["data.window_bins=40"])
    assert json.loads((tmp_path / "ss" / "config.json").read_text())["config"]["data"]["window_bins"] == 40


def test_a_finetuning_of_a_finetuned_run_warns_about_the_sessions_its_core_learnt(finetuned, corpus_dir, tmp_path):
    """Fine-tuning a fine-tuned run to one of the sessions its frozen core was pretrained on gave
    no warning (only the run's own session was counted, not its inherited ones)."""
    from spikefm.families import finetune

    out, _ = finetuned
    inherited = json.loads((out / "config.json").read_text())["family_info"]["inherited_window_splits"]
    first = sorted(inherited)[0]
    with pytest.warns(RuntimeWarning, match=rf"session '{first}' is one of the sessions {out} was trained on"):
        finetune(out, corpus_dir, first, tmp_path / "ft2", strategy="frozen", steps=1, eval_every=1)


def test_eval_on_a_corpus_without_the_runs_session_says_so(finetuned, held_out, tmp_path):
    """It printed a bare KeyError: 'spikefm: error: <session id>'."""
    from spikefm.families.neds.evaluate import evaluate_run

    out, _ = finetuned
    synthesize(tmp_path / "nwb", num_sessions=2, seed=9, duration_s=30.0, progress=False, preset="motor")
    build_corpus([str(tmp_path / "nwb")], tmp_path / "other", BuildConfig(test_fraction=0.5), progress=False)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'other'} holds no session '{held_out}' \(the run's\); "
                                         r"evaluate the run on the corpus it was trained on \(--data; its config.json "
                                         r"names it: "):
        evaluate_run(str(out), str(tmp_path / "other"), tasks=["encoding"])


def test_the_sessions_the_rrr_baseline_was_fitted_on_are_recorded(finetuned, pretrained, corpus_dir, held_out,
                                                                    tmp_path):
    """A single-session run's `rrr` (README: multi-session RRR) was fitted on its one session with
    no word of it; the results now list the sessions (`baseline_sessions`) and the printout says
    when there is only one."""
    from spikefm.families import finetune
    from spikefm.families.neds.evaluate import evaluate_run, format_results

    out, _ = finetuned
    pre_sessions = json.loads((pretrained / "config.json").read_text())["family_info"]["sessions"]
    res = evaluate_run(str(out), str(corpus_dir), tasks=["encoding"])
    assert res["baseline_sessions"] == sorted([held_out, *pre_sessions])
    assert "single-session baseline here" not in format_results({"ft": res})
    finetune(pretrained, corpus_dir, held_out, tmp_path / "scratch", strategy="scratch", steps=2, eval_every=1)
    res = evaluate_run(str(tmp_path / "scratch"), str(corpus_dir), tasks=["encoding"])
    assert res["baseline_sessions"] == [held_out] and "rrr" in res["results"]["encoding"]
    assert ("ss: rrr was fitted on this one session (the corpus holds no other session of the run or of the run it "
            "was fine-tuned from), so it is a single-session baseline here") in format_results({"ss": res}).splitlines()
    assert evaluate_run(str(out), str(corpus_dir), tasks=["encoding"], baselines=False)["baseline_sessions"] == []


def test_eval_progress_counts_each_stage_it_announces(finetuned, corpus_dir, monkeypatch):
    """The stage display's plan matches the stages the evaluation runs: each stage begins with
    every earlier one counted done, the last is the plan's last, and the RRR fits move the bar
    in between."""
    import contextlib

    from spikefm import progress as pg
    from spikefm.families.neds import evaluate as ev

    seen = {}

    class Recorder:
        def __init__(self, total):
            seen.update(total=total, done=0.0, begun=[], parts=[])

        def advance(self, n=1, **fields):
            seen["done"] += n
            if n < 1:
                seen["parts"].append((seen["begun"][-1][0], n))

        def update(self, **fields):
            if "description" in fields:
                seen["begun"].append((fields["description"], seen["done"]))

    @contextlib.contextmanager
    def recording_bar(total, description, enabled=True, **kw):
        assert enabled
        yield Recorder(total)

    monkeypatch.setattr(pg, "progress_bar", recording_bar)
    out, _ = finetuned
    ev.evaluate_run(str(out), str(corpus_dir), progress=True)
    labels = [d for d, _ in seen["begun"]]
    *stages, last = seen["begun"]
    assert last[0].startswith("scoring ") and "(" not in last[0]  # finish: the plain description again
    assert len(stages) == seen["total"] and seen["done"] == seen["total"]
    # each begins with the ones before it done (the one just before is counted as this begins,
    # unless its fits already moved the bar to its end)
    assert all(done in (max(i - 1, 0), i) for i, (_, done) in enumerate(stages))
    mods = json.loads((out / "config.json").read_text())["family_info"]["modalities"]
    expected = ["encoding: NEDS", "encoding: linear GLM", "encoding: RRR over", "decoding: NEDS and its probe",
                "decoding: linear", "decoding: oracle", *(f"decoding: RRR {lab}" for lab in mods["labels"]),
                "decoding: RRR behaviour", "decoding: ideal observer", "region classification"]
    assert len(labels) - 1 == len(expected)
    for got, want in zip(labels, expected):
        assert got.startswith(f"scoring {json.loads((out / 'config.json').read_text())['config']['data']['sessions']} "
                              f"({want}"), (got, want)
    # the GLM's and RRR's penalty fits advance their stage a quarter at a time (4 penalties)
    assert [n for s, n in seen["parts"] if "linear GLM" in s] == [0.25] * 4
    # without a display nothing is drawn: the default
    asked = []
    monkeypatch.setattr(pg, "progress_bar", lambda total, description, enabled=True, **kw: (
        asked.append(enabled), contextlib.nullcontext(pg._NoBar()))[1])
    ev.evaluate_run(str(out), str(corpus_dir), tasks=["encoding"], baselines=False)
    assert asked == [False]
