"""The masked-NDT claim of the quickstart, at its full size (about 5 minutes on one CPU core), and
the transfer study's headline rows.

Opt in with ``python -m pytest -m slow tests/test_ndt_transfer.py``. The default suite runs the
same code path at the smallest sizes (tests/test_quickstart.py); this test checks the numbers:
on synthetic data the fine-tuned model's co-smoothing ``bps_pooled`` is above the NLB smoothing
baseline and above the single-session model, and the fraction of the oracle is model / oracle.
"""
import json

import numpy as np
import pytest


@pytest.mark.slow
def test_fine_tuned_beats_smoothing_and_single_session_at_co_smoothing(tmp_path):
    from spikefm.experiments.transfer import QUICKSTART_SIZES, transfer

    res = transfer(tmp_path, **QUICKSTART_SIZES, tasks=("co-smoothing",))
    ft = res["fine-tuned"]["tasks"]["co-smoothing"]
    single = res["single-session"]["tasks"]["co-smoothing"]["model"]["bps_pooled"]
    model, smoothing, oracle = (ft["model"]["bps_pooled"], ft["smoothing"]["bps_pooled"],
                                ft["oracle"]["bps_pooled"])
    assert model > smoothing, (model, smoothing)
    assert model > single, (model, single)
    assert 0 < model < oracle
    np.testing.assert_allclose(ft["fraction_of_oracle"]["bps_pooled"], model / oracle)


def test_headline_rows_carry_the_lowest_chunks_interval_and_the_paired_smoothing_difference():
    from spikefm.families.ndt.evaluate import transfer_headline as _headline

    chunks = [{"start_bin": s, "end_bin": s + 10, "model": {"bps_pooled": b},
               "model_ci95": {"bps_pooled": [b - 0.1, b + 0.1]}} for s, b in ((25, 0.2), (35, -0.03), (45, 0.1))]
    ft = {"co-smoothing": {"model": {"bps_pooled": 0.3}, "smoothing": {"bps_pooled": 0.2},
                           "model_minus_smoothing": {"bps_pooled": {"value": 0.1, "ci95": [0.04, 0.16]}}},
          "forward-prediction-walk": {"model": {"bps_pooled": 0.1}, "chunks": chunks}}
    rows = _headline({"fine-tuned": {"tasks": ft}, "single-session": {"tasks": {}}})
    walk = rows["forward-prediction-walk bps_pooled"]
    assert walk["fine-tuned min chunk"] == -0.03
    assert (walk["fine-tuned min chunk, 95 % CI low"], walk["fine-tuned min chunk, 95 % CI high"]) == \
        pytest.approx((-0.13, 0.07))
    cos = rows["co-smoothing bps_pooled"]
    assert (cos["fine-tuned minus smoothing, 95 % CI low"], cos["fine-tuned minus smoothing, 95 % CI high"]) == \
        (0.04, 0.16)
    # a seed of 2 test windows: the interval is undefined (nan, as co-smoothing's), not "not scored"
    chunks[1]["model_ci95"] = {}
    walk = _headline({"fine-tuned": {"tasks": ft}, "single-session": {"tasks": {}}})["forward-prediction-walk bps_pooled"]
    assert np.isnan(walk["fine-tuned min chunk, 95 % CI low"]) and np.isnan(walk["fine-tuned min chunk, 95 % CI high"])


