"""Tests for spikefm.families.ndt.masking: per-sample masks, scheme semantics, eval masks, the loss."""
from __future__ import annotations

import math

import pytest
import torch

from spikefm.families.ndt.masking import (
    SCHEMES,
    apply_masks,
    draw_schemes,
    mask_entries,
    mask_last_bins,
    mask_region,
    mask_units,
    mask_within_region,
    masked_poisson_loss,
    scheme_id,
)

NEURON, CAUSAL, INTER, INTRA = (scheme_id(s) for s in SCHEMES)


def make_batch(B=6, T=20, n_units=(30, 24, 30, 17, 30, 25), n_regions=3, seed=0):
    """Padded batch: sample b has n_units[b] valid units split over n_regions regions."""
    g = torch.Generator().manual_seed(seed)
    N = max(n_units)
    counts = torch.poisson(torch.full((B, T, N), 2.0), generator=g)
    valid = torch.zeros(B, N, dtype=torch.bool)
    region = torch.full((B, N), -1, dtype=torch.long)
    for b, n in enumerate(n_units[:B]):
        valid[b, :n] = True
        region[b, :n] = torch.arange(n) % n_regions + 10 * b  # region ids need not be dense
    counts = counts * valid[:, None, :]
    return counts, valid, region


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_scheme_id_and_errors():
    assert [scheme_id(s) for s in SCHEMES] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="valid schemes"):
        scheme_id("temporal")
    with pytest.raises(ValueError):
        draw_schemes(4, ["neuron", "bogus"], gen())
    with pytest.raises(ValueError):
        draw_schemes(4, [], gen())


def test_draw_schemes_all_and_subset():
    s = draw_schemes(4000, "all", gen(1))
    freq = torch.bincount(s, minlength=4).float() / 4000
    assert torch.all((freq - 0.25).abs() < 0.04), freq
    s2 = draw_schemes(500, ["causal", "intra_region"], gen(2))
    assert set(s2.tolist()) == {CAUSAL, INTRA}
    assert torch.equal(draw_schemes(64, ["all"], gen(3)), draw_schemes(64, "all", gen(3)))


def test_neuron_scheme_semantics():
    counts, valid, region = make_batch()
    B, T, N = counts.shape
    mb = apply_masks(counts, valid, region, torch.full((B,), NEURON), gen(), neuron_ratio=0.3)
    for b in range(B):
        n_valid = int(valid[b].sum())
        unit_masked = mb.loss_mask_BTN[b].any(0)
        # whole units masked across every bin, count = round(0.3 * n_valid)
        assert torch.equal(mb.loss_mask_BTN[b], unit_masked[None].expand(T, N))
        assert int(unit_masked.sum()) == round(0.3 * n_valid)
        assert not (unit_masked & ~valid[b]).any()
    assert torch.equal(mb.loss_mask_BTN, mb.input_mask_BTN)
    assert not mb.causal_B.any()


def test_causal_scheme_semantics():
    counts, valid, region = make_batch(T=20)
    B, T, N = counts.shape
    mb = apply_masks(counts, valid, region, torch.full((B,), CAUSAL), gen(), causal_ratio=0.3)
    expected = torch.zeros(B, T, N, dtype=torch.bool)
    expected[:, T - 6 :, :] = True  # round(0.3 * 20) = 6 final bins
    expected &= valid[:, None, :]
    assert torch.equal(mb.loss_mask_BTN, expected)
    assert mb.causal_B.all()


def test_inter_and_intra_region_semantics():
    counts, valid, region = make_batch()
    B, T, N = counts.shape
    inter = apply_masks(counts, valid, region, torch.full((B,), INTER), gen(5))
    intra = apply_masks(counts, valid, region, torch.full((B,), INTRA), gen(5), intra_ratio=0.5)
    assert (inter.scheme_B == INTER).all() and (intra.scheme_B == INTRA).all()
    for b in range(B):
        units = inter.loss_mask_BTN[b].any(0)
        regions_hit = set(region[b][units].tolist())
        assert len(regions_hit) == 1  # exactly one region, and all of its units
        (r,) = regions_hit
        assert torch.equal(units, (region[b] == r) & valid[b])
        assert torch.equal(inter.loss_mask_BTN[b], units[None].expand(T, N))

        # intra: same generator stream -> same target region; input hides everything else
        scored = intra.loss_mask_BTN[b].any(0)
        target = (region[b] == r) & valid[b]
        assert not (scored & ~target).any()
        assert int(scored.sum()) == round(0.5 * int(target.sum()))
        hidden = intra.input_mask_BTN[b].any(0)
        assert torch.equal(hidden, (valid[b] & ~target) | scored)
        assert (intra.inputs_BTN[b][:, valid[b] & ~hidden] == counts[b][:, valid[b] & ~hidden]).all()


