"""Progress display of the training loop (plain lines off a terminal) and TensorBoard mirroring
of metrics.jsonl, with the toy family (tests/_toy_family.py)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy_family import toy_config  # noqa: E402

from spikefm import cli  # noqa: E402
from spikefm.families import train  # noqa: E402
from spikefm.train import loop  # noqa: E402
from spikefm.train.config import TrainConfig, apply_overrides  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


LINE = re.compile(r"^train step (\d+)/(\d+) \((\d+)%, ETA (\?|\d+s|\d+m\d\ds|\d+h\d\dm)\): loss ([\d.]+) ")


def test_plain_progress_is_about_ten_lines_whatever_the_log_rate(tmp_path, capsys):
    train(toy_config(steps=200, log_every=1), tmp_path, progress=True)
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train step")]
    parsed = [LINE.match(line) for line in out]
    assert all(parsed), out
    steps = [int(m.group(1)) for m in parsed]
    # one line per tenth of the run (a slow machine may add a timed line or two), the last at the end
    assert 10 <= len(steps) <= 14 and steps[-1] == 200 and steps == sorted(steps)
    assert {20, 40, 100, 200} <= set(steps)
    rows = {r["step"]: r for r in rows_of(tmp_path) if "loss" in r}
    assert len(rows) == 200  # every logged row is still in metrics.jsonl
    for m in parsed:  # the line shows the row logged at that step
        assert float(m.group(5)) == pytest.approx(rows[int(m.group(1))]["loss"], abs=5e-5)
    assert parsed[-1].group(4) == "0s"


def test_plain_progress_prints_on_time_too(capsys, monkeypatch):
    clock = iter(range(0, 10_000, 7))  # every call 7 "seconds" later
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    display = loop._Display(True, total=1000, start=0, plain_every_s=20.0)
    row = {"loss": 1.0, "lr": 0.1, "grad_norm": 1.0, "tokens_per_s": 10.0, "mfu": None}
    for step in range(1, 10):
        display.update(step, row)
    out = capsys.readouterr().out.splitlines()
    # t0 = 0; updates at t = 7, 14, 21, ...: lines when 20 s have passed since the last one
    assert [int(LINE.match(line).group(1)) for line in out] == [3, 6, 9]
    # ETA: 21 s for 3 steps -> 997 steps left take 6979 s
    assert LINE.match(out[0]).group(4) == "1h56m"


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (60, "1m00s"), (3599, "59m59s"),
                                           (3600, "1h00m"), (7322, "2h02m"), (float("nan"), "?"),
                                           (-1, "?")])
def test_format_duration(seconds, text):
    assert loop.format_duration(seconds) == text


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_equal_metrics_jsonl_and_resume_purges(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = apply_overrides(toy_config(steps=12, log_every=2, eval_every=6, ckpt_every=6),
                          ["train.tensorboard=true"])
    train(cfg, tmp_path / "run", progress=False, stop_after=6)
    # resume: events after step 6 from any earlier attempt are dropped, as metrics rows are
    train(cfg, tmp_path / "run", resume=True, progress=False)
    train(cfg, tmp_path / "straight", progress=False)
    for run in ("run", "straight"):
        got = _scalars(tmp_path / run / "tensorboard")
        want: dict[str, list[tuple[int, float]]] = {}
        for row in rows_of(tmp_path / run):
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    want.setdefault(key, []).append((row["step"], value))
        assert set(got) == set(want) and {"loss", "lr", "grad_norm", "eval/loss"} <= set(got)
        for tag in want:
            assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
            assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6, abs=1e-6)
    # the resumed run logged the same losses as the uninterrupted one
    assert _scalars(tmp_path / "run" / "tensorboard")["loss"] == _scalars(tmp_path / "straight" / "tensorboard")["loss"]


def test_tensorboard_missing_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    cfg = apply_overrides(toy_config(steps=4), ["train.tensorboard=true"])
    with pytest.raises(ValueError) as err:
        train(cfg, tmp_path / "run", progress=False)
    assert str(err.value) == ("train.tensorboard=true needs the tensorboard package, which is not "
                              "installed; pip install 'spikefm[tensorboard]' or drop --tensorboard")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_tensorboard_flag_must_be_a_bool(value):
    with pytest.raises(ValueError, match=r"^train.tensorboard must be true or false, got "):
        TrainConfig(tensorboard=value)


def test_cli_train_tensorboard_flag_writes_events(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from spikefm.corpus.synth import synthesize
    from spikefm.corpus.build import BuildConfig, build_corpus

    nwbs = synthesize(tmp_path / "nwb", num_sessions=1, seed=0, duration_s=20.0, units_range=(20, 24))
    build_corpus(nwbs, tmp_path / "corpus", BuildConfig(test_fraction=0.0), progress=False)
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(tmp_path / "corpus"), "--out", str(run), "--steps", "4",
                     "--set", "train.log_every=2", "--set", "train.batch_size=2",
                     "--set", "data.seq_len=64", "--tensorboard", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["train"]["tensorboard"] is True
    assert [s for s, _ in _scalars(run / "tensorboard")["loss"]] == [2, 4]


def test_plain_lines_fall_on_logging_steps_and_show_that_steps_row(tmp_path, capsys):
    train(toy_config(steps=40, log_every=6), tmp_path, progress=True)
    out = [LINE.match(line) for line in capsys.readouterr().out.splitlines() if line.startswith("train step")]
    rows = {r["step"]: r for r in rows_of(tmp_path) if "loss" in r}
    steps = [int(m.group(1)) for m in out]
    assert steps and set(steps) <= set(rows) and steps[-1] == 40
    # the first logging step at or past each tenth: 6 (>= 4), 12 (>= 8, 12), 18 (>= 16), 24, 30, 36, 40
    assert steps == [6, 12, 18, 24, 30, 36, 40]
    for m in out:
        assert float(m.group(5)) == pytest.approx(rows[int(m.group(1))]["loss"], abs=5e-5)


def test_tensorboard_resume_without_a_checkpoint_drops_the_killed_runs_events(tmp_path):
    """A run killed before its first checkpoint, resumed (it starts at step 0): metrics.jsonl
    was rewritten but the killed run's events stayed beside the new ones (every tag twice)."""
    import shutil

    pytest.importorskip("tensorboard")
    cfg = apply_overrides(toy_config(steps=8, log_every=2, eval_every=0, ckpt_every=0),
                          ["train.tensorboard=true"])
    train(cfg, tmp_path / "run", progress=False, stop_after=4)
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # as if killed before a checkpoint was written
    train(cfg, tmp_path / "run", resume=True, progress=False)
    got = _scalars(tmp_path / "run" / "tensorboard")
    steps = [row["step"] for row in rows_of(tmp_path / "run")]
    assert steps == [2, 4, 6, 8]
    assert [s for s, _ in got["loss"]] == steps