def test_seed_aggregate_is_the_sample_mean_and_sd_leaving_out_missing_values():
    import statistics

    from spikefm.experiments.transfer import aggregate_seeds

    per_seed = {2: {"metrics": {"co-smoothing bps_pooled": {"fine-tuned": 0.31, "single-session": 0.25}}},
                3: {"metrics": {"co-smoothing bps_pooled": {"fine-tuned": 0.27, "single-session": None},
                                "choice-decoding accuracy (hidden)": {"fine-tuned": 0.8}}},
                101: {"metrics": {"co-smoothing bps_pooled": {"fine-tuned": 0.36, "single-session": 0.30}}}}
    agg = aggregate_seeds(per_seed)
    ft = agg["co-smoothing bps_pooled"]["fine-tuned"]
    assert ft["n"] == 3
    assert ft["mean"] == pytest.approx(statistics.mean([0.31, 0.27, 0.36]))
    assert ft["sd"] == pytest.approx(statistics.stdev([0.31, 0.27, 0.36]))
    single = agg["co-smoothing bps_pooled"]["single-session"]  # seed 3's None is left out
    assert single["n"] == 2 and single["mean"] == pytest.approx(0.275)
    assert single["sd"] == pytest.approx(statistics.stdev([0.25, 0.30]))
    # one value has no spread: no s.d. (it read 0.0)
    assert agg["choice-decoding accuracy (hidden)"]["fine-tuned"] == {"mean": 0.8, "sd": None, "n": 1}
    # an undefined value on one seed (NaN: an interval on too few test windows) is left out like a
    # missing one; the mean was NaN and transfer.json held the bare token NaN
    agg = aggregate_seeds({1: {"metrics": {"m": {"ci low": -0.5159}}}, 2: {"metrics": {"m": {"ci low": float("nan")}}}})
    assert agg["m"]["ci low"] == {"mean": -0.5159, "sd": None, "n": 1}


def test_a_protocol_study_records_its_windows_split_and_decoding_block(tmp_path):
    """``spikefm experiment transfer --protocol jiang2025``: both benchmarks in ``results_ndt.json``
    and the seed's row of ``transfer.json`` say they were computed on 150-bin windows split 8:1:1,
    decoding from block 3 (the smallest sizes that run every stage)."""
    import json

    from spikefm.experiments.transfer import transfer_study

    summary = transfer_study(tmp_path / "study", seeds=[5], sessions=2, duration_s=60.0, pretrain_steps=2,
                             finetune_steps=2, eval_every=1, strategy="frozen", protocol="jiang2025",
                             tasks=["co-smoothing", "choice-decoding"], overrides=["train.batch_size=2"],
                             quiet=True)
    assert summary["per_seed"][5]["soup_tried"] is False  # one strategy: nothing to average
    ev = summary["per_seed"][5]["evaluation"]
    counts = ev.pop("windows_per_split")
    assert ev == {"split": "test", "window_bins": 150, "decode_layer": 3, "split_fractions": [0.8, 0.1, 0.1]}
    total = sum(counts.values())
    assert counts["val"] == round(0.1 * total) and counts["test"] == round(0.1 * total) > 0
    results = json.loads((tmp_path / "study" / "seed_5" / "results_ndt.json").read_text())
    assert set(results) == {"fine-tuned", "single-session"}
    for bench in results.values():
        assert (bench["window_bins"], bench["decode_layer"], bench["split_fractions"]) == (150, 3, [0.8, 0.1, 0.1])
        assert bench["windows_per_split"] == counts and bench["num_test_windows"] == counts["test"]


def test_the_transfer_commands_defaults_are_the_quickstarts_sizes():
    """``spikefm experiment transfer`` without flags, ``transfer()`` without arguments and the
    quickstart's NDT step run one setting: the one the README's headline table was measured on."""
    import inspect

    from spikefm.cli import build_parser
    from spikefm.experiments.transfer import QUICKSTART_SIZES, transfer

    args = build_parser().parse_args(["experiment", "transfer", "--out", "T"])
    params = inspect.signature(transfer).parameters
    for key, value in QUICKSTART_SIZES.items():
        assert getattr(args, key) == value, key
        assert params[key].default == value, key
    assert (QUICKSTART_SIZES["sessions"], QUICKSTART_SIZES["duration_s"]) == (12, 300.0)  # the README's table


