"""Tests for spikefm.families.ndt.model: stitching by session id, leak-free masking, causality, mixed
batches, core freezing, preset parameter counts and a short training run whose loss falls."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from spikefm.families.ndt.masking import (
    apply_masks,
    draw_schemes,
    mask_units,
    masked_poisson_loss,
    scheme_id,
)
from spikefm.families.ndt.model import (
    NDT,
    NDT_PRESETS,
    NDTConfig,
    count_core_parameters,
    count_session_parameters,
    ndt_preset,
    session_key,
)



@pytest.fixture
def one_thread():
    """Tiny matmuls are dominated by thread hand-off (10-30x slower with 2 threads on a busy
    2-core box), so the training test runs single-threaded and restores the setting after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny(**kw) -> NDTConfig:
    return dataclasses.replace(ndt_preset("tiny"), max_bins=32, **kw)


def padded_batch(session_units: list[tuple[str, int]], T: int, seed: int = 0, n_regions: int = 3):
    """Random counts for samples from the given (session id, num_units) list, padded to max N."""
    g = torch.Generator().manual_seed(seed)
    B, N = len(session_units), max(n for _, n in session_units)
    counts = torch.poisson(torch.full((B, T, N), 1.5), generator=g)
    valid = torch.zeros(B, N, dtype=torch.bool)
    region = torch.full((B, N), -1, dtype=torch.long)
    for b, (_, n) in enumerate(session_units):
        valid[b, :n] = True
        region[b, :n] = torch.arange(n) % n_regions
    counts = counts * valid[:, None, :]
    return counts, valid, region, [s for s, _ in session_units]


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_target_entries_never_reach_the_model(position):
    torch.manual_seed(0)
    spec = [("a", 20), ("b", 14), ("a", 20), ("b", 14), ("a", 20), ("b", 14), ("a", 20), ("b", 14)]
    counts, valid, region, sids = padded_batch(spec, T=16)
    model = NDT(tiny(position=position), {"a": 20, "b": 14}).eval()
    scheme = torch.tensor([0, 1, 2, 3] * 2)
    mb = apply_masks(counts, valid, region, scheme, torch.Generator().manual_seed(3))

    # rewrite the true counts at every masked entry (targets and intra-region context alike)
    changed = counts.clone()
    changed[mb.input_mask_BTN] += 1.0 + torch.poisson(torch.full_like(changed, 3.0))[mb.input_mask_BTN]
    mb2 = apply_masks(changed, valid, region, scheme, torch.Generator().manual_seed(3))
    assert not torch.equal(mb.targets_BTN, mb2.targets_BTN)
    assert torch.equal(mb.loss_mask_BTN, mb2.loss_mask_BTN)
    assert torch.equal(mb.inputs_BTN, mb2.inputs_BTN)
    with torch.no_grad():
        out1 = model(mb.inputs_BTN, valid, sids, mb.scheme_B, mb.causal_B, input_mask_BTN=mb.input_mask_BTN)
        out2 = model(mb2.inputs_BTN, valid, sids, mb2.scheme_B, mb2.causal_B, input_mask_BTN=mb2.input_mask_BTN)
    assert torch.equal(out1, out2)
    # ...whereas changing a visible entry does change the output (the test can fail)
    changed_visible = counts.clone()
    visible = ~mb.input_mask_BTN & valid[:, None, :]
    changed_visible[visible] += 2.0
    mb3 = apply_masks(changed_visible, valid, region, scheme, torch.Generator().manual_seed(3))
    with torch.no_grad():
        out3 = model(mb3.inputs_BTN, valid, sids, mb3.scheme_B, mb3.causal_B, input_mask_BTN=mb3.input_mask_BTN)
    assert not torch.allclose(out1, out3)


