"""``spikefm experiment transfer`` with a family other than the NDT: its folders carry the
family's name, its per-seed summary comes from the family's ``transfer_headline`` and
``spikefm report`` renders its results file. The end-to-end NEDS study is ``slow`` (about 40 s);
the default suite checks each part on results built by hand."""
import json
import re

import pytest


def _neds_results(scale: float) -> dict:
    """A NEDS ``evaluate_run`` ``results`` dict in the shape that function writes."""
    enc = {m: {"bps_pooled": scale * v, "bps_per_neuron_mean": scale * v / 2, "r2_single_trial": 0.1,
               "r2_psth": 0.2, "units_scored_r2": 9, "units": 10}
           for m, v in (("neds", 0.05), ("linear", 0.03), ("rrr", 0.04), ("oracle", 0.4))}
    label = {"accuracy": 0.8, "balanced_accuracy": 0.75, "chance": 0.5, "chance_balanced": 0.5, "n": 20,
             "accuracy_ci95": [0.6, 0.9], "classes": 2}
    dec = {m: {"choice": {**label, "accuracy": a}, "wheel_speed": {"r2_single_trial": r, "r2_psth": r}}
           for m, a, r in (("neds", 0.85, 0.5), ("neds_probe", 0.8, 0.45), ("linear", 0.7, 0.2),
                           ("rrr", 0.65, 0.25), ("oracle", 1.0, 0.9))}
    dec["ideal_observer"] = {"choice": {**label, "accuracy": 0.95}}  # labels only: no R² column
    region = {k: {"accuracy": a, "balanced_accuracy": a, "chance": 0.3, "chance_balanced": 0.25,
                  "num_units": 10, "classes": ["CA1", "LP"], "confusion": [[3, 2], [1, 4]],
                  "grouping": "stratified 5-fold (one session)"}
              for k, a in (("embedding", 0.6 * scale), ("firing_stats", 0.35), ("psth_counts", 0.5))}
    return {"encoding": enc, "decoding": dec, "region": region,
            "comparisons": {"encoding": {"neds - linear": {"bps_pooled": {"value": 0.02, "ci95": [0.01, 0.03]}}}}}


def test_neds_headline_reads_each_model_and_baseline_from_the_results():
    from spikefm import families

    ft, ss = _neds_results(1.0), _neds_results(0.5)
    rows = families.transfer_headline("neds", {"fine-tuned": ft, "single-session": ss})
    enc = rows["encoding bps_pooled"]
    assert enc["fine-tuned"] == ft["encoding"]["neds"]["bps_pooled"]
    assert enc["single-session"] == ss["encoding"]["neds"]["bps_pooled"]
    assert (enc["linear"], enc["rrr"], enc["oracle"]) == (0.03, 0.04, 0.4)
    assert (enc["fine-tuned minus linear, 95 % CI low"], enc["fine-tuned minus linear, 95 % CI high"]) == (0.01, 0.03)
    choice = rows["choice accuracy"]
    assert choice == {"fine-tuned": 0.85, "single-session": 0.85, "probe": 0.8, "linear": 0.7, "rrr": 0.65,
                      "oracle": 1.0, "ideal observer": 0.95, "chance": 0.5, "n_scored": 20}
    wheel = rows["wheel_speed R² (single trial)"]
    assert "ideal observer" not in wheel and wheel["fine-tuned"] == 0.5 and wheel["linear"] == 0.2
    region = rows["region balanced accuracy"]
    assert region["fine-tuned"] == pytest.approx(0.6) and region["single-session"] == pytest.approx(0.3)
    assert (region["firing stats"], region["psth counts"], region["chance"]) == (0.35, 0.5, 0.25)


def test_a_family_without_transfer_headline_is_refused_in_one_line(monkeypatch):
    from spikefm import families

    class Bare:
        pass

    monkeypatch.setattr(families, "get", lambda name: Bare())
    with pytest.raises(ValueError, match=r"^the 'mine' family has no transfer_headline\(\), which a transfer study needs to summarise its "
                                         r"benchmark; .*\(spikefm.train.family documents it\)$"):
        families.transfer_headline("mine", {})


