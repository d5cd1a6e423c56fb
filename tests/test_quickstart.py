"""The README's quickstart runs end to end (smallest sizes) and writes what it promises."""
import json

import numpy as np
import pytest
import torch

from spikefm.cli import main


def test_quickstart_fast_runs_end_to_end(tmp_path, capsys):
    import warnings

    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["quickstart", "--out", str(tmp_path / "qs"), "--fast"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    qs = tmp_path / "qs"
    # advice to raise flags the quickstart does not take (--steps, --eval-every) is said as a note
    # on its fixed budgets; the tiny model's short training context too
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "raise --steps" in m or "--eval-every (now" in m or "trained on (" in m], said
    assert "fine-tuning run(s) of the quickstart might have used more steps" in out
    assert "note: the raster runs past the 256 tokens of context" in out
    assert "cross-entropy on the test split" in out and "co-smoothing" in out
    assert {p.name for p in (qs / "figures").glob("*.png")} >= {
        "units_per_session.png", "session_length.png", "token_marginals.png"}
    ar = json.loads((qs / "results_ar.json").read_text())
    assert set(ar) == {"tiny AR", "1-gram", "9-gram", "oracle"}
    bits = {k: v["overall"]["all"]["bits"] for k, v in ar.items()}
    assert len({v["overall"]["all"]["num_tokens"] for v in ar.values()}) == 1  # the same tokens
    assert bits["oracle"] < min(bits["1-gram"], bits["9-gram"], bits["tiny AR"])
    # At --fast sizes (40 steps) the tiny model does NOT beat the 1-gram: measured 0.7135 vs 0.7103
    # bits/token (9-gram 1.2514, oracle 0.4545); it has learned the token marginals but not yet the
    # bin structure. What holds with a wide margin: far below uniform (8 bits; an untrained model
    # scores about that), below the 9-gram (which overfits the small training split), and within
    # 5 % of the 1-gram. The README's full-size quickstart (400 steps) beats the 1-gram.
    assert bits["tiny AR"] < 2.0
    assert bits["tiny AR"] < bits["9-gram"]
    assert abs(bits["tiny AR"] - bits["1-gram"]) < 0.05 * bits["1-gram"]
    gen = np.load(qs / "generated.npz")
    assert gen["counts"].shape[0] == gen["prompt"].shape[0] and gen["counts"].dtype == np.uint8
    ndt = json.loads((qs / "results_ndt.json").read_text())
    assert set(ndt) == {"fine-tuned", "single-session"}
    cos = ndt["fine-tuned"]["tasks"]["co-smoothing"]
    assert {"model", "smoothing", "oracle"} <= set(cos)
    assert np.isfinite(cos["model"]["bps_pooled"])


def test_transfer_needs_a_held_out_session(tmp_path):
    from spikefm.experiments.transfer import transfer

    with pytest.raises(ValueError, match=r"sessions must be an int >= 2, got 1"):
        transfer(tmp_path / "qs", sessions=1)
    assert not (tmp_path / "qs").exists()  # nothing was written
