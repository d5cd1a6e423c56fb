"""NEDS (Zhang et al. 2025): one masked transformer over spike and behaviour tokens, for encoding
(behaviour -> neurons), decoding (neurons -> behaviour) and unit region identity.

Modules: ``model`` (NEDS, presets, per-session stitchers), ``masking`` (the five per-sample
schemes, the per-modality loss), ``batches`` (modalities, z-scored behaviour, label classes,
training batches), ``family`` (the Family implementation), ``evaluate`` (``spikefm eval``:
encoding, decoding, region tasks with baselines). Reach the family through :mod:`spikefm.families`.
"""
