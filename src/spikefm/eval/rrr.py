"""Multi-session reduced-rank regression (RRR): a linear map of rank ``r`` shared across sessions,
with per-session maps where sessions differ (their units). Fitted by full-batch L-BFGS in torch.

Shape legend: R rows (samples) of one session, F input features, Q outputs, r rank.

Two layouts:

* ``shared="input"`` (an encoder: behaviour -> neurons): every session has the same F input
  features; ``Y_s = link(X_s U V_s + c_s)`` with ``U`` (F, r) shared and ``V_s`` (r, Q_s), ``c_s``
  per session (Q_s = that session's units).
* ``shared="output"`` (a decoder: neurons -> behaviour): each session has its own F_s inputs;
  ``Y_s = link(X_s U_s V + c)`` with ``U_s`` (F_s, r) per session and ``V`` (r, Q), ``c`` shared.

``rank=None`` drops the factorisation (a full ``W_s`` per session: the ordinary linear model; with
one session, the single-session GLM / ridge / logistic regression). Losses: ``poisson`` (log link,
``exp``; Y are counts), ``mse`` (identity), ``xent`` (softmax; Y are int class indices, Q
classes). The L2 penalty ``alpha`` is on every weight (not on the intercepts), per row of data;
choose it on validation data (:func:`select_alpha`). Inputs are standardised per session.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["MultiSessionRRR", "select_alpha"]

_LOSSES = ("poisson", "mse", "xent")


class MultiSessionRRR:
    """See the module docstring.

    Args:
        rank: r, or None for a full-rank linear model per session.
        loss: ``"poisson"``, ``"mse"`` or ``"xent"``.
        shared: ``"input"`` or ``"output"``.
        num_outputs: Q for ``shared="output"`` (e.g. classes for ``xent``); ignored otherwise.
        alpha: L2 penalty.
        max_iter: L-BFGS iterations.
        seed: initialisation seed.

    Fitted attributes: ``params_`` (torch tensors), ``scale_`` (per session (mean, sd) of X),
    ``sessions_``.
    """

    def __init__(self, rank: int | None = 3, loss: str = "poisson", shared: str = "input",
                 num_outputs: int | None = None, alpha: float = 1e-3, max_iter: int = 200, seed: int = 0):
        self.rank, self.loss, self.shared, self.num_outputs = rank, loss, shared, num_outputs
        self.alpha, self.max_iter, self.seed = alpha, max_iter, seed

    def _check(self) -> None:
        if self.loss not in _LOSSES:
            raise ValueError(f"loss must be one of {', '.join(_LOSSES)}, got {self.loss!r}")
        if self.shared not in ("input", "output"):
            raise ValueError(f"shared must be 'input' or 'output', got {self.shared!r}")
        if self.rank is not None and (not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1):
            raise ValueError(f"rank must be a positive int or None (full rank), got {self.rank!r}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")

    def fit(self, X_by_session: dict[str, np.ndarray], Y_by_session: dict[str, np.ndarray]) -> "MultiSessionRRR":
        """Fit on every session's rows at once.

        Args:
            X_by_session: session -> (R, F) features.
            Y_by_session: session -> (R, Q_s) targets (``xent``: (R,) int classes).
        """
        self._check()
        if not X_by_session or set(X_by_session) != set(Y_by_session):
            raise ValueError("X_by_session and Y_by_session must hold the same, non-empty set of sessions")
        g = torch.Generator().manual_seed(self.seed)
        self.sessions_ = sorted(X_by_session)
        self.scale_ = {}
        X, Y = {}, {}
        for s in self.sessions_:
            x = np.asarray(X_by_session[s], dtype=np.float64)
            y = np.asarray(Y_by_session[s])
            if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
                raise ValueError(f"session {s!r}: X must be (R, F) and Y (R, ...) with R > 0, got {x.shape}, {y.shape}")
            mu, sd = x.mean(0), x.std(0)
            sd = np.where(sd > 0, sd, 1.0)
            self.scale_[s] = (mu, sd)
            X[s] = torch.tensor((x - mu) / sd, dtype=torch.float64)
            Y[s] = torch.tensor(y, dtype=torch.long if self.loss == "xent" else torch.float64)
        F = {s: X[s].shape[1] for s in self.sessions_}
        if self.shared == "input" and len(set(F.values())) != 1:
            raise ValueError(f"shared='input' needs the same features in every session, got widths {F}")
        if self.shared == "output":
            if self.num_outputs is None:
                if self.loss == "xent":
                    raise ValueError("xent needs num_outputs (the number of classes)")
                q = {Y[s].reshape(len(Y[s]), -1).shape[1] for s in self.sessions_}
                if len(q) != 1:
                    raise ValueError(f"shared='output' needs the same outputs in every session, got {q}")
                Q = q.pop()
            else:
                Q = int(self.num_outputs)
        p: dict[str, torch.Tensor] = {}

        def new(*shape):
            return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.01).requires_grad_()

        def zeros(*shape):
            return torch.zeros(*shape, dtype=torch.float64).requires_grad_()

        for s in self.sessions_:
            q_s = Q if self.shared == "output" else Y[s].reshape(len(Y[s]), -1).shape[1]
            if self.rank is None:
                p[f"W/{s}"] = new(F[s], q_s)
            elif self.shared == "input":
                p[f"V/{s}"] = new(self.rank, q_s)
            else:
                p[f"U/{s}"] = new(F[s], self.rank)
            if self.shared == "input" or self.rank is None:
                init = torch.log(Y[s].reshape(len(Y[s]), -1).mean(0).clamp(min=1e-3)) if self.loss == "poisson" \
                    else torch.zeros(q_s, dtype=torch.float64)
                p[f"c/{s}"] = init.clone().detach().requires_grad_()
        if self.rank is not None:
            if self.shared == "input":
                p["U"] = new(next(iter(F.values())), self.rank)
            else:
                p["V"] = new(self.rank, Q)
                p["c"] = zeros(Q)
        self.params_ = p
        rows = sum(len(X[s]) for s in self.sessions_)
        opt = torch.optim.LBFGS(list(p.values()), lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            opt.zero_grad()
            total = sum(self._loss(self._linear(s, X[s]), Y[s]) for s in self.sessions_) / rows
            penalty = sum((v ** 2).sum() for k, v in p.items() if not k.startswith("c"))
            obj = total + self.alpha * penalty
            obj.backward()
            return obj

        opt.step(closure)
        return self

    def _linear(self, s: str, x: torch.Tensor) -> torch.Tensor:
        p = self.params_
        if self.rank is None:
            return x @ p[f"W/{s}"] + p[f"c/{s}"]
        if self.shared == "input":
            return x @ p["U"] @ p[f"V/{s}"] + p[f"c/{s}"]
        return x @ p[f"U/{s}"] @ p["V"] + p["c"]

    def _loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss == "poisson":
            z = z.clamp(max=20.0)  # exp overflow guard during line search only
            return (torch.exp(z) - y.reshape(z.shape) * z).sum()
        if self.loss == "mse":
            return 0.5 * ((z - y.reshape(z.shape)) ** 2).sum()
        return torch.nn.functional.cross_entropy(z, y, reduction="sum")

    def predict(self, X: np.ndarray, session: str) -> np.ndarray:
        """Rates (poisson), values (mse) or class probabilities (xent) for ``session``'s rows."""
        if session not in getattr(self, "scale_", {}):
            raise ValueError(f"session {session!r} was not fitted; fitted: {getattr(self, 'sessions_', [])}")
        mu, sd = self.scale_[session]
        x = torch.tensor((np.asarray(X, dtype=np.float64) - mu) / sd, dtype=torch.float64)
        with torch.no_grad():
            z = self._linear(session, x)
            if self.loss == "poisson":
                z = torch.exp(z)
            elif self.loss == "xent":
                z = torch.softmax(z, dim=-1)
        return z.numpy()


def select_alpha(make: Callable[[float], MultiSessionRRR], fit_args: tuple, score: Callable[[MultiSessionRRR], float],
                 alphas=(1e-4, 1e-3, 1e-2, 1e-1), on_fit: Callable[[float], None] | None = None
                 ) -> tuple[MultiSessionRRR, float]:
    """Fit ``make(alpha).fit(*fit_args)`` for each alpha; keep the one with the highest
    ``score(model)`` (computed on validation data by the caller). Returns (model, alpha).
    ``on_fit(share)``, when given, is called after each fit with its share of the fits (progress)."""
    best = None
    for a in alphas:
        m = make(float(a)).fit(*fit_args)
        if on_fit is not None:
            on_fit(1.0 / len(alphas))
        s = score(m)
        if best is None or (np.isfinite(s) and s > best[0]):
            best = (s, m, float(a))
    return best[1], best[2]
