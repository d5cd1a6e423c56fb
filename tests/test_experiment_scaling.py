"""Session ranking and data-scaling studies (spikefm.experiments.rank_sessions / scaling): the pure
parts against hand-computed expectations, one tiny real study end to end (files, fits, resume
without re-running), the CLI's one-line errors, and (slow) the same study under a local Ray
instance giving the same numbers."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from spikefm.experiments.jobs import Job, LocalExecutor, make_job
from spikefm.experiments.rank_sessions import StudySettings, precision_at_k, summarize_ranking
from spikefm.experiments.scaling import log_linear_fit, parse_sizes, session_orders


def test_parse_sizes():
    assert parse_sizes("1,2,3,6,all", 12) == [1, 2, 3, 6, 12]
    with pytest.warns(RuntimeWarning, match=r"--sizes 20: only 12 pretraining session\(s\); size 20 is run as 12"):
        assert parse_sizes("20,all,1", 12) == [1, 12]  # above the pool = the whole pool, said
    for bad in ("0", "1,x", "-2", ""):
        with pytest.raises(ValueError, match="--sizes"):
            parse_sizes(bad, 12)


def test_session_orders():
    pool = [f"s{i}" for i in range(8)]
    ranked = {"h1": pool[::-1], "h2": pool[2:] + pool[:2]}
    o = session_orders(ranked, pool, ["ranked", "random", "reverse"], seed=3)
    assert o["ranked"] == ranked
    assert o["reverse"]["h1"] == pool and o["reverse"]["h2"] == list(reversed(ranked["h2"]))
    assert sorted(o["random"]["h1"]) == sorted(pool) and o["random"]["h1"] == o["random"]["h2"]
    assert o["random"]["h1"] == session_orders(ranked, pool, ["random"], seed=3)["random"]["h1"]
    assert o["random"]["h1"] != session_orders(ranked, pool, ["random"], seed=4)["random"]["h1"]
    with pytest.raises(ValueError, match="--orders"):
        session_orders(ranked, pool, ["sorted"], seed=0)


def test_log_linear_fit_recovers_a_line_and_extrapolates():
    x = [1, 2, 3, 6]
    y = [0.1 + 0.05 * math.log10(v) for v in x]
    fit = log_linear_fit(x, y, 12)
    assert fit["slope_per_log10"] == pytest.approx(0.05) and fit["intercept"] == pytest.approx(0.1)
    assert fit["r2"] == pytest.approx(1.0) and fit["predicted_full"] == pytest.approx(0.1 + 0.05 * math.log10(12))
    # noisy points: the same numbers as an ordinary least-squares line on ln x, rescaled
    rng = np.random.default_rng(0)
    xs = np.array([1, 1, 2, 2, 4, 4, 8, 8], float)
    ys = 0.2 + 0.1 * np.log(xs) + rng.normal(0, 0.01, xs.size)
    A = np.stack([np.ones_like(xs), np.log(xs)], 1)
    b0, b1 = np.linalg.lstsq(A, ys, rcond=None)[0]
    fit = log_linear_fit(xs, ys, 16)
    assert fit["slope_per_log10"] == pytest.approx(b1 * math.log(10)) and fit["intercept"] == pytest.approx(b0)
    assert fit["predicted_full"] == pytest.approx(b0 + b1 * math.log(16))
    assert log_linear_fit([2, 2], [0.1, 0.2], 4) is None


def test_ranking_summary_precision_and_overlap():
    pool = ["a", "b", "c", "d", "e"]
    families = {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0, "h0": 0, "h1": 1}
    val = {("h0", "a"): 0.30, ("h0", "b"): 0.35, ("h0", "c"): 0.31, ("h0", "d"): 0.33, ("h0", "e"): 0.30,
           ("h1", "a"): 0.50, ("h1", "b"): 0.41, ("h1", "c"): 0.45, ("h1", "d"): 0.47, ("h1", "e"): 0.44}
    adapt, records = {}, {}
    for (h, s), v in val.items():
        job = make_job("finetune", {"h": h, "s": s})
        adapt[(h, s)] = job
        records[job.id] = {"result": {"best_val_loss": v, "best_step": 10}}
    out = summarize_ranking(records, adapt, ["h0", "h1"], pool, families, top_k=3)
    assert [r["session"] for r in out["rankings"]["h0"]] == ["a", "e", "c", "d", "b"]  # tie a/e by id
    assert [r["session"] for r in out["rankings"]["h1"]] == ["b", "e", "c", "d", "a"]
    assert out["rankings"]["h0"][0]["score"] == -0.30 and out["rankings"]["h0"][0]["rank"] == 1
    gt = out["ground_truth"]["precision"]
    assert gt["h0"]["precision_at_3"] == 1.0 and gt["h0"]["ceiling"] == 1.0
    assert gt["h1"]["precision_at_3"] == pytest.approx(1 / 3) and gt["h1"]["ceiling"] == pytest.approx(2 / 3)
    assert out["ground_truth"]["mean_precision_at_3"] == pytest.approx((1 + 1 / 3) / 2)
    ov = out["top_k_overlap"]["h0 | h1"]
    assert ov["shared"] == 2 and ov["jaccard"] == pytest.approx(2 / 4)  # {a,e,c} vs {b,e,c}
    assert precision_at_k(["x", "y"], {"y"}, 5) == 0.5
    none = summarize_ranking(records, adapt, ["h0"], pool, None, top_k=3)
    assert "ground_truth" not in none and "family" not in none["rankings"]["h0"][0]


# --- one tiny real study ---------------------------------------------------------------------

TINY = StudySettings(pretrain_steps=12, finetune_steps=10, eval_every=5, patience=2,
                     overrides=("train.batch_size=8",))
TASKS = ["co-smoothing", "forward-prediction-walk"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize

    root = tmp_path_factory.mktemp("scaling")
    synthesize(root / "nwb", num_sessions=4, seed=4, num_families=2, duration_s=40.0, units_range=(20, 24))
    build_corpus([str(root / "nwb")], root / "corpus", BuildConfig(test_fraction=0.0), progress=False)
    return root / "corpus"


def _study(out, corpus, executor=None):
    from spikefm.experiments.scaling import scaling_study

    return scaling_study(out, corpus, ["sub-ibl02_ses-003"], settings=TINY, sizes="1,2,all",
                         orders=["ranked", "random"], seeds=[0], tasks=TASKS, metric="co-smoothing", top_k=2,
                         executor=executor or LocalExecutor(1, threads=1), progress=False, command="test")


@pytest.fixture(scope="module")
def tiny_study(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    return out, _study(out, tiny_corpus)


def test_a_scaling_study_stopped_before_its_scaling_json_is_not_reported_as_a_ranking(tiny_study, tiny_corpus,
                                                                                      tmp_path, capsys):
    """Stopped between its ranking.json and scaling.json, the folder was reported (exit 0) as a
    finished 'rank-sessions study' under the scaling command, the scaling part silently missing."""
    import shutil

    from spikefm.cli import main

    out, _ = tiny_study
    half = tmp_path / "half"
    shutil.copytree(out, half)
    (half / "scaling.json").unlink()
    html = tmp_path / "r.html"
    assert main(["report", str(half), "--out", str(html)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"spikefm: error: {half} is a scaling study that has not finished (its ranking.json is there, no scaling.json "
        f"yet): rerun the command that made it (test), which reuses its finished jobs, then report the folder; or "
        f"report the ranking alone: spikefm report {half / 'ranking.json'}")
    assert not html.exists()
    assert main(["report", str(half / "ranking.json"), "--out", str(html)]) == 0 and html.is_file()
    # the finished study's folder is reported as the scaling study it is
    assert main(["report", str(out), "--out", str(tmp_path / "full.html")]) == 0
    assert "<title>scaling study: s</title>" in (tmp_path / "full.html").read_text()
    # the unfinished study is bound to its settings: another study's run into the folder (other
    # sizes here) was accepted, its files left beside the first one's ranking files
    from spikefm.experiments.scaling import scaling_study

    before = sorted(p.name for p in half.iterdir())
    with pytest.raises(ValueError, match=rf"^{half} holds a study made with other settings \(sizes; sizes: "
                                         r"\[1, 2, 3\] there, \[1, 3\] now\)"):
        scaling_study(half, tiny_corpus, ["sub-ibl02_ses-003"], settings=TINY, sizes="1,all",
                      orders=["ranked", "random"], seeds=[0], tasks=TASKS, metric="co-smoothing", top_k=2,
                      executor=LocalExecutor(1, threads=1), progress=False, command="test")
    assert sorted(p.name for p in half.iterdir()) == before


def test_tiny_study_writes_tables_figures_and_fits(tiny_study, tiny_corpus):
    out, study = tiny_study
    for name in ("scaling.json", "ranking.json", "scores.csv", "table1.csv", "table3.csv", "figure4_fits.csv",
                 "figure4.png", "more_sessions.png", "ranking.png", "topk_overlap.csv",
                 "ranking_sub-ibl02_ses-003.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "figure4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "scaling.json").read_text())
    assert on_disk["study"] == "scaling" and on_disk["settings"]["sizes"] == [1, 2, 3]
    ranking = json.loads((out / "ranking.json").read_text())
    ranked = [r["session"] for r in ranking["rankings"]["sub-ibl02_ses-003"]]
    assert sorted(ranked) == ["sub-ibl01_ses-000", "sub-ibl01_ses-001", "sub-ibl02_ses-002"]
    # ground truth from the synthetic truth files: family = index % 2
    assert ranking["ground_truth"]["families"]["sub-ibl02_ses-002"] == 0
    # every score row: improvement = 100 (score - baseline) / |baseline|, baseline = single-session
    scores = json.loads((out / "scores.json").read_text())
    assert {s["task"] for s in scores} == set(TASKS)
    for s in scores:
        assert s["improvement_pct"] == pytest.approx(100 * (s["score"] - s["baseline"]) / abs(s["baseline"]))
    # ranked order's k sessions are the ranking's first k; the full-set job is shared by the orders
    for s in scores:
        if s["order"] == "ranked":
            assert s["sessions"].split() == ranked[:s["size"]]
    full = {s["score"] for s in scores if s["size"] == 3 and s["task"] == "co-smoothing"}
    assert len(full) == 1
    # Figure 4: the fit's coefficients are those of the per-seed points below the full set
    curve = study["figure4"]["sub-ibl02_ses-003"]["orders"]["ranked"]["sessions"]
    # the y axis names the metric and its unit, as the NDT family reports it
    assert study["metric_unit"] == "bps_pooled, bits per spike"
    assert curve["y_label"] == "co-smoothing (bps_pooled, bits per spike)"
    below = [(s["size"], s["score"]) for s in scores if s["order"] == "ranked" and s["size"] < 3
             and s["task"] == "co-smoothing"]
    expect = log_linear_fit([x for x, _ in below], [y for _, y in below], 3)
    for key in ("intercept", "slope_per_log10", "predicted_full"):
        assert curve["fit"][key] == pytest.approx(expect[key])
    assert curve["fit"]["actual_full"] == pytest.approx(full.pop())
    assert curve["extrapolation"]["x"][-1] == 3
    # Table 1: the best size per order is the size with the highest mean improvement
    row = next(r for r in study["table1"] if r["model"] == "ranked (best size)")
    ranked_imp = {s["size"]: s["improvement_pct"] for s in scores if s["order"] == "ranked"
                  and s["task"] == "co-smoothing"}
    assert row["improvement_pct"] == pytest.approx(max(ranked_imp.values()))
    # one seed: no spread, so no s.d. (it read 0.0), in the JSON and in table1.csv
    assert all(r["sd"] is None for r in study["table1"])
    assert all(line.rstrip("\r").endswith(",") for line in (out / "table1.csv").read_text().splitlines()[1:])
    t3 = {(r["task"]): r for r in study["table3"]}
    assert set(t3) == set(TASKS) and t3["co-smoothing"]["smoothing"] is not None
    assert "oracle" in t3["co-smoothing"]  # synthetic data: the truth files give the oracle


def test_rerun_resumes_without_running_and_gives_identical_results(tiny_study, tiny_corpus):
    out, study = tiny_study
    results = sorted((out / "jobs").glob("*/result.json"))
    stamps = {p: p.stat().st_mtime_ns for p in results}
    again = _study(out, tiny_corpus)
    assert {p: p.stat().st_mtime_ns for p in results} == stamps  # no job re-ran
    for key in ("table1", "table3", "figure4", "more_sessions"):
        assert again[key] == study[key]
    # the ranking it made is the one rank-sessions makes: the same rank-sessions command resumes
    # here without running a job (the scaling's settings were recorded, so it was refused)
    from spikefm.experiments.rank_sessions import rank_sessions

    before_rank = json.loads((out / "ranking.json").read_text())
    ranked_again = rank_sessions(out, tiny_corpus, ["sub-ibl02_ses-003"], settings=TINY, seed=0,
                                 executor=LocalExecutor(1, threads=1), progress=False, command="test")
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    assert ranked_again["rankings"] == before_rank["rankings"]
    assert before_rank["settings"]["top_k"] == 3 and "sizes" not in before_rank["settings"]
    # a job whose result is gone (a killed run) is run again and reproduces the same numbers
    victim = next(p for p in results if p.parent.name.startswith("finetune-")
                  and json.loads(p.read_text())["spec"]["evaluate"])
    before = json.loads(victim.read_text())["result"]
    victim.unlink()
    third = _study(out, tiny_corpus)
    assert json.loads(victim.read_text())["result"] == before
    assert third["table1"] == study["table1"]


def test_cli_errors_are_one_line(tiny_corpus, tmp_path, capsys):
    from spikefm.cli import main

    code = main(["experiment", "scaling", "--data", str(tiny_corpus), "--held-out", "nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("spikefm: error: --held-out: session 'nope'") and err.count("\n") == 1
    code = main(["experiment", "rank-sessions", "--data", str(tiny_corpus), "--held-out",
                 "sub-ibl02_ses-003", "--pretrain-sessions", "sub-ibl02_ses-003,sub-ibl01_ses-000",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "both held out and a pretraining session" in err
    code = main(["experiment", "scaling", "--data", str(tiny_corpus), "--held-out", "sub-ibl02_ses-003",
                 "--out", str(tmp_path), "--sizes", "0,1"])
    err = capsys.readouterr().err
    assert code == 2 and "--sizes" in err
    with pytest.raises(SystemExit) as info:
        main(["experiment", "scaling", "--data", str(tiny_corpus), "--out", str(tmp_path), "--seeds", "0"])
    assert info.value.code == 2 and "--seeds" in capsys.readouterr().err
    code = main(["experiment", "scaling", "--data", str(tiny_corpus), "--out", str(tmp_path), "--executor", "ray",
                 "--workers", "2"])
    assert code == 2 and "--workers applies to --executor local" in capsys.readouterr().err


def test_job_specs_do_not_depend_on_the_study_folder(tiny_corpus):
    from spikefm.experiments.rank_sessions import pretrain_job, ranking_jobs

    jobs, adapt = ranking_jobs(TINY, str(tiny_corpus), ["sub-ibl02_ses-003"], ["sub-ibl01_ses-000"], seed=0)
    assert isinstance(jobs[0], Job) and jobs[0].id == pretrain_job(TINY, str(tiny_corpus), ["sub-ibl01_ses-000"], 0).id
    # a pretraining set is a set: the order of its sessions does not make a new job
    a = pretrain_job(TINY, str(tiny_corpus), ["sub-ibl01_ses-000", "sub-ibl02_ses-002"], 1)
    b = pretrain_job(TINY, str(tiny_corpus), ["sub-ibl02_ses-002", "sub-ibl01_ses-000"], 1)
    assert a.id == b.id and adapt[("sub-ibl02_ses-003", "sub-ibl01_ses-000")].deps == (jobs[0].id,)


@pytest.mark.slow
def test_tiny_study_under_ray_equals_the_process_pool(tiny_study, tiny_corpus, tmp_path):
    pytest.importorskip("ray")
    from spikefm.experiments.jobs import make_executor

    out, study = tiny_study
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rayed = _study(tmp_path / "ray", tiny_corpus, make_executor("ray", threads=1, num_cpus=2))
    for key in ("table1", "table3", "figure4", "more_sessions"):
        assert rayed[key] == study[key]
    a = json.loads((out / "scores.json").read_text())
    b = json.loads((Path(tmp_path) / "ray" / "scores.json").read_text())
    assert a == b


def test_study_inputs_are_checked_before_any_job_runs(tiny_corpus, tmp_path, capsys):
    """A folder of someone else's files, --metric outside --tasks and a negative --seed were
    accepted (files written beside the user's; every job run first, then the error)."""
    from spikefm.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for cmd in ("rank-sessions", "scaling"):
        code = main(["experiment", cmd, "--data", str(tiny_corpus), "--held-out", "sub-ibl02_ses-003",
                     "--out", str(mine)])
        err = capsys.readouterr().err
        assert code == 2 and err == (f"spikefm: error: {mine}: folder has files that are not a study's (found "
                                     "'notes.txt'); nothing was changed: give a new or empty folder (--out), or "
                                     "the folder of an earlier run to resume it\n")
        assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    code = main(["experiment", "scaling", "--data", str(tiny_corpus), "--held-out", "sub-ibl02_ses-003",
                 "--out", str(tmp_path / "s"), "--tasks", "co-smoothing"])
    err = capsys.readouterr().err
    assert code == 2 and "--metric 'forward-prediction-walk' is not one of the scored tasks (co-smoothing)" in err
    assert not (tmp_path / "s" / "jobs").exists()
    # an unknown task failed every fine-tuning job after the pretraining; a family the study cannot
    # score (NEDS: no task_scores) failed them with a bare KeyError
    for extra, expect in ((["--tasks", "co-smoothing,bogus", "--metric", "co-smoothing"], "unknown task 'bogus'"),
                          (["--model", "neds"], "the 'neds' family has no task_scores(), which the scaling study")):
        code = main(["experiment", "scaling", "--data", str(tiny_corpus), "--held-out", "sub-ibl02_ses-003",
                     "--out", str(tmp_path / "s"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and expect in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "s" / "jobs").exists()
    with pytest.raises(SystemExit) as info:
        main(["experiment", "rank-sessions", "--data", str(tiny_corpus), "--out", str(tmp_path / "r"), "--seed=-1"])
    assert info.value.code == 2 and "argument --seed: expected an integer >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_study_settings_and_job_settings_are_checked_before_any_job(tiny_study, tiny_corpus, tmp_path, capsys):
    """A rerun with another setting replaced the study's results (exit 0); an unknown --set key,
    --device cuda without a GPU and an unknown --metric failed inside the jobs (exit 1, after a
    folder was made and, for the metric, after every job had run)."""
    import torch

    from spikefm.cli import main
    from spikefm.experiments.scaling import scaling_study

    out, _ = tiny_study
    files = lambda: {p: p.stat().st_mtime_ns for p in out.rglob("*")  # noqa: E731
                     if p.is_file() and p.name != ".spikefm.lock"}
    before = files()
    with pytest.raises(ValueError) as exc:
        scaling_study(out, tiny_corpus, ["sub-ibl02_ses-003"], settings=TINY, sizes="1,2,all",
                      orders=["ranked", "random"], seeds=[1], tasks=TASKS, metric="co-smoothing", top_k=2,
                      executor=LocalExecutor(1, threads=1), progress=False, command="test")
    assert str(exc.value) == (f"{out} holds a study made with other settings (ranking_seed, seeds; ranking_seed: "
                              "0 there, 1 now); its results would be replaced: give a new --out (a rerun with the "
                              "same settings resumes it)")
    assert files() == before
    # another metric only summarises the same jobs another way: allowed, and no job runs again
    jobs_before = {p: t for p, t in before.items() if p.name == "result.json"}
    other = scaling_study(out, tiny_corpus, ["sub-ibl02_ses-003"], settings=TINY, sizes="1,2,all",
                          orders=["ranked", "random"], seeds=[0], tasks=TASKS, metric="forward-prediction-walk",
                          top_k=2, executor=LocalExecutor(1, threads=1), progress=False, command="test")
    assert other["metric"] == "forward-prediction-walk"
    assert {p: p.stat().st_mtime_ns for p in jobs_before} == jobs_before
    said = capsys.readouterr().err  # the rerun says what it reused (it was silent)
    assert "ranking sessions: 6 of 6 jobs already finished (by an earlier run, or shared with an earlier step of this study); reused" in said
    assert "scaling runs: 11 of 11 jobs already finished (by an earlier run, or shared with an earlier step of this study); reused" in said
    base = ["experiment", "rank-sessions", "--data", str(tiny_corpus), "--held-out", "sub-ibl02_ses-003"]
    checks = [(["--set", "model.foo=1"], "unknown key 'model.foo'")]
    if not torch.cuda.is_available():
        checks.append((["--device", "cuda"], "--device cuda: no CUDA device is available on this machine"))
    # under Ray the GPUs are the cluster's (a CPU-only head node refused the published-scale
    # command): the jobs must ask Ray for them
    checks.append((["--device", "cuda", "--executor", "ray"],
                   "--device cuda with --executor ray: give --gpus-per-job (e.g. 1, or 0.25 to share a GPU by four), "
                   "so that each job runs where Ray has a GPU for it"))
    for extra, says in checks:
        code = main([*base, "--out", str(tmp_path / "r"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and says in err[0], err
        assert not (tmp_path / "r").exists()
    code = main(["experiment", "scaling", "--data", str(tiny_corpus), "--held-out", "sub-ibl02_ses-003",
                 "--out", str(tmp_path / "s"), "--metric", "foo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not (tmp_path / "s").exists()
    assert err[0].startswith("spikefm: error: --metric: unknown task 'foo'"), err  # the flag that gave the name


def test_a_study_without_a_fit_says_so_and_keeps_the_full_sets_score(capsys):
    """``--sizes 1,all``: no line can be fitted; the console said nothing of Figure 4."""
    from spikefm.experiments.scaling import _print_summary

    study = {"metric": "co-smoothing", "settings": {"seeds": [0], "sizes": [1, 3]}, "full_size": 3,
             "table1": [{"held_out": "h", "model": "random (best size)", "size": 1, "improvement_pct": 5.0,
                         "sd": None}],
             "figure4": {"h": {"orders": {"random": {"sessions": {"x": [1, 3], "y": [0.1, 0.2],
                                                                  "full": {"x": 3, "y": 0.2}}}}}}}
    _print_summary(study)
    out = capsys.readouterr().out
    assert ("Figure 4: no fit (a line on log(number of sessions) needs scores at two or more sizes below the "
            "full set; --sizes gave 1: 1)") in out


def test_the_report_charts_a_studys_result_column_not_its_first_number():
    """Table 1's chart plotted the ``size`` column (the first number) with bars named only by the
    held-out session; Table 3 (scores of different tasks in one column) got a chart mixing units."""
    from spikefm.report.page import Page
    from spikefm.report.provenance import Provenance
    from spikefm.report.study import study_section

    page = Page("t")
    study = {"study": "scaling",
             "table1": [{"held_out": "h1", "model": "random (best size)", "size": 2, "improvement_pct": 4.0, "sd": None},
                        {"held_out": "h1", "model": "all sessions", "size": 3, "improvement_pct": 6.0, "sd": None}],
             "table3": [{"held_out": "h1", "task": "co-smoothing", "single-session": 0.2},
                        {"held_out": "h1", "task": "choice-decoding", "single-session": 0.9}]}
    study_section(page, study, Provenance())
    html = page.html()
    assert "table1: improvement_pct of each entry, in order." in html
    assert "h1 / random (best size)" in html and "h1 / all sessions" in html
    import re

    captions = re.findall(r"<figcaption[^>]*>(.*?)</figcaption>", html, re.S)
    assert any("table1" in c for c in captions) and not any("table3" in c for c in captions), captions


# --- defects of the multi-run studies (each test failed before its fix) -------------------------

#: The smallest real ranking: one held-out session, one pretraining session (two jobs).
MINI = StudySettings(pretrain_steps=2, finetune_steps=2, eval_every=1, patience=1, overrides=("train.batch_size=8",))
HELD, POOL = "sub-ibl02_ses-003", "sub-ibl01_ses-000"


def test_an_unfinished_scaling_study_refuses_a_ranking_with_other_settings(tiny_study, tiny_corpus, tmp_path):
    """rank-sessions into a scaling study stopped before its ranking files (so no ranking.json yet)
    ran and wrote its own ranking there: the scaling command could then never resume in its folder."""
    import shutil

    from spikefm.experiments.rank_sessions import rank_sessions

    out, _ = tiny_study
    half = tmp_path / "half"
    shutil.copytree(out, half)
    for name in ("scaling.json", "ranking.json"):
        (half / name).unlink()
    before = _files(half)
    with pytest.raises(ValueError, match=rf"^{half} holds a study made with other settings \(.*seed; seed: 0 "
                                         r"there, 1 now\)"):
        rank_sessions(half, tiny_corpus, ["sub-ibl02_ses-003"], settings=TINY, seed=1, top_k=2, progress=False,
                      executor=LocalExecutor(1, threads=1), command="test")
    assert _files(half) == before


def _rank(out, corpus, **kw):
    from spikefm.experiments.rank_sessions import rank_sessions

    kw.setdefault("pool", [POOL])
    kw.setdefault("top_k", 1)
    kw.setdefault("executor", LocalExecutor(1, threads=1))
    return rank_sessions(out, corpus, [HELD], settings=MINI, progress=False, command="test", **kw)


def _files(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".spikefm.lock"}


@pytest.fixture(scope="module")
def mini_ranking(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "rank"
    return out, _rank(out, tiny_corpus)


def test_a_corpus_rebuilt_at_the_same_path_is_another_study(tiny_corpus, tmp_path):
    """The same command after ``corpus build --overwrite`` of other data into the corpus folder ran
    no job and printed the old scores: specs and settings recorded only the corpus path."""
    import shutil

    from spikefm.corpus.reader import manifest_sha256
    from spikefm.experiments.rank_sessions import pretrain_job

    corpus, out = tmp_path / "corpus", tmp_path / "rank"
    shutil.copytree(tiny_corpus, corpus)
    study = _rank(out, corpus)
    old_hash = manifest_sha256(corpus)
    assert study["settings"]["corpus_sha256"] == old_hash
    specs = [json.loads(p.read_text())["spec"] for p in (out / "jobs").glob("*/spec.json")]
    assert len(specs) == 2 and all(s["corpus_sha256"] == old_hash for s in specs)
    old_job = pretrain_job(MINI, str(corpus), [POOL], 0)
    with open(corpus / "manifest.json", "a") as f:  # a rebuilt corpus: another manifest
        f.write("\n")
    new_hash = manifest_sha256(corpus)
    assert pretrain_job(MINI, str(corpus), [POOL], 0).id != old_job.id  # a new job, never a stale result
    before = _files(out)
    with pytest.raises(ValueError) as exc:
        _rank(out, corpus)
    assert str(exc.value).startswith(f"{out} holds a study made with other settings (corpus_sha256; corpus_sha256: "
                                     f"'{old_hash}' there, '{new_hash}' now); its results would be replaced: give a "
                                     "new --out")
    assert _files(out) == before
    # a job made on the old corpus refuses to run on the new one (a corpus rebuilt during a study)
    from spikefm.experiments.runs import pretrain

    with pytest.raises(ValueError, match="changed since this study's jobs were made"):
        pretrain(old_job.spec, tmp_path / "job", tmp_path)
    # an older study folder records no hash: unknown, not different; its jobs are made again
    ranking = json.loads((out / "ranking.json").read_text())
    del ranking["settings"]["corpus_sha256"]
    (out / "ranking.json").write_text(json.dumps(ranking))
    (out / ".ranking_settings.json").unlink()  # nor the record of its start, which came later still
    again = _rank(out, corpus)
    assert again["settings"]["corpus_sha256"] == new_hash and again["rankings"][HELD][0]["session"] == POOL


def test_scaling_refuses_a_folder_of_a_ranking_with_other_settings(mini_ranking, tiny_corpus):
    """scaling --out into a rank-sessions study with other settings replaced its ranking.json,
    ranking.png and CSVs (a stale ranking_<other>.csv stayed); the other way round was refused."""
    from spikefm.experiments.scaling import scaling_study

    out, _ = mini_ranking
    before = _files(out)
    with pytest.raises(ValueError) as exc:
        scaling_study(out, tiny_corpus, [HELD], pool=[POOL, "sub-ibl02_ses-002"], settings=MINI, sizes="1,all",
                      orders=["random"], seeds=[0], tasks=TASKS, metric="co-smoothing", rank_top_k=1,
                      executor=LocalExecutor(1, threads=1), progress=False, command="test")
    assert str(exc.value).startswith(f"{out} holds a study made with other settings (pretraining_sessions; "
                                     f"pretraining_sessions: ['{POOL}'] there, ['{POOL}', 'sub-ibl02_ses-002'] now)")
    assert _files(out) == before


def test_top_k_above_the_pool_says_so(mini_ranking, tiny_corpus):
    """--top-k 10 with fewer pretraining sessions silently reported precision@<pool size>."""
    out, _ = mini_ranking
    results = {p: t for p, t in _files(out).items() if p.name == "result.json"}
    with pytest.warns(RuntimeWarning, match=r"^--top-k 10: only 1 pretraining session\(s\); precision@1 and the "
                                            r"top-1 overlap are reported instead$"):
        study = _rank(out, tiny_corpus, top_k=10)
    assert study["top_k"] == 1 and {p: p.stat().st_mtime_ns for p in results} == results


def test_rank_sessions_refuses_a_family_without_session_parameters(tiny_corpus, tmp_path, capsys):
    """--model ar failed with "unknown key 'data.sessions'" (the AR config has no such key)."""
    from spikefm.cli import main

    code = main(["experiment", "rank-sessions", "--data", str(tiny_corpus), "--held-out", HELD,
                 "--out", str(tmp_path / "r"), "--model", "ar"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("spikefm: error: the 'ar' family does not support fine-tuning to a new session (it has no "
                          "per-session parameters), which a session ranking needs; run it with a family that does (")
    assert "ndt" in err and not (tmp_path / "r").exists()
    # scaling also needs task_scores: only families having it are suggested (neds was, then refused)
    code = main(["experiment", "scaling", "--data", str(tiny_corpus), "--held-out", HELD,
                 "--out", str(tmp_path / "s"), "--model", "ar"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().endswith("which a scaling study needs; run it with a family that does (ndt; "
                                              "--model)"), err


@pytest.mark.parametrize("item, instead", [
    ("train.steps=3", "give --pretrain-steps instead"),
    ("train.seed=5", "give --seed (rank-sessions) or --seeds (scaling) instead"),
    (" train.device = cuda", "give --device instead"),
    ("data.sessions=a,b", "give --pretrain-sessions and --held-out instead"),
    ("data.corpus=/elsewhere", "give --data instead"),
    ("train.eval_every=10", "its pretraining runs do not validate (fine-tuning does: --eval-every)"),
])
def test_studies_refuse_set_keys_they_set_themselves(item, instead, tiny_corpus, tmp_path, capsys):
    """--set train.steps=3 --set train.seed=5: the pretraining ran 600 steps with seed 0 (the study's
    own values came after the user's), while ranking.json recorded the overrides as given."""
    from spikefm.cli import main

    for command in ("rank-sessions", "scaling"):
        out = tmp_path / command
        assert main(["experiment", command, "--data", str(tiny_corpus), "--held-out", HELD, "--out", str(out),
                     "--set", item]) == 2
        key = item.split("=")[0].strip()
        assert capsys.readouterr().err.strip().splitlines() == [
            f"spikefm: error: --set {item.strip()}: the study sets {key} of every pretraining run itself; {instead}"]
        assert not out.exists()


def test_scaling_refuses_a_decoding_task_of_a_label_the_held_out_session_lacks_before_any_job(tiny_corpus, tmp_path,
                                                                                               capsys):
    """--metric nolabel-decoding ran all 11 jobs, then failed 'was not scored by any fine-tuned
    run'; transfer refuses it before training."""
    from spikefm.cli import main
    from spikefm.data.windows import session_label_names

    labels = ", ".join(session_label_names(tiny_corpus, HELD))
    assert "choice" in labels
    for extra, flag in ((["--metric", "nolabel-decoding"], "--metric"),
                        (["--tasks", "co-smoothing,nolabel-decoding", "--metric", "co-smoothing"], "--tasks")):
        out = tmp_path / "s"
        assert main(["experiment", "scaling", "--data", str(tiny_corpus), "--held-out", HELD, "--out", str(out),
                     *extra]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"spikefm: error: {flag} nolabel-decoding: the held-out session {HELD}'s trials have no label 'nolabel' "
            f"(their labels: {labels}); nothing was run: choose a decoding task of a label it has, or another task"]
        assert not out.exists()


def test_studies_refuse_a_held_out_session_without_val_windows_before_any_job(tiny_corpus, tmp_path, capsys):
    """Every pretraining job ran, then every fine-tuning failed with 'the sessions have no val
    windows ... or, when pretraining, set train.eval_every=0', naming no session (and the study
    sets that itself)."""
    from spikefm.cli import main

    for command in ("rank-sessions", "scaling"):
        out = tmp_path / command
        assert main(["experiment", command, "--data", str(tiny_corpus), "--held-out", HELD, "--out", str(out),
                     "--set", "data.split_fractions=0.9,0.0,0.1"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"spikefm: error: held-out session {HELD} has no val windows (too few windows for the val share of "
            "data.split_fractions), and fine-tuning to it validates on them; nothing was run: hold out a longer "
            "session, or raise the val share (--set data.split_fractions=...)"]
        assert not out.exists()
    # another problem of the data settings is the jobs' to say, in its own words (a trial-table
    # typo read 'has no val windows ... raise the val share')
    out = tmp_path / "typo"
    assert main(["experiment", "rank-sessions", "--data", str(tiny_corpus), "--held-out", HELD, "--out", str(out),
                 "--set", "data.align=stimOn_time", "--set", "data.trial_table=trails", "--pretrain-steps", "2",
                 "--finetune-steps", "2", "--eval-every", "1", "--quiet"]) == 1  # jobs failed
    err = capsys.readouterr().err
    assert "trial table 'trails': none of the 1 sessions has it" in err and "val windows" not in err


@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("1,5", [1, 5]), (" 2 ", [0, 1]), ("0,2", [0, 2]),
                                         ("1,,2", None), ("1,2,", None), ("1,1", None), ("-1,2", None), ("a", None),
                                         ("0", "N >= 1"), ("1.5,2", None)])
def test_the_seeds_flag_takes_a_count_or_a_list_and_refuses_a_seed_left_out(text, seeds):
    """scaling --seeds 1,,2 ran seeds 1 and 2 (transfer refuses the empty item)."""
    import argparse

    from spikefm.experiments.commands import seeds_arg

    if isinstance(seeds, list):
        assert seeds_arg(text) == seeds
        return
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        seeds_arg(text)
    assert str(exc.value) == (f"--seeds N needs N >= 1, got {text!r}" if seeds else
                              "--seeds must be a count N (seeds 0..N-1) or distinct comma-separated seeds >= 0, "
                              f"e.g. 2 or 1,5; got {text!r}")


def test_families_of_different_synth_runs_are_different(tmp_path):
    """Sessions of two synth runs (another seed) that both had family 0 counted as one family in
    precision@k; truth files without preset and seed (older ones) still read."""
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize, truth_path
    from spikefm.experiments.rank_sessions import session_families

    synthesize(tmp_path / "a", num_sessions=2, seed=1, duration_s=10.0, units_range=(20, 22))
    b = synthesize(tmp_path / "b", num_sessions=4, seed=2, duration_s=10.0, units_range=(20, 22))
    for nwb in b[:2]:  # the same names as run a's sessions
        nwb.unlink()
        truth_path(nwb).unlink()
    build_corpus([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "c", BuildConfig(test_fraction=0.0),
                 progress=False)
    ids = ["sub-ibl01_ses-000", "sub-ibl01_ses-001", "sub-ibl02_ses-002", "sub-ibl02_ses-003"]
    fam = session_families(tmp_path / "c", ids)
    assert fam["sub-ibl01_ses-000"] == fam["sub-ibl01_ses-001"] == "ibl seed 1 family 0 of 1"
    assert fam["sub-ibl02_ses-002"] == fam["sub-ibl02_ses-003"] == "ibl seed 2 family 0 of 1"
    adapt, records = {}, {}
    for s, v in zip(ids[1:], (0.3, 0.2, 0.1)):
        adapt[(ids[0], s)] = job = make_job("finetune", {"s": s})
        records[job.id] = {"result": {"best_val_loss": v, "best_step": 1}}
    gt = summarize_ranking(records, adapt, ids[:1], ids[1:], fam, top_k=1)["ground_truth"]["precision"][ids[0]]
    assert gt["own_family_sessions"] == 1 and gt["precision_at_1"] == 0.0  # ses-003 ranks first, run b
    for p in (tmp_path / "a").rglob("*.truth.npz"):  # older truth files: no preset, seed, num_families
        with np.load(p) as z:
            kept = {k: z[k] for k in z.files if k not in ("preset", "seed", "num_families")}
        with open(p, "wb") as f:
            np.savez(f, **kept)
    assert session_families(tmp_path / "c", ids[:2]) == {ids[0]: 0, ids[1]: 0}


def test_scaling_figures_label_the_sizes_plotted(monkeypatch):
    """On the log x axes sizes 1, 2, 3 showed one label ('1') and a trials axis between two powers
    of ten none: a log locator labels powers of ten only."""
    from spikefm.experiments import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    curve = lambda x: {"x": x, "y": [0.1, 0.2, 0.3], "sd": [None] * 3}  # noqa: E731
    summary = {"metric": "co-smoothing",
               "figure4": {"h": {"baseline": 0.1, "orders": {"random": {"sessions": curve([1, 2, 3]),
                                                                        "trials": curve([310, 620, 930])}}}},
               "more_sessions": {"order": "random", "curves": {"co-smoothing": curve([1, 2, 3])}}}
    plots.plot_scaling(summary, "unused.png")
    plots.plot_task_curves(summary, "unused.png")

    def labels(ax):
        ax.figure.canvas.draw()
        lo, hi = ax.get_xlim()
        return [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi and t.get_text()]

    sessions, trials = figures[0].axes[:2]
    assert labels(sessions) == ["1", "2", "3"] and labels(trials) == ["310", "620", "930"]
    assert labels(figures[1].axes[0]) == ["1", "2", "3"]


def test_study_figures_leave_the_callers_matplotlib_backend_alone(tmp_path):
    """The study plots called matplotlib.use("Agg"), switching a notebook's inline backend."""
    import matplotlib

    from spikefm.experiments import plots

    curve = lambda x: {"x": x, "y": [0.1, 0.2], "sd": [0.01, 0.02]}  # noqa: E731
    summary = {"metric": "co-smoothing",
               "figure4": {"h": {"baseline": 0.1, "orders": {"random": {"sessions": curve([1, 2]),
                                                                        "trials": curve([300, 600])}}}},
               "more_sessions": {"order": "random", "curves": {"co-smoothing": curve([1, 2])}}}
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        for name, plot in (("figure4.png", plots.plot_scaling), ("more.png", plots.plot_task_curves)):
            plot(summary, tmp_path / name)
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_an_unreachable_ray_address_leaves_no_study_folder(tiny_corpus, tmp_path, monkeypatch):
    """A refused --address left an empty --out folder holding only .spikefm.lock."""
    import contextlib

    from spikefm.corpus import build
    from spikefm.experiments.jobs import make_executor
    from spikefm.experiments.scaling import scaling_study

    @contextlib.contextmanager
    def refused(address=None, num_cpus=None, quiet=False):  # what ray_session says of a port nothing answers at
        raise ValueError(f"--address {address}: nothing answers there")
        yield

    monkeypatch.setattr(build, "ray_session", refused)
    for name, run in (("rank", lambda out, ex: _rank(out, tiny_corpus, executor=ex)),
                      ("scaling", lambda out, ex: scaling_study(out, tiny_corpus, [HELD], pool=[POOL], settings=MINI,
                                                                sizes="1", orders=["random"], seeds=[0], tasks=TASKS,
                                                                metric="co-smoothing", rank_top_k=1, executor=ex,
                                                                progress=False))):
        with pytest.raises(ValueError, match="--address 127.0.0.1:1: nothing answers there"):
            run(tmp_path / name, make_executor("ray", address="127.0.0.1:1"))
        assert not (tmp_path / name).exists()


def test_sizes_without_all_give_no_all_sessions_row_and_say_why(capsys):
    """``--sizes 1,2``: Table 1 had an 'all sessions' row of dashes (no run pretrained on the full
    set), and Table 3 'all sessions' columns of nothing, with no word of why."""
    from spikefm.experiments.scaling import _print_summary, summarize_scaling

    cells, records = [], {}
    for order in ("single-session", "random"):
        for k in ((0,) if order == "single-session" else (1, 2)):
            job = f"{order}-{k}"
            pre = f"pre-{k}" if k else None
            cells.append({"job": job, "pretrain": pre, "seed": 0, "held_out": "h", "order": order, "size": k,
                          "sessions": ["a", "b"][:k]})
            records[job] = {"result": {"scores": {"co-smoothing": 0.1 + 0.05 * k}, "best_val_loss": 1.0}}
            if pre:
                records[pre] = {"result": {"total_train_windows": 10 * k}}
    study = summarize_scaling(cells, records, metric="co-smoothing", pool=["a", "b", "c"], orders=["random"],
                              sizes=[1, 2], top_k=2)
    assert [r["model"] for r in study["table1"]] == ["random (best size)"]
    assert study["table1"][0]["size"] == 2 and study["table1"][0]["improvement_pct"] == pytest.approx(100.0)
    assert "all sessions" not in study["table3"][0]
    _print_summary({**study, "settings": {"seeds": [0], "sizes": [1, 2]}})
    out = capsys.readouterr().out
    assert "Table 1 has no 'all sessions' row: --sizes did not include all (3 sessions)" in out


def test_study_settings_default_schemes_are_the_ndts_for_the_ndt_only():
    """StudySettings(family='neds') carried the NDT's 'causal' and failed with "data.schemes must be
    'all' or ... encoding, decoding, ...; got 'causal'"."""
    from spikefm.experiments.rank_sessions import LAPTOP, StudySettings, pretrain_job

    assert LAPTOP.schemes == "causal" and StudySettings().to_dict()["schemes"] == "causal"
    assert StudySettings(family="neds").schemes == "" and StudySettings(family="neds", schemes="cross").schemes == "cross"
    assert StudySettings(schemes="").schemes == ""  # the family's own default, asked for
    from spikefm import families
    for fam in ("ndt", "neds"):
        spec = pretrain_job(StudySettings(family=fam), "CORPUS", ["s1"], 0, corpus_sha256="x").spec
        families.run_config(fam, preset="tiny", corpus="CORPUS", overrides=list(spec["overrides"]))  # accepted


def test_families_of_regenerated_recordings_are_not_read(tmp_path):
    """The rank-sessions / scaling studies read each session's truth file for its family without
    checking that the NWB file is still the one the corpus was built from: after `spikefm synth
    --overwrite` with another seed, precision@k was scored against another run's families."""
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize
    from spikefm.experiments.rank_sessions import session_families

    synthesize(tmp_path / "a", num_sessions=3, seed=1, duration_s=10.0, units_range=(20, 22), num_families=3)
    build_corpus([str(tmp_path / "a")], tmp_path / "c", BuildConfig(test_fraction=0.0), progress=False)
    from spikefm.corpus.reader import Corpus

    ids = [s["session_id"] for s in Corpus(tmp_path / "c").sessions]
    assert session_families(tmp_path / "c", ids) is not None
    synthesize(tmp_path / "a", num_sessions=3, seed=2, duration_s=10.0, units_range=(20, 22), num_families=3)
    with pytest.warns(RuntimeWarning, match=r"^no ground-truth families for session .* changed since the corpus "
                                            r"was built from it .*to use the ground-truth families$"):
        assert session_families(tmp_path / "c", ids) is None


def test_a_top_k_below_every_size_is_said_and_the_report_says_why_another_is_used(tiny_corpus, tmp_path):
    """--top-k 1 with --sizes 2,3 reported the top-2 model in the 'top-k ranked' row without a word,
    and the report said '2 used: ... the largest number of sessions in sizes (2, 3) that is at most 1'."""
    from spikefm.experiments.scaling import scaling_study
    from spikefm.report.study import _top_k

    with pytest.warns(RuntimeWarning, match=r"^--top-k 1: no size in --sizes \(2,3\) is at most 1, so Table 1's "
                                            r"top-k ranked row is the top-2 model; add 1 to --sizes"):
        with pytest.raises(ValueError):  # an unknown order stops it before any job, after the warning
            scaling_study(tmp_path / "s", tiny_corpus, ["sub-ibl02_ses-003"], settings=TINY, sizes="2,all",
                          orders=["ranked", "bogus"], seeds=[0], tasks=TASKS, metric="co-smoothing", top_k=1,
                          executor=LocalExecutor(1, threads=1), progress=False, command="test")
    assert not (tmp_path / "s").exists()
    _, note = _top_k({"study": "scaling", "top_k": 2, "settings": {"top_k": 1, "sizes": [2, 3]}})
    assert note == ("top_k: 1 requested (settings), 2 used: no number of sessions in sizes (2, 3) is at most 1, so "
                    "the smallest is used.")
    _, note = _top_k({"study": "scaling", "top_k": 2, "settings": {"top_k": 5, "sizes": [1, 2, 3]}})
    assert "the largest number of sessions in sizes (1, 2, 3) that is at most 5" in note
