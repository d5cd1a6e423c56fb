"""NEDS as a training family (``spikefm train --model neds``).

Model config: :class:`spikefm.families.neds.model.NEDSConfig` (``--preset tiny|small|base``).
Data config: :class:`NEDSDataConfig`.

Data: each session in ``data.sessions`` (default: the corpus's train-split sessions) is cut into
windows (:func:`spikefm.data.windows.load_all_windows`; trial-aligned, or continuous with
``data.align=``) with a seeded train/val/test split per session, written into the run's
``config.json`` (``family_info.window_splits``) so evaluation scores exactly the held-out windows.
Behaviour channels are z-scored per session with statistics of its train windows.

Loss: a mask seed per micro-batch (from ``train.seed``, the rank and a counter saved in the loader
state); one scheme per sample (:mod:`spikefm.families.neds.masking`); per-modality losses averaged
over their scored entries then summed with ``data.spike_weight`` / ``behavior_weight`` /
``label_weight``.

Fine-tuning (``spikefm finetune``): a new run on the held-out session, with new session
parameters, the shared core loaded from ``data.init_from`` (frozen with ``data.freeze_core``) and
the pretrained run's modalities written out explicitly.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from spikefm.families.neds.batches import (NEDSLoader, batch_seed, collate, parse_label_spec, resolve_modalities,
                                           session_arrays)
from spikefm.families.neds.masking import DEFAULT_SCHEME_WEIGHTS, SCHEMES, draw_schemes, make_masks, neds_loss
from spikefm.families.neds.model import NEDS, NEDS_PRESETS, Modalities, NEDSConfig, neds_preset
from spikefm.progress import warn_once
from spikefm.train.config import RunConfig
from spikefm.train.family import check_window_fits

__all__ = ["NEDSDataConfig", "NEDSFamily", "RUN_DEFAULTS", "parse_schemes", "scheme_weights", "validation_schemes",
           "window_options", "masked_forward"]

#: Optimizer and loop defaults of a NEDS run (before --set): the benchmark's recipe (README, NEDS
#: section), chosen on tuning seeds' validation windows; 1,500 steps (3,000 before 2026-12-04, never
#: measured against it).
RUN_DEFAULTS = ["optim.lr=2e-3", "train.batch_size=16", "train.steps=1500", "train.precision=fp32",
                "train.log_every=100", "train.ckpt_every=1000", "train.eval_every=500"]


def parse_schemes(text: str) -> list[str]:
    """``"all"`` or comma-separated names of :data:`spikefm.families.neds.masking.SCHEMES`."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if names == ["all"]:
        return list(SCHEMES)
    bad = [s for s in names if s not in SCHEMES]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"data.schemes must be 'all' or distinct comma-separated names from "
                         f"{', '.join(SCHEMES)}; got {text!r}")
    return names


def scheme_weights(data: "NEDSDataConfig") -> tuple[float, ...]:
    """Relative probability of each scheme of ``data.schemes`` (see ``NEDSDataConfig.scheme_weights``)."""
    names = parse_schemes(data.schemes)
    return tuple(float(x) for x in data.scheme_weights) or tuple(DEFAULT_SCHEME_WEIGHTS[n] for n in names)


def _inherited_splits(init_from: str, own: dict) -> dict:
    """The saved window splits of the sessions of the run ``init_from`` and of the runs it came
    from, except the sessions in ``own``: written into a fine-tuned run's config so the evaluation's
    multi-session baselines find the pretraining sessions even after an intermediate run (the
    ``unfreeze`` strategy's frozen stage) is deleted."""
    try:
        up = _run_info(init_from)
    except ValueError:
        return {}
    merged = {**up.get("inherited_window_splits", {}), **up.get("window_splits", {})}
    return {sid: s for sid, s in merged.items() if sid not in own}


def validation_schemes(data: "NEDSDataConfig") -> list[str] | None:
    """The schemes ``validate`` scores every val window under (``None``: the training mixture).

    ``data.val_schemes``: ``""`` (default) = the task schemes ``encoding`` and ``decoding`` that
    ``data.schemes`` trains (the training mixture if it trains neither); ``"train"`` = the training
    mixture, one scheme drawn per window; or comma-separated scheme names."""
    if data.val_schemes == "train":
        return None
    if data.val_schemes:
        return parse_schemes(data.val_schemes)
    trained = parse_schemes(data.schemes)
    return [n for n in ("encoding", "decoding") if n in trained] or None