def test_single_region_falls_back_to_neuron():
    counts, valid, region = make_batch(B=3, n_units=(20, 20, 20))
    region[0, :20] = 7  # sample 0: one region
    region[1, :20] = -1  # sample 1: no region labels
    mb = apply_masks(counts, valid, region, torch.tensor([INTER, INTRA, INTER]), gen())
    assert mb.scheme_B.tolist() == [NEURON, NEURON, INTER]
    for b in (0, 1):
        units = mb.loss_mask_BTN[b].any(0)
        assert int(units.sum()) == round(0.3 * 20)
        assert torch.equal(mb.loss_mask_BTN[b], mb.input_mask_BTN[b])


def test_inputs_zero_targets_original_padding_excluded():
    counts, valid, region = make_batch()
    counts_pad = counts.clone()
    counts_pad[~valid[:, None, :].expand_as(counts)] = 99.0  # garbage in padding must not leak
    B = counts.shape[0]
    for s in range(4):
        mb = apply_masks(counts_pad, valid, region, torch.full((B,), s), gen(s))
        assert torch.equal(mb.targets_BTN, counts_pad)
        assert (mb.inputs_BTN[mb.input_mask_BTN] == 0).all()
        assert (mb.inputs_BTN[~valid[:, None, :].expand_as(counts)] == 0).all()
        visible = ~mb.input_mask_BTN & valid[:, None, :]
        assert torch.equal(mb.inputs_BTN[visible], counts_pad[visible])
        assert not (mb.loss_mask_BTN & ~valid[:, None, :]).any()
        assert not (mb.input_mask_BTN & ~valid[:, None, :]).any()
        assert not (mb.loss_mask_BTN & ~mb.input_mask_BTN).any()
        assert mb.loss_mask_BTN.any(dim=(1, 2)).all()  # every sample has something to predict


def test_per_sample_masks_differ_within_batch():
    counts, valid, region = make_batch(B=8, n_units=(30,) * 8)
    region[:] = region[0]  # identical samples
    for s in (NEURON, INTRA):
        mb = apply_masks(counts, valid, region, torch.full((8,), s), gen(11))
        masks = {tuple(mb.loss_mask_BTN[b].any(0).tolist()) for b in range(8)}
        assert len(masks) > 1


def test_seeded_determinism_and_independence_from_counts():
    counts, valid, region = make_batch()
    scheme = draw_schemes(counts.shape[0], "all", gen(4))
    a = apply_masks(counts, valid, region, scheme, gen(9))
    b = apply_masks(counts * 3 + 1, valid, region, scheme, gen(9))
    c = apply_masks(counts, valid, region, torch.full_like(scheme, NEURON), gen(10))
    d = apply_masks(counts, valid, region, torch.full_like(scheme, NEURON), gen(9))
    assert torch.equal(a.loss_mask_BTN, b.loss_mask_BTN) and torch.equal(a.input_mask_BTN, b.input_mask_BTN)
    assert torch.equal(a.scheme_B, b.scheme_B)
    assert not torch.equal(c.loss_mask_BTN, d.loss_mask_BTN)


def test_eval_masks():
    counts, valid, region = make_batch(B=3, n_units=(10, 8, 10))
    B, T, N = counts.shape
    unit_mask = torch.zeros(B, N, dtype=torch.bool)
    unit_mask[:, 3] = True
    unit_mask[1, 9] = True  # padding in sample 1: must be dropped
    mb = mask_units(counts, valid, unit_mask)
    assert mb.loss_mask_BTN.sum().item() == 3 * T
    assert (mb.inputs_BTN[:, :, 3] == 0).all() and (mb.scheme_B == NEURON).all()

    fp = mask_last_bins(counts, valid, 4)
    assert fp.causal_B.all() and (fp.scheme_B == CAUSAL).all()
    assert fp.loss_mask_BTN[:, -4:].sum() == 4 * valid.sum() and not fp.loss_mask_BTN[:, :-4].any()

    target = region[:, 0]
    rm = mask_region(counts, valid, region, target)
    assert torch.equal(rm.loss_mask_BTN[:, 0], (region == target[:, None]) & valid)
    assert (rm.scheme_B == INTER).all()

    wm = mask_within_region(counts, valid, region, target, unit_mask)
    tgt = (region == target[:, None]) & valid
    assert torch.equal(wm.loss_mask_BTN[:, 0], tgt & unit_mask)
    assert torch.equal(wm.input_mask_BTN[:, 0], valid & (~tgt | unit_mask))

    with pytest.raises(ValueError, match="visible"):
        mask_entries(counts, valid, torch.zeros(B, T, N, dtype=torch.bool), torch.ones(B, T, N, dtype=torch.bool))


def _hand_nll(l, y):
    return math.exp(l) - y * l


