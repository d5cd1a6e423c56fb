"""The masked neural data transformer (NDT; multi-task masking, Zhang et al. 2024, Jiang et al.
2025): per-session stitchers, multi-task masks, Poisson loss, the neural-prediction benchmark.

Modules: ``model`` (NDT, presets, per-session read-in / read-out), ``masking`` (masks as pure
functions, the per-scheme loss), ``batches`` (padded window batches with mask seeds), ``family``
(the Family implementation: data config, training, fine-tuning, evaluation), ``tasks``
(co-smoothing, forward prediction, inter-/intra-region, decoding), ``evaluate`` (a run's test
windows, ground truth, ``spikefm eval``). Reach the family through :mod:`spikefm.families`.
"""
