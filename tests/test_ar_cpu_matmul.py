"""CPU matmul kernels of the AR model (spikefm.families.ar.cpu_matmul): the OpenBLAS GEMM and the
float32 route of bf16 autocast matmuls give torch's results up to float rounding, with the
gradients rounded where autocast rounds them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spikefm.families.ar import cpu_matmul
from spikefm.families.ar.model import Llama, llama_preset

HAS_OPENBLAS = bool(cpu_matmul._openblas_controllers())
needs_openblas = pytest.mark.skipif(not HAS_OPENBLAS, reason="numpy is not linked to OpenBLAS")


@pytest.fixture(autouse=True)
def _restore_settings():
    saved = cpu_matmul.cpu_matmul_choice()
    yield
    cpu_matmul.set_cpu_matmul(gemm=saved["gemm_setting"], bf16=saved["bf16_setting"])


def _inputs(seed=0, shape=(3, 70, 48), out=40):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen).requires_grad_()
    w = (0.1 * torch.randn(out, shape[-1], generator=gen)).requires_grad_()
    g = torch.randn(*shape[:-1], out, generator=gen)
    return x, w, g


@needs_openblas
@pytest.mark.parametrize("transpose_input", [False, True])
def test_openblas_linear_matches_torch_forward_and_backward(monkeypatch, transpose_input):
    monkeypatch.setattr(cpu_matmul, "_MIN_OPENBLAS_MACS", 0)  # even these small products
    cpu_matmul.set_cpu_matmul(gemm="openblas")
    x, w, g = _inputs()
    x_in = x.transpose(0, 1).transpose(0, 1) if not transpose_input else x.transpose(0, 1)
    y = cpu_matmul.linear(x_in, w)
    assert y.grad_fn is not None and "LinearFp32" in type(y.grad_fn).__name__
    y.backward(g if not transpose_input else g.transpose(0, 1))
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    x_ref_in = x_ref if not transpose_input else x_ref.transpose(0, 1)
    y_ref = x_ref_in @ w_ref.t()
    y_ref.backward(g if not transpose_input else g.transpose(0, 1))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)


@needs_openblas
def test_openblas_leaves_storages_resizable(monkeypatch):
    """FSDP2 frees an unsharded parameter by resizing its storage to zero after the forward pass;
    Tensor.numpy() would have marked it non-resizable (a crash of two-process training)."""
    monkeypatch.setattr(cpu_matmul, "_MIN_OPENBLAS_MACS", 0)
    cpu_matmul.set_cpu_matmul(gemm="openblas")
    x, w, g = _inputs(4)
    y = cpu_matmul.linear(x, w)
    y.backward(g)
    for t in (w, x, y, w.grad, x.grad):
        t.detach().untyped_storage().resize_(0)  # raises if not resizable


@needs_openblas
def test_openblas_leaves_small_products_and_other_dtypes_to_torch():
    cpu_matmul.set_cpu_matmul(gemm="openblas")
    x, w, _ = _inputs(shape=(1, 1, 48))  # one decoded token: below the size threshold
    assert cpu_matmul._mm(x[0].detach(), w.detach().t()).shape == (1, 40)
    y = cpu_matmul.linear(x.double(), w.double())  # not float32: plain F.linear
    assert y.dtype == torch.float64 and "LinearFp32" not in type(y.grad_fn).__name__


def test_bf16_via_fp32_rounds_where_autocast_does():
    cpu_matmul.set_cpu_matmul(gemm="torch", bf16="fp32")
    x, w, g = _inputs(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cpu_matmul.linear(x, w)
    assert y.dtype == torch.bfloat16
    y.backward(g.bfloat16())
    # independent expectation: bf16 operands, float32 products and sums, bf16 results
    x16, w16, g16 = (t.detach().bfloat16().float() for t in (x, w, g))
    torch.testing.assert_close(y.float(), (x16 @ w16.t()).bfloat16().float(), rtol=0, atol=0)
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, (g16 @ w16).bfloat16().float(), rtol=0, atol=0)
    grad_w = g16.reshape(-1, 40).t() @ x16.reshape(-1, 48)
    torch.testing.assert_close(w.grad, grad_w.bfloat16().float(), rtol=0, atol=0)


def test_bf16_via_fp32_agrees_with_torch_native_bf16():
    results = {}
    for mode in ("native", "fp32"):
        cpu_matmul.set_cpu_matmul(gemm="torch", bf16=mode)
        x, w, g = _inputs(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = cpu_matmul.linear(x, w)
        y.backward(g.bfloat16())
        results[mode] = (y.float(), x.grad, w.grad)
    for a, b in zip(results["native"], results["fp32"]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)  # bf16: 8 bits of mantissa


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_model_training_step_is_the_same_on_either_kernels(dtype):
    """One forward/backward of the tiny model: auto kernels (OpenBLAS / bf16 via float32 where
    they apply) against torch's own, same weights and tokens."""
    cfg = llama_preset("tiny")
    torch.manual_seed(0)
    model = Llama(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 97), generator=torch.Generator().manual_seed(3))
    out = {}
    settings = {"torch": {"gemm": "torch", "bf16": "native"},
                "other": {"gemm": "openblas" if HAS_OPENBLAS else "torch", "bf16": "fp32"}}
    for name, kernels in settings.items():
        cpu_matmul.set_cpu_matmul(**kernels)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), tokens[:, 1:].reshape(-1))
        loss.backward()
        out[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    tol = 1e-5 if dtype == "fp32" else 2e-2
    torch.testing.assert_close(out["torch"][0], out["other"][0], rtol=tol, atol=tol)
    for n, grad in out["torch"][1].items():
        other = out["other"][1][n]
        rel = (grad - other).norm() / grad.norm()
        assert rel < (1e-4 if dtype == "fp32" else 5e-2), (n, float(rel))


def test_settings_are_checked_and_auto_resolves(monkeypatch):
    with pytest.raises(ValueError, match="gemm must be one of auto, torch, openblas"):
        cpu_matmul.set_cpu_matmul(gemm="mkl")
    with pytest.raises(ValueError, match="bf16 must be one of auto, native, fp32"):
        cpu_matmul.set_cpu_matmul(bf16="fp16")
    cpu_matmul.set_cpu_matmul(gemm="auto", bf16="auto")
    monkeypatch.setattr(cpu_matmul, "_cpu_vendor", lambda: "GenuineIntel")
    assert cpu_matmul.cpu_matmul_choice()["gemm"] == "torch"  # MKL's own CPUs keep MKL
    monkeypatch.setattr(cpu_matmul, "_cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(cpu_matmul, "_openblas_controllers", lambda: ("lib",))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert cpu_matmul.cpu_matmul_choice()["gemm"] == "torch"  # only measured on one thread
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    expected = "openblas" if torch.backends.mkl.is_available() else "torch"
    assert cpu_matmul.cpu_matmul_choice()["gemm"] == expected
    monkeypatch.setattr(cpu_matmul, "_cpu_has_bf16_instructions", lambda: True)
    assert cpu_matmul.cpu_matmul_choice()["bf16"] == "native"
    monkeypatch.setattr(cpu_matmul, "_cpu_has_bf16_instructions", lambda: False)
    assert cpu_matmul.cpu_matmul_choice()["bf16"] == "fp32"


def test_meta_device_uses_plain_torch():
    cpu_matmul.set_cpu_matmul(gemm="openblas" if HAS_OPENBLAS else "torch", bf16="fp32")
    with torch.device("meta"):
        model = Llama(llama_preset("tiny"))
        logits = model(torch.zeros(2, 16, dtype=torch.long))
    assert logits.shape == (2, 16, 256) and logits.device.type == "meta"
