"""Multi-run studies: each one trains, fine-tunes and evaluates several runs through the family
registry (:mod:`spikefm.families`) and writes its results as JSON. Only the command line (and the
quickstart, which is a command) imports this package.

- :mod:`spikefm.experiments.transfer`: does pretraining on many sessions help a new one?
  Pretrain, fine-tune to a held-out session, compare with the single-session model, the smoothing
  baseline and the oracle, over synthetic seeds (``spikefm experiment transfer``).
- :mod:`spikefm.experiments.rank_sessions`: which pretraining sessions help a held-out session
  (frozen single-session cores, validation loss; ``spikefm experiment rank-sessions``).
- :mod:`spikefm.experiments.scaling`: pretraining on the first k sessions of ranked / random /
  reverse orders vs the single-session model (``spikefm experiment scaling``).
- :mod:`spikefm.experiments.jobs`: every run of those studies is a job (a JSON spec in, a result
  JSON out), resumable, on a local process pool or a Ray cluster; :mod:`~spikefm.experiments.runs`
  holds the job functions, :mod:`~spikefm.experiments.plots` the PNG figures.
"""