def test_transfer_refuses_soup_with_one_strategy_before_any_data_is_written(tmp_path, capsys):
    from spikefm.cli import main

    out = tmp_path / "study"
    assert main(["experiment", "transfer", "--out", str(out), "--seeds", "1", "--strategy", "frozen",
                 "--soup", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "soup averages auto's candidates" in err and "--strategy auto" in err
    assert not any(out.rglob("*.nwb"))


def test_transfer_passes_soup_to_finetune_and_the_ndt_default_is_on(tmp_path, monkeypatch):
    """``experiment transfer --no-soup`` reaches ``families.finetune`` as ``soup=False``; without the
    flag ``None`` (the family's default), which for the NDT is on."""
    from spikefm import families
    from spikefm.cli import main
    from spikefm.experiments import transfer as tr

    seen = []

    def fake_transfer(out, *, family="ndt", **options):
        seen.append(options.get("soup"))
        raise RuntimeError("stop here")

    monkeypatch.setattr(tr, "transfer", fake_transfer)
    out = tmp_path / "s"
    for flags, want in ((["--no-soup"], False), (["--soup"], True), ([], None)):
        # one folder: the stand-in stopped each study before a seed made anything, so the next
        # command, with other settings, is not refused
        assert main(["experiment", "transfer", "--out", str(out), "--seeds", "1", *flags]) != 0  # the stand-in stops it
        assert seen[-1] is want
    assert families.get("ndt").finetune_soup is True
    assert getattr(families.get("neds"), "finetune_soup", False) is False


def test_a_rerun_reuses_finished_seeds_and_refuses_other_settings(tmp_path, monkeypatch):
    """A finished transfer study run again retrained every model (same scores); finished seeds are
    now reused, a new seed adds to the study, and other settings are refused (their runs would
    replace the seeds' runs)."""
    import json

    from spikefm.experiments import transfer as tr

    calls = []

    def fake_transfer(out, *, seed, **options):
        calls.append(seed)
        out.mkdir(parents=True, exist_ok=True)
        bench = {"session_id": f"s{seed}", "num_units": 7, "num_test_windows": 4,
                 "tasks": {"co-smoothing": {"model": {"bps_pooled": 0.1 * seed}}}}
        (out / "results_ndt.json").write_text("{}")
        return {"fine-tuned": bench, "single-session": {"tasks": {}}, "finetune": {"strategy": "frozen"}}

    monkeypatch.setattr(tr, "transfer", fake_transfer)
    first = tr.transfer_study(tmp_path, seeds=[1, 2], finetune_steps=5)
    assert calls == [1, 2]
    again = tr.transfer_study(tmp_path, seeds=[1, 2], finetune_steps=5, quiet=True)  # output only: same study
    assert calls == [1, 2] and again["mean_sd"] == first["mean_sd"]
    more = tr.transfer_study(tmp_path, seeds=[1, 2, 3], finetune_steps=5)
    assert calls == [1, 2, 3]
    assert more["mean_sd"]["co-smoothing bps_pooled"]["fine-tuned"]["mean"] == pytest.approx(0.2)
    assert json.loads((tmp_path / "transfer.json").read_text())["settings"]["seeds"] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"holds a transfer study made with other settings \(finetune_steps; "
                                         r"finetune_steps: 5 there, 6 now\)"):
        tr.transfer_study(tmp_path, seeds=[1], finetune_steps=6)
    assert calls == [1, 2, 3]


def _study_files(out) -> dict:
    """Every file under ``out`` with its bytes and modification time (what "nothing changed" means)."""
    from spikefm.fileio import LOCK_NAME
    from spikefm.train.finetune import FINETUNE_LOCK_NAME

    # the folder locks' files are touched by every command that takes the lock: not the study's content
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in (LOCK_NAME, FINETUNE_LOCK_NAME)}