def test_a_labelled_display_names_its_run_and_fits_a_narrow_terminal(tmp_path, capsys, monkeypatch):
    """Fine-tuning's candidates each showed 'train step 10/40 ...' five times over with nothing
    naming frozen, full or unfreeze; at 80 columns the bar's figures pushed its step count and ETA
    to '30… 0:0…'."""
    train(toy_config(steps=20, log_every=1), tmp_path / "run", progress="frozen")
    lines = [line for line in capsys.readouterr().out.splitlines() if "step" in line]
    assert lines and all(line.startswith("frozen step ") for line in lines), lines
    with pytest.raises(TypeError, match="progress must be True, False or the display's label"):
        train(toy_config(steps=20), tmp_path / "run2", progress="")
    # on a terminal of 80 columns the figures are cut, never the label, the step count or the ETA
    from rich.console import Console

    monkeypatch.setattr("rich.console.Console", lambda **kw: Console(force_terminal=True, width=80, **kw))
    display = loop._Display(True, total=1500, start=0, label="unfreeze, frozen stage", transient=True)
    display.update(750, {"loss": 0.5012, "lr": 0.0, "grad_norm": 0.261, "tokens_per_s": 7050.0, "mfu": 0.224})
    table = display.bar.make_tasks_table(display.bar.tasks)
    probe = Console(width=80, record=True, file=open(tmp_path / "null", "w"), force_terminal=True)
    probe.print(table)
    shown = probe.export_text().strip()
    display.close()
    assert shown.startswith("unfreeze, frozen stage ") and " 750/1500 " in shown and "\u2026" in shown, shown
    assert len(shown) <= 80 and display.bar.live.transient
    # a run of 100,000 steps or more, and a label holding braces (the column's text is formatted)
    for total, label in ((200_000, "train"), (1500, "run {1} [x]")):
        display = loop._Display(True, total=total, start=0, label=label)
        display.update(total // 4, {"loss": 0.5, "lr": 0.0, "grad_norm": 0.2, "tokens_per_s": 7050.0, "mfu": None})
        probe = Console(width=80, record=True, file=open(tmp_path / "null", "w"), force_terminal=True)
        probe.print(display.bar.make_tasks_table(display.bar.tasks))
        shown = probe.export_text().strip()
        display.close()
        assert shown.startswith(label) and f" {total // 4}/{total} " in shown and len(shown) <= 80, shown


def test_stage_lines_in_a_log_name_the_stage_under_way_and_count_the_done_ones(capsys, monkeypatch):
    from spikefm import progress as pg

    clock = iter(range(0, 10_000, 10))  # every call 10 "seconds" later: every update may print
    monkeypatch.setattr(pg.time, "monotonic", lambda: float(next(clock)))
    with pg.stage_bar(4, "scoring s1") as stages:
        stages.begin("encoding")
        stages.begin("decoding")
        for _ in range(4):
            stages.part(0.25)
        stages.part(0.25)  # more parts than the stage holds do not count the next stage done
        stages.begin("region")
    lines = capsys.readouterr().err.splitlines()
    done = [re.match(r"spikefm: scoring s1(?: \((\w+)\))?: (\d+(?:\.\d+)?)/4 ", line).groups() for line in lines]
    assert done[0] == ("decoding", "1") and ("decoding", "2") in done
    assert ("region", "2") not in done and all(float(n) <= 2 for s, n in done if s == "decoding")
    assert done[-1] == (None, "4")  # leaving the block counts every stage (one never begun too) done
