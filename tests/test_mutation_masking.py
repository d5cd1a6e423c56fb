"""spikefm.families.ndt.masking: contracts test_masking.py leaves open (written to kill the mutants
benchmarks/mutation/run_mutation.py found surviving it). Whole error messages, defaults, the exact
rounding of mask sizes, region choice at its edges, and the loss on hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch

from spikefm.families.ndt import masking as mk

B, T, N = 2, 4, 3


def batch():
    counts = torch.arange(B * T * N, dtype=torch.float64).reshape(B, T, N)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    return counts, valid


def message(kind, call, *args, **kwargs) -> str:
    with pytest.raises(kind) as err:
        call(*args, **kwargs)
    return str(err.value)


def test_argument_messages_are_exact():
    counts, valid = batch()
    bad = torch.zeros(B, T, N + 1, dtype=torch.bool)
    assert message(ValueError, mk.mask_entries, counts, valid, bad) == (
        "input_mask_BTN must be a bool tensor of shape (2, 4, 3), got torch.bool (2, 4, 4)")
    ok = torch.zeros(B, T, N, dtype=torch.bool)
    assert message(ValueError, mk.mask_entries, counts, valid, ok, bad) == (
        "loss_mask_BTN must be a bool tensor of shape (2, 4, 3), got torch.bool (2, 4, 4)")
    assert message(ValueError, mk.mask_entries, counts, valid, ok, ~ok) == (
        "loss_mask_BTN scores entries that are visible in the input; mask them in input_mask_BTN too")
    assert message(ValueError, mk.mask_entries, counts, valid, ok, scheme=torch.zeros(B)) == (
        "scheme (when not a name) must be a int64 tensor of shape (2,), got torch.float32 (2,)")
    assert message(ValueError, mk.mask_entries, counts, valid, ok, causal=torch.zeros(B + 1, dtype=torch.bool)) == (
        "causal (when not a bool) must be a bool tensor of shape (2,), got torch.bool (3,)")
    assert message(ValueError, mk.mask_units, counts, valid, torch.zeros(B, N)) == (
        "unit_mask_BN must be a bool tensor of shape (2, 3), got torch.float32 (2, 3)")
    region = torch.zeros(B, N, dtype=torch.long)
    target = torch.zeros(B, dtype=torch.long)
    assert message(ValueError, mk.mask_region, counts, valid, region.int(), target) == (
        "region_BN must be a int64 tensor of shape (2, 3), got torch.int32 (2, 3)")
    assert message(ValueError, mk.mask_region, counts, valid, region, target[:1]) == (
        "target_region_B must be a int64 tensor of shape (2,), got torch.int64 (1,)")
    assert message(ValueError, mk.mask_within_region, counts, valid, region, target, torch.zeros(B, N)) == (
        "unit_mask_BN must be a bool tensor of shape (2, 3), got torch.float32 (2, 3)")
    for num_bins in (0, T + 1, 2.0):
        assert message(ValueError, mk.mask_last_bins, counts, valid, num_bins) == (
            f"num_bins must be an int in [1, 4] (the window has 4 bins), got {num_bins!r}")
    gen = torch.Generator().manual_seed(0)
    for size in (-1, 2.0, "3"):
        assert message(ValueError, mk.draw_schemes, size, "all", gen) == (
            f"batch_size must be a non-negative int, got {size!r}")
    assert message(ValueError, mk.draw_schemes, 2, [], gen) == (
        "schemes must name at least one of ('neuron', 'causal', 'inter_region', 'intra_region') or 'all', "
        "got an empty list")
    assert message(ValueError, mk.draw_schemes, 2, ["all", "neuron"], gen) == (
        "'all' cannot be combined with other schemes, got ['all', 'neuron']")
    assert message(ValueError, mk.draw_schemes, 2, ["neuron", "neuron"], gen) == (
        "schemes contains duplicates: ['neuron', 'neuron']")


def test_loss_argument_messages_are_exact():
    lr = torch.zeros(B, T, N)
    mask = torch.ones(B, T, N, dtype=torch.bool)
    scheme = torch.zeros(B, dtype=torch.long)
    for args in ((torch.zeros(B, T, N + 1), lr, mask), (lr, lr, torch.ones(B, T, N + 1, dtype=torch.bool))):
        assert message(ValueError, mk.masked_poisson_loss, *args, scheme) == (
            "log_rates_BTN, targets_BTN and loss_mask_BTN must share one (B, T, N) shape, got "
            f"{tuple(args[0].shape)}, {tuple(args[1].shape)}, {tuple(args[2].shape)}")
    assert message(TypeError, mk.masked_poisson_loss, lr, lr, mask.float(), scheme) == (
        "loss_mask_BTN must be bool, got torch.float32")
    assert message(ValueError, mk.masked_poisson_loss, lr, lr, mask, scheme.int()) == (
        "scheme_B must be a int64 tensor of shape (2,), got torch.int32 (2,)")
    for w in (-1.0, "1", float("nan")):
        assert message(ValueError, mk.masked_poisson_loss, lr, lr, mask, scheme, {"neuron": w}) == (
            f"scheme weight for 'neuron' must be a number >= 0, got {w!r}")
    assert message(ValueError, mk.masked_poisson_loss, lr, lr, mask, scheme, {"neuron": 0.0}) == (
        "every scheme present in the batch (['neuron']) has weight 0; give one a positive weight")


def test_defaults_and_result_fields():
    counts, valid = batch()
    m = torch.zeros(B, T, N, dtype=torch.bool)
    m[:, 1, :] = True
    out = mk.mask_entries(counts, valid, m)
    assert out.scheme_B.tolist() == [0, 0] and out.scheme_B.dtype == torch.long
    assert out.causal_B.tolist() == [False, False] and out.causal_B.dtype == torch.bool
    assert out.targets_BTN is counts and out.inputs_BTN.dtype == torch.float64
    expected = counts.clone()
    expected[:, 1, :] = 0
    expected[0, :, 2] = 0  # padding
    assert torch.equal(out.inputs_BTN, expected)
    units = mk.mask_units(counts, valid, torch.tensor([[True, False, False], [False, False, True]]))
    assert units.causal_B.tolist() == [False, False] and units.scheme_B.tolist() == [0, 0]
    assert units.targets_BTN is counts
    last = mk.mask_last_bins(counts, valid, 1)
    assert last.loss_mask_BTN[:, -1, :2].all() and not last.loss_mask_BTN[:, :-1].any()
    assert last.causal_B.tolist() == [True, True] and last.scheme_B.tolist() == [1, 1]
    whole = mk.mask_last_bins(counts, valid, T, causal=False)
    assert torch.equal(whole.loss_mask_BTN, valid[:, None, :].expand(B, T, N)) and whole.causal_B.tolist() == [False, False]
    region = torch.tensor([[0, 1, 1], [1, 0, 0]])
    target = torch.tensor([1, 0])
    inter = mk.mask_region(counts, valid, region, target)
    assert inter.scheme_B.tolist() == [2, 2] and inter.causal_B.tolist() == [False, False]
    assert inter.loss_mask_BTN[:, 0].tolist() == [[False, True, False], [False, True, True]]
    intra = mk.mask_within_region(counts, valid, region, target, torch.tensor([[True, True, True], [False, True, False]]))
    assert intra.scheme_B.tolist() == [3, 3] and intra.causal_B.tolist() == [False, False]
    assert intra.loss_mask_BTN[:, 0].tolist() == [[False, True, False], [False, True, False]]
    assert intra.input_mask_BTN[:, 0].tolist() == [[True, True, False], [True, True, False]]


def test_draw_schemes_edge_sizes_and_dtype():
    gen = torch.Generator().manual_seed(1)
    empty = mk.draw_schemes(0, "all", gen)
    assert empty.shape == (0,) and empty.dtype == torch.long
    drawn = mk.draw_schemes(400, ["causal", "intra_region"], gen)
    assert drawn.dtype == torch.long and set(drawn.tolist()) == {1, 3}


def test_number_masked_is_float64_rounding_of_ratio_times_total():
    total = torch.tensor([95, 10, 0, 1, 3, 1000])
    # 0.3 * 95 = 28.499999999999996 in float64 (28.5000011 in float32): rounds to 28
    assert mk._num_to_mask(total, 0.3).tolist() == [28, 3, 0, 1, 1, 300]
    assert mk._num_to_mask(torch.tensor([10, 7]), 0.05).tolist() == [1, 1]  # at least one
    ref = [min(max(round(float(t) * 0.15), 1), int(t)) for t in range(0, 200)]
    assert mk._num_to_mask(torch.arange(200), 0.15).tolist() == [0 if t == 0 else r for t, r in zip(range(200), ref)]


def test_region_pick_covers_every_region_uniformly_and_only_valid_ones():
    # sample 0: valid units in regions 0 and 3 (twice), a padding unit in region 7 and one with -1
    region = torch.tensor([[3, 0, 3, 7, -1], [5, 5, 5, -1, -1], [-1, -1, -1, -1, -1], [2, 2, 4, 6, 6]])
    valid = torch.tensor([[True, True, True, False, True], [True, True, True, True, True],
                          [True, True, True, True, True], [True, True, True, True, True]])
    gen = torch.Generator().manual_seed(0)
    picks = []
    for _ in range(3000):
        target, num = mk._pick_region(valid, region, torch.rand(region.shape, generator=gen))
        picks.append(target.tolist())
    assert num.tolist() == [2, 1, 0, 3]
    first = [p[0] for p in picks]
    assert set(first) == {0, 3} and abs(first.count(0) / 3000 - 0.5) < 0.05
    assert {p[1] for p in picks} == {5} and {p[2] for p in picks} == {-1}
    last = [p[3] for p in picks]
    assert set(last) == {2, 4, 6}
    assert all(abs(last.count(r) / 3000 - 1 / 3) < 0.05 for r in (2, 4, 6))


def test_loss_matches_a_hand_computation():
    lr = torch.tensor([[[0.1, -0.2], [0.3, 0.0]], [[-1.0, 0.5], [0.2, 0.7]]], dtype=torch.float64)
    y = torch.tensor([[[1.0, 0.0], [2.0, 1.0]], [[0.0, 3.0], [1.0, 0.0]]], dtype=torch.float64)
    mask = torch.tensor([[[True, False], [False, False]], [[True, True], [False, True]]])
    scheme = torch.tensor([0, 1])

    def nll(a, b):
        return math.exp(a) - b * a

    neuron = nll(0.1, 1.0)  # one scored entry
    causal = (nll(-1.0, 0.0) + nll(0.5, 3.0) + nll(0.7, 0.0)) / 3
    loss, stats = mk.masked_poisson_loss(lr, y, mask, scheme)
    assert loss.dtype == torch.float64
    assert float(loss) == pytest.approx((neuron + causal) / 2, rel=1e-12)
    assert stats == {"loss/neuron": pytest.approx(neuron, rel=1e-12), "count/neuron": 1.0,
                     "loss/causal": pytest.approx(causal, rel=1e-12), "count/causal": 3.0}
    weighted, _ = mk.masked_poisson_loss(lr, y, mask, scheme, {"neuron": 0.1, "causal": 0.3})
    assert weighted.dtype == torch.float64
    exact = (torch.tensor(0.1, dtype=torch.float64) * torch.tensor(neuron, dtype=torch.float64)
             + torch.tensor(0.3, dtype=torch.float64) * torch.tensor(causal, dtype=torch.float64)) / 0.4
    assert abs(float(weighted) - float(exact)) < 1e-15
    ints, _ = mk.masked_poisson_loss(lr, y.long(), mask, scheme)  # integer targets are cast
    assert float(ints) == float(loss)
    none, stats = mk.masked_poisson_loss(lr.requires_grad_(), y, torch.zeros_like(mask), scheme)
    assert float(none.detach()) == 0.0 and stats == {}
    none.backward()
    assert lr.grad is not None and float(lr.grad.abs().sum()) == 0.0


def test_apply_masks_and_helpers_messages_are_exact():
    counts, valid = batch()
    region = torch.tensor([[0, 1, -1], [0, 0, 1]])
    gen = torch.Generator().manual_seed(0)

    def apply(**kw):
        args = dict(counts_BTN=counts, unit_valid_BN=valid, region_BN=region,
                    scheme_B=torch.tensor([0, 1]), generator=gen)
        args.update(kw)
        return mk.apply_masks(**args)

    assert message(ValueError, apply, scheme_B=torch.tensor([0, 4])) == (
        "scheme_B ids must lie in [0, 4) (schemes ('neuron', 'causal', 'inter_region', 'intra_region')), got [0, 4]")
    assert message(ValueError, apply, scheme_B=torch.tensor([-1, 0])).startswith("scheme_B ids must lie in [0, 4)")
    assert message(ValueError, apply, scheme_B=torch.tensor([0])) == (
        "scheme_B must be a int64 tensor of shape (2,), got torch.int64 (1,)")
    assert message(ValueError, apply, region_BN=region.float()) == (
        "region_BN must be a int64 tensor of shape (2, 3), got torch.float32 (2, 3)")
    for name in ("neuron_ratio", "causal_ratio", "intra_ratio"):
        for bad in (0.0, 1.5, "0.5"):
            assert message(ValueError, apply, **{name: bad}) == f"{name} must be a float in (0, 1], got {bad!r}"
        apply(**{name: 1.0})  # 1 is allowed
    assert message(ValueError, apply, causal_mode="first") == (
        "causal_mode must be one of random, prefix, last, mixed, spans, got 'first'")
    assert message(ValueError, apply, counts_BTN=[[[1.0]]]) == (
        "counts_BTN must be a 3-D (batch, bins, units) tensor, got <class 'list'>")
    assert message(ValueError, apply, counts_BTN=counts[0]) == (
        "counts_BTN must be a 3-D (batch, bins, units) tensor, got (4, 3)")
    assert message(TypeError, apply, counts_BTN=counts.long()) == (
        "counts_BTN must be a float tensor, got torch.int64; call .float()")
    assert message(ValueError, apply, unit_valid_BN=valid[:, :2]) == (
        "unit_valid_BN must be a bool tensor of shape (2, 3), got torch.bool (2, 2)")
    assert message(ValueError, apply, unit_valid_BN=valid.tolist()) == (
        "unit_valid_BN must be a bool tensor of shape (2, 3), got list")
    assert message(TypeError, mk.scheme_id, 3) == "scheme name must be a str, got int"
    assert message(ValueError, mk.scheme_id, "cosmoothing") == (
        "unknown masking scheme 'cosmoothing'; valid schemes: neuron, causal, inter_region, intra_region")


def test_causal_modes_follow_their_definitions():
    T_ = 10
    counts = torch.ones(3, T_, 2)
    valid = torch.ones(3, 2, dtype=torch.bool)
    region = torch.zeros(3, 2, dtype=torch.long)
    causal = torch.full((3,), 1)
    last = mk.apply_masks(counts, valid, region, causal, torch.Generator().manual_seed(0),
                          causal_ratio=0.04, causal_mode="last")
    assert last.loss_mask_BTN[:, :, 0].sum(1).tolist() == [1, 1, 1] and last.loss_mask_BTN[:, -1].all()
    # prefix: start = T - 1 - floor(u0 * k), u0 the first of the (B, T) time scores drawn after
    # three (B, N) score tensors; k = round(0.5 * 10) = 5
    seed = 3
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        torch.rand((3, 2), generator=gen)
    u0 = torch.rand((3, T_), generator=gen)[:, 0]
    start = T_ - 1 - torch.floor(u0 * 5).long()
    prefix = mk.apply_masks(counts, valid, region, causal, torch.Generator().manual_seed(seed),
                            causal_ratio=0.5, causal_mode="prefix")
    expected = torch.arange(T_)[None, :] >= start[:, None]
    assert torch.equal(prefix.loss_mask_BTN[:, :, 0], expected)
    lengths = set()
    gen = torch.Generator().manual_seed(11)
    for _ in range(60):
        out = mk.apply_masks(counts, valid, region, causal, gen, causal_ratio=0.5, causal_mode="prefix")
        lengths |= set(out.loss_mask_BTN[:, :, 0].sum(1).tolist())
    assert lengths == {1, 2, 3, 4, 5}
    rand = mk.apply_masks(counts, valid, region, causal, torch.Generator().manual_seed(1),
                          causal_ratio=0.3, causal_mode="random")
    assert rand.loss_mask_BTN[:, :, 0].sum(1).tolist() == [3, 3, 3] and rand.causal_B.tolist() == [True] * 3


def test_masks_depend_on_the_generator_only():
    counts, valid = batch()
    region = torch.tensor([[0, 1, -1], [0, 1, 1]])
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        for mode in ("random", "prefix", "last"):
            out = mk.apply_masks(counts, valid, region, torch.tensor([1, 0]), torch.Generator().manual_seed(5),
                                 causal_mode=mode)
            results.append((mode, out.loss_mask_BTN.clone(), out.input_mask_BTN.clone()))
    for (m1, l1, i1), (m2, l2, i2) in zip(results[:3], results[3:]):
        assert m1 == m2 and torch.equal(l1, l2) and torch.equal(i1, i2)


def test_two_regions_are_enough_for_the_region_schemes():
    counts = torch.ones(2, 3, 4)
    valid = torch.ones(2, 4, dtype=torch.bool)
    region = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])  # two regions, then one region
    for scheme in (2, 3):
        out = mk.apply_masks(counts, valid, region, torch.tensor([scheme, scheme]), torch.Generator().manual_seed(0))
        assert out.scheme_B.tolist() == [scheme, 0]  # the single-region sample falls back to neuron
