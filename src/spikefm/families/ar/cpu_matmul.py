"""CPU matmul kernels of the AR model: which GEMM library multiplies float32, and how bf16
autocast matmuls run on CPUs without bf16 instructions.

Both choices change speed, not the arithmetic (float32 GEMMs that differ only in summation order):

- ``gemm``: ``"torch"`` runs ``F.linear`` (MKL in the x86 wheels); ``"openblas"`` runs the same
  products, forward and backward, through numpy's bundled OpenBLAS. On this project's AMD EPYC
  (AVX2, torch 2.13 with MKL 2024.2, one thread) OpenBLAS was 1.23x faster over the twelve GEMM
  shapes of a training step of the ``small`` preset (``benchmarks/bench_ar_train.py`` has the
  step-level figure). ``"auto"`` picks it only where that was measured: torch on one thread
  (two thread pools, torch's OpenMP and OpenBLAS's, spinning against each other was not
  measured), torch built with MKL, a CPU whose vendor is not Intel (MKL's own), and numpy linked
  to OpenBLAS (found with threadpoolctl).
- ``bf16``: under CPU bf16 autocast, ``"native"`` runs torch's bf16 kernels; ``"fp32"`` rounds
  the operands to bf16 where autocast does, multiplies them with float32 kernels (a bf16 x bf16
  product is exact in float32, and both accumulate in float32) and rounds the result to bf16;
  the backward pass rounds the gradients at the same points. ``"auto"`` picks ``"fp32"`` on CPUs
  without AVX512-BF16 or AMX, where torch emulates bf16 GEMMs: on the AVX2 machine above they ran
  at 0.5-4 GFLOP/s against about 60 in float32.

Only CPU tensors are affected; CUDA, meta, DTensor (FSDP-sharded) weights and code being traced by
``torch.compile`` use ``F.linear`` / ``F.scaled_dot_product_attention`` unchanged.

    from spikefm.families.ar.cpu_matmul import set_cpu_matmul, cpu_matmul_choice
    set_cpu_matmul(gemm="torch", bf16="native")   # torch's own kernels, as transformers uses
    cpu_matmul_choice()                           # {"gemm": "torch", "bf16": "native", ...}
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GEMM_MODES", "BF16_MODES", "set_cpu_matmul", "cpu_matmul_choice", "linear",
           "attention"]

GEMM_MODES = ("auto", "torch", "openblas")
BF16_MODES = ("auto", "native", "fp32")
_SETTINGS = {"gemm": "auto", "bf16": "auto"}
_MIN_OPENBLAS_MACS = 1 << 21


def set_cpu_matmul(*, gemm: str | None = None, bf16: str | None = None) -> None:
    """Choose the CPU matmul kernels of the AR model for this process (None keeps a setting).

    Raises:
        ValueError: for an unknown mode, or ``gemm="openblas"`` when numpy's BLAS is not OpenBLAS.
    """
    if gemm is not None:
        if gemm not in GEMM_MODES:
            raise ValueError(f"gemm must be one of {', '.join(GEMM_MODES)}, got {gemm!r}")
        if gemm == "openblas" and not _openblas_controllers():
            raise ValueError("gemm='openblas' needs numpy linked to OpenBLAS (the numpy wheels "
                             "from PyPI) and threadpoolctl; use gemm='torch' or 'auto'")
    if bf16 is not None and bf16 not in BF16_MODES:
        raise ValueError(f"bf16 must be one of {', '.join(BF16_MODES)}, got {bf16!r}")
    if gemm is not None:
        _SETTINGS["gemm"] = gemm
    if bf16 is not None:
        _SETTINGS["bf16"] = bf16


def cpu_matmul_choice() -> dict[str, Any]:
    """The settings and what they resolve to now: ``{"gemm_setting", "gemm", "bf16_setting",
    "bf16", "cpu_vendor", "numpy_openblas", "bf16_instructions", "torch_threads"}``."""
    return {"gemm_setting": _SETTINGS["gemm"], "gemm": _gemm_mode(),
            "bf16_setting": _SETTINGS["bf16"], "bf16": "fp32" if _bf16_via_fp32() else "native",
            "cpu_vendor": _cpu_vendor(), "numpy_openblas": bool(_openblas_controllers()),
            "bf16_instructions": _cpu_has_bf16_instructions(),
            "torch_threads": torch.get_num_threads()}


@functools.cache
def _cpu_vendor() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def _openblas_controllers() -> tuple:
    """threadpoolctl controllers of numpy's OpenBLAS (empty when numpy uses another BLAS)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return ()
    np.ones((2, 2)) @ np.ones((2, 2))  # make sure numpy's BLAS is loaded
    found = ThreadpoolController().select(internal_api="openblas").lib_controllers
    return tuple(c for c in found if "numpy" in str(getattr(c, "filepath", "")))


