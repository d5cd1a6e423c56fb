"""spikefm: foundation models of spiking neural population activity.

Public entry points: :class:`spikefm.Corpus` (read a corpus), :func:`spikefm.load_model`
(a trained run or a Hugging Face Llama folder). See README.md.
"""
from __future__ import annotations

from spikefm._version import __version__

__all__ = ["Corpus", "load_model", "__version__"]


def __getattr__(name):  # lazy: `import spikefm` must not import torch or pynwb
    if name == "Corpus":
        from spikefm.corpus.reader import Corpus

        return Corpus
    if name == "load_model":
        from spikefm.families import load_model

        return load_model
    raise AttributeError(f"module 'spikefm' has no attribute {name!r}")


def __dir__():  # the lazy names too, for tab completion
    return sorted(set(globals()) | set(__all__))
