"""The on-disk corpus format: one Arrow schema and one schema version, in one place.

A corpus directory looks like::

    CORPUS_DIR/
      manifest.json                         # sessions, splits, provenance (manifest.py)
      data/train-00000-of-00002.parquet     # zstd Parquet shards, Hugging Face naming
      data/test-00000-of-00001.parquet
      .staging/                             # per-session cache that makes builds resumable

(``manifest.json`` and ``data`` are links into ``.versions/``, switched together in one step
when the corpus is rewritten; see store.py.)

Every row is one chunk of one session (at most ``max_row_tokens`` = units x bins). The first five
columns are the published Neural Pile's, with the same names and Arrow types, so
``datasets.load_dataset("parquet", data_dir=CORPUS_DIR + "/data")`` rows match the published
dataset. The remaining columns carry what spikefm's models need.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

#: The Neural Pile's five columns, in its order.
NEURAL_PILE_COLUMNS = ("spike_counts", "subject_id", "session_id", "segment_id", "source_dataset")

#: ``spike_counts`` is a (units, bins) uint8 matrix stored as a list of per-unit lists.
SPIKE_COUNTS_TYPE = pa.list_(pa.list_(pa.uint8()))

ROW_SCHEMA = pa.schema(
    [
        pa.field("spike_counts", SPIKE_COUNTS_TYPE),
        pa.field("subject_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("segment_id", pa.string()),
        pa.field("source_dataset", pa.string()),
        # --- spikefm extras -------------------------------------------------------------
        pa.field("bin_ms", pa.int32()),
        # Start of this chunk in integer ms from the session's reference time (NWB
        # session_start_time); bin k of the row covers [t_start_ms + k*bin_ms, +bin_ms).
        pa.field("t_start_ms", pa.int64()),
        pa.field("unit_ids", pa.list_(pa.string())),
        pa.field("unit_regions", pa.list_(pa.string())),
        pa.field("species", pa.string()),
        # Behaviour resampled onto this row's bins: (num_behaviors, bins) float32, NaN where the
        # recording has no sample; names in ``behavior_names``.
        pa.field("behavior_names", pa.list_(pa.string())),
        pa.field("behavior", pa.list_(pa.list_(pa.float32()))),
        # Trial tables that overlap this chunk, as JSON: {table: {column: [values...]}}, times
        # in seconds from the session's reference time (same clock as t_start_ms / 1000).
        pa.field("trials_json", pa.string()),
    ],
    metadata={b"spikefm_schema_version": str(SCHEMA_VERSION).encode()},
)

SPLITS = ("train", "test")


def shard_name(split: str, index: int, num_shards: int) -> str:
    """Hugging Face's shard file name, e.g. ``train-00000-of-00003.parquet``."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