def test_an_interrupted_study_reuses_its_finished_seeds_and_refuses_other_settings(tmp_path, monkeypatch, capsys):
    """Ctrl-C during seed 2 after seed 1 had finished: the rerun trained seed 1 again (only a
    finished study's transfer.json recorded seeds), and a rerun with other data settings reused
    seed 2's recordings and then wrote the new settings into transfer.json. The settings are now
    recorded before any seed runs and each seed as soon as it finishes."""
    import json

    from spikefm.cli import main
    from spikefm.experiments import transfer as tr

    calls, interrupt = [], {2}

    def fake_transfer(out, *, seed, **options):
        calls.append(seed)
        (out / "nwb_ndt").mkdir(parents=True, exist_ok=True)  # what a real seed reuses on a rerun
        (out / "nwb_ndt" / "s.nwb").write_text(f"{options['sessions']} sessions of {options['duration_s']} s")
        if seed in interrupt:
            interrupt.discard(seed)
            raise KeyboardInterrupt  # Ctrl-C in the middle of seed 2
        bench = {"session_id": f"s{seed}", "num_units": 7, "num_test_windows": 4,
                 "tasks": {"co-smoothing": {"model": {"bps_pooled": 0.1 * seed}}}}
        (out / "results_ndt.json").write_text(json.dumps(bench))
        return {"fine-tuned": bench, "single-session": {"tasks": {}}, "finetune": {"strategy": "frozen"}}

    monkeypatch.setattr(tr, "transfer", fake_transfer)
    out = tmp_path / "study"
    command = ["experiment", "transfer", "--out", str(out), "--seeds", "1,2", "--pretrain-steps", "60",
               "--finetune-steps", "40", "--quiet"]
    assert main([*command, "--sessions", "4", "--duration-s", "60"]) == 130
    assert calls == [1, 2]
    assert not (out / "transfer.json").exists()  # only a finished study has a summary (the report reads it)
    before = _study_files(out)
    capsys.readouterr()

    assert main([*command, "--sessions", "6", "--duration-s", "30"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "holds a transfer study made with other settings (duration_s, sessions; duration_s: 60.0 there, " \
           "30.0 now)" in err
    assert calls == [1, 2] and _study_files(out) == before  # nothing ran, nothing changed

    assert main([*command, "--sessions", "4", "--duration-s", "60"]) == 0
    assert calls == [1, 2, 2]  # seed 1 reused, seed 2 continued
    seed_1 = out / "seed_1" / "results_ndt.json"
    assert (seed_1.read_bytes(), seed_1.stat().st_mtime_ns) == before[seed_1]
    summary = json.loads((out / "transfer.json").read_text())
    assert list(summary["per_seed"]) == ["1", "2"]
    assert (summary["settings"]["sessions"], summary["settings"]["duration_s"]) == (4, 60.0)
    assert summary["mean_sd"]["co-smoothing bps_pooled"]["fine-tuned"]["mean"] == pytest.approx(0.15)
    assert main([*command, "--sessions", "6", "--duration-s", "30"]) == 2  # a finished study: refused as before
    assert calls == [1, 2, 2]


def test_a_rerun_with_fewer_seeds_keeps_the_others_finished(tmp_path, monkeypatch):
    """transfer.json summarises the seeds asked for; a seed finished earlier but left out of one
    rerun is still reused by the next."""
    import json

    from spikefm.experiments import transfer as tr

    calls = []

    def fake_transfer(out, *, seed, **options):
        calls.append(seed)
        out.mkdir(parents=True, exist_ok=True)
        bench = {"session_id": f"s{seed}", "tasks": {"co-smoothing": {"model": {"bps_pooled": 0.1 * seed}}}}
        (out / "results_ndt.json").write_text(json.dumps(bench))
        return {"fine-tuned": bench, "single-session": {"tasks": {}}, "finetune": {"strategy": "frozen"}}

    monkeypatch.setattr(tr, "transfer", fake_transfer)
    tr.transfer_study(tmp_path, seeds=[1, 2], finetune_steps=5)
    assert list(tr.transfer_study(tmp_path, seeds=[1], finetune_steps=5)["per_seed"]) == [1]
    assert list(tr.transfer_study(tmp_path, seeds=[1, 2], finetune_steps=5)["per_seed"]) == [1, 2]
    assert calls == [1, 2]


def test_a_real_interrupted_study_continues_without_redoing_its_finished_seed(tmp_path, monkeypatch):
    """The smallest real study, interrupted while fine-tuning seed 6: other data settings are
    refused (seed 6's recordings and corpus would have been reused), the same command reuses seed
    5 untouched and continues seed 6, and the report renders only the finished study."""
    import json

    from spikefm import families
    from spikefm.cli import main

    finetune, interrupted = families.finetune, []

    def ctrl_c_in_seed_6(run, corpus, session, out, **options):
        if "seed_6" in str(out) and not interrupted:
            interrupted.append(out)
            raise KeyboardInterrupt
        return finetune(run, corpus, session, out, **options)

    monkeypatch.setattr(families, "finetune", ctrl_c_in_seed_6)
    out = tmp_path / "study"
    command = ["experiment", "transfer", "--out", str(out), "--seeds", "5,6", "--pretrain-steps", "2",
               "--finetune-steps", "2", "--strategy", "frozen", "--set", "train.batch_size=2", "--quiet"]
    assert main([*command, "--sessions", "2", "--duration-s", "60"]) == 130
    assert interrupted and (out / "seed_6" / "nwb_ndt").is_dir() and not (out / "transfer.json").exists()
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 2  # no finished study to show
    before = _study_files(out)
    assert main([*command, "--sessions", "3", "--duration-s", "60"]) == 2
    assert _study_files(out) == before
    assert main([*command, "--sessions", "2", "--duration-s", "60"]) == 0
    seed_5 = out / "seed_5" / "results_ndt.json"
    assert (seed_5.read_bytes(), seed_5.stat().st_mtime_ns) == before[seed_5]
    # seed 6's pretraining had finished before the interruption: continued, not trained again
    pretrained = out / "seed_6" / "run_ndt_pretrain" / "model.safetensors"
    assert (pretrained.read_bytes(), pretrained.stat().st_mtime_ns) == before[pretrained]
    summary = json.loads((out / "transfer.json").read_text())
    assert list(summary["per_seed"]) == ["5", "6"] and (out / "seed_6" / "results_ndt.json").is_file()
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0


def test_a_study_stopped_by_its_own_checks_leaves_its_folder_usable(tmp_path, capsys):
    """--tasks bogus stopped the study before any seed made anything, yet its recorded settings
    refused the corrected command ('holds a transfer study made with other settings')."""
    from spikefm.experiments import transfer as tr

    with pytest.raises(ValueError, match="bogus"):
        tr.transfer_study(tmp_path, seeds=[1], tasks=["bogus"])
    with pytest.raises(ValueError, match="sessions must be an int >= 2"):  # not "made with other settings"
        tr.transfer_study(tmp_path, seeds=[1], sessions=1)
    assert not list(tmp_path.glob("seed_*")) or not any(any(p.iterdir()) for p in tmp_path.glob("seed_*"))


def test_a_seeds_runs_made_with_other_settings_are_started_again(tmp_path):
    """transfer() into a seed folder that holds runs of other settings (called directly: a study
    refuses other settings) trains them anew, and what was fine-tuned from the old pretraining
    goes with it; the same settings again leave every run as it is."""
    from spikefm.experiments.transfer import transfer
    from spikefm.train.checkpoint import exported_step

    def run(steps):
        return transfer(tmp_path, sessions=2, duration_s=60.0, pretrain_steps=steps, finetune_steps=2,
                        strategy="frozen", overrides=["train.batch_size=2"], quiet=True)

    run(2)
    pre, ft = tmp_path / "run_ndt_pretrain", tmp_path / "run_ndt_finetune"
    stamps = {p: p.stat().st_mtime_ns for p in (pre / "model.safetensors", ft / "model.safetensors")}
    run(2)  # the same settings: nothing trained again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    run(3)
    assert exported_step(pre) == 3
    assert ft.stat().st_mtime_ns != 0 and (ft / "model.safetensors").stat().st_mtime_ns != stamps[ft / "model.safetensors"]
    assert json.loads((ft / "config.json").read_text())["config"]["data"]["init_from"] == str(pre)


@pytest.mark.parametrize("options,error,match", [
    (dict(preset="huge"), ValueError, "unknown NDT preset 'huge'"),
    (dict(overrides=["bogus.x=1"]), ValueError, "bogus"),
    (dict(family="ar"), ValueError, "a transfer study needs"),
    (dict(synth_preset="mice"), ValueError, r"synth_preset must be one of ibl, motor, spontaneous"),
    (dict(finetune_step=3), TypeError, r"transfer_study\(\) got an unexpected option 'finetune_step'"),
    # --set train.steps ran that many pretraining steps while transfer.json recorded --pretrain-steps
    # the synthesizer's refusal named --units, which the study does not have
    (dict(duration_s=1e9), ValueError, r"^--duration-s 1e\+09: a transfer study's synthetic sessions have up to 80 "
                                       r"units, so at most [\d,]+ s each fit in memory; give a shorter --duration-s$"),
    (dict(overrides=["train.steps=5"]), ValueError, r"^--set train.steps=5: a transfer study's pretraining steps are "
                                                    r"--pretrain-steps .*give --pretrain-steps N instead of this --set$"),
    # found after synthesis and the corpus build, and the corrected command was then refused
    pytest.param(dict(overrides=["train.device=cuda"]), ValueError, r"^--set train.device='cuda' but no CUDA device",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")),
])
def test_a_python_study_checks_every_setting_before_its_folder_is_bound(tmp_path, options, error, match):
    """From Python (the CLI checked these itself) a bad preset, override or family was found after
    the first seed's data were synthesized (an AR model was even pretrained), and the folder then
    refused the corrected call as 'a transfer study made with other settings'."""
    from spikefm.experiments.transfer import FAST_SIZES, transfer_study

    out = tmp_path / "t"
    with pytest.raises(error, match=match):
        transfer_study(out, seeds=[1], **{**FAST_SIZES, **options})
    assert not out.exists() or not any(out.rglob("*.nwb"))
    mine = tmp_path / "mine"  # a folder of someone else's: refused as from the CLI
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"folder has files that are not a transfer study's \(found 'notes.txt'\)"):
        transfer_study(mine, seeds=[1], **FAST_SIZES)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_study_arguments_as_strings_or_one_int_are_read_or_refused_clearly(tmp_path):
    """seeds=2 failed with a bare "'int' object is not iterable"; tasks='co-smoothing' passed the
    checks and then failed every job on task 'c'."""
    from spikefm.experiments.jobs import name_list, seed_list
    from spikefm.experiments.transfer import transfer_study

    assert seed_list("1, 2,3") == [1, 2, 3] and seed_list((4, 5)) == [4, 5] and seed_list(range(2)) == [0, 1]
    for bad in (2, 2.0, {1, 2}, None):
        with pytest.raises(TypeError, match=r"seeds must be a list of ints \(one per seed\), e\.g\. \[1, 2, 3\]"):
            seed_list(bad)
    for bad in ([1, 1], [-1], [], ["x"], [1.5], [True], "1,,2", "1,"):  # an empty item: a seed left out
        with pytest.raises(ValueError, match="seeds must be distinct integers >= 0"):
            seed_list(bad)
    assert name_list("co-smoothing", "--tasks", "a,b") == ["co-smoothing"]
    assert name_list(" a, b ", "--orders", "a,b") == ["a", "b"] and name_list(("a",), "--orders", "a") == ["a"]
    assert name_list(None, "--tasks", "a") is None
    with pytest.raises(ValueError, match=r"^--orders names 'ranked' twice \(ranked,random,ranked\); give each once$"):
        name_list(["ranked", "random", "ranked"], "--orders", "ranked,random")
    with pytest.raises(TypeError, match=r"^--orders must be a list of names or one comma-separated string"):
        name_list(3, "--orders", "ranked,random")
    with pytest.raises(ValueError, match="names nothing"):
        name_list(" , ", "--tasks", "a")
    with pytest.raises(ValueError, match="has an empty name"):
        name_list("ranked,,random", "--orders", "a")
    with pytest.raises(TypeError, match="seeds must be a list of ints"):
        transfer_study(tmp_path / "t", seeds=2)
    assert not (tmp_path / "t").exists()


def test_an_interrupted_synthesis_or_build_is_not_taken_for_the_study_data(tmp_path):
    """A study killed after 2 of its 3 recordings were written pretrained, when run again, on 1
    session (the folder counted as synthesized once any .nwb was there), and after 1 of 3 every
    rerun failed (a 1-session corpus was kept)."""
    from spikefm.experiments.transfer import transfer

    kw = dict(sessions=3, duration_s=40.0, pretrain_steps=2, finetune_steps=2, strategy="frozen",
              overrides=["train.batch_size=2"], quiet=True)
    transfer(tmp_path / "whole", **kw)
    part = tmp_path / "part"
    from spikefm.corpus.synth import synthesize
    from spikefm.corpus.build import BuildConfig, build_corpus

    synthesize(part / "nwb_ndt", num_sessions=1, seed=1, duration_s=40.0, units_range=(30, 80))
    build_corpus([str(part / "nwb_ndt")], part / "corpus_sessions", BuildConfig(test_fraction=0.0), progress=False)
    transfer(part, **kw)
    manifests = [json.loads((d / "corpus_sessions" / "manifest.json").read_text()) for d in (tmp_path / "whole", part)]
    assert [len(m["sessions"]) for m in manifests] == [3, 3]
    assert [s["split"] for s in manifests[0]["sessions"]] == [s["split"] for s in manifests[1]["sessions"]]
    assert len(list((part / "nwb_ndt").rglob("*.nwb"))) == 3


def test_a_decoding_task_of_a_label_the_sessions_lack_is_refused_before_training(tmp_path):
    """--synth-preset motor --tasks choice-decoding synthesized, pretrained and fine-tuned both
    models, then scored nothing and exited 0 with an empty summary."""
    from spikefm.experiments import transfer as tr

    out = tmp_path / "t"
    opts = dict(tr.FAST_SIZES, synth_preset="motor", strategy="frozen")
    with pytest.raises(tr.NothingToScore, match=r"^--tasks choice-decoding: the synthetic 'motor' sessions' trials have "
                                                 r"no label 'choice' \(their labels: target_angle\); nothing was trained"):
        tr.transfer_study(out, seeds=[1], tasks=["co-smoothing", "choice-decoding"], **opts)
    assert not list(out.glob("seed_*"))
    # a time column is no label (the windows' rule, not any column of any table)
    with pytest.raises(tr.NothingToScore, match=r"no label 'go_cue_time'"):
        tr.transfer_study(out, seeds=[1], tasks=["go_cue_time-decoding"], **opts)
    # the corrected command is not refused as 'a transfer study made with other settings'
    assert tr._finished_seeds(out, {**opts, "tasks": ["co-smoothing", "target_angle-decoding"]}) == {}


def test_a_seed_stopped_after_its_auto_fine_tuning_keeps_it_and_a_quickstart_marker_survives(tmp_path, monkeypatch):
    """A seed stopped while evaluating had its finished auto fine-tuning deleted and trained again
    (finetune refuses a finished auto folder; the refusal was taken for 'other settings'); a
    recordings folder holding only the quickstart's marker was deleted, marker and all."""
    from spikefm import families
    from spikefm.experiments import transfer as tr

    out = tmp_path / "s"
    (out / "nwb_ndt").mkdir(parents=True)
    (out / "nwb_ndt" / ".quickstart-synth.json").write_text("{}")
    kw = dict(sessions=2, duration_s=60.0, pretrain_steps=2, finetune_steps=2, overrides=["train.batch_size=2"],
              quiet=True)
    evaluate = families.evaluate

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(families, "evaluate", stop)
    with pytest.raises(KeyboardInterrupt):
        tr.transfer(out, **kw)  # strategy auto, the default
    assert (out / "nwb_ndt" / ".quickstart-synth.json").is_file()
    ft = out / "run_ndt_finetune"
    stamps = {p: p.stat().st_mtime_ns for p in [ft / "model.safetensors", ft / "finetune.json",
                                                 *ft.glob("candidates/*/model.safetensors")]}
    monkeypatch.setattr(families, "evaluate", evaluate)
    res = tr.transfer(out, **kw)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert res["finetune"]["strategy"] == json.loads((ft / "finetune.json").read_text())["strategy"]
    # other fine-tuning arguments: the fine-tunings are trained anew, the pretraining kept
    pre = out / "run_ndt_pretrain" / "model.safetensors"
    before = pre.stat().st_mtime_ns
    tr.transfer(out, **{**kw, "finetune_steps": 3})
    assert pre.stat().st_mtime_ns == before and (ft / "model.safetensors").stat().st_mtime_ns != stamps[ft / "model.safetensors"]
    # a folder of someone else's where a run goes: refused, not removed
    (out / "run_ndt_single").mkdir(exist_ok=True)
    (out / "run_ndt_single" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        tr.transfer(out, **{**kw, "finetune_steps": 4})
    assert (out / "run_ndt_single" / "notes.txt").read_text() == "mine"


def test_sessions_without_val_windows_stop_the_study_before_training_and_bind_nothing(tmp_path):
    """Sessions too short for a val window: pretraining failed (or, after the advice to set
    train.eval_every=0, fine-tuning did, in the same words naming no session), and the folder then
    refused every corrected command as 'a transfer study made with other settings'."""
    from spikefm.experiments.transfer import NothingToScore, transfer_study

    out = tmp_path / "t"
    for duration in (10.0, 11.0):  # the second call, with other settings, is not refused as another study's
        with pytest.raises(NothingToScore, match=r"^the held-out session \S+ has no val windows .*nothing was "
                                                  rf"trained: use longer sessions \(--duration-s, now {duration:g}\)"):
            transfer_study(out, seeds=[1], sessions=2, duration_s=duration, pretrain_steps=2, finetune_steps=2,
                           quiet=True, overrides=["train.eval_every=0"])
        assert not any(out.rglob("*.nwb")) and not any(out.rglob("model.safetensors"))


def test_the_protocol_s_preset_applies_unless_a_preset_is_given(monkeypatch):
    """`experiment transfer --protocol jiang2025` trained the tiny model: the command's --preset
    defaulted to tiny, so the protocol's own (base, the published size) never applied."""
    from spikefm import cli, families
    from spikefm.experiments import transfer as tr

    assert families.resolved_preset("ndt", None, "jiang2025") == "base"
    assert families.resolved_preset("ndt", "tiny", "jiang2025") == "tiny"
    assert families.resolved_preset("ndt") == families.default_preset("ndt") == "tiny"
    base, model = families.get("ndt").preset("base"), families.run_config("ndt", protocol="jiang2025").model
    assert (model.dim, model.n_layers, model.n_heads) == (base.dim, base.n_layers, base.n_heads) == (512, 5, 8)
    seen = {}
    monkeypatch.setattr(tr, "transfer_study", lambda out, **kw: seen.update(kw))
    assert cli.main(["experiment", "transfer", "--out", "x", "--protocol", "jiang2025", "--eval-every", "5"]) == 0
    assert "preset" not in seen and seen["protocol"] == "jiang2025" and seen["eval_every"] == 5
    # a study recorded before (the CLI always wrote preset "tiny") is still the same study
    assert tr._as_run({"family": "ndt"})["preset"] == tr._as_run({"family": "ndt", "preset": "tiny"})["preset"]
    assert tr._as_run({"family": "ndt", "protocol": "jiang2025"})["preset"] == "base"


def test_a_single_session_run_removed_since_is_trained_again(tmp_path):
    """`auto` keeps the single-session model among its candidates; with that folder gone, a rerun
    failed with '.../candidates/scratch does not exist; expected a spikefm run directory'."""
    import shutil

    from spikefm.experiments.transfer import seed_paths, transfer

    kw = dict(sessions=2, duration_s=60.0, pretrain_steps=2, finetune_steps=2, overrides=["train.batch_size=2"],
              quiet=True, tasks=("co-smoothing",), soup=False)
    first = transfer(tmp_path, **kw)
    scratch = tmp_path / "run_ndt_finetune" / "candidates" / "scratch"
    assert first["finetune"]["single_session"]["out_dir"] == str(scratch) and scratch.is_dir()
    shutil.rmtree(scratch)
    again = transfer(tmp_path, **kw)
    single = seed_paths(tmp_path)["single"]
    assert (single / "model.safetensors").is_file()
    assert again["single-session"]["tasks"]["co-smoothing"]["model"]["bps_pooled"] is not None
    # weights without the early-stopping record (stopped before the best ones were put in place):
    # not a finished run, so not scored as one
    (single / "early_stopping.json").unlink()
    transfer(tmp_path, **kw)
    assert (single / "early_stopping.json").is_file()


def test_a_study_recorded_with_set_train_steps_is_the_same_as_pretrain_steps():
    """Studies made before --set train.steps was refused pretrained that many steps; the corrected
    command (--pretrain-steps N) is the same study, not one 'made with other settings'."""
    from spikefm.experiments.transfer import _as_run

    old = _as_run({"family": "ndt", "pretrain_steps": 60, "overrides": ["train.steps=5", "train.batch_size=2"]})
    assert old == _as_run({"family": "ndt", "pretrain_steps": 5, "overrides": ["train.batch_size=2"]})
    assert old != _as_run({"family": "ndt", "pretrain_steps": 60, "overrides": ["train.batch_size=2"]})
