"""``finetune --strategy auto``'s choice and its warning when pretraining did not help, on fake
candidates (no training): the choice is the lowest validation loss among the pretrained
candidates, never the single-session model, and a single-session model at or below it is said."""
from __future__ import annotations

import json
import types
import warnings

import pytest

import spikefm.train.finetune as ftmod


def _fake_candidates(monkeypatch, losses: dict[str, float]) -> None:
    def one(family, name, run_dir, corpus, session_id, path, **kw):
        path.mkdir(parents=True)
        return {"best_val_loss": losses[name], "best_step": 10, "stopped_at": 20, "out_dir": str(path)}

    monkeypatch.setattr(ftmod, "_one_strategy", one)


FAMILY = types.SimpleNamespace(name="fake", finetune_config=lambda *a, **k: None)


@pytest.mark.parametrize("scratch, warned", [(0.40, False), (0.30, True), (0.31, True)])
def test_auto_chooses_a_pretrained_candidate_and_says_when_the_single_session_model_is_as_good(
        monkeypatch, tmp_path, scratch, warned):
    losses = {"frozen": 0.33, "full": 0.35, "unfreeze": 0.31, "scratch": scratch}
    _fake_candidates(monkeypatch, losses)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = ftmod.finetune_strategies(FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft")
    assert s["strategy"] == "unfreeze"  # never scratch, even when it is best
    assert s["pretraining_gain"] == pytest.approx(scratch - 0.31)
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["pretraining_gain"] == pytest.approx(scratch - 0.31)
    said = [w for w in caught if "pretraining did not help" in str(w.message)]
    assert bool(said) == warned
    if warned:
        msg = str(said[0].message)
        assert f"{scratch:.4f}" in msg and "unfreeze, 0.3100" in msg and str(tmp_path / "ft" / "candidates" / "scratch") in msg
