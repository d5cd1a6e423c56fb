"""Peak FLOP/s for model FLOP utilisation (MFU): a data-sheet table for GPUs, a measured probe
everywhere else.

MFU = achieved model FLOP/s / peak FLOP/s of the device. On GPUs the peak is the vendor's dense
tensor-core figure (``PEAK_FLOPS`` in :mod:`spikefm.train.loop`); CPUs have no such figure that
means anything for a given thread count, so the peak is *measured*: :func:`probe_peak_flops`
times a short square matmul in float32 and in bfloat16 with the threads torch uses, and the
fastest repeat counts. MFU on the CPU therefore says how close training comes to the best dense
matmul this process can run right now, which is what a user tuning a CPU run wants to know.

    from spikefm.train.mfu import probe_peak_flops
    probe = probe_peak_flops(torch.device("cpu"))
    probe["fp32"], probe["bf16"]          # FLOP/s (2 * n**3 per n x n matmul)
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

__all__ = ["probe_peak_flops", "matmul_flops", "params_by_session", "PROBE_SIZES"]

#: Matrix side of the probe per device type: large enough to reach the dense-GEMM regime, small
#: enough that the probe costs well under a second at start-up.
PROBE_SIZES = {"cpu": 512, "cuda": 8192}

_CACHE: dict[tuple, dict[str, Any]] = {}


def matmul_flops(n: int) -> float:
    """FLOPs of one (n x n) @ (n x n) matmul: n**2 outputs, n multiply-adds each, 2 FLOPs each."""
    return 2.0 * n ** 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_matmul(n: int, dtype: torch.dtype, device: torch.device, min_seconds: float,
                 max_repeats: int) -> tuple[float, int]:
    """(best seconds of one matmul, repeats timed); the first call is a warm-up."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    _sync(device)
    best, repeats, spent = math.inf, 0, 0.0
    while repeats < max_repeats and (repeats < 3 or spent < min_seconds):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        dt = time.perf_counter() - t0
        best, repeats, spent = min(best, dt), repeats + 1, spent + dt
    return best, repeats


def probe_peak_flops(device: torch.device | str = "cpu", *, size: int | None = None,
                     min_seconds: float = 0.05, max_repeats: int = 50,
                     refresh: bool = False) -> dict[str, Any]:
    """Measured dense matmul FLOP/s on ``device`` in float32 and bfloat16.

    The result is cached per (device, size, thread count) for the life of the process (a test
    session trains many small runs; the machine does not get faster between them), unless
    ``refresh``.

    Args:
        device: where to run the probe.
        size: matrix side n (default ``PROBE_SIZES[device.type]``).
        min_seconds: keep repeating (at least 3 times) until this much time was spent per dtype.
        max_repeats: at most this many timed matmuls per dtype.
        refresh: ignore the cache.

    Returns:
        ``{"fp32": FLOP/s, "bf16": FLOP/s, "size": n, "threads": torch threads, "device": str,
        "source": "probe"}``; a dtype the device cannot multiply is ``None``.
    """
    device = torch.device(device)
    if size is None:
        size = PROBE_SIZES.get(device.type, 1024)
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"probe size must be an int >= 8, got {size!r}")
    if not min_seconds >= 0 or isinstance(max_repeats, bool) or not isinstance(max_repeats, int) \
            or max_repeats < 3:
        raise ValueError(f"min_seconds must be >= 0 and max_repeats an int >= 3, got "
                         f"{min_seconds!r}, {max_repeats!r}")
    key = (str(device), size, torch.get_num_threads())
    if not refresh and key in _CACHE:
        return dict(_CACHE[key])
    result: dict[str, Any] = {"size": size, "threads": torch.get_num_threads(),
                              "device": str(device), "source": "probe"}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        try:
            seconds, repeats = _time_matmul(size, dtype, device, min_seconds, max_repeats)
        except RuntimeError:  # e.g. no bf16 matmul kernel on this device
            result[name] = None
            continue
        result[name] = matmul_flops(size) / max(seconds, 1e-12)
        result[f"{name}_repeats"] = repeats
    _CACHE[key] = dict(result)
    return result


def params_by_session(model: torch.nn.Module) -> tuple[int, dict[str, int]]:
    """(parameters shared by every sample, {key of ``model.sessions``: that session's parameters})
    of a model whose per-session modules live in the ``nn.ModuleDict`` ``model.sessions`` (the
    masked families' stitchers; none: all shared). A batch runs the shared parameters on every
    sample and a session's own only on that session's samples, so counting every session's
    parameters for every sample overstates the work (MFU above 100 % on a 60-session corpus)."""
    sessions = getattr(model, "sessions", None)
    per = ({str(k): sum(p.numel() for p in m.parameters()) for k, m in sessions.items()}
           if isinstance(sessions, torch.nn.ModuleDict) else {})
    total = sum(p.numel() for p in model.parameters())
    return total - sum(per.values()), per