def test_loss_weights_against_hand_computation():
    torch.manual_seed(0)
    B, T, N = 2, 10, 12
    log_rates = torch.randn(B, T, N, dtype=torch.float64)
    targets = torch.poisson(torch.full((B, T, N), 1.5, dtype=torch.float64))
    mask = torch.zeros(B, T, N, dtype=torch.bool)
    mask[0, 0, :10] = True  # neuron sample: 10 entries
    mask[1, :, :10] = True  # causal sample: 100 entries (10x more)
    scheme = torch.tensor([NEURON, CAUSAL])
    log_rates[0, 5, 11] = float("inf")  # unscored garbage must not matter
    targets[1, 0, 11] = float("nan")

    def mean_over(b):
        idx = mask[b].nonzero().tolist()
        return sum(_hand_nll(log_rates[b, t, n].item(), targets[b, t, n].item()) for t, n in idx) / len(idx)

    L_neuron, L_causal = mean_over(0), mean_over(1)
    lr = log_rates.clone().requires_grad_(True)
    loss, stats = masked_poisson_loss(lr, targets, mask, scheme, None)
    assert loss.item() == pytest.approx((L_neuron + L_causal) / 2, rel=1e-12)
    pooled = (L_neuron * 10 + L_causal * 100) / 110
    assert abs(loss.item() - pooled) > 1e-3  # not the entry-pooled mean
    assert stats["count/neuron"] == 10 and stats["count/causal"] == 100
    assert stats["loss/neuron"] == pytest.approx(L_neuron) and stats["loss/causal"] == pytest.approx(L_causal)
    assert "loss/inter_region" not in stats
    loss.backward()
    assert torch.isfinite(lr.grad).all() and (lr.grad[~mask] == 0).all()

    # explicit weights, normalized over the schemes present (intra's weight is irrelevant)
    w = {"neuron": 3.0, "causal": 1.0, "intra_region": 100.0}
    loss_w, _ = masked_poisson_loss(log_rates, targets, mask, scheme, w)
    assert loss_w.item() == pytest.approx((3 * L_neuron + L_causal) / 4, rel=1e-12)


def test_loss_matches_torch_reference_and_empty_mask():
    torch.manual_seed(1)
    log_rates = torch.randn(3, 5, 4)
    targets = torch.poisson(torch.ones(3, 5, 4))
    mask = torch.rand(3, 5, 4) < 0.5
    scheme = torch.zeros(3, dtype=torch.long)  # one scheme -> plain masked mean
    ref = torch.nn.functional.poisson_nll_loss(log_rates[mask], targets[mask], log_input=True, full=False)
    loss, _ = masked_poisson_loss(log_rates, targets, mask, scheme)
    assert torch.allclose(loss, ref)
    lr = log_rates.clone().requires_grad_(True)
    loss0, stats0 = masked_poisson_loss(lr, targets, torch.zeros_like(mask), scheme)
    assert loss0.item() == 0.0 and stats0 == {}
    loss0.backward()
    with pytest.raises(ValueError, match="weight 0"):
        masked_poisson_loss(log_rates, targets, mask, scheme, {"neuron": 0.0})
    with pytest.raises(ValueError, match="valid schemes"):
        masked_poisson_loss(log_rates, targets, mask, scheme, {"temporal": 1.0})


def test_validation_errors():
    counts, valid, region = make_batch(B=2, n_units=(5, 5))
    with pytest.raises(ValueError, match="neuron_ratio"):
        apply_masks(counts, valid, region, torch.zeros(2, dtype=torch.long), gen(), neuron_ratio=0.0)
    with pytest.raises(ValueError, match="scheme_B"):
        apply_masks(counts, valid, region, torch.tensor([0, 7]), gen())
    with pytest.raises(TypeError, match="float"):
        apply_masks(counts.long(), valid, region, torch.zeros(2, dtype=torch.long), gen())


