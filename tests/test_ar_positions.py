"""The "bin" position layout: unit/bin/state positions derived from separators (against a plain
Python reference), causality, KV-cache equivalence in evaluation and generation, and the refusal
of a lossy Hugging Face export."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from spikefm.families.ar.hf import save_hf, to_hf_config
from spikefm.families.ar.model import KVCache, Llama, LlamaConfig, count_parameters, generate, llama_preset
from spikefm.families.ar.positions import STATE_CAP, bin_positions
from spikefm.families.ar.tokens import SEPARATOR, tokenize


def _reference(tokens: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Walk the tokens once, remembering separators, as a reader of the format would."""
    seps: list[int] = []
    units, bins, states = [], [], []
    for l, t in enumerate(tokens):
        if t == SEPARATOR:
            seps.append(l)
        if not seps:
            units.append(l), bins.append(0), states.append(0)
            continue
        u = l - seps[-1]
        units.append(u)
        bins.append(len(seps))
        if len(seps) < 2:
            states.append(1)
            continue
        n = seps[-1] - seps[-2] - 1
        r = n - u
        states.append(1 if r < 0 else 2 + min(r, STATE_CAP))
    return units, bins, states


def _stream(rng: np.random.Generator, length: int) -> np.ndarray:
    """Tokens of a few sessions with different unit counts, cut at a random phase."""
    parts = [tokenize(rng.poisson(0.7, size=(int(rng.integers(1, 12)), int(rng.integers(1, 6)))))
             for _ in range(6)]
    stream = np.concatenate(parts)
    start = int(rng.integers(0, 8))
    return stream[start:start + length]


def test_bin_positions_match_a_reference_walk():
    rng = np.random.default_rng(0)
    rows = [_stream(rng, 60) for _ in range(5)]
    length = min(len(r) for r in rows)
    tokens = torch.from_numpy(np.stack([r[:length] for r in rows]).astype(np.int64))
    pos = bin_positions(tokens)
    for b in range(tokens.shape[0]):
        units, bins, states = _reference(tokens[b].tolist())
        assert pos.unit_BL[b].tolist() == units
        assert pos.bin_BL[b].tolist() == bins
        assert pos.state_BL[b].tolist() == states


def test_state_two_means_the_next_token_is_a_separator():
    counts = np.random.default_rng(1).poisson(1.0, size=(7, 20))
    tokens = torch.from_numpy(tokenize(counts).astype(np.int64))[None]
    state = bin_positions(tokens).state_BL[0]
    nxt = tokens[0, 1:]
    known = state[:-1] >= 2
    assert bool(known[8:].all())  # from the second bin on, the length is known
    assert torch.equal(state[:-1][known] == 2, nxt[known] == SEPARATOR)


@pytest.fixture(scope="module")
def bin_model():
    torch.manual_seed(0)
    cfg = dataclasses.replace(llama_preset("tiny"), n_layers=2, positions="bin", max_seq_len=256)
    return Llama(cfg).eval()


def test_config_and_parameters(bin_model):
    assert count_parameters(bin_model.cfg) == sum(p.numel() for p in bin_model.parameters())
    with pytest.raises(ValueError, match="positions must be one of"):
        LlamaConfig(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, positions="grid")


def test_bin_model_is_causal_and_uses_the_positions(bin_model):
    counts = np.random.default_rng(2).poisson(0.8, size=(9, 12))
    tokens = torch.from_numpy(tokenize(counts).astype(np.int64))[None]
    with torch.no_grad():
        full = bin_model(tokens)
        changed = tokens.clone()
        changed[0, 70:] = torch.randint(0, 5, (tokens.shape[1] - 70,))  # removes separators too
        other = bin_model(changed)
        plain = Llama(dataclasses.replace(bin_model.cfg, positions="plain"))
        plain.load_state_dict({k: v for k, v in bin_model.state_dict().items()
                               if not k.startswith("bin_state")})
        plain_logits = plain.eval()(tokens)
    torch.testing.assert_close(other[:, :70], full[:, :70])
    assert not torch.allclose(other[:, 70:], full[:, 70:])
    assert not torch.allclose(plain_logits, full, atol=1e-3)  # the layout changes the function


def test_kv_cache_gives_the_same_logits_in_chunks(bin_model):
    counts = np.random.default_rng(3).poisson(0.8, size=(6, 15))
    tokens = torch.from_numpy(tokenize(counts).astype(np.int64))[None, 3:]  # mid-bin start
    with torch.no_grad():
        full = bin_model(tokens)
        cache = KVCache.for_model(bin_model, 1, max_seq_len=tokens.shape[1])
        pieces = [bin_model(tokens[:, a:b], kv_cache=cache)
                  for a, b in [(0, 5), (5, 6), (6, 40), (40, tokens.shape[1])]]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_generation_with_and_without_cache_agree(bin_model):
    prompt = torch.from_numpy(tokenize(np.ones((5, 3), dtype=np.int64)).astype(np.int64))[None]
    kwargs = dict(prompt_tokens=prompt.repeat(2, 1), temperature=1.0)
    a = generate(bin_model, 5, 6, generator=torch.Generator().manual_seed(7), **kwargs)
    b = generate(bin_model, 5, 6, generator=torch.Generator().manual_seed(7), use_kv_cache=False,
                 **kwargs)
    assert torch.equal(a, b)
    assert bool((a.view(2, 6, 6)[..., 0] == SEPARATOR).all())


def test_a_vocabulary_past_256_never_samples_a_token_that_is_no_count():
    """model.vocab_size=512 trains (no data token is above 255), but generate sampled tokens
    256..511, which the uint8 counts wrapped round (510 -> 254; 511 -> a separator)."""
    cfg = dataclasses.replace(llama_preset("tiny"), vocab_size=512, dim=32, n_layers=1, n_heads=2, n_kv_heads=2)
    torch.manual_seed(0)
    model = Llama(cfg).eval()
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.zero_() if getattr(model.output, "bias", None) is not None else None
        model.output.weight[256:, 0] = 50.0  # every logit past 255 far above the counts'
        model.output.weight[3, 0] = 5.0  # the likeliest count
        model.norm.weight.fill_(1.0)
    tokens = generate(model, 4, 6, batch_size=3, temperature=1.0, generator=torch.Generator().manual_seed(1))
    grid = tokens.view(3, 6, 5)
    assert bool((grid[..., 0] == SEPARATOR).all()) and int(grid[..., 1:].max()) <= 254
    greedy = generate(model, 4, 2, temperature=0.0)
    assert set(greedy.view(2, 5)[:, 1:].flatten().tolist()) <= set(range(255))


def test_hf_export_of_bin_layout_is_refused(bin_model, tmp_path):
    with pytest.raises(ValueError, match="no Hugging Face"):
        save_hf(bin_model, tmp_path / "hf")
    with pytest.raises(ValueError, match="positions='bin'"):
        to_hf_config(bin_model.cfg)
    assert not (tmp_path / "hf").exists()
