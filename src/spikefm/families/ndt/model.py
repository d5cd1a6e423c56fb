"""Neural Data Transformer (NDT) for masked modeling of binned spike counts, with per-session
stitching and masking-scheme prompt tokens (multi-task masking, Zhang et al. 2024).

Shape legend:
    B batch, T time bins, N units (padded to the batch maximum), n one session's unit count,
    W spike-token width (``cfg.token_dim``), D model dim, L sequence length (T + 2 prefix tokens),
    H heads, E head dim.

Each time bin is one token. Per session (parameters keyed by session id, never by unit count):
    counts_BTn -> softsign(counts * unit_scale + unit_offset)     (learned per-unit scale/offset)
                  masked entries -> mask_value                   (learned per unit, see below)
               -> Linear(n -> W) read-in                         (session "stitcher")
Shared core:
    Linear(W -> D), + learned positions (or rotary in attention), prepend
    [scheme prompt token, session token], pre-norm transformer blocks, final LayerNorm.
Per session again:
    Linear(D -> n) read-out of every bin token = log expected counts per bin.

A masked entry is not fed as a zero count: the model is told which entries are masked
(``input_mask_BTN``) and puts the unit's learned ``mask_value`` there instead, so "hidden" and
"silent" differ. Without it the read-in sees every hidden unit as silent, and the input statistics
shift between training (a fraction of the units hidden) and leave-one-out co-smoothing (one unit
hidden).

Two sessions with the same unit count get distinct read-in/read-out parameters, and a mixed
batch is processed per session group, so it equals running each session's samples on their own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from spikefm.families.ndt.masking import NUM_SCHEMES

__all__ = [
    "NDTConfig",
    "NDT_PRESETS",
    "ndt_preset",
    "count_core_parameters",
    "count_session_parameters",
    "NDT",
    "session_key",
]

NUM_PREFIX_TOKENS = 2  # [scheme prompt, session]


def _expect(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """ValueError unless ``t`` is a tensor of exactly this shape and dtype."""
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        kind = str(dtype).removeprefix("torch.")
        raise ValueError(f"{name} must be a {kind} tensor of shape {shape}, got {got}")


@dataclass(frozen=True)
class NDTConfig:
    """Architecture of an :class:`NDT` (everything except the sessions).

    Attributes:
        dim: model width D.
        n_layers: number of transformer blocks.
        n_heads: attention heads; must divide ``dim``.
        mlp_dim: hidden width of each block's MLP.
        token_dim: spike-token dim W (output of the per-session read-in).
        max_bins: longest window in bins the model accepts.
        dropout: dropout probability on embeddings, attention weights and residual branches.
        position: ``"learned"`` (absolute embedding per bin) or ``"rotary"`` (RoPE in attention).
        norm_eps: LayerNorm epsilon.
    """

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_dim: int = 128
    token_dim: int = 64
    max_bins: int = 128
    dropout: float = 0.0
    position: str = "learned"
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "mlp_dim", "token_dim", "max_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"NDTConfig.{name} must be a positive int, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(
                f"NDTConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads}); "
                "change one of them"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"NDTConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        if self.position not in ("learned", "rotary"):
            raise ValueError(f"NDTConfig.position must be 'learned' or 'rotary', got {self.position!r}")
        if self.position == "rotary" and (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"rotary positions need an even head dim, got dim/n_heads = {self.dim // self.n_heads}"
            )
        if not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise ValueError(f"NDTConfig.norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def _tiny() -> NDTConfig:
    # Rotary positions: on tuning seeds (validation windows) they beat the learned embedding at
    # co-smoothing on every seed tried (README "Masked NDT"); the larger presets keep the learned
    # embedding of the published NDT1, not measured against rotary here.
    return NDTConfig(dim=64, n_layers=2, n_heads=4, mlp_dim=128, token_dim=64, max_bins=128, dropout=0.0,
                     position="rotary")


def _small() -> NDTConfig:
    return NDTConfig(dim=256, n_layers=4, n_heads=4, mlp_dim=512, token_dim=256, max_bins=128, dropout=0.1)


def _base() -> NDTConfig:
    # Published NDT size in the multi-task masking paper: 5 layers, width 512, 8 heads, MLP 1024,
    # spike-token dim 668. 100 bins = 2 s trials at 20 ms bins.
    return NDTConfig(dim=512, n_layers=5, n_heads=8, mlp_dim=1024, token_dim=668, max_bins=100, dropout=0.1)


NDT_PRESETS = {"tiny": _tiny, "small": _small, "base": _base}


def ndt_preset(name: str) -> NDTConfig:
    """Named :class:`NDTConfig`; vary it with ``dataclasses.replace``."""
    if name not in NDT_PRESETS:
        raise ValueError(f"unknown NDT preset {name!r}; valid presets: {', '.join(NDT_PRESETS)}")
    return NDT_PRESETS[name]()


def count_core_parameters(cfg: NDTConfig) -> int:
    """Parameters shared by all sessions, computed from the config alone."""
    D, W, hidden = cfg.dim, cfg.token_dim, cfg.mlp_dim
    embed = W * D + D  # token_dim -> dim projection
    embed += NUM_SCHEMES * D  # scheme prompt tokens
    if cfg.position == "learned":
        embed += cfg.max_bins * D
    block = 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (D * hidden + hidden) + (hidden * D + D)
    return embed + cfg.n_layers * block + 2 * D  # + final LayerNorm


def count_session_parameters(cfg: NDTConfig, num_units: int) -> int:
    """Parameters one session with ``num_units`` units adds (embedding and mask value, read-in,
    token, read-out)."""
    n, W, D = num_units, cfg.token_dim, cfg.dim
    return 3 * n + (n * W + W) + D + (D * n + n)


_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def session_key(session_id: str) -> str:
    """Injective, ModuleDict-safe key for a session id (ids may hold ".", "/", any unicode).

    Letters, digits and "-" are kept; "_" becomes "__"; every other UTF-8 byte becomes "_hh"
    (two lower-case hex digits). A leading "s_" keeps keys clear of nn.Module attribute names.
    """
    if not isinstance(session_id, str) or not session_id:
        raise ValueError(f"session id must be a non-empty str, got {session_id!r}")
    out = ["s_"]
    for ch in session_id:
        if ch in _SAFE_CHARS:
            out.append(ch)
        elif ch == "_":
            out.append("__")
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


class SessionIO(nn.Module):
    """Per-session spike embedding, read-in, session token and read-out."""

    def __init__(self, num_units: int, token_dim: int, dim: int) -> None:
        super().__init__()
        self.num_units = num_units
        self.unit_scale = nn.Parameter(torch.ones(num_units))
        self.unit_offset = nn.Parameter(torch.zeros(num_units))
        self.mask_value = nn.Parameter(torch.zeros(num_units))
        self.read_in = nn.Linear(num_units, token_dim)
        self.token = nn.Parameter(torch.randn(dim) * 0.02)
        self.read_out = nn.Linear(dim, num_units)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before mask_value existed fed hidden entries as zero counts, i.e. the value
        # softsign(unit_offset); that is exactly the mask value that reproduces them.
        if prefix + "mask_value" not in state_dict and prefix + "unit_offset" in state_dict:
            state_dict[prefix + "mask_value"] = F.softsign(state_dict[prefix + "unit_offset"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, counts_BTn: torch.Tensor, masked_BTn: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, n) counts -> (B, T, W) spike tokens; ``masked_BTn`` entries take ``mask_value``."""
        v_BTn = F.softsign(counts_BTn * self.unit_scale + self.unit_offset)
        if masked_BTn is not None:
            v_BTn = torch.where(masked_BTn, self.mask_value.to(v_BTn.dtype), v_BTn)
        return self.read_in(v_BTn)


