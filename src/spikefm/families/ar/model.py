"""Llama-3-architecture decoder over Neural Pile spike-count tokens, with KV-cache generation.

The model is a plain ``nn.Module`` (no parallelism): pre-norm blocks of grouped-query attention
and a SwiGLU MLP, RMSNorm, rotary positions, untied input embedding and output projection. Its
weights map one to one onto Hugging Face's ``LlamaForCausalLM`` (see
:mod:`spikefm.families.ar.hf`): rotary embeddings use the rotate-half convention (head dimension
i is rotated together with i + E/2, not with its neighbour i + 1 as in Meta's original code), so
no permutation of ``wq``/``wk`` is needed.

Tokens follow :mod:`spikefm.families.ar.tokens`: vocabulary 256, each time bin is ``[255, c_1..c_n]``.

Shape legend (suffixes on tensor names):
    B  batch
    L  new tokens in this forward call (query positions)
    P  key/value positions attended to (cache length, or L without a cache), rotary table rows
    D  model width (``dim``)
    H  query heads
    J  key/value heads (``n_kv_heads``; H is a multiple of J)
    E  head width (``dim // n_heads``)
    F  MLP hidden width (``ffn_dim``)
    V  vocabulary size

Typical use::

    cfg = llama_preset("tiny")
    model = Llama(cfg)                       # built and initialized on the current device
    logits_BLV = model(tokens_BL)

    with torch.device("meta"):              # no memory: shapes only
        big = Llama(llama_preset("8b"))
    big.to_empty(device="cuda")
    big.init_weights()                       # materialize (after FSDP sharding, per shard)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spikefm.families.ar import cpu_matmul
from spikefm.families.ar.positions import (NUM_STATES, POSITION_LAYOUTS, PREFIX_FEATURES,
                                           bin_positions, check_prefix, prefix_features,
                                           rope_angles)
from spikefm.families.ar.tokens import SEPARATOR, VOCAB_SIZE

__all__ = [
    "LlamaConfig",
    "LLAMA_PRESETS",
    "llama_preset",
    "count_parameters",
    "flops_per_token",
    "Llama",
    "KVCache",
    "generate",
]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a :class:`Llama` decoder.

    Attributes:
        dim: model width D.
        n_layers: number of transformer blocks.
        n_heads: query heads H; ``dim`` must be divisible by it and the head width even.
        n_kv_heads: key/value heads K for grouped-query attention; divides ``n_heads``.
        ffn_dim: SwiGLU hidden width F.
        vocab_size: token vocabulary V (256 for Neural Pile tokens).
        rope_theta: rotary base frequency.
        norm_eps: RMSNorm epsilon.
        max_seq_len: longest context in tokens (size of the rotary table and default cache).
        init_std: standard deviation of the normal initialization of embeddings and projections.
        positions: ``"plain"`` (token positions only; a Hugging Face ``LlamaForCausalLM``) or
            ``"bin"`` (unit-in-bin and bin index rotary axes plus a remaining-units embedding,
            derived from the separators; see :mod:`spikefm.families.ar.positions`; no Hugging
            Face equivalent).
        unit_count_prefix: one extra position in front of every sequence, an embedding of the
            row's unit count and of the phase of the sequence's first token inside its bin
            (``forward(..., prefix_B2=...)``; see :mod:`spikefm.families.ar.positions`); the
            loader and the evaluator derive it from the rows, so they stay Neural-Pile
            compatible. No Hugging Face equivalent.
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int = 256
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 8192
    init_std: float = 0.02
    positions: str = "plain"
    unit_count_prefix: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.unit_count_prefix, bool):
            raise ValueError(f"LlamaConfig.unit_count_prefix must be true or false, got "
                             f"{self.unit_count_prefix!r}")
        if self.positions not in POSITION_LAYOUTS:
            raise ValueError(f"LlamaConfig.positions must be one of {', '.join(POSITION_LAYOUTS)}, "
                             f"got {self.positions!r}")
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size",
                     "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"LlamaConfig.{name} must be a positive finite number, "
                                 f"got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(
                f"LlamaConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads}); "
                f"choose n_heads among the divisors of dim, e.g. {self.dim // 64 or 1} "
                "for 64-wide heads")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LlamaConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                f"({self.n_kv_heads}) for grouped-query attention; pick n_kv_heads dividing "
                f"n_heads")
        if self.head_dim % 2:
            raise ValueError(
                f"the head width LlamaConfig.dim // LlamaConfig.n_heads = {self.head_dim} must be even for "
                "rotary embeddings; change LlamaConfig.dim or LlamaConfig.n_heads")

    @property
    def head_dim(self) -> int:
        """Per-head width E = dim // n_heads."""
        return self.dim // self.n_heads


def _preset_tiny() -> LlamaConfig:
    # CPU-sized: tests, quickstart, benchmarks on a laptop. ~0.85M parameters.
    return LlamaConfig(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384)


def _preset_small() -> LlamaConfig:
    # ~25M parameters; a quick single-GPU run.
    return LlamaConfig(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1536)


def _preset_125m() -> LlamaConfig:
    # ~125M parameters (GPT-2-small width and depth, GQA and a 5x SwiGLU MLP).
    return LlamaConfig(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=3840)


def _preset_1b() -> LlamaConfig:
    # Llama 3.2 1B shape (untied embeddings, vocabulary 256).
    return LlamaConfig(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192)


def _preset_3b() -> LlamaConfig:
    # Llama 3.2 3B shape.
    return LlamaConfig(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, ffn_dim=8192)


def _preset_8b() -> LlamaConfig:
    # Llama 3 8B shape; with vocabulary 256 this is ~6.98e9 parameters (8.03e9 with 128256).
    return LlamaConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                       rope_theta=500000.0)


def _preset_tiny_bin() -> LlamaConfig:
    # tiny with within-bin positions: lower held-out-session cross-entropy than tiny on all three
    # seeds of benchmarks/bench_ar_transfer.py (README); no Hugging Face export.
    return dataclasses.replace(_preset_tiny(), positions="bin")


