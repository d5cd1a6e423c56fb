"""Imported Neural Pile sessions whose rows cannot be put on one timeline (segments not numbered
0..k-1, or rows of different unit counts): the import's warning, ``generate --prompt`` (prompts
from inside one row) and the masked families' windows (a one-line refusal with the fix)."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spikefm import Corpus
from spikefm.corpus.importer import import_neural_pile
from spikefm.corpus.reader import CorpusRow
from spikefm.data.windows import _assemble, _imported, load_all_windows, make_session_windows
from spikefm.families.ar.generation import _prompt_counts

COUNTS_TYPE = pa.list_(pa.list_(pa.uint8()))
# (session, segment, units, bins): sess-8's segments have 15 and 14 units, sess-9 lacks its
# segment_0 (order unknown), sess-1 is a well-formed session of two segments
SEGMENTS = [("sess-8", "segment_0", 15, 12), ("sess-8", "segment_1", 14, 8),
            ("sess-9", "segment_1", 6, 7), ("sess-9", "segment_2", 6, 9),
            ("sess-1", "segment_0", 5, 30), ("sess-1", "segment_1", 5, 25)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(corpus dir, {(session, segment): counts}, the import's stderr) of a published-layout
    folder holding SEGMENTS in shuffled order."""
    rng = np.random.default_rng(8)
    counts = {(s, g): rng.integers(0, 4, size=(u, b)).astype(np.uint8) for s, g, u, b in SEGMENTS}
    order = [5, 3, 1, 4, 2, 0]  # later segments first: the import must not rely on file order
    keys = [(SEGMENTS[i][0], SEGMENTS[i][1]) for i in order]
    root = tmp_path_factory.mktemp("pile")
    (root / "data").mkdir()
    pq.write_table(pa.table({
        "spike_counts": pa.array([counts[k].tolist() for k in keys], COUNTS_TYPE),
        "subject_id": pa.array(["M"] * len(keys)),
        "session_id": pa.array([k[0] for k in keys]),
        "segment_id": pa.array([k[1] for k in keys]),
        "source_dataset": pa.array(["xiao"] * len(keys)),
    }), root / "data" / "train-00000-of-00001.parquet")
    out = tmp_path_factory.mktemp("corpus") / "np"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        import_neural_pile(str(root), out, progress=False)
    return out, counts, err.getvalue()


def test_a_corpus_holding_sessions_off_one_timeline_imports_again_whole(imported, tmp_path):
    """Importing such a corpus again (its folder, as the README allows) failed: every row of those
    sessions is stored at t_start_ms 0, which the import took for overlapping rows."""
    out, counts, _ = imported
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        import_neural_pile(str(out), tmp_path / "again", progress=False)
    assert "2 session(s) (sess-8, sess-9)" in err.getvalue()
    first, again = Corpus(out), Corpus(tmp_path / "again")
    assert {s["session_id"]: s["segments_ordered"] for s in again.sessions} == \
        {s["session_id"]: s["segments_ordered"] for s in first.sessions}
    rows = {(r.session_id, r.segment_id): r for r in again.iter_rows("train")}
    assert rows.keys() == counts.keys()
    for key, row in rows.items():
        assert np.array_equal(row.spike_counts, counts[key]) and row.t_start_ms == \
            next(r.t_start_ms for r in first.iter_rows("train") if (r.session_id, r.segment_id) == key)


def test_import_records_and_explains_sessions_off_one_timeline(imported):
    out, _, err = imported
    corpus = Corpus(out)
    ordered = {s["session_id"]: s["segments_ordered"] for s in corpus.sessions}
    assert ordered == {"sess-8": False, "sess-9": False, "sess-1": True}
    starts = {(r.session_id, r.segment_id): r.t_start_ms for r in corpus.iter_rows("train")}
    assert starts == {("sess-8", "segment_0"): 0, ("sess-8", "segment_1"): 0,
                      ("sess-9", "segment_1"): 0, ("sess-9", "segment_2"): 0,
                      ("sess-1", "segment_0"): 0, ("sess-1", "segment_1"): 30 * 20}
    (line,) = [x for x in err.splitlines() if "t_start_ms 0" in x]
    assert line.startswith("spikefm: warning: 2 session(s) (sess-8, sess-9) have segments not numbered 0..k-1")
    for said in ("segments_ordered false", "generate --prompt takes its prompt from inside one of their rows",
                 "ndt / neds training refuses them", "--sessions"):
        assert said in line


def test_prompt_comes_from_the_one_row_that_holds_it(imported):
    out, counts, _ = imported
    seg0, seg1 = counts["sess-8", "segment_0"], counts["sess-8", "segment_1"]
    # the reviewer's case: 10 prompt bins from bin 0 lie in segment_0 (15 units); real bins stop at its end
    with pytest.warns(RuntimeWarning, match=r"sess-8's row segment_0 .*ends 2 bin\(s\) after the prompt"):
        prompt, real, bin_ms = _prompt_counts(f"{out}:sess-8:0", 10, 5)
    np.testing.assert_array_equal(prompt, seg0[:, :10])
    np.testing.assert_array_equal(real, seg0[:, 10:12])
    assert bin_ms == 20
    # session bins 12.. are segment_1's (14 units)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prompt, real, _ = _prompt_counts(f"{out}:sess-8:13", 3, 4)
    np.testing.assert_array_equal(prompt, seg1[:, 1:4])
    np.testing.assert_array_equal(real, seg1[:, 4:8])


