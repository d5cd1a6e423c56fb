"""NEDS: one transformer over spike and behaviour tokens (Zhang et al. 2025, "Neural Encoding and
Decoding at Scale"), with per-session spike stitchers.

Shape legend (README "Conventions"): B batch, T time bins, N units (padded to the batch maximum),
n one session's unit count, C continuous behaviour channels, J discrete per-trial labels,
D model width, L sequence length ``T * (1 + C) + J``, H heads.

Tokens of one sample, in this order:

* ``T`` spike tokens, one per bin: ``log1p(counts_Tn) -> Linear(n -> D)``, the session's read-in;
* ``T`` tokens per continuous channel: ``value * w_c + b_c`` (one learned (D,) pair per channel,
  values z-scored per session);
* ``J`` label tokens, one per trial label: a learned embedding per (label, class).

Every token gets its modality embedding, the bin's position embedding (time tokens) and the
session embedding. A hidden token (masked, or missing in the data) is the learned ``mask_token``
instead: the hidden value is replaced before it reaches any layer, so no hidden entry can change
the output (tested). After pre-norm transformer blocks and a final LayerNorm the spike tokens are
read out per session (``Linear(D -> n)``: log expected counts per bin), channel tokens by a per-
channel ``Linear(D -> 1)``, label tokens by a per-label ``Linear(D -> classes)``.

Per-unit embeddings (region classification): column ``u`` of the session's read-in weight and row
``u`` of its read-out weight (:meth:`NEDS.unit_embeddings`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NEDSConfig", "NEDS_PRESETS", "neds_preset", "NEDS", "Modalities", "session_key"]


@dataclass(frozen=True)
class NEDSConfig:
    """Architecture of a :class:`NEDS` (everything except the sessions and modalities).

    Attributes:
        dim: model width D.
        n_layers: transformer blocks.
        n_heads: attention heads (divides ``dim``).
        mlp_dim: hidden width of each block's MLP.
        max_bins: longest window (bins) the position embedding covers.
        dropout: dropout on embeddings, attention and residual branches.
        norm_eps: LayerNorm epsilon.
    """

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_dim: int = 128
    max_bins: int = 128
    dropout: float = 0.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "mlp_dim", "max_bins"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"NEDSConfig.{name} must be a positive int, got {v!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"NEDSConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads}); "
                             "change one of them")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"NEDSConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or self.norm_eps <= 0:
            raise ValueError(f"NEDSConfig.norm_eps must be > 0, got {self.norm_eps!r}")


#: Presets, smallest first. ``base`` is width 256, 5 blocks, 8 heads: our reading of the size of
#: the published model; its released configuration was not checked, so treat it as approximate.
NEDS_PRESETS = {
    # tiny: dropout 0.2, the benchmark's recipe (0 before 2026-12-04; see the README's NEDS section)
    "tiny": lambda: NEDSConfig(dim=64, n_layers=2, n_heads=4, mlp_dim=128, max_bins=128, dropout=0.2),
    "small": lambda: NEDSConfig(dim=128, n_layers=4, n_heads=4, mlp_dim=256, max_bins=128, dropout=0.1),
    "base": lambda: NEDSConfig(dim=256, n_layers=5, n_heads=8, mlp_dim=1024, max_bins=128, dropout=0.2),
}


def neds_preset(name: str) -> NEDSConfig:
    """Named :class:`NEDSConfig` (ValueError listing the presets otherwise)."""
    if name not in NEDS_PRESETS:
        raise ValueError(f"unknown NEDS preset {name!r}; valid presets: {', '.join(NEDS_PRESETS)}")
    return NEDS_PRESETS[name]()


@dataclass(frozen=True)
class Modalities:
    """The behaviour a NEDS model reads and predicts.

    Attributes:
        channels: names of the continuous per-bin channels (C).
        labels: label name -> sorted class values (J labels).
    """

    channels: tuple[str, ...] = ()
    labels: tuple[tuple[str, tuple[float, ...]], ...] = ()

    @property
    def label_names(self) -> list[str]:
        return [name for name, _ in self.labels]

    @property
    def num_classes(self) -> list[int]:
        return [len(values) for _, values in self.labels]

    def to_json(self) -> dict:
        return {"channels": list(self.channels), "labels": {k: list(v) for k, v in self.labels}}

    @classmethod
    def from_json(cls, record: Any) -> "Modalities | None":
        """The inverse of :meth:`to_json`; None for anything else (a record of another version)."""
        if not isinstance(record, dict) or not isinstance(record.get("channels"), list) \
                or not isinstance(record.get("labels"), dict):
            return None
        channels, labels = record["channels"], record["labels"]
        if not all(isinstance(c, str) for c in channels) or not all(
                isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                for v in labels.values()):
            return None
        return cls(channels=tuple(channels), labels=tuple((k, tuple(float(x) for x in v)) for k, v in labels.items()))


_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def session_key(session_id: str) -> str:
    """Injective ModuleDict-safe key of a session id ("_" -> "__", other bytes -> "_hh")."""
    if not isinstance(session_id, str) or not session_id:
        raise ValueError(f"session id must be a non-empty str, got {session_id!r}")
    parts = ["s_"]
    for ch in session_id:
        parts.append(ch if ch in _SAFE else "__" if ch == "_" else "".join(f"_{b:02x}" for b in ch.encode()))
    return "".join(parts)


class SessionStitcher(nn.Module):
    """A session's spike read-in (n -> D), read-out (D -> n) and session embedding."""

    def __init__(self, num_units: int, dim: int) -> None:
        super().__init__()
        self.num_units = num_units
        self.read_in = nn.Linear(num_units, dim)
        self.read_out = nn.Linear(dim, num_units)
        self.embedding = nn.Parameter(torch.zeros(dim))