def test_a_neds_study_resumes_from_its_own_results_files(tmp_path, monkeypatch):
    """A rerun reuses the seeds whose ``results_neds.json`` is there (the file a NEDS study writes)."""
    from spikefm.experiments import transfer as tr

    calls = []

    def fake_transfer(out, *, seed, **options):
        calls.append(seed)
        out.mkdir(parents=True, exist_ok=True)
        res = {"fine-tuned": {**_neds_results(1.0), "session_id": f"s{seed}", "num_units": 10,
                              "num_windows": {"train": 8, "val": 1, "test": 3}},
               "single-session": _neds_results(0.5)}
        (out / "results_neds.json").write_text(json.dumps(res))
        return {**res, "finetune": {"strategy": "frozen"}}

    monkeypatch.setattr(tr, "transfer", fake_transfer)
    first = tr.transfer_study(tmp_path, seeds=[1, 2], family="neds", finetune_steps=5)
    assert first["per_seed"][1]["num_test_windows"] == 3 and first["per_seed"][2]["session_id"] == "s2"
    assert first["mean_sd"]["choice accuracy"]["fine-tuned"] == {"mean": 0.85, "sd": 0.0, "n": 2}
    tr.transfer_study(tmp_path, seeds=[1, 2], family="neds", finetune_steps=5)
    assert calls == [1, 2]  # both reused
    # the report's per-seed tables hold models only: the count of scored windows was a column
    # with a 'mean' (the printed table leaves it out)
    from spikefm.report.build import build_report

    text = build_report(tmp_path).html()
    table = re.search(r'<table class="data" data-table="study-choice accuracy">.*?</table>', text, flags=re.S).group(0)
    assert "fine-tuned" in table and "n_scored" not in table


def test_the_report_renders_a_neds_studys_results_file(tmp_path):
    from spikefm.report.evaluation import parse_evaluation

    obj = {"fine-tuned": {**_neds_results(1.0), "session_id": "s1", "split": "test",
                          "num_windows": {"train": 8, "val": 1, "test": 3}},
           "single-session": _neds_results(0.5)}
    ev = parse_evaluation(obj)
    assert ev.family == "neds" and list(ev.models) == ["fine-tuned", "single-session"]
    path = tmp_path / "results_neds.json"
    path.write_text(json.dumps(obj))
    from spikefm.cli import main

    assert main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    for run in ("fine-tuned", "single-session"):
        assert f'data-table="neds-encoding-{run}"' in page and f'data-table="neds-region-{run}"' in page
    # the region table says how its folds were made (it said "grouped by session" for one session)
    assert "folds: stratified 5-fold (one session)" in page and "folds grouped by session" not in page


@pytest.mark.slow
def test_a_neds_transfer_study_runs_end_to_end(tmp_path):
    """The smallest NEDS study: folders named after the family, the per-seed row read from the
    family's results file, the report renders it."""
    from spikefm.cli import main
    from spikefm.corpus.reader import Corpus

    out = tmp_path / "study"
    assert main(["experiment", "transfer", "--model", "neds", "--out", str(out), "--seeds", "5", "--sessions", "2",
                 "--duration-s", "60", "--pretrain-steps", "2", "--finetune-steps", "2", "--strategy", "frozen",
                 "--set", "train.batch_size=2", "--quiet"]) == 0
    seed = out / "seed_5"
    assert {p.name for p in seed.iterdir()} >= {"nwb_neds", "corpus_sessions", "run_neds_pretrain",
                                                "run_neds_finetune", "run_neds_single", "results_neds.json"}
    results = json.loads((seed / "results_neds.json").read_text())
    row = json.loads((out / "transfer.json").read_text())["per_seed"]["5"]
    ft = results["fine-tuned"]
    assert row["session_id"] == ft["session_id"] == Corpus(seed / "corpus_sessions").session_ids("test")[0]
    assert row["num_units"] == ft["num_units"] == ft["encoding"]["neds"]["units"]
    assert row["num_test_windows"] == ft["num_windows"]["test"]
    assert row["metrics"]["encoding bps_pooled"]["fine-tuned"] == ft["encoding"]["neds"]["bps_pooled"]
    assert row["metrics"]["encoding bps_pooled"]["single-session"] == \
        results["single-session"]["encoding"]["neds"]["bps_pooled"]
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    assert 'data-table="neds-encoding-single-session"' in (tmp_path / "r.html").read_text()