@functools.cache
def _cpu_has_bf16_instructions() -> bool:
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is None or amx is None:  # cannot tell: keep torch's own kernels
        return True
    return bool(avx512_bf16() or amx())


def _gemm_mode() -> str:
    mode = _SETTINGS["gemm"]
    if mode != "auto":
        return mode
    auto = (torch.get_num_threads() == 1 and torch.backends.mkl.is_available()
            and _cpu_vendor() not in (None, "GenuineIntel") and bool(_openblas_controllers()))
    return "openblas" if auto else "torch"


def _bf16_via_fp32() -> bool:
    mode = _SETTINGS["bf16"]
    return mode == "fp32" or (mode == "auto" and not _cpu_has_bf16_instructions())


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of 2-D float32 CPU tensors by the chosen GEMM library (no autograd).

    Products under ``_MIN_OPENBLAS_MACS`` multiply-adds (decoding one token, say) stay with torch:
    there the ~20 us of crossing into numpy and setting OpenBLAS's threads would dominate."""
    if _gemm_mode() != "openblas" or a.shape[0] * a.shape[1] * b.shape[1] < _MIN_OPENBLAS_MACS:
        return a @ b
    threads = torch.get_num_threads()
    libs = _openblas_controllers()
    before = [lib.get_num_threads() for lib in libs]
    for lib in libs:
        lib.set_num_threads(threads)
    # numpy sees the tensors through DLPack, not Tensor.numpy(): that one marks the storage
    # non-resizable, and FSDP2 frees unsharded parameters by resizing their storage to zero.
    # torch allocates the product and numpy writes into it, for the same reason.
    out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype)
    try:
        np.matmul(np.from_dlpack(a.detach()), np.from_dlpack(b.detach()),
                  out=np.from_dlpack(out))
        return out
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


class _LinearFp32(torch.autograd.Function):
    """``F.linear`` without bias of float32 CPU tensors, every GEMM through :func:`_mm`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _mm(x.reshape(-1, x.shape[-1]), weight.t()).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        g_MN = g.reshape(-1, g.shape[-1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm(g_MN, weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = _mm(g_MN.t(), x.reshape(-1, x.shape[-1]))
        return grad_x, grad_w


class _LinearBf16AsFp32(torch.autograd.Function):
    """``F.linear`` without bias with CPU-autocast bf16 rounding, multiplied in float32.

    Rounds to bf16 where autocast does (inputs and output; in the backward pass the input and
    weight gradients) and keeps bf16 copies of the inputs for the backward pass, as autocast does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            x16, w16 = x.to(torch.bfloat16), weight.to(torch.bfloat16)
            ctx.save_for_backward(x16, w16)
            ctx.dtypes = (x.dtype, weight.dtype)
            y_MN = _mm(x16.reshape(-1, x.shape[-1]).float(), w16.float().t())
            return y_MN.to(torch.bfloat16).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x16, w16 = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        grad_x = grad_w = None
        with torch.autocast("cpu", enabled=False):
            g_MN = g.reshape(-1, g.shape[-1]).to(torch.bfloat16).float()
            if ctx.needs_input_grad[0]:
                grad_x = _mm(g_MN, w16.float()).to(torch.bfloat16).to(x_dtype).view(x16.shape)
            if ctx.needs_input_grad[1]:
                grad_w = _mm(g_MN.t(), x16.reshape(-1, x16.shape[-1]).float())
                grad_w = grad_w.to(torch.bfloat16).to(w_dtype)
        return grad_x, grad_w


def _plain_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and type(weight) in (torch.Tensor, nn.Parameter)
            and type(x) is torch.Tensor and not torch.compiler.is_compiling())


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return weight.dtype


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) on the kernels :func:`set_cpu_matmul` chose."""
    if _plain_cpu(x, weight):
        dtype = _compute_dtype(weight)
        if dtype == torch.bfloat16 and _bf16_via_fp32():
            return _LinearBf16AsFp32.apply(x, weight)
        if (dtype == torch.float32 and x.dtype == torch.float32 and weight.dtype == torch.float32
                and _gemm_mode() == "openblas"):
            return _LinearFp32.apply(x, weight)
    return F.linear(x, weight)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: torch.Tensor,
              **sdpa_kwargs: Any) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, **sdpa_kwargs)``; in float32 on bf16-rounded
    inputs, rounded back to bf16, when the matmuls of ``weight`` (a projection of the same
    layer) would run in emulated bf16 (see :func:`set_cpu_matmul`)."""
    if (_plain_cpu(q, weight) and _compute_dtype(weight) == torch.bfloat16
            and _bf16_via_fp32()):
        with torch.autocast("cpu", enabled=False):
            q32, k32, v32 = (t.to(torch.bfloat16).float() for t in (q, k, v))
            return F.scaled_dot_product_attention(q32, k32, v32,
                                                  **sdpa_kwargs).to(torch.bfloat16)
    return F.scaled_dot_product_attention(q, k, v, **sdpa_kwargs)