def test_masked_entries_take_the_mask_value_not_a_zero_count():
    torch.manual_seed(4)
    model = NDT(tiny(), {"s": 12}).eval()
    io = model.sessions[session_key("s")]
    with torch.no_grad():
        io.mask_value.copy_(torch.linspace(-0.9, 0.9, 12))
    counts, valid, _, sids = padded_batch([("s", 12)] * 3, T=8)
    hidden = torch.zeros_like(counts, dtype=torch.bool)
    hidden[:, :, 5] = True
    zeroed = counts.masked_fill(hidden, 0.0)
    scheme = torch.zeros(3, dtype=torch.long)
    causal = torch.zeros(3, dtype=torch.bool)
    with torch.no_grad():
        as_silent = model(zeroed, valid, sids, scheme, causal)
        as_hidden = model(zeroed, valid, sids, scheme, causal, input_mask_BTN=hidden)
        # whatever sits at a hidden entry is ignored, so the model cannot read a target
        as_hidden_big = model(counts.masked_fill(hidden, 7.0), valid, sids, scheme, causal,
                              input_mask_BTN=hidden)
        expected = io.read_in(torch.where(hidden, io.mask_value,
                                          F.softsign(zeroed * io.unit_scale + io.unit_offset)))
    assert not torch.allclose(as_silent, as_hidden)
    assert torch.equal(as_hidden, as_hidden_big)
    torch.testing.assert_close(io.embed(zeroed, hidden), expected)
    with pytest.raises(ValueError, match="input_mask_BTN must be a bool tensor of shape"):
        model(zeroed, valid, sids, scheme, causal, input_mask_BTN=hidden[:, :4])


def test_weights_saved_without_mask_value_load_and_behave_as_before():
    torch.manual_seed(5)
    model = NDT(tiny(), {"s": 12}).eval()
    with torch.no_grad():
        model.sessions[session_key("s")].unit_offset.uniform_(-1.0, 1.0)
    old_state = {k: v for k, v in model.state_dict().items() if not k.endswith(".mask_value")}
    loaded = NDT(tiny(), {"s": 12}).eval()
    loaded.load_state_dict(old_state, strict=True)
    counts, valid, _, sids = padded_batch([("s", 12)] * 3, T=8)
    hidden = torch.zeros_like(counts, dtype=torch.bool)
    hidden[:, 5:, 2] = True
    zeroed = counts.masked_fill(hidden, 0.0)
    scheme, causal = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool)
    with torch.no_grad():
        # the old model saw hidden entries as zero counts (no mask argument)
        before = model(zeroed, valid, sids, scheme, causal)
        after = loaded(zeroed, valid, sids, scheme, causal, input_mask_BTN=hidden)
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_causal_future_cannot_change_past(position):
    torch.manual_seed(1)
    model = NDT(tiny(position=position), {"s": 12}).eval()
    counts, valid, _, sids = padded_batch([("s", 12)] * 4, T=20)
    scheme = torch.full((4,), scheme_id("causal"))
    causal = torch.tensor([True, True, False, False])
    t0 = 13
    future = counts.clone()
    future[:, t0:] = torch.poisson(torch.full_like(future[:, t0:], 4.0))
    with torch.no_grad():
        a = model(counts, valid, sids, scheme, causal)
        b = model(future, valid, sids, scheme, causal)
    assert torch.allclose(a[:2, :t0], b[:2, :t0], atol=1e-6, rtol=0)  # causal samples: past fixed
    assert not torch.allclose(a[:2, t0:], b[:2, t0:])
    assert not torch.allclose(a[2:, :t0], b[2:, :t0])  # bidirectional samples do see the future


