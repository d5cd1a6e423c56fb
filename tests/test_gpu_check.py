"""benchmarks/gpu_check.py: every section runs on the CPU at tiny sizes (so the script cannot rot
between GPU sessions), and its GPU-sized configurations are shape-checked on the meta device."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from spikefm.families.ar.model import Llama, count_parameters, flops_per_token

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchmark_script import load_benchmark  # noqa: E402


def _load_script():
    return load_benchmark("gpu_check")


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    gpu_check = _load_script()
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    result = gpu_check.main(["--device", "cpu", "--tiny", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


def test_every_section_runs_on_cpu(tiny_result):
    sections = tiny_result["sections"]
    failed = {k: v["status"] for k, v in sections.items() if "status" in v}
    assert not failed, failed
    assert sections["flash"]["flash_confirmed"] and sections["flash"]["flash_gqa"]
    assert sections["flash"]["max_abs_diff_vs_fp32_math"] < 0.05  # bf16 vs fp32 math kernel
    logits = sections["logits"]
    assert logits["within_tolerance"] and logits["argmax_agreement"] > 0.9
    assert sections["generation"]["runs"][1]["tokens"] == 8 * 4 * 16  # batch x bins x (units+1)
    assert sections["masked_families"]["ndt"]["windows_per_s"] > 0


def test_skip_leaves_the_named_sections_out(tmp_path):
    gpu_check = _load_script()
    names = [n for n, _ in gpu_check._sections({"tiny": True, "variants": 2})]
    keep = {"environment", "logits"}
    result = gpu_check.main(["--device", "cpu", "--tiny", "--threads", "1", "--skip",
                             ",".join(n for n in names if n not in keep),
                             "--out", str(tmp_path / "g.json")])
    sections = result["sections"]
    assert list(sections) == names  # every section is listed, in order
    for name in names:
        if name in keep:
            assert "status" not in sections[name], sections[name]
        else:
            assert sections[name]["status"] == "skipped: --skip"
    assert sections["logits"]["within_tolerance"]
    assert result["settings"]["batch_size"] == 1  # --tiny's default (4 on a GPU)


def test_mfu_follows_the_flop_counts(tiny_result):
    peak = tiny_result["sections"]["environment"]["peak_bf16_used"]
    assert peak > 0
    runs = [v for v in tiny_result["sections"].values() if "tokens_per_s" in v]
    assert len(runs) == 4
    for run in runs:
        L, d, n_layers = run["seq_len"], 128, run["n_layers"]
        # the causal count keeps (L + 1) / 2 of the L keys per query in the attention term
        attention_full = 12 * n_layers * d * L
        dense = run["flops_per_token_noncausal"] - attention_full
        assert run["flops_per_token_causal"] == pytest.approx(dense + attention_full * (L + 1) / (2 * L))
        assert run["mfu_causal"] == pytest.approx(run["tokens_per_s"] * run["flops_per_token_causal"] / peak)
        assert 0 < run["mfu_causal"] < run["mfu_noncausal"]


def test_fsdp2_step_computes_what_the_plain_step_computes(tiny_result):
    s = tiny_result["sections"]
    plain, fsdp = s["ar_tiny_ckpt0_compile0"], s["ar_tiny_fsdp2"]
    assert fsdp["fsdp2"] and not plain["fsdp2"]
    # same seed, same tokens: the one-process FSDP2 model starts from the same loss
    assert fsdp["first_loss"] == pytest.approx(plain["first_loss"], abs=1e-3)
    ckpt = s["ar_tiny_ckpt1_compile0"]
    assert ckpt["first_loss"] == pytest.approx(plain["first_loss"], abs=1e-3)


def test_gpu_configurations_fit_on_the_meta_device():
    gpu_check = _load_script()
    for preset in ("1b", "125m"):
        cfg = gpu_check._ar_run_config(preset, 8192, ckpt=True, compile_=True, tiny=False)
        assert cfg.model.max_seq_len >= 8192 and cfg.data.seq_len == 8192
        with torch.device("meta"):
            model = Llama(cfg.model)
            logits = model(torch.zeros(1, 8192, dtype=torch.long))
        assert logits.shape == (1, 8192, 256)
        assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg.model)
    # the 1b preset's training cost at 8k: attention is a sizeable share, halved by causality
    cfg = gpu_check._ar_run_config("1b", 8192, ckpt=False, compile_=False, tiny=False).model
    full, causal = flops_per_token(cfg, 8192), flops_per_token(cfg, 8192, causal=True)
    assert full - causal == pytest.approx(12 * cfg.n_layers * cfg.dim * (8192 - 1) / 2)


def test_no_cuda_is_a_clear_error(monkeypatch, capsys):
    gpu_check = _load_script()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--device", "cuda"])
