"""The ideal observer of the synthetic choice, recomputed from a truth file with scipy's Poisson
pmf (an implementation apart from spikefm.eval.oracle), for the NDT and NEDS evaluation tests."""
from __future__ import annotations

import numpy as np
from scipy.stats import poisson

from spikefm.corpus.synth import MAX_EXPECTED_COUNT


def ideal_observer_hits(truth: dict, windows, index) -> int:
    """How many of the windows ``index`` have counts likelier with the choice latent as it is than
    with it flipped (every other latent at its true value)."""
    j = [str(x) for x in truth["latent_names"]].index("choice")
    loadings = np.asarray(truth["loadings"], dtype=np.float64)
    hits = 0
    for k in index:
        start = (windows.t_start_ms[k] - int(truth["t_start_ms"])) // windows.bin_ms
        z = np.asarray(truth["latents"], dtype=np.float64)[start:start + windows.num_bins]
        ll = []
        for sign in (1.0, -1.0):
            zz = z.copy()
            zz[:, j] *= sign
            lam = np.minimum(np.exp(zz @ loadings.T + truth["biases"]), MAX_EXPECTED_COUNT)
            ll.append(poisson.logpmf(windows.counts[k], lam).sum())
        hits += ll[0] > ll[1]
    return hits
