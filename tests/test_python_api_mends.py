"""The Python API as a notebook user calls it (a walkthrough's findings): inputs of the wrong
type or kind get one-line errors saying what was expected, and the forms a user naturally passes
(uint8 tokens from ``tokenize``, one n-gram order, numpy ints, no spikes at all) work."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spikefm import Corpus, families, load_model
from spikefm.corpus import bin_spikes
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.synth import synthesize


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    synthesize(root / "nwb", num_sessions=3, seed=2, duration_s=20.0, progress=False)
    build_corpus([str(root / "nwb")], root / "c", BuildConfig(test_fraction=0.3), progress=False)
    return root / "c"


@pytest.fixture(scope="module")
def ar_run(corpus_dir, tmp_path_factory):
    cfg = families.run_config("ar", preset="tiny", corpus=str(corpus_dir), overrides=[
        "train.steps=2", "train.batch_size=2", "data.seq_len=64", "train.precision=fp32", "train.device=cpu"])
    out = tmp_path_factory.mktemp("runs") / "ar"
    families.train(cfg, out, progress=False)
    return out


def test_the_ar_model_reads_the_tokens_tokenize_returns(ar_run, corpus_dir):
    """tokenize returns uint8; the model failed inside torch's embedding ('Expected ... Long, Int;
    but got torch.ByteTensor'). A numpy array was said to be of the wrong shape."""
    from spikefm.families.ar.tokens import tokenize

    model = load_model(ar_run)
    row = next(Corpus(corpus_dir).iter_rows("train"))
    toks = tokenize(row.spike_counts[:, :3])
    assert toks.dtype == np.uint8
    with torch.no_grad():
        got = model(torch.as_tensor(toks)[None])
        want = model(torch.as_tensor(toks.astype(np.int64))[None])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"tokens_BL must be a torch tensor, got numpy.ndarray; convert with "
                                        r"torch.as_tensor\(tokens\)"):
        model(toks[None])
    with pytest.raises(ValueError, match=r"must be a 2-D \(batch, length\) tensor, got shape \(\d+,\); one sequence "
                                         r"is tokens\[None\]"):
        model(torch.as_tensor(toks))
    # int16 / int64 tokens outside the vocabulary failed inside torch's embedding ('index out of range')
    with pytest.raises(ValueError, match=r"^tokens_BL must lie in \[0, 256\) \(the model's vocabulary\), found "
                                         r"values from 0 to 300; tokenize counts with spikefm.families.ar.tokens"):
        model(torch.tensor([[255, 300, 0]]))
    with pytest.raises(ValueError, match=r"found values from -1 to 255"):
        model(torch.tensor([[255, -1]], dtype=torch.int16))


def test_wrong_kinds_of_argument_are_refused_in_one_line(ar_run, corpus_dir, tmp_path):
    corpus = Corpus(corpus_dir)
    with pytest.raises(TypeError, match=r"^overrides must be a list of 'section.key=value' strings, got the string "
                                        r"'train.steps=4'; for one override pass \['train.steps=4'\]$"):
        families.run_config("ndt", preset="tiny", overrides="train.steps=4")  # was split into characters
    with pytest.raises(TypeError, match=r"^overrides must be a list .* got the string 'optim.lr=1e-3'"):
        families.finetune(ar_run, corpus_dir, corpus.session_ids("test")[0], tmp_path / "ft", overrides="optim.lr=1e-3")
    with pytest.raises(TypeError, match=r"^cfg must be a RunConfig, got dict; make one with "):
        families.train({"family": "ndt"}, tmp_path / "x")
    with pytest.raises(TypeError, match=r"^session_id must be one session id \(a str\), got list"):
        families.finetune(ar_run, corpus_dir, corpus.session_ids("test")[:1], tmp_path / "ft")
    with pytest.raises(TypeError, match=r"^split must be one split name, one of \['test', 'train'\], got list"):
        corpus.iter_rows(["train", "test"])
    with pytest.raises(ValueError, match=r"^sessions not in .*: \['nope'\]; its sessions: "):
        corpus.iter_rows("train", sessions=["nope"])  # yielded nothing, silently
    test_only = corpus.session_ids("test")[0]  # a real session of the other split: no rows, no error
    assert test_only not in corpus.session_ids("train") and not list(corpus.iter_rows("train", sessions=[test_only]))
    with pytest.raises(ValueError, match=r"manifest.json: the manifest file of a corpus; give the corpus folder, "):
        Corpus(corpus_dir / "manifest.json")
    assert tmp_path.exists() and not (tmp_path / "x").exists() and not (tmp_path / "ft").exists()


def test_the_forms_a_user_naturally_passes_work(ar_run, corpus_dir):
    ar = families.get("ar")
    one = ar.evaluate_baselines(str(corpus_dir), ngram=2, max_tokens=500)  # one order: was 'int is not iterable'
    assert set(one) >= {"2-gram"}
    assert one["2-gram"] == ar.evaluate_baselines(str(corpus_dir), ngram=[2], max_tokens=500)["2-gram"]
    counts = bin_spikes([], [], 5, 0.0, 3.0, 20)  # a stretch without spikes: [] reads as float
    assert counts.shape == (5, 150) and counts.dtype == np.uint8 and not counts.any()
    with pytest.raises(ValueError, match="steps must be a positive int, got np.int64\\(0\\)"):
        families.finetune(ar_run, corpus_dir, "s", "out", steps=np.int64(0))
    model = load_model(ar_run, device="auto")  # resolved: cuda when available, else cpu
    assert next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_an_ndt_scheme_id_outside_the_schemes_is_refused_in_eval_mode():
    """scheme id 99 failed inside the model ('index 99 is out of bounds for dimension 0 with size 4')."""
    from spikefm.families.ndt.masking import SCHEMES, scheme_id
    from spikefm.families.ndt.model import NDT, NDTConfig

    model = NDT(NDTConfig(dim=16, n_layers=1, n_heads=2, mlp_dim=32, max_bins=8), {"s": 3}).eval()
    x, valid = torch.zeros(1, 4, 3), torch.ones(1, 3, dtype=torch.bool)
    causal = torch.zeros(1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"scheme_B holds ids outside 0..3: \[99\]; use "
                                         r"spikefm.families.ndt.masking.scheme_id\(name\) of a name in SCHEMES"):
        model(x, valid, ["s"], torch.tensor([99]), causal)
    out = model(x, valid, ["s"], torch.tensor([scheme_id(SCHEMES[-1])]), causal)
    assert out.shape == (1, 4, 3)