def test_causal_modes_random_and_prefix():
    from spikefm.families.ndt.masking import apply_masks, scheme_id

    B, T, N = 64, 40, 7
    counts = torch.ones(B, T, N)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[0, 5:] = False
    region = torch.zeros(B, N, dtype=torch.long)
    scheme = torch.full((B,), scheme_id("causal"), dtype=torch.long)
    k = round(0.6 * T)
    rnd = apply_masks(counts, valid, region, scheme, torch.Generator().manual_seed(0),
                      causal_ratio=0.6, causal_mode="random")
    bins_BT = rnd.loss_mask_BTN[:, :, 0]
    assert (bins_BT.sum(1) == k).all()  # exactly k time steps per sample
    assert torch.equal(rnd.loss_mask_BTN, bins_BT[:, :, None] & valid[:, None, :])  # all valid units
    assert len({tuple(r.tolist()) for r in bins_BT}) > B // 2  # drawn per sample
    assert bins_BT[:, : T - k].any()  # positions before the last k bins are trained too
    assert rnd.causal_B.all() and torch.equal(rnd.input_mask_BTN, rnd.loss_mask_BTN)
    pre = apply_masks(counts, valid, region, scheme, torch.Generator().manual_seed(1),
                      causal_ratio=0.5, causal_mode="prefix")
    bins_BT = pre.loss_mask_BTN[:, :, 1]
    n_B = bins_BT.sum(1)
    assert ((n_B >= 1) & (n_B <= round(0.5 * T))).all() and len(set(n_B.tolist())) > 5
    for b in range(B):  # a suffix: every bin from the start on
        assert bins_BT[b, T - int(n_B[b]):].all() and not bins_BT[b, : T - int(n_B[b])].any()
    # mixed: per sample either exactly k random steps or a suffix, each with probability 1/2; the
    # draw is the random / prefix draw of the same generator state (plus one (B,) tensor after it)
    g = torch.Generator().manual_seed(3)
    mix = apply_masks(counts, valid, region, scheme, g, causal_ratio=0.6, causal_mode="mixed")
    g_rnd, g_pre = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    alone_rnd = apply_masks(counts, valid, region, scheme, g_rnd, causal_ratio=0.6, causal_mode="random")
    alone_pre = apply_masks(counts, valid, region, scheme, g_pre, causal_ratio=0.6, causal_mode="prefix")
    coin = torch.rand((B,), generator=g_rnd) < 0.5  # the draw that follows the common ones
    assert torch.equal(g.get_state(), g_rnd.get_state())
    want = torch.where(coin[:, None, None], alone_pre.loss_mask_BTN, alone_rnd.loss_mask_BTN)
    assert torch.equal(mix.loss_mask_BTN, want) and 0 < int(coin.sum()) < B
    mix_BT = mix.loss_mask_BTN[:, :, 1]
    for b in range(B):
        n = int(mix_BT[b].sum())
        is_suffix = bool(mix_BT[b, T - n:].all())
        assert is_suffix if coin[b] else n == k
    last = apply_masks(counts, valid, region, scheme, torch.Generator().manual_seed(2),
                       causal_ratio=0.25, causal_mode="last")
    assert last.loss_mask_BTN[:, -10:, 1].all() and not last.loss_mask_BTN[:, :-10].any()
    with pytest.raises(ValueError, match="causal_mode must be one of"):
        apply_masks(counts, valid, region, scheme, torch.Generator(), causal_mode="sideways")


def test_causal_mode_spans_hides_whole_runs_on_a_shifted_grid():
    from spikefm.families.ndt.masking import SPAN_BINS, apply_masks, scheme_id

    B, T, N = 200, 100, 3
    counts = torch.ones(B, T, N)
    valid = torch.ones(B, N, dtype=torch.bool)
    region = torch.zeros(B, N, dtype=torch.long)
    scheme = torch.full((B,), scheme_id("causal"), dtype=torch.long)
    m = apply_masks(counts, valid, region, scheme, torch.Generator().manual_seed(0), causal_ratio=0.6,
                    causal_mode="spans")
    bins_BT = m.loss_mask_BTN[:, :, 0]
    assert torch.equal(m.loss_mask_BTN, bins_BT[:, :, None].expand(B, T, N))
    offsets = set()
    for row in bins_BT.tolist():
        # the grid: the first boundary at 1..L bins (offset), then every L bins; each run is all
        # hidden or all visible, and the count of hidden runs is round(0.6 * runs)
        for off in range(SPAN_BINS):
            edges = [0] + list(range((SPAN_BINS - off) % SPAN_BINS or SPAN_BINS, T, SPAN_BINS)) + [T]
            runs = [row[a:b] for a, b in zip(edges[:-1], edges[1:]) if b > a]
            if all(len(set(r)) == 1 for r in runs) and sum(r[0] for r in runs) == round(0.6 * len(runs)):
                offsets.add(off)
                break
        else:
            raise AssertionError(f"not whole runs of {SPAN_BINS} bins on one grid: {row}")
    assert len(offsets) > SPAN_BINS // 2  # the grid offset is drawn per sample
    assert len({tuple(r) for r in bins_BT.tolist()}) > B // 2
    assert bins_BT.float().mean(0).min() > 0.3  # every position is trained
    one = apply_masks(torch.ones(4, 3, 2), torch.ones(4, 2, dtype=torch.bool), torch.zeros(4, 2, dtype=torch.long),
                      torch.full((4,), scheme_id("causal"), dtype=torch.long), torch.Generator().manual_seed(1),
                      causal_ratio=0.1, causal_mode="spans")
    assert (one.loss_mask_BTN[:, :, 0].sum(1) >= 1).all()  # short windows: at least one run