class Block(nn.Module):
    """Pre-norm transformer block (bidirectional attention)."""

    def __init__(self, cfg: NEDSConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h_BLD: torch.Tensor) -> torch.Tensor:
        B, L, D = h_BLD.shape
        q, k, v = self.qkv(self.norm1(h_BLD)).split(D, dim=-1)
        q, k, v = (t.view(B, L, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h_BLD = h_BLD + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, D)))
        return h_BLD + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(h_BLD)))))


class NEDS(nn.Module):
    """Multimodal masked transformer with per-session spike stitchers.

    Args:
        cfg: architecture.
        sessions: session id -> number of units.
        modalities: the behaviour channels and labels (shared by all sessions).
    """

    def __init__(self, cfg: NEDSConfig, sessions: dict[str, int], modalities: Modalities) -> None:
        super().__init__()
        if not isinstance(cfg, NEDSConfig):
            raise TypeError(f"cfg must be a NEDSConfig, got {type(cfg).__name__}")
        self.cfg, self.modalities = cfg, modalities
        C, J, D = len(modalities.channels), len(modalities.labels), cfg.dim
        self.mask_token = nn.Parameter(torch.zeros(D))
        self.modality_emb = nn.Parameter(torch.zeros(1 + C + J, D))
        self.pos_emb = nn.Parameter(torch.zeros(cfg.max_bins, D))
        self.channel_w = nn.Parameter(torch.zeros(max(C, 1), D))
        self.channel_b = nn.Parameter(torch.zeros(max(C, 1), D))
        self.label_emb = nn.Embedding(max(sum(modalities.num_classes), 1), D)
        offsets = [0]
        for k in modalities.num_classes:
            offsets.append(offsets[-1] + k)
        self.register_buffer("label_offset", torch.tensor(offsets[:-1] or [0], dtype=torch.long), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.channel_head = nn.Linear(D, max(C, 1))
        self.label_heads = nn.ModuleList(nn.Linear(D, k) for k in modalities.num_classes)
        self.sessions = nn.ModuleDict()
        self._num_units: dict[str, int] = {}
        for sid, n in sessions.items():
            self.add_session(sid, n)

    # -- sessions ------------------------------------------------------------------------------

    @property
    def session_units(self) -> dict[str, int]:
        return dict(self._num_units)

    def add_session(self, session_id: str, num_units: int) -> SessionStitcher:
        if session_id in self._num_units:
            raise ValueError(f"session {session_id!r} is already registered")
        if not isinstance(num_units, int) or isinstance(num_units, bool) or num_units < 1:
            raise ValueError(f"num_units of session {session_id!r} must be a positive int, got {num_units!r}")
        ref = self.mask_token
        mod = SessionStitcher(num_units, self.cfg.dim).to(device=ref.device, dtype=ref.dtype)
        self.sessions[session_key(session_id)] = mod
        self._num_units[session_id] = num_units
        return mod

    def stitcher(self, session_id: str) -> SessionStitcher:
        if session_id not in self._num_units:
            raise ValueError(f"unknown session {session_id!r}; the model holds {', '.join(self._num_units)}; "
                             "fine-tune it on that session first (spikefm finetune)")
        return self.sessions[session_key(session_id)]

    def core_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("sessions.")]

    def freeze_core(self, frozen: bool = True, *, except_heads: bool = False) -> None:
        """Fix (or free) the shared core; ``except_heads`` leaves the behaviour and label output
        heads (``channel_head``, ``label_heads``) trainable while the rest stays fixed."""
        heads = {id(p) for m in (self.channel_head, self.label_heads) for p in m.parameters()}
        for p in self.core_parameters():
            p.requires_grad_(not frozen or (except_heads and id(p) in heads))

    def unit_embeddings(self, session_id: str) -> torch.Tensor:
        """(n, 2D) per-unit vectors: read-in column and read-out row of each unit."""
        st = self.stitcher(session_id)
        return torch.cat([st.read_in.weight.T, st.read_out.weight], dim=1).detach()

    # -- forward -------------------------------------------------------------------------------

    def forward(self, counts_BTN: torch.Tensor, spike_hidden_BT: torch.Tensor, session_ids: list[str],
                behavior_BTC: torch.Tensor, behavior_hidden_BTC: torch.Tensor,
                labels_BJ: torch.Tensor, label_hidden_BJ: torch.Tensor, *,
                all_sessions_in_graph: bool = False, return_hidden: bool = False) -> dict[str, torch.Tensor]:
        """Predict every token.

        Args:
            counts_BTN: spike counts (float; padding units beyond a session's size are ignored).
            spike_hidden_BT: True = the bin's spike token is the mask token.
            session_ids: length-B session ids.
            behavior_BTC: z-scored channel values (anything where hidden).
            behavior_hidden_BTC: True = hidden (masked or missing).
            labels_BJ: class index per label (anything where hidden).
            label_hidden_BJ: True = hidden (masked or missing).
            all_sessions_in_graph: add every parameter outside the blocks (sessions, heads) with
                weight 0, so that each gets a gradient on every rank (data parallel).
            return_hidden: also return ``"hidden_BTD"``, the final (normalised) states of the spike
                tokens, which the session read-outs map to log rates.

        Returns:
            {"log_rates_BTN", "behavior_BTC", "label_logits": list of (B, classes_j)}.
        """
        B, T, N = counts_BTN.shape
        C, J = len(self.modalities.channels), len(self.modalities.labels)
        if len(session_ids) != B:
            raise ValueError(f"session_ids has {len(session_ids)} entries for a batch of {B}")
        if T > self.cfg.max_bins:
            raise ValueError(f"windows of {T} bins exceed model.max_bins={self.cfg.max_bins}")
        if behavior_BTC.shape != (B, T, C) or labels_BJ.shape != (B, J):
            raise ValueError(f"behavior_BTC must be {(B, T, C)} and labels_BJ {(B, J)}, got "
                             f"{tuple(behavior_BTC.shape)} and {tuple(labels_BJ.shape)}")
        D = self.cfg.dim
        dtype = self.mask_token.dtype
        mask = self.mask_token.to(dtype)
        # Hidden values are replaced (out of place) before any layer sees them.
        x_BTN = torch.where(spike_hidden_BT[..., None], 0.0, counts_BTN.to(dtype))
        groups: dict[str, list[int]] = {}
        for b, sid in enumerate(session_ids):
            groups.setdefault(sid, []).append(b)
        spike_BTD = x_BTN.new_zeros(B, T, D)
        sess_BD = x_BTN.new_zeros(B, D)
        for sid, rows in groups.items():
            st = self.stitcher(sid)
            idx = torch.tensor(rows, device=x_BTN.device)
            n = st.num_units
            # Under autocast the read-in is bf16; the token stream stays in the input's dtype.
            read_BTD = st.read_in(torch.log1p(x_BTN[idx, :, :n])).to(spike_BTD.dtype)
            spike_BTD = spike_BTD.index_copy(0, idx, read_BTD)
            sess_BD = sess_BD.index_copy(0, idx, st.embedding.expand(len(rows), D))
        spike_BTD = torch.where(spike_hidden_BT[..., None], mask, spike_BTD)
        pos_TD = self.pos_emb[:T]
        tokens = [spike_BTD + self.modality_emb[0] + pos_TD]
        if C:
            v_BTC = torch.where(behavior_hidden_BTC, 0.0, behavior_BTC.to(dtype))
            beh_BTCD = v_BTC[..., None] * self.channel_w[:C] + self.channel_b[:C]
            beh_BTCD = torch.where(behavior_hidden_BTC[..., None], mask, beh_BTCD)
            beh_BTCD = beh_BTCD + self.modality_emb[1:1 + C] + pos_TD[:, None, :]
            tokens.append(beh_BTCD.permute(0, 2, 1, 3).reshape(B, C * T, D))
        if J:
            cls_BJ = torch.where(label_hidden_BJ, 0, labels_BJ.long()) + self.label_offset
            lab_BJD = torch.where(label_hidden_BJ[..., None], mask, self.label_emb(cls_BJ))
            tokens.append(lab_BJD + self.modality_emb[1 + C:])
        h = self.drop(torch.cat(tokens, dim=1) + sess_BD[:, None, :])
        for block in self.layers:
            h = block(h)
        h = self.norm(h)
        out_spike_BTD = h[:, :T]
        log_rates = out_spike_BTD.new_zeros(B, T, N)
        for sid, rows in groups.items():
            st = self.stitcher(sid)
            idx = torch.tensor(rows, device=h.device)
            pred = st.read_out(out_spike_BTD[idx])
            log_rates = log_rates.index_copy(0, idx, F.pad(pred.to(log_rates.dtype),
                                                             (0, N - st.num_units)))
        if all_sessions_in_graph:
            # every parameter outside the blocks (each session's stitcher, the behaviour and label
            # heads, which a batch scoring no behaviour or label leaves out of the loss) gets a
            # gradient on every rank: FSDP2 reduces the same parameters everywhere or aborts
            zero = sum(p.sum() for n, p in self.named_parameters()
                       if p.requires_grad and not n.startswith("layers.")) * 0.0
            log_rates = log_rates + zero
        out = {"log_rates_BTN": log_rates}
        if return_hidden:
            out["hidden_BTD"] = out_spike_BTD
        if C:
            h_BCTD = h[:, T:T + C * T].reshape(B, C, T, D)
            w = self.channel_head.weight[:C]  # (C, D)
            out["behavior_BTC"] = (torch.einsum("bctd,cd->btc", h_BCTD, w) + self.channel_head.bias[:C])
        else:
            out["behavior_BTC"] = h.new_zeros(B, T, 0)
        out["label_logits"] = [head(h[:, T + C * T + j]) for j, head in enumerate(self.label_heads)]
        return out
