"""NEDS model and masking: per-sample masks, inputs untouched, no hidden entry reaches the model,
the loss against an independent formula, presets."""
from __future__ import annotations

import math

import warnings

import numpy as np
import pytest
import torch

from spikefm.families.neds.masking import SCHEMES, draw_schemes, make_masks, neds_loss
from spikefm.families.neds.model import NEDS, NEDS_PRESETS, Modalities, NEDSConfig, neds_preset
from spikefm.families import get as get_family

MODS = Modalities(channels=("wheel", "whisk"), labels=(("choice", (-1.0, 1.0)), ("block", (0.2, 0.5, 0.8))))
SESSIONS = {"a": 7, "b": 5}


def _model(seed=0):
    torch.manual_seed(seed)
    model = NEDS(NEDSConfig(dim=32, n_layers=2, n_heads=4, mlp_dim=64, max_bins=16), SESSIONS, MODS)
    get_family("neds").init_for_loading(model)
    return model.eval()


def _batch(B=6, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    sids = ["a", "b"] * (B // 2)
    counts = torch.poisson(torch.full((B, T, 7), 0.5), generator=g)
    valid = torch.zeros(B, 7, dtype=torch.bool)
    for b, s in enumerate(sids):
        valid[b, :SESSIONS[s]] = True
    counts = counts * valid[:, None, :]
    beh = torch.randn(B, T, 2, generator=g)
    beh_valid = torch.ones(B, T, 2, dtype=torch.bool)
    beh_valid[0, :3, 1] = False  # a missing stretch
    labels = torch.stack([torch.randint(2, (B,), generator=g), torch.randint(3, (B,), generator=g)], 1)
    lab_valid = torch.ones(B, 2, dtype=torch.bool)
    lab_valid[1, 1] = False
    return dict(counts_BTN=counts, unit_valid_BN=valid, behavior_BTC=beh, behavior_valid_BTC=beh_valid,
                labels_BJ=labels, label_valid_BJ=lab_valid, session_ids=sids)


def _masks(batch, scheme_B, seed=1, ratio=0.3):
    return make_masks(scheme_B, num_bins=batch["counts_BTN"].shape[1], unit_valid_BN=batch["unit_valid_BN"],
                      behavior_valid_BTC=batch["behavior_valid_BTC"], label_valid_BJ=batch["label_valid_BJ"],
                      ratio=ratio, generator=torch.Generator().manual_seed(seed))


def _forward(model, batch, m):
    return model(batch["counts_BTN"], m.spike_hidden_BT, batch["session_ids"], batch["behavior_BTC"],
                 m.behavior_hidden_BTC, batch["labels_BJ"], m.label_hidden_BJ)


def test_schemes_are_drawn_per_sample_and_masks_differ_within_a_batch():
    g = torch.Generator().manual_seed(0)
    scheme_B = draw_schemes(64, list(SCHEMES), g)
    assert len(set(scheme_B.tolist())) == len(SCHEMES)  # a batch mixes schemes
    batch = _batch(B=4)
    same = torch.full((4,), SCHEMES.index("spike"))
    m = _masks(batch, same)
    # Same scheme, different random bins per sample.
    rows = {tuple(r.tolist()) for r in m.spike_hidden_BT}
    assert len(rows) > 1
    assert (m.spike_hidden_BT.sum(1) == round(0.3 * 10)).all()


def test_scheme_weights_set_the_drawing_probabilities():
    g = torch.Generator().manual_seed(0)
    n = 4000
    scheme_B = draw_schemes(n, ["encoding", "decoding", "spike"], g, weights=(3.0, 1.0, 0.0))
    counts = torch.bincount(scheme_B, minlength=len(SCHEMES))
    assert counts[SCHEMES.index("spike")] == 0 and counts[SCHEMES.index("cross")] == 0
    frac = counts[SCHEMES.index("encoding")].item() / n
    assert abs(frac - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)  # binomial, 4 s.d.
    with pytest.raises(ValueError, match="scheme weights"):
        draw_schemes(4, ["encoding", "decoding"], g, weights=(1.0,))
    with pytest.raises(ValueError, match="scheme weights"):
        draw_schemes(4, ["encoding", "decoding"], g, weights=(0.0, 0.0))
    from spikefm.families.neds.family import NEDSDataConfig, scheme_weights

    assert scheme_weights(NEDSDataConfig(schemes="encoding,decoding", scheme_weights=(2.0, 1.0))) == (2.0, 1.0)
    # The default: encoding and decoding drawn 3.5x as often as each random scheme.
    assert scheme_weights(NEDSDataConfig()) == (0.35, 0.35, 0.1, 0.1, 0.1)
    assert scheme_weights(NEDSDataConfig(schemes="cross,encoding")) == (0.1, 0.35)
    with pytest.raises(ValueError, match="data.scheme_weights"):
        NEDSDataConfig(schemes="all", scheme_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="data.scheme_weights"):
        NEDSDataConfig(schemes="encoding,decoding", scheme_weights=(-1.0, 1.0))


def test_each_scheme_hides_what_it_promises():
    batch = _batch(B=5, T=10)
    scheme_B = torch.arange(5)
    m = _masks(batch, scheme_B, ratio=0.4)
    enc, dec, spk, beh, crs = range(5)
    assert m.spike_hidden_BT[enc].all() and not (m.behavior_hidden_BTC[enc] & batch["behavior_valid_BTC"][enc]).any()
    assert not m.spike_hidden_BT[dec].any() and m.behavior_hidden_BTC[dec].all() and m.label_hidden_BJ[dec].all()
    assert m.spike_hidden_BT[spk].sum() == 4 and not (m.behavior_hidden_BTC[spk] & batch["behavior_valid_BTC"][spk]).any()
    assert not m.spike_hidden_BT[beh].any() and (m.behavior_hidden_BTC[beh].sum(0) == 4).all()
    # cross-modal: the same bins in every modality
    hidden_bins = m.spike_hidden_BT[crs]
    assert hidden_bins.sum() == 4
    for c in range(2):
        assert torch.equal(m.behavior_hidden_BTC[crs, :, c], hidden_bins)
    # missing data is hidden but never scored
    assert m.behavior_hidden_BTC[0, :3, 1].all() and not m.behavior_scored_BTC[0, :3, 1].any()
    assert m.label_hidden_BJ[1, 1] and not m.label_scored_BJ[1, 1]


def test_inputs_unchanged_after_forward_and_loss():
    model = _model().train()
    batch = _batch()
    before = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    m = _masks(batch, torch.arange(6) % 5)
    out = _forward(model, batch, m)
    loss, _ = neds_loss(out, batch["counts_BTN"], batch["behavior_BTC"], batch["labels_BJ"], m)
    loss.backward()
    for k, v in before.items():
        assert torch.equal(batch[k], v), k


def test_no_hidden_entry_reaches_the_model():
    model = _model()
    batch = _batch()
    m = _masks(batch, torch.arange(6) % 5, ratio=0.5)
    out1 = _forward(model, batch, m)
    g = torch.Generator().manual_seed(9)
    changed = dict(batch)
    changed["counts_BTN"] = torch.where(m.spike_hidden_BT[..., None], torch.randint(0, 9, batch["counts_BTN"].shape,
                                        generator=g).float(), batch["counts_BTN"])
    changed["behavior_BTC"] = torch.where(m.behavior_hidden_BTC, 100 * torch.randn(batch["behavior_BTC"].shape,
                                          generator=g), batch["behavior_BTC"])
    changed["labels_BJ"] = torch.where(m.label_hidden_BJ, 1 - batch["labels_BJ"].clamp(max=1), batch["labels_BJ"])
    assert not torch.equal(changed["counts_BTN"], batch["counts_BTN"])
    out2 = _forward(model, changed, m)
    torch.testing.assert_close(out1["log_rates_BTN"], out2["log_rates_BTN"], rtol=0, atol=0)
    torch.testing.assert_close(out1["behavior_BTC"], out2["behavior_BTC"], rtol=0, atol=0)
    for a, b in zip(out1["label_logits"], out2["label_logits"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ...while a visible entry does change the output (the test can fail).
    visible = ~m.spike_hidden_BT[..., None] & batch["unit_valid_BN"][:, None, :]
    changed["counts_BTN"] = batch["counts_BTN"] + 3.0 * visible
    out3 = _forward(model, changed, m)
    assert not torch.allclose(out1["log_rates_BTN"], out3["log_rates_BTN"])


def test_mixed_batch_equals_each_session_alone():
    model = _model()
    batch = _batch()
    m = _masks(batch, torch.arange(6) % 5)
    out = _forward(model, batch, m)
    rows = [i for i, s in enumerate(batch["session_ids"]) if s == "b"]
    sub = {k: (v[rows] if isinstance(v, torch.Tensor) else [v[i] for i in rows]) for k, v in batch.items()}
    sub["counts_BTN"] = sub["counts_BTN"][..., :5]
    m_sub = type(m)(**{k: v[rows] for k, v in vars(m).items()})
    out_sub = _forward(model, sub, m_sub)
    torch.testing.assert_close(out["log_rates_BTN"][rows][..., :5], out_sub["log_rates_BTN"], rtol=1e-5, atol=1e-6)


class _ToBf16(torch.nn.Module):
    def forward(self, x):
        return x.to(torch.bfloat16)


def test_bf16_stitcher_outputs_are_accepted_and_match_fp32():
    # On CUDA, autocast returns the stitchers' read-in/read-out in bf16 and index_copy refuses a
    # bf16 source for a float32 destination (the GPU check found it); CPU autocast promotes
    # index_copy instead, so here the read-in/read-out outputs are cast to bf16 by hand.
    model = _model()
    batch = _batch()
    m = _masks(batch, torch.arange(6) % 5, ratio=0.5)
    ref = _forward(model, batch, m)["log_rates_BTN"]
    for sid in SESSIONS:
        st = model.stitcher(sid)
        st.read_in = torch.nn.Sequential(st.read_in, _ToBf16())
        st.read_out = torch.nn.Sequential(st.read_out, _ToBf16())
    out = _forward(model, batch, m)
    assert out["log_rates_BTN"].dtype == torch.float32
    loss, _ = neds_loss(out, batch["counts_BTN"], batch["behavior_BTC"], batch["labels_BJ"], m)
    loss.backward()
    assert math.isfinite(float(loss)) and model.mask_token.grad is not None
    # bf16 keeps ~3 significant digits; the log-rates agree to that precision
    torch.testing.assert_close(out["log_rates_BTN"].detach(), ref.detach(), rtol=0.05, atol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and the CPU autocast path runs too
        assert torch.isfinite(_forward(model, batch, m)["log_rates_BTN"]).all()


def test_loss_matches_an_independent_formula():
    model = _model()
    batch = _batch()
    m = _masks(batch, torch.arange(6) % 5, ratio=0.5)
    out = _forward(model, batch, m)
    loss, stats = neds_loss(out, batch["counts_BTN"], batch["behavior_BTC"], batch["labels_BJ"], m,
                            spike_weight=0.7, behavior_weight=1.3, label_weight=0.4)
    lr = out["log_rates_BTN"].detach().numpy().astype(np.float64)
    y = batch["counts_BTN"].numpy()
    sel = m.spike_scored_BTN.numpy()
    spike = np.mean((np.exp(lr) - y * lr)[sel])
    pred, beh = out["behavior_BTC"].detach().numpy(), batch["behavior_BTC"].numpy()
    sel_b = m.behavior_scored_BTC.numpy()
    per_c = [np.mean(((pred - beh) ** 2)[..., c][sel_b[..., c]]) for c in range(2) if sel_b[..., c].any()]
    ce = []
    for j, logits in enumerate(out["label_logits"]):
        z = logits.detach().numpy().astype(np.float64)
        rows = np.flatnonzero(m.label_scored_BJ[:, j].numpy())
        if rows.size:
            lse = np.log(np.exp(z[rows]).sum(1))
            ce.append(np.mean(lse - z[rows, batch["labels_BJ"][rows, j].numpy()]))
    expected = 0.7 * spike + 1.3 * np.mean(per_c) + 0.4 * np.mean(ce)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-5)
    assert stats["count/spike"] == int(sel.sum())


def test_capped_label_loss_is_the_smaller_of_the_heads_and_the_priors_cross_entropy():
    """data.val_label_cap: each label's cross-entropy is min(model, class-prior predictor) on the
    same scored windows; the spike and behaviour terms are untouched."""
    model = _model()
    batch = _batch()
    m = _masks(batch, torch.full((6,), SCHEMES.index("decoding")))  # every valid label scored
    out = _forward(model, batch, m)
    # make the choice head confidently wrong (worse than any prior) and leave block as it is
    out["label_logits"][0] = 8.0 * (1 - 2 * torch.nn.functional.one_hot(batch["labels_BJ"][:, 0], 2).float())
    # a prior that puts 0.9 on each window's true choice and 0.05 on its true block class
    logp = torch.stack([torch.full((6,), math.log(0.9)), torch.full((6,), math.log(0.05))], 1)
    _, plain = neds_loss(out, batch["counts_BTN"], batch["behavior_BTC"], batch["labels_BJ"], m)
    _, capped = neds_loss(out, batch["counts_BTN"], batch["behavior_BTC"], batch["labels_BJ"], m,
                          label_prior_logp_BJ=logp)
    ce = []
    for j, logits in enumerate(out["label_logits"]):
        z = logits.detach().numpy().astype(np.float64)
        rows = np.flatnonzero(m.label_scored_BJ[:, j].numpy())
        ce.append(np.mean(np.log(np.exp(z[rows]).sum(1)) - z[rows, batch["labels_BJ"][rows, j].numpy()]))
    assert ce[0] > -math.log(0.9) and ce[1] < -math.log(0.05)  # the premise
    assert math.isclose(plain["loss/label"], np.mean(ce), rel_tol=1e-5)
    assert math.isclose(capped["loss/label"], np.mean([-math.log(0.9), ce[1]]), rel_tol=1e-5)
    assert capped["loss/spike"] == plain["loss/spike"] and capped["loss/behavior"] == plain["loss/behavior"]
    assert capped["label_capped"] == [True, False] and plain["label_capped"] == [False, False]


def test_windows_scored_alone_with_the_batchs_cap_decisions_average_to_the_batch_loss():
    """label_capped_J: scoring each window alone with the batch's per-label cap decisions gives
    losses whose mean is the batch's capped label loss; a per-window minimum would be lower, since
    it caps only the windows the head gets wrong."""
    model = _model()
    batch = _batch()
    # every window has both labels, so each window's label loss is a mean over the same two labels
    batch["labels_BJ"] = batch["labels_BJ"].clamp(min=0)
    batch["label_valid_BJ"] = torch.ones_like(batch["label_valid_BJ"])
    m = _masks(batch, torch.full((6,), SCHEMES.index("decoding")))
    out = _forward(model, batch, m)
    # choice head: confidently right on windows 0-2, confidently wrong on 3-5 (worse than the prior overall)
    sign = torch.tensor([1.0, 1, 1, -1, -1, -1])[:, None]
    onehot = torch.nn.functional.one_hot(batch["labels_BJ"][:, 0], 2).float()
    out["label_logits"][0] = 8.0 * sign * (2 * onehot - 1)
    logp = torch.full((6, 2), math.log(0.5))
    args = (batch["counts_BTN"], batch["behavior_BTC"], batch["labels_BJ"])
    _, whole = neds_loss(out, *args, m, label_prior_logp_BJ=logp)
    assert whole["label_capped"][0]  # the premise: overall the head is worse than the prior
    assert bool(m.label_scored_BJ.all())

    def one(i, capped):
        sub = {k: v[i:i + 1] for k, v in out.items() if k != "label_logits"}
        sub["label_logits"] = [z[i:i + 1] for z in out["label_logits"]]
        mi = type(m)(**{f: getattr(m, f)[i:i + 1] for f in m.__dataclass_fields__})
        return neds_loss(sub, *(a[i:i + 1] for a in args), mi, label_prior_logp_BJ=logp[i:i + 1],
                         label_capped_J=capped)[1]["loss/label"]

    shared = [one(i, whole["label_capped"]) for i in range(6)]
    alone = [one(i, None) for i in range(6)]
    assert math.isclose(np.mean(shared), whole["loss/label"], rel_tol=1e-5)
    assert np.mean(alone) < whole["loss/label"] - 0.1
    with pytest.raises(ValueError, match="one entry per label"):
        neds_loss(out, *args, m, label_prior_logp_BJ=logp, label_capped_J=[True])
    with pytest.raises(ValueError, match="without priors"):
        neds_loss(out, *args, m, label_capped_J=[True, False])


def test_presets_build_and_bad_config_is_rejected():
    for name in NEDS_PRESETS:
        cfg = neds_preset(name)
        with torch.device("meta"):
            NEDS(cfg, {"s": 10}, MODS)
    with pytest.raises(ValueError, match="valid presets"):
        neds_preset("huge")
    with pytest.raises(ValueError, match="divisible"):
        NEDSConfig(dim=30, n_heads=4)
    from spikefm.families.neds.family import NEDSDataConfig

    with pytest.raises(ValueError, match="mask_ratio"):
        NEDSDataConfig(mask_ratio=0.0)
    with pytest.raises(ValueError, match="data.schemes"):
        NEDSDataConfig(schemes="encoding,nope")
    with pytest.raises(ValueError, match="init_from"):
        NEDSDataConfig(freeze_core=True)


@pytest.mark.parametrize("except_heads", [False, True])
def test_freeze_core_then_step_changes_only_the_free_parameters(except_heads):
    model = _model().train()
    model.freeze_core(True, except_heads=except_heads)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = _batch()
    m = _masks(batch, torch.tensor([SCHEMES.index("decoding"), SCHEMES.index("encoding")] * 3))
    out = _forward(model, batch, m)
    loss, _ = neds_loss(out, batch["counts_BTN"], batch["behavior_BTC"], batch["labels_BJ"], m)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    heads = {n for n in before if n.startswith(("channel_head.", "label_heads."))}
    assert changed & {n for n in before if n.startswith("sessions.")}
    assert changed <= {n for n in before if n.startswith("sessions.")} | (heads if except_heads else set())
    if except_heads:
        assert heads <= changed
    model.freeze_core(False)
    assert all(p.requires_grad for p in model.parameters())


def test_cli_default_neds_run_is_the_benchmarked_recipe():
    """`spikefm train --model neds` without flags runs the recipe the README's NEDS tables measure
    (tiny, dropout 0.2, 50-bin windows from 200 ms before the event, 1,500 steps at lr 2e-3, batch
    16); before 2026-12-04 it ran an unmeasured setup (100 bins, no dropout, 3,000 steps) whose
    `finetune --strategy auto` kept its worst candidate on tuning seeds."""
    from spikefm.cli import build_parser
    from spikefm.families import run_config

    args = build_parser().parse_args(["train", "--model", "neds", "--data", "C", "--out", "O"])
    cfg = run_config("neds", preset=args.preset, corpus="C", overrides=args.set)
    got = (cfg.model.dim, cfg.model.dropout, cfg.data.window_bins, cfg.data.pre_ms, cfg.train.steps,
           cfg.optim.lr, cfg.train.batch_size)
    assert got == (64, 0.2, 50, 200, 1500, 2e-3, 16)
    # a documented option still reaches the run
    cfg = run_config("neds", preset=None, corpus="C", overrides=["data.window_bins=100", "data.pre_ms=500"])
    assert (cfg.data.window_bins, cfg.data.pre_ms) == (100, 500)


def test_label_values_outside_the_runs_classes_are_said():
    """A held-out session's block prior 0.2, which the pretraining sessions never had, was
    dropped from fine-tuning and from the scores without a word (chance 0.5 over 2 classes where
    the test windows held 3)."""
    from types import SimpleNamespace

    from spikefm.families.neds.batches import session_arrays

    split = np.array(["train"] * 6 + ["test"] * 2)
    w = SimpleNamespace(num_windows=8, num_bins=4, behavior=None, behavior_names=[], session_id="ses",
                        labels={"block_prior": np.array([0.5, 0.8, 0.2, 0.5, 0.2, 0.8, 0.2, 0.5])},
                        indices=lambda s: np.flatnonzero(split == s))
    mods = Modalities(channels=(), labels=(("block_prior", (0.5, 0.8)),))
    with pytest.warns(RuntimeWarning, match=r"session 'ses': 3 of 8 window\(s\) have block_prior 0.2, not "
                                            r"among the run's classes 0.5, 0.8"):
        a = session_arrays(w, mods)
    np.testing.assert_array_equal(a.labels_KJ[:, 0], [0, 1, -1, 0, -1, 1, -1, 0])


def test_every_parameter_outside_the_blocks_gets_a_gradient_when_data_parallel():
    """Under FSDP2 a batch that scored no behaviour or label (every sample drew 'encoding') left the
    heads without a gradient on that rank only; the ranks then reduced different parameters and
    gloo aborted ('Received data size doesn't match expected size'). With all_sessions_in_graph
    every trainable parameter takes part, with gradient 0 where nothing scored it, and the outputs
    are unchanged."""
    model = _model().train()
    batch = _batch()
    m = _masks(batch, torch.full((6,), SCHEMES.index("encoding")))
    assert not m.behavior_scored_BTC.any() and not m.label_scored_BJ.any()

    def grads(in_graph: bool):
        torch.manual_seed(3)  # the same dropout draws both times
        model.zero_grad(set_to_none=True)
        out = model(batch["counts_BTN"], m.spike_hidden_BT, batch["session_ids"], batch["behavior_BTC"],
                    m.behavior_hidden_BTC, batch["labels_BJ"], m.label_hidden_BJ, all_sessions_in_graph=in_graph)
        loss, _ = neds_loss(out, batch["counts_BTN"], batch["behavior_BTC"], batch["labels_BJ"], m)
        loss.backward()
        return out, loss, {n: p.grad for n, p in model.named_parameters()}

    out0, loss0, plain = grads(False)
    out1, loss1, touched = grads(True)
    assert torch.equal(out0["log_rates_BTN"], out1["log_rates_BTN"]) and torch.equal(loss0, loss1)
    heads = [n for n in plain if n.startswith(("label_heads.", "channel_head."))]
    assert heads and all(plain[n] is None for n in heads)  # the failure: no gradient at all
    assert all(g is not None for g in touched.values()), [n for n, g in touched.items() if g is None]
    assert all(torch.count_nonzero(touched[n]) == 0 for n in heads)
    for n, g in plain.items():  # every gradient the loss gave is unchanged
        if g is not None:
            torch.testing.assert_close(touched[n], g, rtol=0, atol=0, msg=n)


def test_flops_count_the_core_on_every_token_and_a_stitcher_on_its_sessions_spike_tokens():
    model = _model()
    batch = _batch(B=4, T=10)  # sessions a, b, a, b; 2 channels, 2 labels
    core = sum(p.numel() for p in model.core_parameters())
    own = {s: sum(p.numel() for p in model.stitcher(s).parameters()) for s in SESSIONS}
    assert core + sum(own.values()) == sum(p.numel() for p in model.parameters())
    L = 10 * (1 + 2) + 2
    flops = get_family("neds").flops_per_batch(model, batch, None)
    assert flops == 6.0 * (core * 4 * L + 10 * (2 * own["a"] + 2 * own["b"]))


def test_explicit_label_classes_of_a_label_no_session_holds_are_refused_on_a_new_run():
    """data.labels=choice=-1,1 on sessions without a choice column trained with no word (the
    label was never scored) and only eval said 'none of the test windows has a choice label';
    then only warned, so a misspelt name cost a whole training. Refused on a new run now, warned
    about on a run that keeps a pretrained run's labels (its session may lack some); without
    classes the label is refused, as before."""
    from types import SimpleNamespace

    from spikefm.families.neds.batches import resolve_modalities

    windows = {"m1": SimpleNamespace(behavior_names=["hand_vel_x"], labels={"target_angle": np.array([0.0, 90.0])})}
    with pytest.raises(ValueError, match=r"^data.labels names 'choice', which none of the session\(s\) hold; "
                                         r"labels present: target_angle$"):
        resolve_modalities(windows, "auto", "choice=-1,1;target_angle=0,90")
    with pytest.warns(RuntimeWarning, match=r"^data.labels names 'choice', which none of the session\(s\) m1 hold: "
                                            r"kept in the model but never scored or decoded \(labels present: "
                                            r"target_angle\)$"):
        mods = resolve_modalities(windows, "auto", "choice=-1,1;target_angle=0,90", missing_ok=True)
    assert mods.labels == (("choice", (-1.0, 1.0)), ("target_angle", (0.0, 90.0)))
    with pytest.raises(ValueError, match=r"label 'choice' has 0 numeric value"):
        resolve_modalities(windows, "auto", "choice")


def test_the_absent_label_and_channel_warnings_are_said_once_per_process():
    """A fine-tuning prepares the data once per candidate (and again to evaluate): the 'data.labels
    names ...' warning printed twice, since any change of the warning filters (reading an NWB file
    makes one) clears Python's record of warnings already given."""
    from types import SimpleNamespace

    from spikefm.families.neds.batches import resolve_modalities

    windows = {"m9": SimpleNamespace(behavior_names=["hand_vel_x"], labels={"target_angle": np.array([0.0, 90.0])})}
    said = []
    for _ in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a filter change, as an NWB read makes one
            resolve_modalities(windows, "hand_vel_x,wheel_speed", "choice=-1,1;target_angle=0,90", missing_ok=True)
        said += [str(w.message) for w in caught]
    assert sum("data.labels names 'choice'" in m for m in said) == 1, said
    assert sum("hold none of the pretrained run's channel(s) wheel_speed" in m for m in said) == 1, said
    # other sessions lacking them are still told
    windows2 = {"m10": windows["m9"]}
    with pytest.warns(RuntimeWarning, match=r"data.labels names 'choice', which none of the session\(s\) m10"):
        resolve_modalities(windows2, "hand_vel_x", "choice=-1,1;target_angle=0,90", missing_ok=True)


def test_label_names_may_be_separated_by_commas_as_the_warning_offers_them():
    """The no-targets warning offered data.labels=accuracy,boundary_type,confidence, which failed
    ("label 'accuracy,boundary_type,confidence' has 0 numeric value(s)"): only ';' separated labels."""
    from spikefm.families.neds.batches import parse_label_spec

    assert parse_label_spec("accuracy,boundary_type, confidence") == [
        ("accuracy", None), ("boundary_type", None), ("confidence", None)]
    assert parse_label_spec("choice=-1,1;block_prior") == [("choice", (-1.0, 1.0)), ("block_prior", None)]
    assert parse_label_spec("choice;block_prior=0.8,0.2,0.5") == [("choice", None), ("block_prior", (0.2, 0.5, 0.8))]
    with pytest.raises(ValueError, match=r"'choice=-1,1,block_prior' must list at least two numeric classes, e.g. "
                                         r"'choice=-1,1' \(separate labels with ';': 'choice=-1,1;block_prior'\)"):
        parse_label_spec("choice=-1,1,block_prior")
    # classes after a comma list named one label 'stimuli_type,old_new': refused, the ';' form shown
    with pytest.raises(ValueError, match=r"'stimuli_type,old_new=1,2' gives classes after a comma-separated list "
                                         r"of labels; when a label has classes, separate the labels with ';': "
                                         r"stimuli_type;old_new=1,2$"):
        parse_label_spec("stimuli_type,old_new=1,2")


def test_a_trial_column_of_too_many_values_is_said_to_be_no_label():
    """data.labels=trial_num (180 distinct values) said "label 'trial_num' has 0 numeric value(s)
    in the data", false: the column has 180, more than a discrete label may have."""
    from types import SimpleNamespace

    from spikefm.data.windows import MAX_LABEL_VALUES, _discrete_labels
    from spikefm.families.neds.batches import resolve_modalities

    n = MAX_LABEL_VALUES + 5
    trials = {"trial_num": [float(i) for i in range(n)], "choice": [1.0, -1.0] * (n // 2) + [1.0] * (n % 2)}
    many = {}
    labels = _discrete_labels(trials, np.arange(n), many_valued=many)
    assert set(labels) == {"choice"} and many == {"trial_num": n}
    windows = {"a": SimpleNamespace(behavior_names=[], labels=labels, many_valued=many, align="start_time")}
    with pytest.raises(ValueError, match=rf"label 'trial_num' has 0 numeric value\(s\) in the data as a discrete "
                                         rf"label \(trial column 'trial_num' has {n} distinct values, more than the "
                                         rf"{MAX_LABEL_VALUES} a discrete label may have: bin it into fewer classes"):
        resolve_modalities(windows, "auto", "trial_num")


def test_a_session_whose_trials_share_one_class_keeps_that_label():
    """A held-out session whose every trial had choice 1 (short, or an animal with a side bias) lost
    its choice column ('none of the session(s) hold choice'): a label needed 2 distinct values per
    session. One is enough now; auto still leaves out a label of one value in every session."""
    from types import SimpleNamespace

    from spikefm.data.windows import _discrete_labels
    from spikefm.families.neds.batches import resolve_modalities

    trials = {"choice": [1.0, 1.0, None, 1.0], "contrast": [0.0, 0.25, 1.0, 0.5], "start_time": [0.0, 1.0, 2.0, 3.0]}
    labels = _discrete_labels(trials, np.arange(4))
    assert set(labels) == {"choice", "contrast"} and np.isnan(labels["choice"][2])

    def session(choice, block):
        return SimpleNamespace(behavior_names=[], labels={"choice": np.array(choice, float),
                                                          "block_prior": np.array(block, float)})

    one_class = {"a": session([1, 1], [0.5, 0.5]), "b": session([-1, 1], [0.5, 0.5])}
    mods = resolve_modalities(one_class, "auto", "auto")
    assert mods.labels == (("choice", (-1.0, 1.0)),)  # block_prior: 0.5 everywhere, no label
    assert resolve_modalities({"a": one_class["a"]}, "auto", "choice=-1,1").labels == (("choice", (-1.0, 1.0)),)


def test_a_label_asked_of_continuous_windows_says_they_carry_none():
    """data.align= with data.labels=choice said only "has 0 numeric value(s) ... labels present: (none)"."""
    from types import SimpleNamespace

    from spikefm.families.neds.batches import resolve_modalities

    continuous = {"a": SimpleNamespace(behavior_names=["wheel"], labels={}, align=None)}
    with pytest.raises(ValueError, match=r"labels present: \(none\); windows cut from continuous recording "
                                         r"\(data.align=\) carry no trial labels: set data.labels= \(none\), or "
                                         r"align the windows to a trial event$"):
        resolve_modalities(continuous, "auto", "choice")
    aligned = {"a": SimpleNamespace(behavior_names=["wheel"], labels={}, align="stim_on_time")}
    with pytest.raises(ValueError, match=r"labels present: \(none\)$"):
        resolve_modalities(aligned, "auto", "choice")


def test_a_stray_comma_before_the_classes_is_said_so():
    from spikefm.families.neds.batches import parse_label_spec

    with pytest.raises(ValueError, match=r"'choice,=-1,1' has a comma before its '='; write the label and its "
                                         r"classes as 'choice=-1,1'$"):
        parse_label_spec("choice,=-1,1")
