"""AR token loader: windows equal the tokenized rows, ranks disjoint, exact resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spikefm import Corpus
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.families.ar.loader import ARTokenLoader, iter_eval_windows
from spikefm.families.ar.tokens import tokenize

from conftest import random_units, write_nwb


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arc")
    rng = np.random.default_rng(0)
    for k in range(5):
        write_nwb(tmp / "in" / f"s{k}.nwb", random_units(rng, 3 + k, 8.0), ["A"] * (3 + k))
    build_corpus([str(tmp / "in")], tmp / "c", BuildConfig(max_row_tokens=300, test_fraction=0.2),
                 progress=False)
    return Corpus(tmp / "c")


def test_windows_are_the_concatenated_token_stream(corpus):
    loader = ARTokenLoader(corpus, seq_len=31, batch_size=4, seed=3)
    x, y = next(loader)
    assert x.shape == y.shape == (4, 31) and x.dtype == torch.uint8
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Rebuild this rank's stream independently from the rows in the same group order.
    import pyarrow.parquet as pq
    from spikefm.corpus.reader import _matrices

    stream = []
    for i in loader._my_groups(0):
        g = loader.groups[i]
        t = pq.ParquetFile(g.shard).read_row_group(g.row_group)
        stream += [tokenize(m) for m in _matrices(t.column("spike_counts"))]
    stream = np.concatenate(stream)
    np.testing.assert_array_equal(torch.cat([x, y[:, -1:]], 1).reshape(-1).numpy(),
                                  stream[:4 * 32])


def test_ranks_read_disjoint_row_groups_covering_all(corpus):
    a = ARTokenLoader(corpus, seq_len=8, batch_size=1, seed=1, rank=0, world_size=2)
    b = ARTokenLoader(corpus, seq_len=8, batch_size=1, seed=1, rank=1, world_size=2)
    ga, gb = set(a._my_groups(0)), set(b._my_groups(0))
    assert not ga & gb and ga | gb == set(range(len(a.groups)))


def test_token_cache_equals_parquet_path_and_is_reused(corpus):
    a = ARTokenLoader(corpus, seq_len=40, batch_size=2, seed=5, token_cache=True)
    b = ARTokenLoader(corpus, seq_len=40, batch_size=2, seed=5, token_cache=False)
    for _ in range(30):
        xa, ya = next(a)
        xb, yb = next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    caches = list((corpus.path / ".cache").glob("tokens-train-*.u8"))
    assert len(caches) == 1 and caches[0].name.endswith(".u8")
    mtime = caches[0].stat().st_mtime_ns
    ARTokenLoader(corpus, seq_len=40, batch_size=2, seed=5)
    assert caches[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not list((corpus.path / ".cache").glob(".*tmp*"))


def test_resume_gives_exactly_the_next_batches(corpus):
    ref = ARTokenLoader(corpus, seq_len=50, batch_size=3, seed=7)
    batches = [next(ref) for _ in range(40)]  # runs over several epochs
    part = ARTokenLoader(corpus, seq_len=50, batch_size=3, seed=7)
    for _ in range(17):
        next(part)
    state = part.state_dict()
    resumed = ARTokenLoader(corpus, seq_len=50, batch_size=3, seed=7)
    resumed.load_state_dict(state)
    for k in range(17, 40):
        x, y = next(resumed)
        assert torch.equal(x, batches[k][0]) and torch.equal(y, batches[k][1])
    with pytest.raises(ValueError, match="world_size"):
        ARTokenLoader(corpus, seq_len=50, batch_size=3, seed=7, world_size=2).load_state_dict(state)


def test_eval_windows_score_every_token_but_the_first_once():
    tokens = np.arange(23, dtype=np.uint8)
    scored = np.concatenate([w[1:] for _, w in iter_eval_windows(tokens, 5)])
    np.testing.assert_array_equal(scored, tokens[1:])


@pytest.fixture(scope="module")
def one_group_corpus(tmp_path_factory):
    """A split of one Parquet row group (a small corpus at the default --max-row-tokens: one row
    per session), which torchrun with 2 ranks refused ('fewer row groups than world_size')."""
    tmp = tmp_path_factory.mktemp("arc1")
    rng = np.random.default_rng(1)
    for k in range(5):
        write_nwb(tmp / "in" / f"s{k}.nwb", random_units(rng, 3 + k, 6.0), ["A"] * (3 + k))
    build_corpus([str(tmp / "in")], tmp / "c", BuildConfig(test_fraction=0.0), progress=False)
    return Corpus(tmp / "c")


@pytest.mark.parametrize("cache", [True, False])
def test_fewer_row_groups_than_ranks_shards_rows_disjointly(one_group_corpus, cache):
    import pyarrow.parquet as pq
    from spikefm.corpus.reader import _matrices

    world = 3
    loaders = [ARTokenLoader(one_group_corpus, seq_len=8, batch_size=1, seed=2, rank=r, world_size=world,
                             token_cache=cache) for r in range(world)]
    assert len(loaders[0].groups) < world and all(ld.row_sharded for ld in loaders)
    # the epoch's rows in order (the group order is the same permutation on every rank), dealt out
    # round robin: rank r keeps rows r, r + 3, ...
    rows = []
    for i in loaders[0]._my_groups(0):
        g = loaders[0].groups[i]
        rows += [tokenize(m) for m in _matrices(pq.ParquetFile(g.shard).read_row_group(g.row_group)
                                                .column("spike_counts"))]
    assert len(rows) == 5
    for r, ld in enumerate(loaders):
        mine = np.concatenate(rows[r::world])
        x, y = next(ld)
        stream = [torch.cat([x, y[:, -1:]], 1).reshape(-1).numpy()]
        while sum(s.size for s in stream) < mine.size:
            x, y = next(ld)
            stream.append(torch.cat([x, y[:, -1:]], 1).reshape(-1).numpy())
        got = np.concatenate(stream)[:mine.size // 9 * 9]
        np.testing.assert_array_equal(got, mine[:got.size])
    # resume: a restored loader continues with the same batches
    a = ARTokenLoader(one_group_corpus, seq_len=8, batch_size=2, seed=2, rank=1, world_size=world, token_cache=cache)
    for _ in range(7):
        next(a)
    state = a.state_dict()
    expect = [next(a) for _ in range(5)]
    b = ARTokenLoader(one_group_corpus, seq_len=8, batch_size=2, seed=2, rank=1, world_size=world, token_cache=cache)
    b.load_state_dict(state)
    for (xe, ye), (xb, yb) in zip(expect, (next(b) for _ in range(5))):
        assert torch.equal(xe, xb) and torch.equal(ye, yb)


def test_fewer_rows_than_ranks_is_refused_in_one_line(one_group_corpus):
    with pytest.raises(ValueError, match=r"has 5 rows, fewer than world_size=6 \(each rank reads rows of its own\)"):
        ARTokenLoader(one_group_corpus, seq_len=8, batch_size=1, rank=0, world_size=6)


def test_row_sharding_deals_out_the_selected_sessions_rows(one_group_corpus):
    """With --sessions, rows were dealt out before the filter, so a rank could be left with none
    ('no tokens to read') although enough rows were selected."""
    sessions = one_group_corpus.session_ids()
    for picked in (sessions[:2], sessions[1:3], [sessions[0], sessions[4]]):
        a, b = (ARTokenLoader(one_group_corpus, seq_len=8, batch_size=1, seed=s, rank=r, world_size=2,
                              sessions=picked) for r, s in ((0, 4), (1, 4)))
        ta, tb = (np.concatenate(ld._read_group(0)) for ld in (a, b))
        rows = {sid: tokenize(m) for sid, m in ((r.session_id, r.spike_counts)
                                                  for r in one_group_corpus.iter_rows("train", sessions=picked))}
        assert sorted([ta.size, tb.size]) == sorted(v.size for v in rows.values())  # one row each
        next(a), next(b)  # both read
    with pytest.raises(ValueError, match="has 1 rows of the selected sessions, fewer than world_size=2"):
        ARTokenLoader(one_group_corpus, seq_len=8, batch_size=1, rank=0, world_size=2, sessions=sessions[:1])


@pytest.mark.parametrize("damage", ["index_written_over", "index_empty", "tokens_cut_short"])
def test_a_damaged_token_cache_is_built_again_not_trusted(corpus, damage):
    """An index written over (by an --out into .cache) failed as 'spikefm: error: groups', an
    empty one as 'Expecting value...', and a token file cut short trained on, rows past its end
    silently short or empty."""
    import json

    expected = [next(ARTokenLoader(corpus, seq_len=40, batch_size=2, seed=5, token_cache=False)) for _ in range(1)]
    ARTokenLoader(corpus, seq_len=40, batch_size=2, seed=5)  # the cache exists
    (u8,) = (corpus.path / ".cache").glob("tokens-train-*.u8")
    index = u8.with_suffix(".json")
    if damage == "index_written_over":
        index.write_text(json.dumps({"1-gram": {"bits": 0.7}}))
    elif damage == "index_empty":
        index.write_text("")
    else:
        u8.write_bytes(u8.read_bytes()[: u8.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match=r"the token cache is built again"):
        loader = ARTokenLoader(corpus, seq_len=40, batch_size=2, seed=5)
    got = next(loader)
    assert all(torch.equal(a, b) for a, b in zip(got, expected[0]))
    ARTokenLoader(corpus, seq_len=40, batch_size=2, seed=5)  # sound again: no warning (pytest -W error)


def test_an_output_inside_a_corpuss_own_entries_is_refused(corpus, tmp_path):
    """ngram --out CORPUS/.cache/tokens-....json was accepted and broke the next training."""
    from spikefm.fileio import check_output_file

    for inside in (".cache/tokens-train-x.json", "data/r.json", ".versions/v/x.json"):
        with pytest.raises(ValueError, match=rf"^--out {corpus.path / inside}: that is inside the corpus {corpus.path} "):
            check_output_file(corpus.path / inside, (".json",), "--out")
    check_output_file(corpus.path / "results.json", (".json",), "--out")  # beside the shards: a user's choice
    check_output_file(tmp_path / "r.json", (".json",), "--out")


def test_an_output_in_a_corpus_version_is_refused_and_another_programs_manifest_is_no_corpus(corpus, tmp_path):
    """A path in .current/ or .versions/<id>/ was accepted (the version's own manifest.json was
    taken for the corpus); a folder with another program's manifest.json beside data/ refused
    every output under data/."""
    from spikefm.fileio import check_output_file, corpus_holding

    current = corpus.path / ".current"
    assert current.is_symlink() or current.is_dir()
    for inside in (current / "r.json", current.resolve() / "r.json"):
        with pytest.raises(ValueError, match=rf"that is inside the corpus {corpus.path} \(\.(current|versions)/"):
            check_output_file(inside, (".json",), "--out")
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "manifest.json").write_text('{"name": "webapp"}')
    assert corpus_holding(proj / "data" / "r.json") is None
    check_output_file(proj / "data" / "r.json", (".json",), "--out")


def test_an_unwritable_token_cache_is_refused_with_the_flag_that_avoids_it(corpus, monkeypatch, tmp_path):
    """A read-only corpus (a shared data set) failed with 'Operation not permitted: .cache; choose a
    folder you can read and write' although the cache can be turned off; the refusal now names
    --set data.token_cache=false, and train leaves no run folder behind."""
    import errno

    from spikefm.families.ar import loader as loader_mod

    def denied(self, groups, folder, index_path):
        raise PermissionError(errno.EROFS, "Read-only file system", str(folder))

    import shutil

    from spikefm.corpus.reader import Corpus

    shutil.copytree(corpus.path, tmp_path / "c", symlinks=True, ignore=shutil.ignore_patterns(".cache"))
    corpus = Corpus(tmp_path / "c")  # no token cache yet (the shared fixture's may have one)
    monkeypatch.setattr(loader_mod.TokenCache, "_write", denied)
    with pytest.raises(ValueError, match=r"\.cache: the token cache cannot be written there \(Read-only file system\); "
                                         r"--set data.token_cache=false reads the shards instead"):
        ARTokenLoader(corpus, seq_len=40, batch_size=2, seed=5, token_cache=True)
    ARTokenLoader(corpus, seq_len=40, batch_size=2, seed=5, token_cache=False)  # the way round it works
    from spikefm import families

    cfg = families.run_config("ar", preset="tiny", corpus=str(corpus.path), overrides=[
        "train.steps=1", "train.batch_size=2", "data.seq_len=40", "train.precision=fp32", "train.device=cpu"])
    with pytest.raises(ValueError, match="data.token_cache=false"):
        families.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
