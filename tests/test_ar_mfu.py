"""MFU on the CPU: the start-up matmul probe, its place in the run's config.json, and a numeric
``mfu`` in metrics.jsonl of an AR run that counts attention causally."""
from __future__ import annotations

import json

import pytest
import torch

from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.synth import synthesize
from spikefm.families import get
from spikefm.families.ar.family import ARDataConfig
from spikefm.families.ar.model import count_parameters, flops_per_token, llama_preset
from spikefm.train.config import OptimConfig, RunConfig, TrainConfig
from spikefm.train.loop import resolve_peak_flops, train
from spikefm.train.mfu import matmul_flops, probe_peak_flops


def test_probe_measures_matmul_flops(monkeypatch):
    torch.set_num_threads(1)
    probe = probe_peak_flops("cpu", size=128, refresh=True)
    assert probe["source"] == "probe" and probe["size"] == 128 and probe["threads"] == 1
    assert probe["fp32"] > 0 and probe["bf16"] > 0
    # the probe's number is 2 n^3 over its best time: a slower clock gives a proportionally
    # smaller peak (fake clock: every matmul "takes" 1 ms)
    import spikefm.train.mfu as mfu

    ticks = iter(i * 1e-3 for i in range(10_000))
    monkeypatch.setattr(mfu.time, "perf_counter", lambda: next(ticks))
    fake = probe_peak_flops("cpu", size=64, refresh=True, min_seconds=0.0)
    assert fake["fp32"] == pytest.approx(matmul_flops(64) / 1e-3)
    assert fake["fp32_repeats"] == 3  # at least 3 timed repeats


def test_probe_is_cached_and_checks_arguments():
    a = probe_peak_flops("cpu", size=96, refresh=True)
    assert probe_peak_flops("cpu", size=96) == a
    with pytest.raises(ValueError, match="probe size"):
        probe_peak_flops("cpu", size=4)


def test_peak_override_beats_probe(monkeypatch):
    monkeypatch.setenv("SPIKEFM_PEAK_FLOPS", "2e12")
    assert resolve_peak_flops(torch.device("cpu"), "fp32") == {
        "value": 2e12, "precision": "fp32", "source": "override"}
    monkeypatch.delenv("SPIKEFM_PEAK_FLOPS")
    info = resolve_peak_flops(torch.device("cpu"), "bf16")
    assert info["source"] == "probe"
    # the faster GEMM of the two: bf16 runs may multiply in float32 kernels (ar.cpu_matmul)
    assert info["value"] == max(info["probe"]["bf16"], info["probe"]["fp32"])


def test_causal_flops_formula():
    cfg = llama_preset("tiny")
    n_matmul = count_parameters(cfg) - cfg.vocab_size * cfg.dim
    for L in (1, 2, 256):
        keys = sum(range(1, L + 1)) / L  # query l sees l + 1 keys (l = 0..L-1)
        assert flops_per_token(cfg, L, causal=True) == pytest.approx(
            6 * n_matmul + 12 * cfg.n_layers * cfg.dim * keys)
    assert flops_per_token(cfg, 1, causal=True) == flops_per_token(cfg, 1)


def test_ar_cpu_run_reports_numeric_mfu(tmp_path):
    torch.set_num_threads(1)
    synthesize(tmp_path / "nwb", num_sessions=2, seed=3, duration_s=20.0, units_range=(20, 24))
    build_corpus([str(tmp_path / "nwb")], tmp_path / "corpus", BuildConfig(test_fraction=0.0),
                 progress=False)
    model = llama_preset("tiny")
    cfg = RunConfig(family="ar", model=model,
                    data=ARDataConfig(corpus=str(tmp_path / "corpus"), seq_len=64),
                    optim=OptimConfig(warmup_steps=1),
                    train=TrainConfig(steps=4, batch_size=2, log_every=2, ckpt_every=0,
                                      device="cpu", precision="fp32"))
    train(cfg, tmp_path / "run", get("ar"), progress=False)
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    peak = info["peak_flops"]
    assert peak["source"] == "probe" and peak["precision"] == "fp32"
    assert peak["value"] == peak["probe"]["fp32"] > 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert len(rows) == 2
    for r in rows:
        expected = r["tokens_per_s"] * flops_per_token(model, 64, causal=True) / peak["value"]
        assert r["mfu"] == pytest.approx(expected, rel=1e-6)
