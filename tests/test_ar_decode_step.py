"""Fixed-shape one-token decoding (Llama.decode_step), the path generate replays as a CUDA graph.

The graph capture itself needs a GPU (benchmarks/gpu_check.py runs it and compares its tokens
with the ordinary cached path); here the same steps run eagerly on the CPU and are checked
against the ordinary cached forward and the full recompute."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from spikefm.families.ar import model as ar_model
from spikefm.families.ar.model import KVCache, Llama, generate, llama_preset
from spikefm.families.ar.tokens import SEPARATOR, tokenize

LAYOUTS = [("plain", False), ("bin", False), ("bin", True), ("plain", True)]


def _model(positions: str, prefix: bool, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(llama_preset("tiny"), positions=positions, unit_count_prefix=prefix,
                              n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96,
                              max_seq_len=128)
    model = Llama(cfg).eval()
    with torch.no_grad():  # larger weights than the init, so that logits differ across tokens
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    return model


def _row(num_units: int, num_bins: int, seed: int) -> torch.Tensor:
    counts = np.random.default_rng(seed).poisson(1.0, size=(num_units, num_bins))
    return torch.from_numpy(tokenize(counts).astype(np.int64))


@pytest.mark.parametrize("positions,prefix", LAYOUTS)
@torch.no_grad()
def test_decode_steps_give_the_logits_of_the_full_forward(positions, prefix):
    model = _model(positions, prefix)
    n = 5
    seq = torch.stack([_row(n, 8, 1), _row(n, 8, 2)])  # (2, 48)
    prefix_B2 = torch.tensor([[n, 0], [n, 0]]) if prefix else None
    full = model(seq, prefix_B2=prefix_B2)  # (2, 48, V): the reference, no cache at all
    prefill = 7
    cache = KVCache.for_model(model, 2, max_seq_len=seq.shape[1] + int(prefix))
    first = model(seq[:, :prefill], kv_cache=cache, prefix_B2=prefix_B2)[:, -1]
    torch.testing.assert_close(first, full[:, prefill - 1], rtol=1e-4, atol=1e-4)
    cache.start_steps()
    for t in range(prefill, seq.shape[1]):
        logits = model.decode_step(seq[:, t:t + 1], cache)
        cache.advance_step()
        torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-4)
    assert cache.pos == seq.shape[1] + int(prefix)
    assert int(cache.step_pos) == cache.pos


@pytest.mark.parametrize("positions,prefix", LAYOUTS)
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_generate_with_fixed_shape_steps_gives_the_same_tokens(positions, prefix, temperature,
                                                                monkeypatch):
    model = _model(positions, prefix, seed=3)
    prompt = torch.stack([_row(6, 2, 4), _row(6, 2, 5), _row(6, 2, 6)])
    kw = dict(prompt_tokens=prompt, temperature=temperature)
    dynamic = generate(model, 6, 5, generator=torch.Generator().manual_seed(7), **kw)
    monkeypatch.setattr(ar_model, "_decode_mode", lambda *a: "steps")
    steps = generate(model, 6, 5, generator=torch.Generator().manual_seed(7), **kw)
    no_prompt = generate(model, 6, 3, batch_size=2, generator=torch.Generator().manual_seed(8))
    monkeypatch.undo()
    assert torch.equal(steps, dynamic)
    assert steps.shape == (3, 5 * 7) and bool((steps.reshape(3, 5, 7)[..., 0] == SEPARATOR).all())
    assert torch.equal(no_prompt, generate(model, 6, 3, batch_size=2,
                                           generator=torch.Generator().manual_seed(8)))


def test_cuda_graph_refuses_a_cpu_model_and_decode_step_needs_start_steps():
    model = _model("plain", False)
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        generate(model, 4, 2, cuda_graph=True)
    with pytest.raises(ValueError, match="needs use_kv_cache=True"):
        ar_model._decode_mode(torch.device("cuda"), False, True)
    assert ar_model._decode_mode(torch.device("cuda"), True, None) == "graph"
    assert ar_model._decode_mode(torch.device("cuda"), True, False) == "dynamic"
    assert ar_model._decode_mode(torch.device("cpu"), True, None) == "dynamic"
    # under CUDA autocast the graph would read weight casts autocast frees: not by default,
    # refused when asked for
    assert ar_model._decode_mode(torch.device("cuda"), True, None, autocast=True) == "dynamic"
    with pytest.raises(ValueError, match="cannot run under torch.autocast"):
        ar_model._decode_mode(torch.device("cuda"), True, True, autocast=True)
    cache = KVCache.for_model(model, 1, max_seq_len=16)
    with pytest.raises(ValueError, match="start_steps"):
        model.decode_step(torch.zeros(1, 1, dtype=torch.long), cache)