def test_results_name_the_family_that_computed_them(monkeypatch):
    """A plugin built on a built-in family's evaluation (``class Mine(NDTFamily)``) writes its own
    name into the results, so ``format_results`` and ``spikefm report`` read them as its own."""
    from spikefm import families

    class Built:
        name = "ndt"

        def evaluate(self, run_dir, corpus, **options):
            return {"family": "ndt", "results": {"tasks": {}}}

    class Mine(Built):
        name = "myndt"

    monkeypatch.setattr(families, "family_of_run", lambda run_dir: Mine())
    assert families.evaluate("run", "corpus")["family"] == "myndt"
    assert families.stamp_family(Built(), [1, 2]) == [1, 2]  # not a results dict: unchanged


def test_fine_tuning_on_another_corpus_says_so_and_does_not_claim_the_session_was_seen(tmp_path, recwarn):
    """A session id of the pretraining run in another corpus was said to be one the model "has seen"
    (ids repeat across corpora), and the other corpus itself went unmentioned."""
    import hashlib
    import warnings

    from spikefm import families

    run, trained_on, other = tmp_path / "run", tmp_path / "c1", tmp_path / "c2"
    for folder, text in ((trained_on, '{"v": 1}'), (other, '{"v": 2}')):
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
    run.mkdir()
    h1, h2 = (hashlib.sha256(t).hexdigest() for t in (b'{"v": 1}', b'{"v": 2}'))
    (run / "config.json").write_text(json.dumps({"family": "ndt", "family_info": {
        "sessions": {"s1": 10}, "corpus_manifest_sha256": h1}}))
    warnings.simplefilter("always")
    families._warn_if_pretrained_on(run, "s1", trained_on)
    assert [str(w.message).split(":")[0] for w in recwarn] == [f"session 's1' is one of the sessions {run} was trained on"]
    recwarn.clear()
    families._warn_if_pretrained_on(run, "s1", other)
    messages = [str(w.message) for w in recwarn]
    assert messages[0].startswith(f"{other} is not the corpus {run} was trained on (manifest sha256 {h1[:12]}... "
                                  f"there, {h2[:12]}... here)")
    assert messages[1].startswith(f"{run} was trained on a session also named 's1' (in its own corpus)")
    assert len(messages) == 2
    recwarn.clear()
    families._warn_if_pretrained_on(run, "s9", other)  # a new session id: only the corpus is said
    assert len(recwarn) == 1 and "is not the corpus" in str(recwarn[0].message)


def test_the_families_a_refusal_suggests_can_run_the_study(monkeypatch):
    """A family with transfer_headline() but no fine-tuning was suggested, though the study then
    refuses it for not fine-tuning."""
    from spikefm import families

    class Bare:
        pass

    class HeadlineOnly:
        def transfer_headline(self, benchmarks):
            return {}

    class Full(HeadlineOnly):
        def finetune_config(self, *args):
            return None

    kinds = {"mine": Bare(), "nofinetune": HeadlineOnly(), "full": Full()}
    monkeypatch.setattr(families, "names", lambda: sorted(kinds))
    monkeypatch.setattr(families, "get", lambda name: kinds[name])
    with pytest.raises(ValueError, match=r"run the study with a family that has one \(full; --model\)"):
        families.transfer_headline("mine", {})