def _preset_small_bin() -> LlamaConfig:
    return dataclasses.replace(_preset_small(), positions="bin")


def _preset_tiny_bin_prefix() -> LlamaConfig:
    # tiny-bin plus the unit-count prefix (README: held-out sessions); no Hugging Face export.
    return dataclasses.replace(_preset_tiny_bin(), unit_count_prefix=True)


def _preset_small_bin_prefix() -> LlamaConfig:
    return dataclasses.replace(_preset_small_bin(), unit_count_prefix=True)


LLAMA_PRESETS = {
    "tiny": _preset_tiny,
    "tiny-bin": _preset_tiny_bin,
    "small": _preset_small,
    "small-bin": _preset_small_bin,
    "tiny-bin-prefix": _preset_tiny_bin_prefix,
    "small-bin-prefix": _preset_small_bin_prefix,
    "125m": _preset_125m,
    "1b": _preset_1b,
    "3b": _preset_3b,
    "8b": _preset_8b,
}


def llama_preset(name: str) -> LlamaConfig:
    """Return the named preset config; vary it with ``dataclasses.replace``.

    Raises:
        ValueError: if ``name`` is not one of ``LLAMA_PRESETS``.
    """
    try:
        return LLAMA_PRESETS[name]()
    except (KeyError, TypeError):
        raise ValueError(f"unknown Llama preset {name!r}; valid presets: "
                         f"{', '.join(LLAMA_PRESETS)}") from None


def count_parameters(cfg: LlamaConfig) -> int:
    """Exact number of parameters of ``Llama(cfg)``, computed from the shapes.

    Embedding (V*D) and output projection (V*D) are untied; per block: q and o projections
    (D*H*E each), k and v projections (D*K*E each), three SwiGLU matrices (D*F each) and two
    RMSNorm weights (D each); plus the final RMSNorm (D).
    """
    d, e = cfg.dim, cfg.head_dim
    attention = 2 * d * cfg.n_heads * e + 2 * d * cfg.n_kv_heads * e
    mlp = 3 * d * cfg.ffn_dim
    block = attention + mlp + 2 * d
    extra = NUM_STATES * d if cfg.positions == "bin" else 0  # the state embedding (a lookup)
    extra += (PREFIX_FEATURES + 1) * d if cfg.unit_count_prefix else 0  # prefix projection
    return 2 * cfg.vocab_size * d + cfg.n_layers * block + d + extra


