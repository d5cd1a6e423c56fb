"""spikefm: foundation models of spiking neural population activity.

Public entry points: :class:`spikefm.Corpus` (read a corpus), :func:`spikefm.load_model`
(a trained run or a Hugging Face Llama folder). See README.md.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Corpus", "load_model", "__version__"]


def __getattr__(name):  # lazy: `import spikefm` must not import torch or pynwb
    if name == "Corpus":
        from .corpus.reader import Corpus

        return Corpus
    if name == "load_model":
        from .loading import load_model

        return load_model
    raise AttributeError(f"module 'spikefm' has no attribute {name!r}")
