"""The autoregressive spike language model (Neural Pile): a Llama-style decoder over the
256-token vocabulary that reads each 20 ms bin as ``[255, c1..cn]``.

Modules: ``tokens`` (tokenize / detokenize), ``loader`` (training windows, token cache), ``model``
(Llama, presets, KV cache, generation), ``hf`` (Hugging Face Llama layout), ``family`` (the
Family implementation), ``ngram`` (1..9-gram Laplace baselines), ``xent`` (cross-entropy
accumulator), ``oracle`` (ground-truth token probabilities), ``evaluate`` (model / n-gram / oracle
on the same tokens), ``generation`` (sampling to files), ``commands`` (``spikefm ngram``,
``spikefm generate``). Reach the family through :mod:`spikefm.families`.
"""