def _rotate(x_BHLE: torch.Tensor, cos_LE: torch.Tensor, sin_LE: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHLE.chunk(2, dim=-1)
    return x_BHLE * cos_LE + torch.cat((-x2, x1), dim=-1) * sin_LE


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: NDTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        h_BLD: torch.Tensor,
        attn_mask_B1LL: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        B, L, D = h_BLD.shape
        q, k, v = self.qkv(self.norm1(h_BLD)).split(D, dim=-1)
        q_BHLE, k_BHLE, v_BHLE = (t.view(B, L, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q_BHLE, k_BHLE = _rotate(q_BHLE, *rope), _rotate(k_BHLE, *rope)
        a_BHLE = F.scaled_dot_product_attention(
            q_BHLE, k_BHLE, v_BHLE, attn_mask=attn_mask_B1LL, dropout_p=self.dropout if self.training else 0.0
        )
        h_BLD = h_BLD + self.drop(self.proj(a_BHLE.transpose(1, 2).reshape(B, L, D)))
        return h_BLD + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(h_BLD)))))


class NDT(nn.Module):
    """Masked-modeling NDT with per-session stitching.

    Args:
        cfg: architecture.
        sessions: session id -> number of units; each gets its own :class:`SessionIO`.
    """

    def __init__(self, cfg: NDTConfig, sessions: dict[str, int]) -> None:
        super().__init__()
        if not isinstance(cfg, NDTConfig):
            raise TypeError(f"cfg must be an NDTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.token_dim, cfg.dim)
        self.scheme_tokens = nn.Parameter(torch.randn(NUM_SCHEMES, cfg.dim) * 0.02)
        if cfg.position == "learned":
            self.pos_emb = nn.Parameter(torch.randn(cfg.max_bins, cfg.dim) * 0.02)
        else:
            self.pos_emb = None
            E = cfg.head_dim
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, E, 2, dtype=torch.float64) / E))
            ang_LE = torch.outer(torch.arange(cfg.max_bins + NUM_PREFIX_TOKENS, dtype=torch.float64), inv_freq)
            ang_LE = torch.cat((ang_LE, ang_LE), dim=-1)
            self.register_buffer("rope_cos", ang_LE.cos().float(), persistent=False)
            self.register_buffer("rope_sin", ang_LE.sin().float(), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.sessions = nn.ModuleDict()
        self._num_units: dict[str, int] = {}
        if not isinstance(sessions, dict):
            raise TypeError(f"sessions must be a dict of session id -> num_units, got {type(sessions).__name__}")
        for session_id, num_units in sessions.items():
            self.add_session(session_id, num_units)

    # -- sessions ----------------------------------------------------------------------------

    @property
    def session_units(self) -> dict[str, int]:
        """Session id -> number of units, in registration order (a copy)."""
        return dict(self._num_units)

    def add_session(self, session_id: str, num_units: int) -> SessionIO:
        """Register a new session (e.g. for fine-tuning); returns its freshly initialised module.

        The new parameters are created on the device and dtype of the core.
        """
        if session_id in self._num_units:
            raise ValueError(f"session {session_id!r} is already registered with {self._num_units[session_id]} units")
        if not isinstance(num_units, int) or isinstance(num_units, bool) or num_units < 1:
            raise ValueError(f"num_units for session {session_id!r} must be a positive int, got {num_units!r}")
        io = SessionIO(num_units, self.cfg.token_dim, self.cfg.dim)
        ref = self.in_proj.weight
        io = io.to(device=ref.device, dtype=ref.dtype)
        self.sessions[session_key(session_id)] = io
        self._num_units[session_id] = num_units
        return io

    def _session(self, session_id: str) -> SessionIO:
        if session_id not in self._num_units:
            known = ", ".join(map(repr, list(self._num_units)[:10]))
            raise ValueError(
                f"unknown session {session_id!r}; registered sessions include {known} "
                f"({len(self._num_units)} in all); call add_session(session_id, num_units) first"
            )
        return self.sessions[session_key(session_id)]

    def session_parameters(self, session_id: str) -> list[nn.Parameter]:
        """Parameters that belong to one session only."""
        return list(self._session(session_id).parameters())

    def core_parameters(self) -> list[nn.Parameter]:
        """Parameters shared by all sessions (everything outside ``self.sessions``)."""
        return [p for name, p in self.named_parameters() if not name.startswith("sessions.")]

    def freeze_core(self, frozen: bool = True) -> None:
        """Stop (or, with ``frozen=False``, restart) gradients to the shared core."""
        for p in self.core_parameters():
            p.requires_grad_(not frozen)

    # -- forward -----------------------------------------------------------------------------

    def forward(
        self,
        inputs_BTN: torch.Tensor,
        unit_valid_BN: torch.Tensor,
        session_ids: list[str],
        scheme_B: torch.Tensor,
        causal_B: torch.Tensor,
        *,
        return_hidden: bool = False,
        all_sessions_in_graph: bool = False,
        input_mask_BTN: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Predict log expected counts per bin for every unit.

        Args:
            inputs_BTN: masked counts (float); units beyond a sample's session size are ignored.
            unit_valid_BN: bool; invalid units inside a session's range are zeroed on input.
                A valid unit beyond the session's unit count is an error.
            session_ids: length-B list of registered session ids.
            scheme_B: int64 scheme id per sample (selects the prompt token):
                ``spikefm.families.ndt.masking.scheme_id(name)`` of a name in ``SCHEMES``
                (``"neuron"``, ``"causal"``, ``"inter_region"``, ``"intra_region"``).
            causal_B: bool per sample; True restricts bin t to attend to bins <= t (and the two
                prefix tokens, which carry no data).
            all_sessions_in_graph: add every session's parameters to the output with weight
                exactly 0, so each gets a (zero) gradient even when absent from the batch; data
                parallel training needs the same set of gradients on every replica.
            input_mask_BTN: bool, True at entries hidden from the model (``MaskedBatch.input_mask_BTN``);
                they take the unit's learned ``mask_value`` instead of a count. ``None``: every
                entry is observed (e.g. decoding from the full activity).

        Returns:
            log_rates_BTN (0 at unit columns beyond a sample's session size; invalid units
            inside it get the read-out's finite value), and with ``return_hidden`` also a list of
            ``n_layers`` tensors (B, T, D): each block's output at the bin tokens (before the
            final LayerNorm).
        """
        cfg = self.cfg
        if inputs_BTN.ndim != 3:
            raise ValueError(f"inputs_BTN must be (batch, bins, units), got shape {tuple(inputs_BTN.shape)}")
        B, T, N = inputs_BTN.shape
        if B == 0 or T == 0:
            raise ValueError(
                f"inputs_BTN must hold at least one sample and one bin, got shape {tuple(inputs_BTN.shape)}"
            )
        if T > cfg.max_bins:
            raise ValueError(
                f"window has {T} bins but the model accepts at most max_bins={cfg.max_bins}; "
                "use shorter windows or a config with a larger max_bins"
            )
        _expect("unit_valid_BN", unit_valid_BN, (B, N), torch.bool)
        if isinstance(session_ids, str) or len(session_ids) != B:
            raise ValueError(f"session_ids must be a list of {B} session ids, got {session_ids!r:.200}")
        _expect("scheme_B", scheme_B, (B,), torch.long)
        if not self.training and bool(((scheme_B < 0) | (scheme_B >= NUM_SCHEMES)).any()):  # no sync in training
            raise ValueError(f"scheme_B holds ids outside 0..{NUM_SCHEMES - 1}: {sorted(set(scheme_B.tolist()))}; "
                             "use spikefm.families.ndt.masking.scheme_id(name) of a name in SCHEMES")
        _expect("causal_B", causal_B, (B,), torch.bool)
        if input_mask_BTN is not None:
            _expect("input_mask_BTN", input_mask_BTN, (B, T, N), torch.bool)
        device = inputs_BTN.device

        groups: dict[str, list[int]] = {}
        for b, sid in enumerate(session_ids):
            groups.setdefault(sid, []).append(b)
        index_groups = []
        tokens, session_tokens = [], []
        for sid, rows in groups.items():
            io = self._session(sid)
            n = io.num_units
            if N < n:
                raise ValueError(f"session {sid!r} has {n} units but inputs_BTN has only {N} unit columns")
            idx = torch.tensor(rows, device=device)
            valid_bn = unit_valid_BN.index_select(0, idx)
            if n < N and bool(valid_bn[:, n:].any()):
                raise ValueError(f"session {sid!r} has {n} units but unit_valid_BN marks units beyond {n} as valid")
            x_bTn = inputs_BTN.index_select(0, idx)[:, :, :n] * valid_bn[:, None, :n]
            m_bTn = None if input_mask_BTN is None else input_mask_BTN.index_select(0, idx)[:, :, :n]
            tokens.append(io.embed(x_bTn.to(io.unit_scale.dtype), m_bTn))
            session_tokens.append(io.token.expand(len(rows), -1))
            index_groups.append((idx, io))
        order_B = torch.cat([idx for idx, _ in index_groups])
        inverse_B = torch.empty_like(order_B)
        inverse_B[order_B] = torch.arange(B, device=device)
        x_BTW = torch.cat(tokens).index_select(0, inverse_B)
        sess_BD = torch.cat(session_tokens).index_select(0, inverse_B)

        h_BTD = self.in_proj(x_BTW)
        if self.pos_emb is not None:
            h_BTD = h_BTD + self.pos_emb[:T]
        prefix_B2D = torch.stack((self.scheme_tokens[scheme_B.to(device)], sess_BD), dim=1)
        h_BLD = self.drop(torch.cat((prefix_B2D, h_BTD), dim=1))
        L = T + NUM_PREFIX_TOKENS

        attn_mask_B1LL = None
        causal_B = causal_B.to(device)
        if bool(causal_B.any()):
            tril_LL = torch.ones(L, L, dtype=torch.bool, device=device).tril()
            attn_mask_B1LL = (tril_LL[None] | ~causal_B[:, None, None])[:, None]
        rope = None if self.pos_emb is not None else (self.rope_cos[:L], self.rope_sin[:L])

        hidden = []
        for layer in self.layers:
            h_BLD = layer(h_BLD, attn_mask_B1LL, rope)
            if return_hidden:
                hidden.append(h_BLD[:, NUM_PREFIX_TOKENS:])
        h_BTD = self.norm(h_BLD)[:, NUM_PREFIX_TOKENS:]

        outs = []
        for idx, io in index_groups:
            y_bTn = io.read_out(h_BTD.index_select(0, idx))
            outs.append(F.pad(y_bTn, (0, N - io.num_units)))
        log_rates_BTN = torch.cat(outs).index_select(0, inverse_B)
        if all_sessions_in_graph:
            log_rates_BTN = log_rates_BTN + 0.0 * sum(p.sum() for p in self.sessions.parameters())
        return (log_rates_BTN, hidden) if return_hidden else log_rates_BTN

    def extra_repr(self) -> str:
        return f"sessions={len(self._num_units)}"