def flops_per_token(cfg: LlamaConfig, seq_len: int, *, causal: bool = False) -> float:
    """Training FLOPs per token (forward + backward) for model FLOPs utilization (MFU).

    ``6 * N + 12 * n_layers * dim * seq_len`` (Kaplan et al. 2020; PaLM appendix B), where
    ``N = count_parameters(cfg) - vocab_size * dim`` excludes the input embedding (a lookup, no
    matmul) but keeps the output projection. The first term is 2 FLOPs per multiply-add in the
    forward pass and twice that in the backward pass. The second counts the score (Q K^T) and
    weighted-sum (A V) matmuls: 2 * 2 * seq_len * (H * E = dim) FLOPs per token and layer forward,
    times 3 for forward + backward. By default causal masking is not discounted (the convention of
    most published MFU figures); ``causal=True`` counts only the keys a query attends to, on average
    (seq_len + 1) / 2 per query, which is the work a causal (flash) kernel does.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    n_matmul = count_parameters(cfg) - cfg.vocab_size * cfg.dim
    if cfg.positions == "bin":
        n_matmul -= NUM_STATES * cfg.dim
    if cfg.unit_count_prefix:  # one small matmul per sequence, not per token
        n_matmul -= (PREFIX_FEATURES + 1) * cfg.dim
    keys = (seq_len + 1) / 2 if causal else seq_len
    return float(6 * n_matmul + 12 * cfg.n_layers * cfg.dim * keys)


# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------

class KVCache:
    """Preallocated keys and values of every layer for incremental decoding.

    Holds ``k`` and ``v`` tensors of shape (B, K, max_seq_len, E) per layer and ``pos``, the
    number of positions already written. :meth:`Llama.forward` with a cache writes the new
    keys/values at ``pos .. pos + L - 1`` in every layer, attends over ``0 .. pos + L - 1`` and
    then advances ``pos`` by L.

    Args:
        n_layers: number of blocks (``cfg.n_layers``).
        batch_size: B; every forward through this cache must use it.
        max_seq_len: capacity in tokens.
        n_kv_heads: K.
        head_dim: E.
        device: where to allocate.
        dtype: storage dtype; should equal the model's parameter dtype.
    """

    def __init__(self, n_layers: int, batch_size: int, max_seq_len: int, n_kv_heads: int,
                 head_dim: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size),
                            ("max_seq_len", max_seq_len), ("n_kv_heads", n_kv_heads),
                            ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"KVCache {name} must be a positive int, got {value!r}")
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.k_BJPE = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v_BJPE = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.pos = 0
        #: (B, max_seq_len) tokens fed so far; allocated by models whose positions depend on
        #: earlier tokens (``positions="bin"``), None otherwise.
        self.tokens_BP: torch.Tensor | None = None
        #: (B, 2) unit-count prefix of the cached sequences (models with ``unit_count_prefix``).
        self.prefix_B2: torch.Tensor | None = None
        #: One-token steps of fixed shapes (:meth:`start_steps`, :meth:`Llama.decode_step`): the
        #: position the next token is written at, as a 0-d int64 tensor on the cache's device, and
        #: the (1, 1, 1, max_seq_len) mask of the positions it may attend to. None otherwise.
        self.step_pos: torch.Tensor | None = None
        self.step_mask_11P: torch.Tensor | None = None
        self._positions_P: torch.Tensor | None = None

    @classmethod
    def for_model(cls, model: "Llama", batch_size: int,
                  max_seq_len: int | None = None) -> "KVCache":
        """Cache matching ``model``'s shapes, device and parameter dtype.

        ``max_seq_len`` defaults to (and may not exceed) ``model.cfg.max_seq_len``.
        """
        cfg = model.cfg
        max_seq_len = cfg.max_seq_len if max_seq_len is None else max_seq_len
        if max_seq_len > cfg.max_seq_len:
            raise ValueError(f"cache max_seq_len {max_seq_len} exceeds the model's "
                             f"max_seq_len {cfg.max_seq_len}")
        param = model.tok_embeddings.weight
        return cls(cfg.n_layers, batch_size, max_seq_len, cfg.n_kv_heads, cfg.head_dim,
                   device=param.device, dtype=param.dtype)

    def reset(self) -> None:
        """Forget all positions (the buffers are reused, not cleared)."""
        self.pos = 0
        self.prefix_B2 = None
        self.step_pos = self.step_mask_11P = None

    def start_steps(self) -> None:
        """Switch to one-token steps of fixed shapes from the current position on.

        Every later :meth:`Llama.decode_step` writes at ``step_pos`` and attends over the whole
        buffer under a mask, so all steps have the same shapes (one CUDA graph replays them);
        :meth:`advance_step` moves on by one. The ordinary forward (``model(tokens,
        kv_cache=...)``) is not used on this cache afterwards.
        """
        device = self.k_BJPE[0].device
        self.step_pos = torch.tensor(self.pos, dtype=torch.long, device=device)
        self._positions_P = torch.arange(self.max_seq_len, device=device)
        self.step_mask_11P = torch.zeros(1, 1, 1, self.max_seq_len, dtype=torch.bool,
                                         device=device)

    def advance_step(self) -> None:
        """After a :meth:`Llama.decode_step`: the next token goes one position further."""
        if self.step_pos is None:
            raise RuntimeError("advance_step needs start_steps() first")
        self.step_pos.add_(1)
        self.pos += 1

    def update_step(self, layer: int, k_BJ1E: torch.Tensor,
                    v_BJ1E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``layer``'s key/value of one token at ``step_pos``; return the whole buffers
        (B, K, max_seq_len, E), to be read under ``step_mask_11P``."""
        at = self.step_pos.view(1)
        self.k_BJPE[layer].index_copy_(2, at, k_BJ1E.to(self.k_BJPE[layer].dtype))
        self.v_BJPE[layer].index_copy_(2, at, v_BJ1E.to(self.v_BJPE[layer].dtype))
        return self.k_BJPE[layer], self.v_BJPE[layer]

    def update(self, layer: int, k_BJLE: torch.Tensor,
               v_BJLE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``layer``'s new keys/values at ``pos``; return all so far, (B, K, pos + L, E)."""
        start, end = self.pos, self.pos + k_BJLE.shape[2]
        self.k_BJPE[layer][:, :, start:end] = k_BJLE
        self.v_BJPE[layer][:, :, start:end] = v_BJLE
        return self.k_BJPE[layer][:, :, :end], self.v_BJPE[layer][:, :, :end]


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, cast back, then scaled (as in HF Llama)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        x32_BLD = x_BLD.float()
        x32_BLD = x32_BLD * torch.rsqrt(x32_BLD.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32_BLD.to(x_BLD.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x_BHLE: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding (pair i is (x_i, x_{i + E/2})) of (B, heads, L, E) by
    full-width tables that broadcast against it: (L, E), or (B, 1, L, E) per row."""
    return x_BHLE * cos + _rotate_half(x_BHLE) * sin


class Linear(nn.Linear):
    """``nn.Linear`` without bias on the CPU kernels of :mod:`spikefm.families.ar.cpu_matmul`
    (same parameter, same state-dict key ``weight``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_matmul.linear(x, self.weight)


_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions, via ``scaled_dot_product_attention``.

    The rotary tables arrive already cast to the compute dtype (once per forward, not per layer).
    A fused q|k|v matmul over concatenated weights was measured and was not faster on the CPU
    (see benchmarks/bench_ar_train.py), so the projections stay separate. On the CPU the
    projections and attention run on the kernels :mod:`spikefm.families.ar.cpu_matmul` chooses
    (speed only: the same products up to float rounding).
    """

    def __init__(self, cfg: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = Linear(cfg.dim, cfg.n_heads * cfg.head_dim)
        self.wk = Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim)
        self.wv = Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim)
        self.wo = Linear(cfg.n_heads * cfg.head_dim, cfg.dim)

    def forward(self, x_BLD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        B, L, _ = x_BLD.shape
        H, J, E = self.n_heads, self.n_kv_heads, self.head_dim
        q_BHLE = _apply_rope(self.wq(x_BLD).view(B, L, H, E).transpose(1, 2), cos, sin)
        k_BJLE = _apply_rope(self.wk(x_BLD).view(B, L, J, E).transpose(1, 2), cos, sin)
        v_BJLE = self.wv(x_BLD).view(B, L, J, E).transpose(1, 2)

        start = 0
        step = kv_cache is not None and kv_cache.step_mask_11P is not None
        if kv_cache is None:
            k_BJPE, v_BJPE = k_BJLE, v_BJLE
        elif step:  # one token of a fixed-shape step (Llama.decode_step)
            k_BJPE, v_BJPE = kv_cache.update_step(self.layer_idx, k_BJLE, v_BJLE)
        else:
            start = kv_cache.pos
            k_BJPE, v_BJPE = kv_cache.update(self.layer_idx, k_BJLE, v_BJLE)

        # Causal structure: without earlier context, the is_causal fast path (flash kernels on
        # GPU); one new query sees the whole prefix, so no mask; a chunk after a prefix needs an
        # explicit mask because is_causal aligns the triangle to the top-left corner. A fixed-shape
        # step reads the whole cache buffer under the mask of the positions written so far.
        mask_LP = kv_cache.step_mask_11P if step else None
        is_causal = start == 0 and L > 1 and not step
        if start > 0 and L > 1:
            q_pos_L = torch.arange(start, start + L, device=x_BLD.device)
            k_pos_P = torch.arange(start + L, device=x_BLD.device)
            mask_LP = k_pos_P[None, :] <= q_pos_L[:, None]

        if J != H and not _SDPA_HAS_GQA:
            repeat = H // J
            k_BJPE = k_BJPE.repeat_interleave(repeat, dim=1)
            v_BJPE = v_BJPE.repeat_interleave(repeat, dim=1)
        gqa = {"enable_gqa": True} if (J != H and _SDPA_HAS_GQA) else {}
        o_BHLE = cpu_matmul.attention(q_BHLE, k_BJPE, v_BJPE, self.wq.weight, attn_mask=mask_LP,
                                      is_causal=is_causal, **gqa)
        return self.wo(o_BHLE.transpose(1, 2).reshape(B, L, H * E))


class FeedForward(nn.Module):
    """SwiGLU MLP: ``w2(silu(w1 x) * w3 x)`` (w1 = HF gate_proj, w3 = up_proj, w2 = down_proj).

    w1 and w3 are deliberately not fused into one matmul: measured in CPU time per training step
    (preset small, 4 x 256 tokens, one thread) the fused form was no faster (ratio 1.00)."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.w1 = Linear(cfg.dim, cfg.ffn_dim)
        self.w2 = Linear(cfg.ffn_dim, cfg.dim)
        self.w3 = Linear(cfg.dim, cfg.ffn_dim)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_BLD)) * self.w3(x_BLD))


class Block(nn.Module):
    """Pre-norm transformer block: ``h + attn(norm(h))``, then ``h + mlp(norm(h))``."""

    def __init__(self, cfg: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, h_BLD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        h_BLD = h_BLD + self.attention(self.attention_norm(h_BLD), cos, sin, kv_cache)
        return h_BLD + self.feed_forward(self.ffn_norm(h_BLD))


def _rope_tables(half_B1LE: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (B, 1, L, E) in ``dtype`` from the (B, 1, L, E/2) rotary angles (each
    angle turns the pair at i and i + E/2, as ``_rotate_half`` pairs them)."""
    angles_B1LE = torch.cat((half_B1LE, half_B1LE), dim=-1)
    return angles_B1LE.cos().to(dtype), angles_B1LE.sin().to(dtype)


def _compute_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype when autocast is on, else the weights'."""
    device_type = param.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return param.dtype


class Llama(nn.Module):
    """Llama-3 decoder over tokens; ``forward(tokens_BL) -> logits_BLV`` (float32).

    ``self.layers`` is an ``nn.ModuleList`` of :class:`Block` so that the training stack can wrap
    each block (FSDP2 ``fully_shard``, activation checkpointing) without this module knowing.

    Construction runs :meth:`init_weights`; under ``torch.device("meta")`` that allocates nothing,
    and after ``to_empty(device=...)`` a second :meth:`init_weights` call materializes the weights
    and the (non-persistent) rotary tables.

    With ``cfg.positions == "bin"`` the model also has ``bin_state`` (an embedding of the
    remaining-units state) and turns a third of its rotary pairs by the unit index and a third by
    the bin index (:mod:`spikefm.families.ar.positions`).
    """

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        if not isinstance(cfg, LlamaConfig):
            raise TypeError(f"Llama expects a LlamaConfig, got {type(cfg).__name__}; "
                            "use llama_preset(name) or LlamaConfig(...)")
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.positions == "bin":
            self.bin_state = nn.Embedding(NUM_STATES, cfg.dim)
        if cfg.unit_count_prefix:
            self.prefix_proj = nn.Linear(PREFIX_FEATURES, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = Linear(cfg.dim, cfg.vocab_size)
        # float32 rotary tables, rebuilt by init_weights (not saved: derived from the config).
        self.register_buffer("rope_cos_PE", torch.empty(cfg.max_seq_len, cfg.head_dim),
                             persistent=False)
        self.register_buffer("rope_sin_PE", torch.empty(cfg.max_seq_len, cfg.head_dim),
                             persistent=False)
        self.register_buffer("rope_inv_freq", torch.empty(cfg.head_dim // 2), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_rope(self) -> None:
        """(Re)compute the rotary cos/sin tables on their current device, in float32."""
        device = self.rope_cos_PE.device
        e = self.cfg.head_dim
        inv_freq = 1.0 / (self.cfg.rope_theta
                          ** (torch.arange(0, e, 2, device=device, dtype=torch.float32) / e))
        pos_P = torch.arange(self.cfg.max_seq_len, device=device, dtype=torch.float32)
        freqs_PE = torch.outer(pos_P, inv_freq).repeat(1, 2)
        self.rope_cos_PE = freqs_PE.cos()
        self.rope_sin_PE = freqs_PE.sin()
        self.rope_inv_freq = inv_freq

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialize all parameters and buffers in place (seed with ``torch.manual_seed``).

        Embeddings and projections ~ N(0, init_std); the projections that write into the residual
        stream (``wo``, ``w2``) use ``init_std / sqrt(2 * n_layers)`` so that the residual variance
        does not grow with depth (GPT-2); RMSNorm weights are 1.
        """
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=std)
        for block in self.layers:
            block.attention_norm.reset_parameters()
            block.ffn_norm.reset_parameters()
            for lin in (block.attention.wq, block.attention.wk, block.attention.wv,
                        block.feed_forward.w1, block.feed_forward.w3):
                nn.init.normal_(lin.weight, mean=0.0, std=std)
            for lin in (block.attention.wo, block.feed_forward.w2):
                nn.init.normal_(lin.weight, mean=0.0, std=residual_std)
        self.norm.reset_parameters()
        nn.init.normal_(self.output.weight, mean=0.0, std=std)
        if self.cfg.positions == "bin":
            nn.init.normal_(self.bin_state.weight, mean=0.0, std=std)
        if self.cfg.unit_count_prefix:
            nn.init.normal_(self.prefix_proj.weight, mean=0.0, std=std)
            nn.init.zeros_(self.prefix_proj.bias)
        self.init_rope()

    def flops_per_token(self, seq_len: int, *, causal: bool = False) -> float:
        """Training FLOPs per token at context ``seq_len``; see :func:`flops_per_token`."""
        return flops_per_token(self.cfg, seq_len, causal=causal)

    def _rotary(self, tokens_BL: torch.Tensor, start: int, kv_cache: KVCache | None,
                dtype: torch.dtype, prefix_B2: torch.Tensor | None, new_prefix: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """cos/sin tables broadcasting against (B, heads, L', E), in ``dtype``, and the (B, L)
        bin states (None for the plain layout). L' = L + 1 when this call also feeds the prefix
        position (``new_prefix``; it sits at position 0 and turns by nothing but its position)."""
        B, L = tokens_BL.shape
        if self.cfg.positions == "plain":
            end = start + L + int(new_prefix)
            return self.rope_cos_PE[start:end].to(dtype), self.rope_sin_PE[start:end].to(dtype), None
        # token index of the first new token (the prefix position is not a token)
        first = start - int(self.cfg.unit_count_prefix and not new_prefix)
        if kv_cache is None:
            history_BP = tokens_BL
        else:  # positions depend on every earlier token, so the cache keeps them
            if kv_cache.tokens_BP is None:
                kv_cache.tokens_BP = torch.zeros(B, kv_cache.max_seq_len, dtype=torch.long,
                                                 device=tokens_BL.device)
            kv_cache.tokens_BP[:, first:first + L] = tokens_BL
            history_BP = kv_cache.tokens_BP[:, :first + L]
        pos = bin_positions(history_BP, prefix_B2)
        pos = type(pos)(*(t[:, -L:] for t in pos))
        token_pos_L = torch.arange(start, start + L, device=tokens_BL.device) + int(new_prefix)
        half_B1LE = rope_angles(self.rope_inv_freq, token_pos_L, pos)[:, None]
        if new_prefix:  # the prefix: token position 0, unit 0, bin 0
            half_B1LE = torch.cat((torch.zeros_like(half_B1LE[:, :, :1]), half_B1LE), dim=2)
        return (*_rope_tables(half_B1LE, dtype), pos.state_BL)

    def forward(self, tokens_BL: torch.Tensor, kv_cache: KVCache | None = None,
                prefix_B2: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits.

        Args:
            tokens_BL: (B, L) integer tokens in ``[0, vocab_size)`` (ValueError otherwise, for
                tokens on the CPU).
            kv_cache: if given, ``tokens_BL`` continue the cached sequence at position
                ``kv_cache.pos``; the cache is updated and advanced by L (L + 1 when the prefix
                position is fed too).
            prefix_B2: models with ``cfg.unit_count_prefix`` only, and only when the sequence
                starts (no cache, or an empty one): (B, 2) integer (num_units, phase) per
                sequence, phase being the first token's index within its bin
                (:func:`~spikefm.families.ar.positions.window_prefix`).

        Returns:
            (B, L, V) float32 logits; position l predicts token l + 1 (the prefix position's
            output, a prediction of the first token, is not returned).
        """
        if not isinstance(tokens_BL, torch.Tensor):
            raise TypeError(f"tokens_BL must be a torch tensor, got {type(tokens_BL).__module__}."
                            f"{type(tokens_BL).__name__}; convert with torch.as_tensor(tokens)")
        if tokens_BL.ndim != 2:
            raise ValueError(f"tokens_BL must be a 2-D (batch, length) tensor, got shape {tuple(tokens_BL.shape)}; "
                             "one sequence is tokens[None]")
        if tokens_BL.dtype.is_floating_point or tokens_BL.dtype == torch.bool or tokens_BL.dtype.is_complex:
            raise TypeError(f"tokens_BL must be an integer tensor, got {tokens_BL.dtype}; "
                            "convert with tokens.long()")
        if tokens_BL.dtype not in (torch.int64, torch.int32):  # uint8 (what tokenize returns), int16...
            tokens_BL = tokens_BL.long()
        B, L = tokens_BL.shape
        # Checked on the CPU only: on an accelerator reading the range back would stall every step
        # (there, an out-of-range token fails in the embedding's own device-side check).
        if tokens_BL.device.type == "cpu" and tokens_BL.numel() and not torch.compiler.is_compiling():
            lo, hi = (int(v) for v in tokens_BL.aminmax())
            if lo < 0 or hi >= self.cfg.vocab_size:
                raise ValueError(f"tokens_BL must lie in [0, {self.cfg.vocab_size}) (the model's vocabulary), "
                                 f"found values from {lo} to {hi}; tokenize counts with "
                                 "spikefm.families.ar.tokens (counts above 254 are clipped there)")
        start = 0 if kv_cache is None else kv_cache.pos
        new_prefix = self.cfg.unit_count_prefix and start == 0
        if new_prefix:
            if prefix_B2 is None:
                raise ValueError("this model was trained with a unit-count prefix "
                                 "(model.unit_count_prefix); pass prefix_B2 = (num_units, phase) "
                                 "per sequence with the first tokens")
            prefix_B2 = check_prefix(prefix_B2, B).to(tokens_BL.device)
            if kv_cache is not None:
                kv_cache.prefix_B2 = prefix_B2
        elif prefix_B2 is not None:
            raise ValueError("prefix_B2 is for models with model.unit_count_prefix, with the first "
                             "tokens of a sequence only; drop it" if not self.cfg.unit_count_prefix
                             else "prefix_B2 was already given with the first tokens of this "
                             "cached sequence; drop it")
        elif self.cfg.unit_count_prefix:
            prefix_B2 = kv_cache.prefix_B2
        limit = self.cfg.max_seq_len if kv_cache is None else min(kv_cache.max_seq_len,
                                                                   self.cfg.max_seq_len)
        if start + L + int(new_prefix) > limit:
            raise ValueError(f"sequence positions {start}..{start + L - 1} exceed the limit of "
                             f"{limit} tokens (max_seq_len of the model or cache); "
                             "shorten the input or raise max_seq_len")
        if kv_cache is not None and kv_cache.batch_size != B:
            raise ValueError(f"kv_cache was allocated for batch {kv_cache.batch_size}, "
                             f"got tokens of batch {B}")
        h_BLD = self.tok_embeddings(tokens_BL)
        # The rotary tables are cast once here, not in every layer.
        cos, sin, state_BL = self._rotary(tokens_BL, start, kv_cache,
                                          _compute_dtype(self.tok_embeddings.weight), prefix_B2,
                                          new_prefix)
        if state_BL is not None:
            h_BLD = h_BLD + self.bin_state(state_BL)
        if new_prefix:
            w = self.prefix_proj.weight
            prefix_BD = self.prefix_proj(prefix_features(prefix_B2).to(w.device, w.dtype))
            h_BLD = torch.cat((prefix_BD[:, None].to(h_BLD.dtype), h_BLD), dim=1)
        for block in self.layers:
            h_BLD = block(h_BLD, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += L + int(new_prefix)
        if new_prefix:
            h_BLD = h_BLD[:, 1:]
        return self.output(self.norm(h_BLD)).float()

    def decode_step(self, tokens_B1: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        """Next-token logits (B, V) after one more token, in fixed shapes (CUDA-graph safe).

        ``kv_cache`` must have had :meth:`KVCache.start_steps` called (after a prefill through
        :meth:`forward`); the token is written at ``kv_cache.step_pos`` and attention reads the
        whole buffer under a mask, so no shape or Python value depends on the position. The
        caller advances the cache with :meth:`KVCache.advance_step`. Gives the logits of
        ``forward(tokens_B1, kv_cache=...)[:, -1]`` up to float rounding.
        """
        if kv_cache.step_pos is None:
            raise ValueError("decode_step needs kv_cache.start_steps() after the prefill")
        pos_t = kv_cache.step_pos
        # the positions this token may attend to: everything written so far and itself
        torch.le(kv_cache._positions_P, pos_t, out=kv_cache.step_mask_11P.view(-1))
        h_BLD = self.tok_embeddings(tokens_B1)
        dtype = _compute_dtype(self.tok_embeddings.weight)
        at_1 = pos_t.view(1)
        if self.cfg.positions == "plain":
            cos = self.rope_cos_PE.index_select(0, at_1).to(dtype)
            sin = self.rope_sin_PE.index_select(0, at_1).to(dtype)
        else:
            # token index (the prefix position, if any, is not a token); positions depend on
            # every earlier token, and bin_positions is causal, so the unwritten tail is harmless
            first_1 = at_1 - int(self.cfg.unit_count_prefix)
            if kv_cache.tokens_BP is None:
                raise ValueError("this cache holds no token history; prefill it through forward()")
            kv_cache.tokens_BP.index_copy_(1, first_1, tokens_B1.long())
            pos = bin_positions(kv_cache.tokens_BP, kv_cache.prefix_B2)
            pos = type(pos)(*(t.index_select(1, first_1) for t in pos))
            cos, sin = _rope_tables(rope_angles(self.rope_inv_freq, at_1, pos)[:, None], dtype)
            h_BLD = h_BLD + self.bin_state(pos.state_BL)
        for block in self.layers:
            h_BLD = block(h_BLD, cos, sin, kv_cache)
        return self.output(self.norm(h_BLD))[:, -1].float()


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

def check_generation_context(cfg: LlamaConfig, num_units: int, num_bins: int, prompt_len: int = 0) -> int:
    """Refuse a generation longer than the model's context, naming the most that fits; returns
    the tokens the model then reads (prompt and generated, less the last generated one, which is
    never fed back; the unit-count prefix not counted).

    Args:
        cfg: the model's config (``max_seq_len``, ``unit_count_prefix``).
        num_units: units per bin; num_bins: bins to generate; prompt_len: prompt tokens (whole
            bins of ``num_units + 1``).

    Raises:
        ValueError: one line saying what fits: fewer units (not one bin fits), fewer prompt
            bins (the prompt leaves no room for ``num_bins``), or fewer bins.
    """
    width = num_units + 1
    extra = int(cfg.unit_count_prefix)
    fed = prompt_len + num_bins * width - 1
    if fed + extra <= cfg.max_seq_len:
        return fed
    limit = cfg.max_seq_len
    fit_bins = (limit + 1 - extra) // width  # bins, prompt and generated together, that fit
    prompt_bins = prompt_len // width
    if fit_bins < 1 or (prompt_len and fit_bins < 2):  # not one bin (prompt and one generated bin) fits
        fix = f"fewer units (at most {limit - extra} fit one bin)" if fit_bins < 1 else \
            f"fewer units or no prompt (with a prompt, at most {(limit + 1 - extra) // 2 - 1} units fit)"
    elif prompt_bins >= fit_bins:  # the prompt alone fills the context
        most = fit_bins - num_bins
        fix = (f"a shorter prompt: at most {most} prompt bin(s) fit before {num_bins} generated bins" if most >= 1
               else f"a shorter prompt and fewer bins: at most {fit_bins} bins of {num_units} units fit, prompt and "
                    f"generated together (at most {fit_bins - 1} prompt bins)")
    else:
        fix = f"fewer bins (at most {fit_bins - prompt_bins})" + (
            f", or a shorter prompt (at most {fit_bins - num_bins} prompt bin(s) before {num_bins} bins)"
            if prompt_len and fit_bins - num_bins >= 1 else "")
    raise ValueError(f"prompt ({prompt_len}) plus generated ({num_bins * width}) tokens exceed the "
                     f"model's max_seq_len {limit}; generate with {fix}")


def _check_prompt(prompt_tokens: torch.Tensor, num_units: int) -> None:
    if not isinstance(prompt_tokens, torch.Tensor) or prompt_tokens.ndim != 2:
        raise ValueError("prompt_tokens must be a 2-D (batch, length) tensor, got "
                         f"{getattr(prompt_tokens, 'shape', type(prompt_tokens).__name__)}")
    if prompt_tokens.dtype.is_floating_point or prompt_tokens.dtype == torch.bool:
        raise TypeError(f"prompt_tokens must be an integer tensor, got {prompt_tokens.dtype}")
    width = num_units + 1
    length = prompt_tokens.shape[1]
    if length == 0 or length % width:
        raise ValueError(
            f"prompt length {length} must be a positive multiple of num_units + 1 = {width} "
            "so that the prompt ends at a bin boundary; pass whole bins "
            "(spikefm.families.ar.tokens.tokenize output) or prompt_tokens=None")
    grid = prompt_tokens.reshape(prompt_tokens.shape[0], -1, width)
    if bool((grid[..., 0] != SEPARATOR).any()) or bool((grid[..., 1:] == SEPARATOR).any()):
        raise ValueError(f"prompt_tokens are not laid out as [{SEPARATOR}, c1..c{num_units}] per "
                         "bin; check num_units and that the prompt starts at a bin boundary")
    if bool((prompt_tokens < 0).any()) or bool((prompt_tokens > SEPARATOR).any()):
        raise ValueError(f"prompt_tokens must lie in [0, {SEPARATOR}]")


@torch.inference_mode()
def generate(model: Llama, num_units: int, num_bins: int, *,
             prompt_tokens: torch.Tensor | None = None, batch_size: int | None = None,
             temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, use_kv_cache: bool = True,
             cuda_graph: bool | None = None, on_bin: Callable[[], None] | None = None) -> torch.Tensor:
    """Sample ``num_bins`` bins of spike-count tokens for ``num_units`` units.

    The separator (255) is forced at every bin boundary (every ``num_units + 1`` tokens,
    starting with the first generated token) and forbidden elsewhere, so the result always
    detokenizes to a (num_units, num_bins) count matrix per batch row.

    Sampling draws exactly one uniform number per row and sampled token (inverse CDF), so for
    the same ``generator`` state the cached and the recomputing paths give the same tokens.

    Args:
        model: the decoder (its mode is not changed; it has no dropout).
        num_units: units per bin (tokens per bin minus one).
        num_bins: bins to generate.
        prompt_tokens: optional (B, Lp) context ending at a bin boundary (Lp a multiple of
            ``num_units + 1``, each bin ``[255, c1..cn]``).
        batch_size: rows to sample without a prompt (default 1); with a prompt it must be None
            or equal to the prompt's batch.
        temperature: softmax temperature; 0 picks the most likely token (greedy).
        top_k: if given, sample only among the k most likely allowed tokens.
        generator: torch.Generator on the model's device, for reproducible sampling.
        use_kv_cache: False recomputes the whole context for every token (slow; for checks and
            benchmarks).
        cuda_graph: with the KV cache on a CUDA model, decode one token at a time as a single
            captured CUDA graph (:meth:`Llama.decode_step`) instead of a few hundred kernel
            launches; None (default) = on for CUDA models outside ``torch.autocast``, off
            elsewhere. The same tokens up to float rounding of the logits.
        on_bin: called once each time a bin is complete (e.g. to advance a progress bar).

    Returns:
        (B, num_bins * (num_units + 1)) int64 generated tokens (the prompt is not included), on
        the model's device.
    """
    import numbers

    from spikefm.argtypes import is_int  # Python or numpy integers, not bools

    for name, value in (("num_units", num_units), ("num_bins", num_bins)):
        if not is_int(value) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    num_units, num_bins = int(num_units), int(num_bins)
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature) or temperature < 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), "
                         f"got {temperature!r}")
    temperature = float(temperature)
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")
    top_k = None if top_k is None else int(top_k)
    if batch_size is not None and is_int(batch_size):
        batch_size = int(batch_size)
    vocab_size = model.cfg.vocab_size
    if top_k is not None and top_k > vocab_size:  # it would keep every token, which None says plainly
        raise ValueError(f"top_k {top_k} exceeds the vocabulary ({vocab_size} tokens), so it limits nothing; "
                         f"give at most {vocab_size} (--top-k), or none to sample from every token")
    if vocab_size <= SEPARATOR:
        raise ValueError(f"generate needs vocab_size > {SEPARATOR} for the separator token, "
                         f"model has {vocab_size}")

    device = model.tok_embeddings.weight.device
    if prompt_tokens is not None:
        _check_prompt(prompt_tokens, num_units)
        if batch_size is not None and batch_size != prompt_tokens.shape[0]:
            raise ValueError(f"batch_size {batch_size} differs from the prompt's batch "
                             f"{prompt_tokens.shape[0]}; pass one or make them agree")
        batch_size = prompt_tokens.shape[0]
        prompt_tokens = prompt_tokens.to(device=device, dtype=torch.long)
        prompt_len = prompt_tokens.shape[1]
    else:
        batch_size = 1 if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        prompt_len = 0
    width = num_units + 1
    num_new = num_bins * width
    total = prompt_len + num_new
    # The last generated token is never fed back, so the model sees total - 1 positions, plus the
    # unit-count prefix (the sequence starts at a bin boundary: phase 0).
    extra = int(model.cfg.unit_count_prefix)
    prefix_B2 = (torch.tensor([[num_units, 0]], device=device).expand(batch_size, 2)
                 if extra else None)
    check_generation_context(model.cfg, num_units, num_bins, prompt_len)

    cache = (KVCache.for_model(model, batch_size, max_seq_len=total - 1 + extra)
             if use_kv_cache else None)
    mode = _decode_mode(device, use_kv_cache, cuda_graph)
    stepper: _StepDecoder | None = None
    fed = 0  # tokens already in the cache
    seq_BT = torch.empty(batch_size, total, dtype=torch.long, device=device)
    if prompt_tokens is not None:
        seq_BT[:, :prompt_len] = prompt_tokens
    allowed_V = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed_V[SEPARATOR] = False
    allowed_V[VOCAB_SIZE:] = False  # a vocabulary past 256 (model.vocab_size): no spike count, never sampled
    # rows whose logits were ever not finite (NaN weights sample token 0 forever); checked once at
    # the end, so no step waits on the device
    broken_B = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for pos in range(prompt_len, total):
        if (pos - prompt_len) % width == 0:
            if on_bin is not None and pos > prompt_len:
                on_bin()
            seq_BT[:, pos] = SEPARATOR  # forced: no model call needed for this position
            continue
        if stepper is not None:
            # one fixed-shape step per token not yet cached (two right after a forced separator)
            for p in range(fed, pos):
                logits_BV = stepper(seq_BT[:, p:p + 1])
            fed = pos
        elif cache is not None:
            # Feeds every token not yet cached: the whole prompt (prefill) the first time, then
            # the previous token, or two tokens right after a forced separator.
            logits_BV = model(seq_BT[:, fed:pos], kv_cache=cache,
                              prefix_B2=prefix_B2 if fed == 0 else None)[:, -1]
            fed = pos
            if mode != "dynamic" and pos < total - 1:  # after the prefill: fixed-shape steps
                stepper = _StepDecoder(model, cache, graph=mode == "graph")
        else:
            logits_BV = model(seq_BT[:, :pos], prefix_B2=prefix_B2)[:, -1]
        broken_B |= ~(torch.isfinite(logits_BV) | ~allowed_V).all(dim=-1)
        seq_BT[:, pos] = _sample(logits_BV, allowed_V, temperature, top_k, generator)
    if on_bin is not None:
        on_bin()
    if bool(broken_B.any()):
        raise ValueError("the model's next-token logits were not finite (NaN or infinite) while "
                         "sampling: its weights are damaged or its training diverged; nothing "
                         "usable was generated (check the run's loss, or load another checkpoint)")
    return seq_BT[:, prompt_len:].clone()


def _decode_mode(device: torch.device, use_kv_cache: bool, cuda_graph: bool | None,
                 autocast: bool | None = None) -> str:
    """'graph' (fixed-shape steps replayed as a CUDA graph), 'steps' (the same steps run
    eagerly) or 'dynamic' (the ordinary cached forward).

    Not under CUDA autocast (``autocast`` None = ask torch): autocast caches its casts of the
    weights and frees them on leaving its context, which a captured graph would still read."""
    if autocast is None:
        autocast = device.type == "cuda" and torch.is_autocast_enabled("cuda")
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a model on a CUDA device, got {device}; "
                         "leave cuda_graph=None")
    if cuda_graph and not use_kv_cache:
        raise ValueError("cuda_graph=True needs use_kv_cache=True")
    if cuda_graph and autocast:
        raise ValueError("cuda_graph=True cannot run under torch.autocast; cast the model "
                         "instead (model.to(torch.bfloat16)) or leave cuda_graph=None")
    if use_kv_cache and device.type == "cuda" and cuda_graph is not False and not autocast:
        return "graph"
    return "dynamic"


class _StepDecoder:
    """One-token steps of :meth:`Llama.decode_step` on a prefilled cache; with ``graph`` the
    step is captured once as a CUDA graph and replayed (one launch per token instead of a few
    hundred: decoding a small model is launch-bound)."""

    def __init__(self, model: Llama, cache: KVCache, *, graph: bool) -> None:
        self.model, self.cache = model, cache
        cache.start_steps()
        device = cache.k_BJPE[0].device
        self.tokens_B1 = torch.full((cache.batch_size, 1), SEPARATOR, dtype=torch.long,
                                    device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        if graph:
            # Warm-up on a side stream (as torch.cuda.graphs asks); it writes the current
            # position only, which the first real step overwrites.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    model.decode_step(self.tokens_B1, cache)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits_BV = model.decode_step(self.tokens_B1, cache)

    def __call__(self, tokens_B1: torch.Tensor) -> torch.Tensor:
        self.tokens_B1.copy_(tokens_B1)
        if self.graph is None:
            logits_BV = self.model.decode_step(self.tokens_B1, self.cache)
        else:
            self.graph.replay()
            logits_BV = self.logits_BV
        self.cache.advance_step()
        return logits_BV


def _sample(logits_BV: torch.Tensor, allowed_V: torch.Tensor, temperature: float,
            top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row among ``allowed_V``: greedy, or inverse-CDF sampling of the softmax."""
    logits_BV = logits_BV.float().masked_fill(~allowed_V, float("-inf"))
    if top_k is not None:
        # Disallowed tokens are -inf; if fewer than k tokens are allowed the k-th value is -inf
        # and nothing more is masked.
        kth_B1 = torch.topk(logits_BV, min(top_k, logits_BV.shape[-1]), dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    if temperature == 0:
        return logits_BV.argmax(dim=-1)
    probs_BV = torch.softmax(logits_BV / temperature, dim=-1)
    cdf_BV = probs_BV.cumsum(dim=-1)
    u_B1 = torch.rand(logits_BV.shape[0], 1, generator=generator, device=logits_BV.device)
    idx_B = torch.searchsorted(cdf_BV, u_B1 * cdf_BV[:, -1:], right=True).squeeze(1)
    # Rounding in the cumulative sum may land past the last allowed token; fall back to the
    # most likely token rather than ever returning a forbidden one.
    idx_B = idx_B.clamp_(max=logits_BV.shape[-1] - 1)
    ok_B = torch.isfinite(logits_BV.gather(1, idx_B[:, None])).squeeze(1)
    return torch.where(ok_B, idx_B, logits_BV.argmax(dim=-1))