@dataclass(frozen=True)
class NEDSDataConfig:
    """Windows, modalities, masking and initialisation of a NEDS run.

    Attributes:
        corpus: corpus directory.
        sessions: comma-separated session ids; ``""`` = the corpus's train-split sessions.
        window_bins: T, bins per window (<= ``model.max_bins``). Default 50 bins from ``pre_ms``
            200 ms before the event (1 s; the benchmark's recipe, chosen on tuning seeds; before
            2026-12-04 the default was the NDT's 100 bins from 500 ms, never measured with NEDS, and
            on tuning seeds 5 and 7 that setup made ``finetune --strategy auto`` keep its worst
            candidate). The NEDS paper's 2 s windows: ``window_bins=100``, ``pre_ms=500``.
        align: trial column to align windows to; ``"auto"`` = the first of stimulus onset, go cue,
            target onset, trial start the session holds; ``""`` = continuous windows (continuous
            behaviour only: no trial labels).
        trial_table: the session's trial table whose events ``align`` names (``trials``, the NWB
            default; recordings with other interval tables name theirs).
        pre_ms: window start before the event (ms).
        event_rounding: ``"nearest"`` or ``"floor"`` (see :mod:`spikefm.data.windows`).
        split_fractions: (train, val, test) fractions of each session's windows.
        split_seed: seed of the per-session split.
        min_rate_hz: leave out units below this mean rate (0 keeps all).
        behavior: continuous channels: ``"auto"`` (all in the sessions), ``""`` or a comma list.
        labels: trial labels: ``"auto"`` (choice, block_prior, target_angle where present), ``""``,
            or ``"choice;block_prior"`` / ``"choice=-1,1;block_prior=0.2,0.5,0.8"``.
        schemes: training masking schemes: ``"all"`` or comma-separated names.
        scheme_weights: relative probability of each scheme in ``schemes`` (in that order; for
            ``"all"`` the order of :data:`~spikefm.families.neds.masking.SCHEMES`); ``()`` = the
            :data:`~spikefm.families.neds.masking.DEFAULT_SCHEME_WEIGHTS` of the listed schemes
            (``1,1,1,1,1`` draws uniformly).
        mask_ratio: fraction of bins (and probability per label) the random schemes hide.
        val_schemes: what the validation loss (early stopping, ``finetune --strategy auto``'s
            choice) scores: ``""`` = every val window under each task scheme (``encoding``:
            spikes from behaviour; ``decoding``: behaviour and labels from spikes) that
            ``schemes`` trains, the per-scheme losses summed with the modality weights; ``"train"``
            = the training loss (one scheme drawn per window with ``scheme_weights``); or
            comma-separated scheme names. The default scores what ``spikefm eval`` measures (with
            the training mixture 30 % of the val windows scored auxiliary schemes): on tuning
            seed 6 auto then chose ``frozen`` over ``full``, better on that session's val windows
            (encoding 0.112 vs 0.093 bps, choice 0.697 vs 0.636), and the same candidate on the
            other five tuning seeds (``benchmarks/results/neds_tune/*_ft_valtask.json``).
        val_label_cap: in the validation loss, cap each label's cross-entropy at that of a
            class-prior predictor (each session's class frequencies on its train windows, plus one
            per class) on the same windows. Label heads that memorise a few training windows' labels
            (the synthetic ``block_prior``, which the spikes carry only through the choice it biases)
            can score cross-entropies of 2-3 nats on 10 validation windows and decide early stopping
            and ``finetune --strategy auto``'s choice alone; capped, such a label costs what knowing
            nothing costs, the same for every candidate. Training is unchanged. Default on since
            2026-12-05: on the six tuning seeds (1, 5-9) it raised the fine-tuned model's mean
            encoding, choice and wheel / whisker R² (README, NEDS section); ``false`` is the
            earlier behaviour, which the benchmark tables measured before that date pin.
        spike_weight, behavior_weight, label_weight: weights of the per-modality losses. The
            spike loss is a mean over (bin, unit) entries of ~0.1 expected spikes, so what behaviour
            adds to it is ~1e-3 nats per entry against behaviour / label losses of order 1; at
            weight 1 the shared core hardly learned encoding (bps ~0 on seed 1's validation
            windows), hence the default 20.
        init_from: a pretrained NEDS run whose core initialises this run.
        freeze_core: keep the loaded core fixed.
        free_heads: with ``freeze_core``, the behaviour and label output heads still train (the
            rest of the core stays fixed). Without ``freeze_core`` every parameter trains anyway
            and it has no effect, so that one ``--set data.free_heads=true`` serves every
            candidate of ``finetune --strategy auto`` (``frozen``, ``unfreeze``'s first stage).
    """

    corpus: str = ""
    sessions: str = ""
    window_bins: int = 50
    align: str = "auto"
    trial_table: str = "trials"
    pre_ms: int = 200
    event_rounding: str = "nearest"
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    min_rate_hz: float = 0.0
    behavior: str = "auto"
    labels: str = "auto"
    schemes: str = "all"
    scheme_weights: tuple[float, ...] = ()
    mask_ratio: float = 0.3
    val_schemes: str = ""
    val_label_cap: bool = True
    spike_weight: float = 20.0
    behavior_weight: float = 1.0
    label_weight: float = 1.0
    init_from: str = ""
    freeze_core: bool = False
    free_heads: bool = False

    def __post_init__(self) -> None:
        for name in ("corpus", "sessions", "align", "trial_table", "event_rounding", "behavior", "labels", "schemes",
                     "val_schemes", "init_from"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"data.{name} must be a str, got {type(getattr(self, name)).__name__}")
        for name, lo in (("window_bins", 1), ("pre_ms", 0), ("split_seed", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"data.{name} must be an int >= {lo}, got {v!r}")
        r = self.mask_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= 1.0:
            raise ValueError(f"data.mask_ratio must be a number in (0, 1], got {r!r}")
        for name in ("spike_weight", "behavior_weight", "label_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"data.{name} must be a finite number >= 0, got {v!r}")
        names = parse_schemes(self.schemes)
        w = tuple(self.scheme_weights)
        if w and (len(w) != len(names) or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                              or not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0):
            raise ValueError(f"data.scheme_weights must be {len(names)} numbers >= 0 with a positive sum, one per "
                             f"scheme of data.schemes ({', '.join(names)}), or empty for the defaults ("
                             f"{', '.join(f'{n} {DEFAULT_SCHEME_WEIGHTS[n]:g}' for n in names)}); got {w}")
        if self.val_schemes not in ("", "train"):
            try:
                parse_schemes(self.val_schemes)
            except ValueError as e:
                raise ValueError(f"data.val_schemes must be '', 'train' or scheme names; {e}") from None
        if self.labels != "auto":
            parse_label_spec(self.labels)
        from spikefm.data.windows import _check_fractions, _check_window_options

        _check_fractions(self.split_fractions)
        _check_window_options(self.event_rounding, None, self.min_rate_hz)
        for name in ("freeze_core", "free_heads", "val_label_cap"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"data.{name} must be a bool (true/false), got {getattr(self, name)!r}")
        if self.freeze_core and not self.init_from:
            raise ValueError("data.freeze_core=true needs data.init_from=PRETRAINED_RUN_DIR; freezing a "
                             "random core would train the session parameters on noise")


def window_options(data: NEDSDataConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`spikefm.data.windows.load_all_windows` for this config."""
    return {"window_bins": data.window_bins, "align": data.align or None, "pre_ms": data.pre_ms,
            "table": data.trial_table, "split_fractions": tuple(data.split_fractions), "seed": data.split_seed,
            "event_rounding": data.event_rounding, "min_rate_hz": float(data.min_rate_hz)}


#: Schemes that hide (and so score) spikes; ``decoding`` and ``behavior`` score behaviour only.
SPIKE_SCORING_SCHEMES = ("encoding", "spike", "cross")


def _check_schemes_have_targets(data: "NEDSDataConfig", mods, *, warn: bool = True, windows=None) -> None:
    """Without behaviour channels or labels, the behaviour-only schemes score nothing: refuse a
    run made only of them, and (``warn``: when training) warn when some training draws go to them."""
    if mods.channels or mods.labels:
        return
    names = parse_schemes(data.schemes)
    idle = [n for n in names if n not in SPIKE_SCORING_SCHEMES]
    if not idle:
        return
    if len(idle) == len(names):
        raise ValueError(f"data.schemes={data.schemes!r} scores only behaviour, and these sessions have no behaviour "
                         f"channels or trial labels; include a spike scheme ({', '.join(SPIKE_SCORING_SCHEMES)})")
    if not warn:
        return
    w = dict(zip(names, scheme_weights(data)))
    share = sum(w[n] for n in idle) / sum(w.values())
    # trial columns the sessions do have, which data.labels=auto does not take (only choice,
    # block_prior, target_angle): a user's own label, e.g. stimCategory
    values: dict[str, set] = {}
    for w in (windows or {}).values():
        for k, arr in (getattr(w, "labels", None) or {}).items():
            values.setdefault(k, set()).update(v for v in arr if v is not None and v == v)  # NaN != NaN
    columns = sorted(k for k, v in values.items() if len(v) >= 2)  # one value everywhere: nothing to decode
    offer = (f"; or name trial columns as labels: data.labels={','.join(columns[:3])} (the sessions' trial "
             f"columns: {', '.join(columns[:12])}{' ...' if len(columns) > 12 else ''})" if columns else "")
    warn_once(f"the sessions have no behaviour channels or trial labels, so schemes {', '.join(idle)} score "
              f"nothing ({share:.0%} of the training draws); set data.schemes="
              f"{','.join(n for n in names if n not in idle)} to spend every draw on the spikes{offer}",
              about=f"{Path(data.corpus).resolve()}|{data.sessions}", stacklevel=3)


def _ids(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _corpus(data: NEDSDataConfig):
    from spikefm.corpus.reader import Corpus

    if not data.corpus:
        raise ValueError("data.corpus is empty; pass --data CORPUS_DIR")
    return Corpus(data.corpus)


def masked_forward(model: nn.Module, batch: dict, scheme_B: torch.Tensor, ratio: float,
                   generator: torch.Generator, *, all_sessions_in_graph: bool = False,
                   slices: tuple[int, int] | None = None):
    """Masks of ``scheme_B`` for ``batch`` and the model's outputs on the masked inputs;
    ``slices=(rows_per_call, calls)``: the masks drawn for the whole batch, the model run on slices
    of its rows (:func:`spikefm.train.dist.forward_in_slices`)."""
    masks = make_masks(scheme_B, num_bins=batch["counts_BTN"].shape[1], unit_valid_BN=batch["unit_valid_BN"],
                       behavior_valid_BTC=batch["behavior_valid_BTC"], label_valid_BJ=batch["label_valid_BJ"],
                       ratio=ratio, generator=generator)
    from spikefm.train.dist import forward_in_slices

    B = batch["counts_BTN"].shape[0]
    ids = list(batch["session_ids"])
    parts = forward_in_slices(lambda lo, hi: model(
        batch["counts_BTN"][lo:hi], masks.spike_hidden_BT[lo:hi], ids[lo:hi], batch["behavior_BTC"][lo:hi],
        masks.behavior_hidden_BTC[lo:hi], batch["labels_BJ"][lo:hi], masks.label_hidden_BJ[lo:hi],
        all_sessions_in_graph=all_sessions_in_graph), B, *(slices or (B, 1)))
    if len(parts) == 1:
        return masks, parts[0]
    out = {k: ([torch.cat([p[k][j] for p in parts]) for j in range(len(parts[0][k]))] if isinstance(v, list)
               else torch.cat([p[k] for p in parts])) for k, v in parts[0].items()}
    return masks, out


def _prior_logp(priors: dict[str, np.ndarray] | None, batch: dict, device) -> torch.Tensor | None:
    """(B, J) log class-prior probability of each window's label (``data.val_label_cap``), or None."""
    if priors is None or not batch["labels_BJ"].shape[1]:
        return None
    lab_BJ = batch["labels_BJ"].cpu().numpy()
    return torch.as_tensor(np.stack([priors[sid][np.arange(lab_BJ.shape[1]), row]
                                     for sid, row in zip(batch["session_ids"], lab_BJ)]),
                           dtype=torch.float32, device=device)


class NEDSFamily:
    """Family protocol implementation for :class:`spikefm.families.neds.model.NEDS`."""

    name = "neds"
    model_config_cls = NEDSConfig
    data_config_cls = NEDSDataConfig
    #: how the windows are cut and which units are kept: the evaluation of a fine-tuned run cuts
    #: the pretraining sessions (for the multi-session baselines and the region task) with the
    #: fine-tuned run's settings and matches them to the splits saved in pretraining
    finetune_fixed_data = ("window_bins", "align", "trial_table", "pre_ms", "event_rounding", "min_rate_hz")

    def __init__(self) -> None:
        self._data: NEDSDataConfig | None = None
        self._cache: dict[tuple, tuple] = {}
        self._num_params: dict[int, int] = {}

    @staticmethod
    def preset(name: str) -> NEDSConfig:
        return neds_preset(name)

    @staticmethod
    def presets() -> list[str]:
        return list(NEDS_PRESETS)

    @staticmethod
    def run_defaults(preset: str = "") -> list[str]:
        """Loop and optimizer defaults of every preset (before --set)."""
        return list(RUN_DEFAULTS)

    # -- data ------------------------------------------------------------------------------------

    def sessions(self, data: NEDSDataConfig) -> dict[str, int]:
        """Session id -> unit count after the firing-rate filter, in training order."""
        windows, _, _ = self.prepared(data)
        return {sid: w.num_units for sid, w in windows.items()}

    def prepared(self, data: NEDSDataConfig) -> tuple[dict, Modalities, dict]:
        """(windows by session, modalities, :class:`SessionArrays` by session), cached per config."""
        from spikefm.data.windows import load_all_windows

        key = (str(Path(data.corpus).resolve()), data.sessions, data.behavior, data.labels,
               tuple(sorted(window_options(data).items())))
        if key not in self._cache:
            corpus = _corpus(data)
            ids = _ids(data.sessions) if data.sessions else corpus.session_ids("train")
            if not ids:
                raise ValueError(f"{corpus.path} has no session in its train split; pass data.sessions=ID,...")
            if len(set(ids)) != len(ids):
                raise ValueError(f"data.sessions lists a session twice: {data.sessions!r}")
            windows = load_all_windows(corpus, ids, **window_options(data))
            # a run that starts from a pretrained one keeps its modalities (the core's heads),
            # also those the new sessions lack: their entries are unscored
            mods = resolve_modalities(windows, data.behavior, data.labels, missing_ok=bool(data.init_from))
            arrays = {sid: session_arrays(w, mods) for sid, w in windows.items()}
            self._cache[key] = (windows, mods, arrays)
        # the schemes are not part of the key; the warning is the training's (train_loader)
        _check_schemes_have_targets(data, self._cache[key][1], warn=False)
        return self._cache[key]

    # -- model -----------------------------------------------------------------------------------

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        """One-line error for data settings the model cannot serve (checked by ``run_config``,
        before any data is read, and again when the model is built)."""
        check_window_fits(cfg)

    def build_model(self, cfg: RunConfig) -> nn.Module:
        self.check_config(cfg)
        self._data = cfg.data
        windows, mods, _ = self.prepared(cfg.data)
        return NEDS(cfg.model, {sid: w.num_units for sid, w in windows.items()}, mods)

    def build_recorded_model(self, cfg: RunConfig, family_info: dict[str, Any]) -> nn.Module | None:
        """The finished run's model from its recorded sessions, unit counts and modalities (no
        data read)."""
        from spikefm.train.runinfo import recorded_session_units

        units = recorded_session_units(family_info)
        mods = Modalities.from_json(family_info.get("modalities"))
        if units is None or mods is None:
            return None
        self.check_config(cfg)
        return NEDS(cfg.model, units, mods)

    def init_for_loading(self, model: nn.Module) -> None:
        """Fresh initialisation of every parameter and buffer from the global torch RNG."""
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or name in ("mask_token",) or name.endswith(".embedding") \
                        or p.ndim == 1 and "norm" in name:
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02)
            for mod in model.modules():
                if isinstance(mod, nn.LayerNorm):
                    mod.weight.fill_(1.0)
                    mod.bias.zero_()
            offsets, acc = [], 0
            for k in model.modalities.num_classes:
                offsets.append(acc)
                acc += k
            model.label_offset.copy_(torch.tensor(offsets or [0], dtype=torch.long))

    def init_weights(self, model: nn.Module) -> None:
        """Fresh initialisation; then the pretrained core if ``data.init_from``."""
        self.init_for_loading(model)
        data = self._data
        if data is None:
            return
        # Each unit's read-out bias starts at its log mean count on the train windows (as in the
        # NDT), so the first steps are not spent learning firing rates (a rate of 1 spike per bin,
        # exp(0), is ~10x too high for 20 ms bins).
        windows, _, _ = self.prepared(data)
        with torch.no_grad():
            for sid, w in windows.items():
                log_rate_N = w.train_log_rates() if sid in model.session_units else None
                if log_rate_N is not None:
                    bias = model.stitcher(sid).read_out.bias
                    bias.copy_(torch.as_tensor(log_rate_N, dtype=bias.dtype))
        if not data.init_from:
            return
        load_pretrained_core(model, data.init_from)
        if data.freeze_core:
            model.freeze_core(True, except_heads=data.free_heads)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.layers)

    def train_loader(self, cfg: RunConfig, rank: int, world_size: int) -> NEDSLoader:
        from spikefm.data.windows import WindowBatcher

        windows, mods, arrays = self.prepared(cfg.data)
        _check_schemes_have_targets(cfg.data, mods, windows=windows)
        batcher = WindowBatcher(windows, batch_size=cfg.train.micro_batch_size(world_size), seed=cfg.train.seed,
                                split="train", rank=rank, world_size=world_size)
        return NEDSLoader(batcher, windows, arrays, cfg.train.seed, rank)

    # -- loss ------------------------------------------------------------------------------------

    def _loss(self, model, batch, data: NEDSDataConfig, generator: torch.Generator, scheme: str | None = None,
              label_prior_logp_BJ: torch.Tensor | None = None, label_capped_J: list[bool] | None = None,
              slices: tuple[int, int] | None = None):
        B = batch["counts_BTN"].shape[0]
        if scheme is None:
            scheme_B = draw_schemes(B, parse_schemes(data.schemes), generator, scheme_weights(data))
        else:
            scheme_B = torch.full((B,), SCHEMES.index(scheme), dtype=torch.long)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        masks, out = masked_forward(model, batch, scheme_B, data.mask_ratio, generator,
                                    all_sessions_in_graph=distributed and model.training, slices=slices)
        return neds_loss(out, batch["counts_BTN"], batch["behavior_BTC"], batch["labels_BJ"], masks,
                         spike_weight=data.spike_weight, behavior_weight=data.behavior_weight,
                         label_weight=data.label_weight, label_prior_logp_BJ=label_prior_logp_BJ,
                         label_capped_J=label_capped_J)

    def label_log_priors(self, data: NEDSDataConfig) -> dict[str, np.ndarray]:
        """Per session, the log class frequencies of each label on its train windows (one added
        per class, so no class has probability 0): ``{sid: (J, max classes)}``, -inf past a
        label's classes."""
        windows, mods, arrays = self.prepared(data)
        sizes = mods.num_classes
        out = {}
        for sid, w in windows.items():
            lab_KJ = arrays[sid].labels_KJ[w.indices("train")]
            logp = np.full((len(sizes), max(sizes, default=0)), -np.inf)
            for j, k in enumerate(sizes):
                y = lab_KJ[:, j]
                counts = np.bincount(y[y >= 0], minlength=k)[:k] + 1.0
                logp[j, :k] = np.log(counts / counts.sum())
            out[sid] = logp
        return out

    def loss(self, model: nn.Module, batch: Any, cfg: RunConfig):
        generator = torch.Generator().manual_seed(int(batch["mask_seed"]))
        loss, stats = self._loss(model, batch, cfg.data, generator)
        tokens = stats["count/spike"] + stats["count/behavior"] + stats["count/label"]
        return loss, {"tokens": int(tokens), "loss_spike": stats["loss/spike"],
                      "loss_behavior": stats["loss/behavior"], "loss_label": stats["loss/label"]}

    def flops_per_batch(self, model: nn.Module, batch: Any, cfg: RunConfig) -> float:
        from spikefm.families.neds.model import session_key
        from spikefm.train.mfu import params_by_session

        key = id(model)
        if key not in self._num_params:
            self._num_params[key] = params_by_session(model)
        shared, per_session = self._num_params[key]
        B, T, _ = batch["counts_BTN"].shape
        L = T * (1 + batch["behavior_BTC"].shape[-1]) + batch["labels_BJ"].shape[-1]
        # the shared core on every token; a session's stitcher only on its samples' spike tokens
        own = sum(per_session.get(session_key(s), 0) for s in batch["session_ids"])
        return 6.0 * (shared * B * L + own * T)

    def check_validation_data(self, cfg: RunConfig) -> None:
        """Refuse (ValueError) a run whose sessions have no val windows, before any training
        (early stopping found out after the first segment, and the folder it left was refused)."""
        self._val_items(cfg.data)

    def _val_items(self, data: NEDSDataConfig) -> list[tuple[str, int]]:
        from spikefm.data.windows import val_items

        return val_items(self.prepared(data)[0])

    def _val_loss(self, model, items: list[tuple[str, int]], cfg: RunConfig, rank: int, counter: int,
                  priors: dict[str, np.ndarray] | None, capped: list[list[bool]] | None = None,
                  slices: tuple[int, int] | None = None) -> tuple[float, list[list[bool]]]:
        """The validation loss of one batch of val windows: the loss under each of
        :func:`validation_schemes` (or the training mixture), summed, with fixed masks; and per
        scheme which labels were capped (``data.val_label_cap``), or, given ``capped``, with those
        decisions (:func:`neds_loss`'s ``label_capped_J``)."""
        windows, _, arrays = self.prepared(cfg.data)
        device = next(model.parameters()).device
        batch = _to(collate(windows, arrays, items), device)
        prior_BJ = _prior_logp(priors, batch, device)
        total, decisions = 0.0, []
        for i, scheme in enumerate(validation_schemes(cfg.data) or [None]):
            gen = torch.Generator().manual_seed(batch_seed(cfg.train.seed, rank, 2**40 + counter))
            loss, stats = self._loss(model, batch, cfg.data, gen, scheme, prior_BJ,
                                     None if capped is None or prior_BJ is None else capped[i], slices)
            total += float(loss)
            decisions.append(stats["label_capped"])
        return total, decisions

    def validate(self, model: nn.Module, cfg: RunConfig, rank: int, world_size: int
                 ) -> dict[str, tuple[float, float]]:
        """The loss on this rank's share of the ``val`` windows, with fixed masks (the same entries
        at every evaluation): ``val_loss`` is the mean over windows of the loss under each of
        :func:`validation_schemes` (summed over those schemes), or of the training loss. The
        windows go in batches of ``micro_batch_size(1)`` with a seed each; with several ranks each
        takes whole batches in turn with the same seeds, so the loss does not depend on the number
        of ranks, and runs the model on slices of its training micro-batch (no more memory than
        training; every rank runs the same number of forward passes: FSDP needs that)."""
        items = self._val_items(cfg.data)
        bs = cfg.train.micro_batch_size(1)
        num_batches = math.ceil(len(items) / bs)
        per_call = cfg.train.micro_batch_size(world_size)  # a rank's training micro-batch: its memory
        slices = (per_call, math.ceil(bs / per_call))
        priors = self.label_log_priors(cfg.data) if cfg.data.val_label_cap else None
        num = den = 0.0
        for i in range(rank, rank + world_size * math.ceil(num_batches / world_size), world_size):
            chunk = items[i * bs:(i + 1) * bs]
            total, _ = self._val_loss(model, chunk or items[:1], cfg, 0, i, priors, slices=slices)
            if chunk:
                num += total * len(chunk)
                den += len(chunk)
        return {"val_loss": (num, den)}

    def validate_windows(self, model: nn.Module, cfg: RunConfig) -> np.ndarray:
        """The validation loss of :meth:`validate` on each val window alone (one process), in
        :meth:`validate`'s window order: what ``finetune``'s ``one-se`` rule compares. With
        ``data.val_label_cap`` each window's labels are capped where :meth:`validate`'s batch of
        that window capped them, so the windows' mean is :meth:`validate`'s loss."""
        priors = self.label_log_priors(cfg.data) if cfg.data.val_label_cap else None
        items = self._val_items(cfg.data)
        bs = cfg.train.micro_batch_size(1)
        out = []
        for b in range(0, len(items), bs):
            capped = self._val_loss(model, items[b:b + bs], cfg, 0, b // bs, priors)[1] if priors else None
            out += [self._val_loss(model, [item], cfg, 0, b + k, priors, capped)[0]
                    for k, item in enumerate(items[b:b + bs])]
        return np.array(out)

    def describe(self, cfg: RunConfig) -> dict[str, Any]:
        corpus = _corpus(cfg.data)
        windows, mods, arrays = self.prepared(cfg.data)
        opts = window_options(cfg.data)
        info = {
            "corpus": str(corpus.path.resolve()),
            "corpus_manifest_sha256": corpus.manifest_hash,
            "sessions": {sid: w.num_units for sid, w in windows.items()},
            "modalities": mods.to_json(),
            "behavior_scaling": {sid: {"mean": a.mean_C.tolist(), "sd": a.sd_C.tolist()} for sid, a in arrays.items()},
            "window_options": {**opts, "split_fractions": list(opts["split_fractions"])},
            "num_windows": {sid: {s: int(w.indices(s).size) for s in ("train", "val", "test")}
                            for sid, w in windows.items()},
            "window_splits": {sid: {"bin_ms": int(w.bin_ms), "window_bins": w.num_bins, "align": w.align,
                                    "t_start_ms": [int(x) for x in w.t_start_ms],
                                    "split": [str(x) for x in w.split]} for sid, w in windows.items()},
        }
        if cfg.data.init_from:
            info["init_from"] = str(Path(cfg.data.init_from).resolve())
            info["inherited_window_splits"] = _inherited_splits(cfg.data.init_from, info["window_splits"])
        return info

    # -- outside the loop --------------------------------------------------------------------------

    def finetune_config(self, run_dir: str, corpus: str, session_id: str, *, freeze_core: bool = False,
                        from_scratch: bool = False, steps: int = 500) -> RunConfig:
        """The run that adapts the finished NEDS run ``run_dir`` to ``session_id``: same model,
        windows, masking and optimizer; the pretrained run's modalities written out; new session
        parameters on the pretrained core (frozen with ``freeze_core``), or with ``from_scratch``
        the single-session NEDS with the same settings. Warm-up is capped at a tenth of ``steps``."""
        from spikefm.train.runinfo import load_run_config

        pre = load_run_config(run_dir, model_cls=NEDSConfig, data_cls=NEDSDataConfig)
        if pre.family != self.name:
            raise ValueError(f"{run_dir} is a {pre.family!r} run; fine-tuning here needs a NEDS run")
        if not from_scratch and not (Path(run_dir) / "model.safetensors").is_file():
            raise ValueError(f"{run_dir}/model.safetensors not found; the pretraining run has not finished "
                             "(resume it with spikefm train ... --resume)")
        mods = _run_info(run_dir).get("modalities", {"channels": [], "labels": {}})
        behavior = ",".join(mods["channels"])

        def label_spec(keep=lambda name: True) -> str:  # data.labels naming each label with its classes
            return ";".join(f"{k}=" + ",".join(repr(float(v)) for v in vals)
                            for k, vals in mods["labels"].items() if keep(k))

        labels = label_spec()
        common = dict(corpus=str(corpus), sessions=session_id, behavior=behavior, labels=labels)
        if from_scratch:
            # a new model: only the pretrained run's channels and labels the session holds (a
            # fine-tuned one keeps them all, for the core's heads; resolve_modalities warns about
            # the others)
            from spikefm.corpus.reader import Corpus
            from spikefm.data.windows import session_label_names

            held = set(Corpus(corpus).session(session_id).get("behavior_names") or ())
            common["behavior"] = ",".join(c for c in mods["channels"] if c in held)
            if mods["labels"] and pre.data.align:
                have = set(session_label_names(corpus, session_id, pre.data.trial_table))
                common["labels"] = label_spec(lambda name: name in have)
            data = dataclasses.replace(pre.data, **common, init_from="", freeze_core=False)
        else:
            data = dataclasses.replace(pre.data, **common, init_from=str(Path(run_dir).resolve()),
                                       freeze_core=bool(freeze_core))
        warmup = pre.optim.warmup_steps
        optim = dataclasses.replace(pre.optim, warmup_steps=None if warmup is None else min(warmup, steps // 10))
        return RunConfig(family=self.name, model=pre.model, data=data, optim=optim,
                         train=dataclasses.replace(pre.train, steps=steps))

    def evaluate(self, run_dir: str, corpus: str, *, tasks: Sequence[str] | str | None = None,
                 session: str | None = None, baselines: bool = True, split: str = "test",
                 min_rate_hz: float = 0.5, rank: int = 3, progress: bool = False) -> dict[str, Any]:
        """Encoding, decoding and region classification of a finished run on one session's test
        windows, with baselines (:func:`spikefm.families.neds.evaluate.evaluate_run`)."""
        from spikefm.families.neds.evaluate import evaluate_run

        return evaluate_run(run_dir, corpus, tasks=tasks, session=session, baselines=baselines, split=split,
                            min_rate_hz=min_rate_hz, rank=rank, progress=progress)

    @staticmethod
    def check_tasks(tasks) -> None:
        """One-line ValueError for a name that is no NEDS task (studies check before any training)."""
        from spikefm.families.neds.evaluate import check_task_names

        check_task_names(tasks)

    @staticmethod
    def transfer_headline(benchmarks: dict[str, dict]) -> dict[str, dict[str, Any]]:
        """A transfer study's numbers of one seed (:func:`spikefm.families.neds.evaluate.transfer_headline`)."""
        from spikefm.families.neds.evaluate import transfer_headline

        return transfer_headline(benchmarks)

    def format_results(self, results_by_run: dict[str, dict[str, Any]]) -> str:
        from spikefm.families.neds.evaluate import format_results

        return format_results(results_by_run)


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _run_info(run_dir: str | Path) -> dict[str, Any]:
    from spikefm.train.runinfo import read_family_info

    return read_family_info(run_dir, what="a NEDS")


def load_pretrained_core(model: NEDS, run_dir: str | Path) -> list[str]:
    """Copy the shared core (everything outside ``sessions.``) of RUN_DIR/model.safetensors into
    ``model``, plus any session both hold with equal shapes. Returns the loaded names."""
    from safetensors.torch import load_file

    from spikefm.train.checkpoint import read_safetensors_header

    path = Path(run_dir) / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"data.init_from: {path} not found; expected a finished NEDS run directory")
    read_safetensors_header(path)  # a damaged file: one line naming it (load_file's error is not)
    state = load_file(str(path))
    own = dict(model.named_parameters())
    core = {k: v for k, v in state.items() if not k.startswith("sessions.")}
    bad = sorted(k for k in set(core) ^ {k for k in own if not k.startswith("sessions.")})
    bad += [k for k in core if k in own and tuple(core[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"data.init_from: {path} holds a model of other settings than this run's (its core "
                         f"differs at {bad[:5]}); give this run the model settings and modalities of that one "
                         "(its config.json: the same --preset, no --set model.*, the same data.behavior and "
                         "data.labels), or another data.init_from")
    same = {k: v for k, v in state.items() if k.startswith("sessions.") and k in own
            and tuple(v.shape) == tuple(own[k].shape)}
    with torch.no_grad():
        for k, t in {**core, **same}.items():
            own[k].copy_(t.to(own[k].device, own[k].dtype))
    return sorted(core) + sorted(same)