def test_equal_unit_counts_get_distinct_parameters():
    sessions = {"ibl.2023/eid-1": 16, "ibl.2023/eid-2": 16, "x_y": 16, "x.y": 16}
    model = NDT(tiny(), sessions)
    keys = {session_key(s) for s in sessions}
    assert len(keys) == 4 and all("." not in k and "/" not in k for k in keys)
    ptrs = [{p.data_ptr() for p in model.session_parameters(s)} for s in sessions]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not ptrs[i] & ptrs[j]
    w1 = model.sessions[session_key("ibl.2023/eid-1")].read_in.weight
    w2 = model.sessions[session_key("ibl.2023/eid-2")].read_in.weight
    assert w1.shape == w2.shape and not torch.equal(w1, w2)  # initialised independently
    # and they act as different functions on identical input
    counts, valid, _, _ = padded_batch([("a", 16)] * 2, T=8)
    scheme = torch.zeros(2, dtype=torch.long)
    causal = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        out = model(counts[:1].expand(2, -1, -1), valid, ["x_y", "x.y"], scheme, causal)
    assert not torch.allclose(out[0], out[1])
    n_expected = count_core_parameters(model.cfg) + 4 * count_session_parameters(model.cfg, 16)
    assert sum(p.numel() for p in model.parameters()) == n_expected
    with pytest.raises(ValueError, match="already registered"):
        model.add_session("x.y", 3)
    with pytest.raises(ValueError, match="add_session"):
        model(counts, valid, ["x_y", "nope"], scheme, causal)


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_mixed_session_batch_equals_separate_runs(position):
    torch.manual_seed(2)
    model = NDT(tiny(position=position), {"A": 18, "B": 11, "C": 18}).eval()
    spec = [("A", 18), ("B", 11), ("C", 18), ("B", 11), ("A", 18)]
    counts, valid, region, sids = padded_batch(spec, T=12)
    scheme = torch.tensor([0, 1, 2, 3, 1])
    causal = torch.tensor([False, True, False, False, True])
    with torch.no_grad():
        mixed, hidden = model(counts, valid, sids, scheme, causal, return_hidden=True)
        assert len(hidden) == model.cfg.n_layers and hidden[0].shape == (5, 12, model.cfg.dim)
        for sid, n in (("A", 18), ("B", 11), ("C", 18)):
            rows = [b for b, s in enumerate(sids) if s == sid]
            alone, hid_alone = model(
                counts[rows, :, :n], valid[rows, :n], [sid] * len(rows), scheme[rows], causal[rows], return_hidden=True
            )
            assert torch.allclose(mixed[rows, :, :n], alone, atol=1e-5, rtol=1e-5)
            assert torch.allclose(hidden[-1][rows], hid_alone[-1], atol=1e-5, rtol=1e-5)
            assert (mixed[rows, :, n:] == 0).all()