def test_a_neds_study_refuses_an_unknown_task_before_any_work(tmp_path, capsys):
    """NEDS had no check_tasks: '--tasks co-smoothing' pretrained first, then failed, and the
    corrected command was refused for the folder's other settings."""
    from spikefm.cli import main

    out = tmp_path / "study"
    assert main(["experiment", "transfer", "--model", "neds", "--tasks", "co-smoothing", "--out", str(out),
                 "--seeds", "1", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("spikefm: error: unknown NEDS task(s) ['co-smoothing']; tasks: "
                                               "encoding, decoding, region")
    assert not out.exists()


def test_a_rerun_giving_a_default_explicitly_is_the_same_study(tmp_path, monkeypatch):
    """Rerunning an NDT study with --soup (the NDT's default, which the first run used) was refused
    as 'other settings (soup; soup: None there, True now)'; the same for the pretraining steps or
    the validation interval given as their defaults. Another value is still refused."""
    from spikefm import families
    from spikefm.experiments import transfer as tr

    calls = []

    def fake_transfer(out, *, seed, **options):
        calls.append(seed)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results_ndt.json").write_text("{}")
        return {"fine-tuned": {"session_id": "s"}, "single-session": {}, "finetune": {"strategy": "frozen"}}

    monkeypatch.setattr(tr, "transfer", fake_transfer)
    monkeypatch.setattr(families, "transfer_headline", lambda family, res: {})
    tr.transfer_study(tmp_path, seeds=[1], family="ndt", finetune_steps=60, soup=None, pretrain_steps=None)
    steps = families.run_config("ndt", preset="tiny").train.steps
    tr.transfer_study(tmp_path, seeds=[1], family="ndt", finetune_steps=60, soup=True, pretrain_steps=steps,
                      eval_every=10)
    assert calls == [1]  # reused: the same study
    for other in ({"soup": False}, {"pretrain_steps": steps + 1}, {"eval_every": 20}):
        with pytest.raises(ValueError, match="holds a transfer study made with other settings"):
            tr.transfer_study(tmp_path, seeds=[1], family="ndt", finetune_steps=60, **other)
    assert calls == [1]


def test_a_study_shows_the_progress_of_its_fine_tunings(tmp_path, monkeypatch):
    """Fine-tuning (most of a study's time) ran without a progress display; --quiet still has none."""
    from spikefm import families
    from spikefm.experiments import transfer as tr

    seen = []

    def fake_finetune(*args, progress=False, **kwargs):
        seen.append(progress)
        return {"strategy": "frozen", "best_val_loss": 1.0, "best_step": 1,
                "single_session": {"out_dir": str(tmp_path / "ss")}}

    monkeypatch.setattr(families, "train", lambda cfg, out, progress=False, resume=False: seen.append(progress))
    monkeypatch.setattr(families, "finetune", fake_finetune)
    monkeypatch.setattr(families, "evaluate", lambda *a, **k: {"results": {}})
    monkeypatch.setattr(families, "format_results", lambda *a, **k: "")
    (tmp_path / "ss").mkdir()
    (tmp_path / "ss" / "model.safetensors").write_bytes(b"")  # auto's single-session candidate, finished
    (tmp_path / "ss" / "early_stopping.json").write_text(json.dumps({"history": []}))
    for quiet in (False, True):
        seen.clear()
        tr.transfer(tmp_path / "s", sessions=2, duration_s=20.0, quiet=quiet)
        # the pretraining's display is named by its seed (fine-tuning names each candidate itself)
        assert seen == ([False, False] if quiet else ["seed 1: pretrain", True])


def test_a_neds_data_setting_the_sessions_cannot_give_binds_no_folder(tmp_path):
    """`--set data.labels=choice` on the motor preset (whose trials have no choice) failed after
    synthesis with a plain ValueError that left the seed's recordings: every corrected command was
    then refused as 'a transfer study made with other settings', though nothing had been trained."""
    from spikefm.experiments.transfer import NothingToScore, transfer_study

    out = tmp_path / "study"
    kw = dict(family="neds", synth_preset="motor", sessions=2, duration_s=60.0, pretrain_steps=2, finetune_steps=2,
              quiet=True)
    for labels in ("choice", "block_prior"):  # the second, other settings, is not refused as another study's
        with pytest.raises(NothingToScore, match=rf"data.labels: label '{labels}' has 0 numeric value\(s\) in the "
                                                 r"data.*; nothing was trained$"):
            transfer_study(out, seeds=[1], overrides=[f"data.labels={labels}"], **kw)
        assert not (out / "seed_1").exists() and not any(out.rglob("*.nwb"))


def test_a_too_short_duration_is_refused_before_the_study_folder_is_made(tmp_path):
    """--duration-s 5 was refused by the synthesis, after the folder and its progress record were
    made: the report then called it an unfinished study and advised the failing command again."""
    from spikefm.experiments.transfer import transfer_study

    out = tmp_path / "study"
    for bad in (5.0, float("nan"), "60"):
        with pytest.raises(ValueError, match=r"^duration_s \(--duration-s\) must be a finite number >= 10 seconds"):
            transfer_study(out, seeds=[1], family="neds", duration_s=bad, quiet=True)
        assert not out.exists()
