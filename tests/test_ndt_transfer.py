"""The masked-NDT claim of the quickstart, at its full size (about 5 minutes on one CPU core).

Opt in with ``python -m pytest -m slow tests/test_ndt_transfer.py``. The default suite runs the
same code path at the smallest sizes (tests/test_quickstart.py); this test checks the numbers:
on synthetic data the fine-tuned model's co-smoothing ``bps_pooled`` is above the NLB smoothing
baseline and above the single-session model, and the fraction of the oracle is model / oracle.
"""
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
