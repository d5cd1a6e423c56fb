"""Corpus layer: NWB/DANDI -> binned uint8 spike counts in Parquet shards (numpy + pyarrow, never
torch)."""
from .binning import bin_edges_s, bin_spikes
from .schema import NEURAL_PILE_COLUMNS, ROW_SCHEMA, SCHEMA_VERSION

__all__ = ["bin_spikes", "bin_edges_s", "Corpus", "build_corpus", "BuildConfig", "ROW_SCHEMA",
           "SCHEMA_VERSION", "NEURAL_PILE_COLUMNS"]


def __getattr__(name):
    if name == "Corpus":
        from .reader import Corpus

        return Corpus
    if name in ("build_corpus", "BuildConfig"):
        from . import build

        return getattr(build, name)
    raise AttributeError(name)


def __dir__():  # the lazy names too, for tab completion
    return sorted(set(globals()) | set(__all__))