def test_freeze_core_then_step_changes_only_session_parameters():
    torch.manual_seed(3)
    model = NDT(tiny(dropout=0.1), {"old": 10, "other": 10})
    model.add_session("new", 15)
    model.freeze_core()
    assert all(not p.requires_grad for p in model.core_parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    counts, valid, region, sids = padded_batch([("new", 15)] * 4, T=10)
    mb = apply_masks(counts, valid, region, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
    out = model(mb.inputs_BTN, valid, sids, mb.scheme_B, mb.causal_B, input_mask_BTN=mb.input_mask_BTN)
    loss, _ = masked_poisson_loss(out, mb.targets_BTN, mb.loss_mask_BTN, mb.scheme_B)
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    new_prefix = "sessions." + session_key("new") + "."
    assert changed == {k for k in before if k.startswith(new_prefix)}
    model.freeze_core(False)
    assert all(p.requires_grad for p in model.core_parameters())


@pytest.mark.parametrize("name", list(NDT_PRESETS))
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_presets_build_with_analytic_parameter_counts(name, position):
    cfg = dataclasses.replace(ndt_preset(name), position=position)
    model = NDT(cfg, {"s1": 37, "s2": 5})
    core = sum(p.numel() for p in model.core_parameters())
    assert core == count_core_parameters(cfg)
    for sid, n in (("s1", 37), ("s2", 5)):
        assert sum(p.numel() for p in model.session_parameters(sid)) == count_session_parameters(cfg, n)
    total = sum(p.numel() for p in model.parameters())
    assert total == count_core_parameters(cfg) + count_session_parameters(cfg, 37) + count_session_parameters(cfg, 5)


def test_the_readmes_ndt_preset_sizes_are_the_models():
    """The README gave tiny 79,680 core parameters, the count of its learned positions, after tiny
    moved to rotary ones (71,488)."""
    import re
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    m = re.search(r"`tiny` \(dim 64, 2 layers, ([\d,]+) with its rotary positions; ([\d,]+) with "
                  r"`--set model\.position=learned`\), `small` \(dim 256, 4 layers, ([\d.]+) M\)", text)
    assert m, "the README's NDT presets line changed: update this test with it"

    def core(name, **kw):
        cfg = dataclasses.replace(ndt_preset(name), **kw)
        return sum(p.numel() for p in NDT(cfg, {"s": 3}).core_parameters())

    assert int(m[1].replace(",", "")) == core("tiny") and int(m[2].replace(",", "")) == core("tiny", position="learned")
    assert float(m[3]) == round(core("small") / 1e6, 2)


def test_base_preset_is_published_size_and_config_validation():
    cfg = ndt_preset("base")
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.mlp_dim, cfg.token_dim) == (5, 512, 8, 1024, 668)
    # independent tally of the transformer stack: 12*D^2-ish formula per block with biases/norms
    D, M = 512, 1024
    per_block = 4 * D * D + 2 * D * M + 9 * D + M
    assert count_core_parameters(cfg) == 5 * per_block + 2 * D + 668 * D + D + 4 * D + 100 * D
    with pytest.raises(ValueError, match="valid presets"):
        ndt_preset("huge")
    with pytest.raises(ValueError, match="divisible"):
        NDTConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="position"):
        NDTConfig(position="sinusoidal")
    with pytest.raises(ValueError, match="dropout"):
        NDTConfig(dropout=1.0)
    model = NDT(tiny(), {"s": 4})
    with pytest.raises(ValueError, match="max_bins"):
        model(torch.zeros(1, 33, 4), torch.ones(1, 4, dtype=torch.bool), ["s"], torch.zeros(1, dtype=torch.long),
              torch.zeros(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="beyond"):
        model(torch.zeros(1, 8, 6), torch.ones(1, 6, dtype=torch.bool), ["s"], torch.zeros(1, dtype=torch.long),
              torch.zeros(1, dtype=torch.bool))


def low_rank_poisson(num_trials: int, T: int, N: int, rank: int, g: torch.Generator):
    """Counts from smooth rank-`rank` latents: rates = exp(C z_t + b)."""
    t = torch.linspace(0, 1, T)
    freq = 1.0 + 3.0 * torch.rand(num_trials, 1, rank, generator=g)
    phase = 6.28 * torch.rand(num_trials, 1, rank, generator=g)
    z = torch.sin(6.28 * freq * t[None, :, None] + phase)  # (trials, T, rank)
    C = 0.8 * torch.randn(rank, N, generator=g)
    b = torch.log(torch.full((N,), 0.8)) + 0.3 * torch.randn(N, generator=g)
    return torch.poisson(torch.exp(z @ C + b), generator=g)


def test_tiny_ndt_training_reduces_masked_loss(one_thread):
    torch.manual_seed(0)
    T, N = 24, 32
    # one call, so training and held-out trials share the loading matrix C
    data_all = low_rank_poisson(640, T, N, rank=3, g=torch.Generator().manual_seed(1))
    data, held = data_all[:512], data_all[512:]
    valid_all = torch.ones(128, N, dtype=torch.bool)
    region_all = (torch.arange(N) % 4).expand(128, N).contiguous()

    model = NDT(dataclasses.replace(tiny(), max_bins=T), {"sess": N})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def eval_loss():
        model.eval()
        unit_mask = torch.zeros(128, N, dtype=torch.bool)
        unit_mask[:, ::4] = True  # fixed co-smoothing split
        mb = mask_units(held, valid_all, unit_mask)
        with torch.no_grad():
            out = model(mb.inputs_BTN, valid_all, ["sess"] * 128, mb.scheme_B, mb.causal_B, input_mask_BTN=mb.input_mask_BTN)
            loss, _ = masked_poisson_loss(out, mb.targets_BTN, mb.loss_mask_BTN, mb.scheme_B)
        model.train()
        return loss.item()

    start = eval_loss()
    mg = torch.Generator().manual_seed(2)
    B = 16
    for step in range(100):
        idx = torch.randint(0, 512, (B,), generator=mg)
        counts = data[idx]
        scheme = draw_schemes(B, "all", mg)
        mb = apply_masks(counts, valid_all[:B], region_all[:B], scheme, mg)
        out = model(mb.inputs_BTN, valid_all[:B], ["sess"] * B, mb.scheme_B, mb.causal_B, input_mask_BTN=mb.input_mask_BTN)
        loss, _ = masked_poisson_loss(out, mb.targets_BTN, mb.loss_mask_BTN, mb.scheme_B)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = eval_loss()
    # reference: the best constant per-unit rate (mean of training counts) on the same entries
    rate_N = data.mean(dim=(0, 1)).clamp_min(1e-3)
    y = held[:, :, ::4]
    const = (rate_N[::4] - y * rate_N[::4].log()).mean().item()
    print(f"held-out co-smoothing NLL: start {start:.4f} end {end:.4f} constant-rate {const:.4f}")
    assert end < start - 0.05, (start, end)
    assert end < const, (end, const)


def test_all_sessions_in_graph_gives_zero_grads_and_same_outputs():
    torch.manual_seed(0)
    model = NDT(ndt_preset("tiny"), {"a": 5, "b": 7})
    x = torch.poisson(torch.full((2, 10, 5), 0.5))
    valid = torch.ones(2, 5, dtype=torch.bool)
    scheme = torch.zeros(2, dtype=torch.long)
    causal = torch.zeros(2, dtype=torch.bool)
    plain = model(x, valid, ["a", "a"], scheme, causal)
    touched = model(x, valid, ["a", "a"], scheme, causal, all_sessions_in_graph=True)
    assert torch.equal(plain, touched)
    touched.sum().backward()
    absent = list(model.session_parameters("b"))
    assert absent and all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in absent)
    assert any(torch.count_nonzero(p.grad) > 0 for p in model.session_parameters("a"))