@pytest.mark.parametrize("session, start, bins, why", [
    ("sess-8", 8, 10, "(units 14/15 differ across them; the manifest records segments_ordered false)"),
    ("sess-9", 3, 6, "(their order is unknown: imported with segments not numbered 0..k-1; the manifest "
                     "records segments_ordered false)"),
])
def test_prompt_across_rows_that_cannot_be_joined_is_refused_in_one_line(imported, session, start, bins, why):
    out, _, _ = imported
    with pytest.raises(ValueError) as exc:
        _prompt_counts(f"{out}:{session}:{start}", bins, 5)
    msg = str(exc.value)
    assert "\n" not in msg and f"session {session}: START_BIN {start} + {bins} prompt bins crosses" in msg
    assert why in msg and "start the prompt and end it inside one row" in msg
    if session == "sess-8":
        assert "0-11 (segment_0, 15 units), 12-19 (segment_1, 14 units)" in msg
    else:  # rows of unknown order all start at 0 ms: in segment order
        assert "0-6 (segment_1, 6 units), 7-15 (segment_2, 6 units)" in msg


def test_prompt_inside_a_row_of_unknown_order_and_across_joined_rows(imported):
    out, counts, _ = imported
    seg2 = counts["sess-9", "segment_2"]
    prompt, real, _ = _prompt_counts(f"{out}:sess-9:7", 4, 5)
    np.testing.assert_array_equal(prompt, seg2[:, :4])
    np.testing.assert_array_equal(real, seg2[:, 4:9])
    # a well-formed session's rows are one timeline: prompt and real bins run across them
    whole = np.concatenate([counts["sess-1", "segment_0"], counts["sess-1", "segment_1"]], axis=1)
    prompt, real, _ = _prompt_counts(f"{out}:sess-1:25", 10, 6)
    np.testing.assert_array_equal(prompt, whole[:, 25:35])
    np.testing.assert_array_equal(real, whole[:, 35:41])


@pytest.mark.parametrize("session, what", [("sess-8", "units 14/15 differ across them"),
                                           ("sess-9", "their order is unknown")])
def test_windows_refuse_a_session_off_one_timeline_with_the_sessions_fix(imported, session, what):
    out, _, _ = imported
    for cut in (lambda: load_all_windows(out, ["sess-1", session], align=None, window_bins=5),
                lambda: make_session_windows(out, session, align=None, window_bins=5)):
        with pytest.raises(ValueError) as exc:
            cut()
        msg = str(exc.value)
        assert "\n" not in msg and "rebuild" not in msg.lower()
        assert msg.startswith(f"session {session!r}: its 2 rows cannot be joined on one timeline ({what})")
        assert "segments_ordered false" in msg
        assert msg.endswith("leave it out with --sessions (data.sessions), e.g. --sessions sess-1")
    with pytest.raises(ValueError, match=r"^session 'sess-8': .*leave it out \(and sess-9, the same\) with"):
        load_all_windows(out, ["sess-8", "sess-1", "sess-9"], align=None, window_bins=5)


def test_windows_of_a_well_formed_imported_session_run_across_its_rows(imported):
    out, counts, _ = imported
    w = load_all_windows(out, ["sess-1"], align=None, window_bins=11)["sess-1"]
    whole = np.concatenate([counts["sess-1", "segment_0"], counts["sess-1", "segment_1"]], axis=1)
    assert w.num_windows == 55 // 11 and list(w.t_start_ms) == [i * 11 * 20 for i in range(5)]
    for k in range(5):  # window 2 (bins 22..32) crosses from segment_0 into segment_1
        np.testing.assert_array_equal(w.counts[k], whole[:, k * 11:(k + 1) * 11].T)


def test_rows_that_disagree_keep_the_rebuild_hint_for_a_built_corpus(imported):
    assert _imported(Corpus(imported[0]))  # the import's manifest says so (build.importer)
    rows = [CorpusRow(np.zeros((3, 4), np.uint8), "M", "s", "", "x", t_start_ms=0),
            CorpusRow(np.zeros((2, 4), np.uint8), "M", "s", "", "x", t_start_ms=80)]
    with pytest.raises(ValueError, match=r"rows disagree on bin_ms/num_units .*; rebuild the corpus$"):
        _assemble("s", rows)
    with pytest.raises(ValueError, match=r"importing again gives the same rows: leave this session out "
                                         r"with --sessions \(data.sessions\)$"):
        _assemble("s", rows, imported=True)
    twice = [CorpusRow(np.zeros((3, 4), np.uint8), "M", "s", "", "x", t_start_ms=0)] * 2
    with pytest.raises(ValueError, match="holds this session twice\\? Rebuild it$"):
        _assemble("s", twice)
