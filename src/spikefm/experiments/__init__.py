"""Multi-run studies: each one trains, fine-tunes and evaluates several runs through the family
registry (:mod:`spikefm.families`) and writes its results as JSON. Only the command line (and the
quickstart, which is a command) imports this package.

- :mod:`spikefm.experiments.transfer`: does pretraining on many sessions help a new one?
  Pretrain, fine-tune to a held-out session, compare with the single-session model, the smoothing
  baseline and the oracle, over synthetic seeds (``spikefm experiment transfer``).
"""