def test_cli_default_ndt_uses_rotary_positions_and_set_restores_learned():
    # The README's defaults: `spikefm train --model ndt` builds the tiny preset with rotary
    # positions (no learned position table); `--set model.position=learned` gives the earlier model.
    from spikefm import families

    cfg = families.run_config("ndt", corpus="corpus")
    assert cfg.model.position == "rotary"
    model = NDT(cfg.model, {"s": 7})
    assert model.pos_emb is None and model.rope_cos.shape[0] == cfg.model.max_bins + 2
    learned = families.run_config("ndt", corpus="corpus", overrides=["model.position=learned"])
    assert learned.model.position == "learned"
    assert NDT(learned.model, {"s": 7}).pos_emb.shape == (learned.model.max_bins, learned.model.dim)
    # the published-size presets keep the learned embedding
    assert ndt_preset("base").position == "learned" and ndt_preset("small").position == "learned"


def test_flops_count_the_shared_core_for_every_sample_and_a_session_only_for_its_own():
    """6 x every parameter x tokens counted all sessions' read-in/out for every sample: MFU 152 %
    on a 60-session corpus."""
    from spikefm import families

    model = NDT(ndt_preset("tiny"), {"a": 5, "b": 70, "c": 9})
    core = sum(p.numel() for p in model.core_parameters())
    own = {s: sum(p.numel() for p in model.session_parameters(s)) for s in ("a", "b", "c")}
    assert core + sum(own.values()) == sum(p.numel() for p in model.parameters())
    batch = {"counts_BTN": torch.zeros(3, 10, 70), "session_ids": ["a", "a", "c"]}
    flops = families.get("ndt").flops_per_batch(model, batch, None)
    assert flops == 6.0 * 10 * (3 * core + 2 * own["a"] + own["c"])
