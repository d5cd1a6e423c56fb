"""The masked NDT as a training family (``spikefm train --model ndt``).

Model config: :class:`spikefm.families.ndt.model.NDTConfig` (``--preset tiny|small|base``; vary a field
with ``--set model.n_layers=4``). Data config: :class:`NDTDataConfig`.

Shape legend: B batch, T bins per window, N units (padded to the batch maximum).

Data: every session in ``data.sessions`` is cut into windows of ``data.window_bins`` bins
(:func:`spikefm.data.windows.load_all_windows`, trial-aligned or continuous) with a seeded
train/val/test split per session. Training batches come from the ``train`` windows of all the
sessions (:class:`spikefm.data.windows.WindowBatcher`); ``validate`` scores the
``val`` windows; ``spikefm eval`` scores the ``test`` windows. The split of every window is written
into the run's ``config.json`` (``family_info.window_splits``) so evaluation uses exactly the
held-out windows even if the splitting code changes later.

Loss: each micro-batch carries a mask seed (derived from ``train.seed``, the rank and a counter
saved in the loader state), so the masks (:func:`spikefm.families.ndt.masking.draw_schemes` +
:func:`spikefm.families.ndt.masking.apply_masks`) are a pure function of the run's seed and position and
resume exactly. The loss is :func:`spikefm.families.ndt.masking.masked_poisson_loss` (per-scheme mean
Poisson NLL, schemes weighted equally); ``stats["tokens"]`` counts the masked (scored) entries.

Fine-tuning: with ``data.init_from=RUN_DIR`` the shared core (everything outside the per-session
read-in/read-out/embedding) is loaded from ``RUN_DIR/model.safetensors`` after the usual random
initialisation, and ``data.freeze_core=true`` stops its gradients. Session modules of the new run
are freshly initialised, unless the loaded run holds the same session (a second fine-tuning stage). See :mod:`spikefm.train.finetune`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from spikefm.families.ndt.batches import MaskedWindowLoader, collate_windows, mask_seed, move_batch
from spikefm.families.ndt.masking import CAUSAL_MODES, SCHEMES, apply_masks, draw_schemes, masked_poisson_loss
from spikefm.families.ndt.model import NDT, NDT_PRESETS, NDTConfig, ndt_preset
from spikefm.train.config import RunConfig
from spikefm.train.family import check_window_fits

__all__ = ["NDTDataConfig", "NDTFamily", "parse_schemes", "parse_label_classes", "window_options",
           "load_pretrained_core", "init_session_rates", "PROTOCOLS", "RUN_DEFAULTS"]

#: Optimizer and loop defaults of an NDT run (before --protocol and --set): the recipe measured in
#: the README (learning rate 3e-3, batches of 16 windows, 8,000 steps; fp32, since bf16 autocast
#: does not pay off for models this small on a CPU; pass train.precision=bf16 on a GPU).
RUN_DEFAULTS = ["optim.lr=3e-3", "train.batch_size=16", "train.steps=8000", "train.precision=fp32",
                "train.log_every=100", "train.ckpt_every=1000", "train.eval_every=1000"]


def parse_schemes(text: str) -> list[str]:
    """``"all"`` or comma-separated names from :data:`spikefm.families.ndt.masking.SCHEMES` -> list."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if names == ["all"]:
        return list(SCHEMES)
    bad = [s for s in names if s not in SCHEMES]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"data.schemes must be 'all' or distinct comma-separated names from "
                         f"{', '.join(SCHEMES)}; got {text!r}")
    return names


def _split_ids(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


@dataclass(frozen=True)
class NDTDataConfig:
    """Windows, masking and initialisation of an NDT run.

    Attributes:
        corpus: corpus directory (``spikefm corpus build`` output).
        sessions: comma-separated session ids; ``""`` = every session with rows in the corpus's
            ``train`` split (so its ``test`` sessions stay held out for fine-tuning).
        window_bins: T, bins per window (must be <= ``model.max_bins``).
        align: trial column (in the ``trials`` table) to align windows to; ``"auto"`` = the first
            of stimulus onset, go cue, target onset, trial start the table holds (continuous
            windows without trials); ``""`` = continuous, non-overlapping windows.
        trial_table: the session's trial table whose events ``align`` names (``trials``, the NWB
            default; recordings with other interval tables, e.g. ``encoding_table``, name theirs).
        pre_ms: window start before the event (ms, a multiple of the corpus bin width); the
            window spans ``-pre_ms .. window_bins * bin_ms - pre_ms`` around the event.
        event_rounding: ``"nearest"`` puts the window edges on the bin edge nearest the event
            (the event within half a bin of the event bin's start); ``"floor"`` puts the event
            inside the event bin (up to one bin late).
        split_fractions: (train, val, test) fractions of each session's windows.
        drop_nogo: leave out trials whose ``choice`` is 0 or missing (no-go trials).
        rt_range_ms: keep only trials whose reaction time (``first_movement_time`` - event) lies
            in (min, max) ms; ``none`` keeps every trial.
        min_rate_hz: leave out units firing below this mean rate over the session (0 keeps all).
        schemes: training masking schemes: ``"all"`` or comma-separated names.
        neuron_ratio, causal_ratio, intra_ratio: masking ratios (see ``apply_masks``).
        causal_mode: how the ``causal`` scheme picks its bins (``random`` time steps, a random
            ``prefix`` start, or the ``last`` bins; see :mod:`spikefm.families.ndt.masking`).
        split_seed: seed of the per-session train/val/test window split.
        decode_layer: transformer block (1-based) whose output the decoding tasks read; 0 = last.
        label_classes: ``"choice=-1,1"``-style lists of the label values decoding keeps (others
            are left out); empty keeps every value.
        init_from: a pretrained NDT run directory whose core weights initialise this run.
        freeze_core: keep the loaded core fixed (train the session parameters only).
        rate_init: start each new session's read-out bias at the log of its units' mean count per
            bin over the session's train windows (so a fresh stitcher starts at the right firing
            rates instead of spending its first steps finding them); ``false`` keeps PyTorch's
            random bias. Session parameters loaded from a checkpoint are never touched.
    """

    corpus: str = ""
    sessions: str = ""
    window_bins: int = 100
    align: str = "auto"
    trial_table: str = "trials"
    pre_ms: int = 500
    event_rounding: str = "nearest"
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    drop_nogo: bool = False
    rt_range_ms: tuple[float, float] | None = None
    min_rate_hz: float = 0.0
    schemes: str = "neuron,causal"
    neuron_ratio: float = 0.1
    causal_ratio: float = 0.6
    intra_ratio: float = 0.5
    causal_mode: str = "random"
    split_seed: int = 0
    decode_layer: int = 0
    label_classes: str = ""
    init_from: str = ""
    freeze_core: bool = False
    rate_init: bool = True

    def __post_init__(self) -> None:
        for name in ("corpus", "sessions", "align", "trial_table", "schemes", "init_from", "label_classes",
                     "causal_mode", "event_rounding"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"data.{name} must be a str, got {type(getattr(self, name)).__name__}")
        for name, lo in (("window_bins", 1), ("pre_ms", 0), ("split_seed", 0), ("decode_layer", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"data.{name} must be an int >= {lo}, got {v!r}")
        for name in ("neuron_ratio", "causal_ratio", "intra_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ValueError(f"data.{name} must be a number in (0, 1], got {v!r}")
        parse_schemes(self.schemes)
        if self.causal_mode not in CAUSAL_MODES:
            raise ValueError(f"data.causal_mode must be one of {', '.join(CAUSAL_MODES)}, got {self.causal_mode!r}")
        from spikefm.data.windows import _check_fractions, _check_window_options

        _check_fractions(self.split_fractions)
        _check_window_options(self.event_rounding, self.rt_range_ms, self.min_rate_hz)
        for flag in ("drop_nogo", "freeze_core", "rate_init"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"data.{flag} must be a bool (true/false), got {getattr(self, flag)!r}")
        parse_label_classes(self.label_classes)
        if self.sessions and not _split_ids(self.sessions):
            raise ValueError(f"data.sessions must be comma-separated session ids or empty, got {self.sessions!r}")
        if not isinstance(self.freeze_core, bool):
            raise TypeError(f"data.freeze_core must be a bool, got {self.freeze_core!r}")
        if self.freeze_core and not self.init_from:
            raise ValueError("data.freeze_core=true needs data.init_from=PRETRAINED_RUN_DIR; freezing a "
                             "randomly initialised core would train the session parameters on noise")


def _check_label_classes(data: "NDTDataConfig", windows: dict) -> None:
    """A label named in ``data.label_classes`` that none of the sessions' windows carry would be
    ignored without a word (a misspelt name, or continuous windows, which carry no trial labels):
    a one-line error for a new run, a warning for a fine-tuning (it inherits the setting from a run
    whose sessions had the label)."""
    named = parse_label_classes(data.label_classes)
    have = sorted(set().union(*(w.labels for w in windows.values())))
    missing = [name for name in named if name not in have]
    if not missing:
        return
    text = (f"data.label_classes names {', '.join(map(repr, missing))}, a trial label none of the sessions' windows "
            "carry (" + (f"their labels: {', '.join(have)}" if have else
                         "they carry no trial labels: continuous windows, or sessions without a trial table") + ")")
    if data.init_from:
        from spikefm.progress import warn_once

        warn_once(f"{text}; its decoding will have nothing to score on these sessions",
                  about=f"{Path(data.corpus).resolve()}|{data.sessions}", stacklevel=3)
        return
    raise ValueError(f"{text}; fix the name or leave it out of data.label_classes")


def parse_label_classes(text: str) -> dict[str, list[float | str]]:
    """``"choice=-1,1;block=0.2,0.8"`` -> {label: kept values} (numbers where they parse)."""
    out: dict[str, list[float | str]] = {}
    for part in [p.strip() for p in str(text).split(";") if p.strip()]:
        name, sep, values = part.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or len(vals) < 2:
            raise ValueError(f"data.label_classes must look like 'choice=-1,1' (a label and at least two "
                             f"values, ';' between labels), got {text!r}")
        parsed: list[float | str] = []
        for v in vals:
            try:
                parsed.append(float(v))
            except ValueError:
                parsed.append(v)
        out[name.strip()] = parsed
    return out


def window_options(data: NDTDataConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`spikefm.data.windows.load_all_windows` for this config."""
    return {"window_bins": data.window_bins, "align": data.align or None, "pre_ms": data.pre_ms,
            "table": data.trial_table, "split_fractions": tuple(data.split_fractions), "seed": data.split_seed,
            "event_rounding": data.event_rounding, "drop_nogo": data.drop_nogo,
            "rt_range_ms": None if data.rt_range_ms is None else tuple(data.rt_range_ms),
            "min_rate_hz": float(data.min_rate_hz)}


#: Named protocols: settings of a published evaluation, applied as overrides after the preset.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # Jiang et al. 2025 (NDT1 with multi-task masking on IBL): trials -0.5..+2.5 s around stimulus
    # onset (150 bins of 20 ms), an 8:1:1 trial split, intra-region ratio 0.3, the published NDT1
    # transformer (5 blocks, dropout 0.4), choice (-1 / +1, no-go trials left out) decoded by
    # logistic regression from the output of block 3 of 5, the forward-prediction walk over the
    # post-stimulus bins.
    "jiang2025": {
        "preset": "base",
        "overrides": ["data.window_bins=150", "data.pre_ms=500", "data.align=stim_on_time", "data.split_fractions=0.8,0.1,0.1",
                      "data.intra_ratio=0.3", "data.decode_layer=3", "data.drop_nogo=true",
                      "data.label_classes=choice=-1,1", "data.schemes=all", "model.n_layers=5",
                      "model.max_bins=150", "model.dropout=0.4"],
    },
}


class NDTFamily:
    """Family protocol implementation for :class:`spikefm.families.ndt.model.NDT` (see the module docstring)."""

    name = "ndt"
    model_config_cls = NDTConfig
    data_config_cls = NDTDataConfig
    #: ``spikefm finetune``'s ``auto`` also ranks the greedy weight average of its pretrained
    #: candidates (``--no-soup`` turns it off); chosen on tuning seeds 7, 8, 9 of the literal path,
    #: where it raised co-smoothing and the forward-prediction walk on each (README, NDT section).
    finetune_soup = True

    def __init__(self) -> None:
        self._data: NDTDataConfig | None = None
        self._windows_cache: dict[tuple, dict] = {}
        self._num_params: dict[int, int] = {}

    @staticmethod
    def preset(name: str) -> NDTConfig:
        return ndt_preset(name)

    @staticmethod
    def presets() -> list[str]:
        return list(NDT_PRESETS)

    @staticmethod
    def run_defaults(preset: str = "") -> list[str]:
        """Loop and optimizer defaults of every preset (before --set)."""
        return list(RUN_DEFAULTS)

    @staticmethod
    def protocol(name: str) -> dict[str, Any]:
        """``{"preset": ..., "overrides": [...]}`` of a named protocol (:data:`PROTOCOLS`)."""
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r} for ndt runs; protocols: {', '.join(PROTOCOLS)}")
        return {"preset": PROTOCOLS[name]["preset"], "overrides": list(PROTOCOLS[name]["overrides"])}

    # -- data ------------------------------------------------------------------------------------

    def sessions(self, data: NDTDataConfig) -> dict[str, int]:
        """Session id -> unit count (from the corpus manifest), in training order."""
        corpus = _corpus(data)
        ids = _split_ids(data.sessions) if data.sessions else corpus.session_ids("train")
        if not ids:
            raise ValueError(f"{corpus.path} has no session in its train split; pass data.sessions=ID,...")
        if len(set(ids)) != len(ids):
            raise ValueError(f"data.sessions lists a session twice: {data.sessions!r}")
        corpus.require_session_keys("num_units", needed_by="the per-session stitchers")
        out = {}
        for sid in ids:
            try:
                out[sid] = int(corpus.session(sid)["num_units"])
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
        return out

    def windows(self, data: NDTDataConfig) -> dict:
        """Session id -> :class:`~spikefm.data.windows.SessionWindows` (cached per config)."""
        from spikefm.data.windows import load_all_windows

        key = (str(Path(data.corpus).resolve()), data.sessions, tuple(sorted(window_options(data).items())))
        if key not in self._windows_cache:
            ids = list(self.sessions(data))
            self._windows_cache[key] = load_all_windows(_corpus(data), ids, **window_options(data))
        # on every call: the cache's key leaves data.label_classes out (it changes no window)
        _check_label_classes(data, self._windows_cache[key])
        return self._windows_cache[key]

    # -- model -----------------------------------------------------------------------------------

    @staticmethod
    def check_config(cfg: RunConfig) -> None:
        """One-line errors for data settings the model cannot serve (checked by ``run_config``, so
        before any data is made or any step trained, and again when the model is built)."""
        check_window_fits(cfg)
        if cfg.data.decode_layer > cfg.model.n_layers:
            raise ValueError(f"data.decode_layer={cfg.data.decode_layer} names a block the model does not have "
                             f"(model.n_layers={cfg.model.n_layers}); set data.decode_layer to 1..{cfg.model.n_layers} "
                             "(0 = the last) or raise model.n_layers")

    def build_model(self, cfg: RunConfig) -> nn.Module:
        self.check_config(cfg)
        self._data = cfg.data
        return NDT(cfg.model, self.sessions(cfg.data))

    def build_recorded_model(self, cfg: RunConfig, family_info: dict[str, Any]) -> nn.Module | None:
        """The finished run's model from its recorded sessions and unit counts (no data read)."""
        from spikefm.train.runinfo import recorded_session_units

        units = recorded_session_units(family_info)
        if units is None:
            return None
        self.check_config(cfg)
        return NDT(cfg.model, units)

    def init_weights(self, model: nn.Module) -> None:
        """Fresh NDT initialisation from the global RNG; then the pretrained core if ``init_from``."""
        self.init_for_loading(model)
        data = self._data
        if data is None:
            return
        loaded: list[str] = []
        if data.init_from:
            loaded = load_pretrained_core(model, data.init_from)
            if data.freeze_core:
                model.freeze_core(True)
        if data.rate_init:
            init_session_rates(model, self.windows(data), loaded=loaded)

    def init_for_loading(self, model: nn.Module) -> None:
        """Fresh initialisation only (buffers included), before a saved state dict overwrites the
        parameters: loading a fine-tuned run must not need its pretrained run directory."""
        fresh = NDT(model.cfg, model.session_units)
        device = next(model.parameters()).device
        with torch.no_grad():
            src = dict(fresh.named_parameters()) | dict(fresh.named_buffers())
            for name, t in list(model.named_parameters()) + list(model.named_buffers()):
                t.copy_(src[name].to(device))

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.layers)

    def train_loader(self, cfg: RunConfig, rank: int, world_size: int) -> MaskedWindowLoader:
        from spikefm.data.windows import WindowBatcher

        batcher = WindowBatcher(self.windows(cfg.data), batch_size=cfg.train.micro_batch_size(world_size),
                                seed=cfg.train.seed, split="train", rank=rank, world_size=world_size)
        return MaskedWindowLoader(batcher, cfg.train.seed, rank)

    # -- loss ------------------------------------------------------------------------------------

    def _masked_forward(self, model: nn.Module, batch: dict, data: NDTDataConfig, generator: torch.Generator,
                        slices: tuple[int, int] | None = None):
        """Masks for ``batch`` and the model's log rates; ``slices=(rows_per_call, calls)``: the
        masks drawn for the whole batch, the model run on slices of its rows
        (:func:`spikefm.train.dist.forward_in_slices`)."""
        counts_BTN = batch["counts_BTN"]
        valid_BN = batch["unit_valid_BN"]
        scheme_B = draw_schemes(counts_BTN.shape[0], parse_schemes(data.schemes), generator)
        mb = apply_masks(counts_BTN, valid_BN, batch["region_BN"], scheme_B, generator,
                         neuron_ratio=data.neuron_ratio, causal_ratio=data.causal_ratio,
                         intra_ratio=data.intra_ratio, causal_mode=data.causal_mode)
        # Under FSDP every rank must produce gradients for the same parameters (reduce-scatter
        # sizes must match), also for sessions missing from its batch.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        from spikefm.train.dist import forward_in_slices

        valid_BN = valid_BN.to(mb.inputs_BTN.device)
        ids = list(batch["session_ids"])
        B = counts_BTN.shape[0]
        parts = forward_in_slices(lambda lo, hi: model(
            mb.inputs_BTN[lo:hi], valid_BN[lo:hi], ids[lo:hi], mb.scheme_B[lo:hi], mb.causal_B[lo:hi],
            all_sessions_in_graph=distributed and model.training, input_mask_BTN=mb.input_mask_BTN[lo:hi]),
            B, *(slices or (B, 1)))
        return mb, (parts[0] if len(parts) == 1 else torch.cat(parts)).float()

    def loss(self, model: nn.Module, batch: Any, cfg: RunConfig):
        generator = torch.Generator().manual_seed(int(batch["mask_seed"]))
        mb, log_rates_BTN = self._masked_forward(model, batch, cfg.data, generator)
        loss, _ = masked_poisson_loss(log_rates_BTN, mb.targets_BTN, mb.loss_mask_BTN, mb.scheme_B)
        return loss, {"tokens": int(mb.loss_mask_BTN.sum())}

    def flops_per_batch(self, model: nn.Module, batch: Any, cfg: RunConfig) -> float:
        from spikefm.families.ndt.model import session_key
        from spikefm.train.mfu import params_by_session

        key = id(model)
        if key not in self._num_params:
            self._num_params[key] = params_by_session(model)
        shared, per_session = self._num_params[key]
        B, T, _ = batch["counts_BTN"].shape
        own = sum(per_session.get(session_key(s), 0) for s in batch["session_ids"])  # each sample its own
        return 6.0 * T * (shared * B + own)

    def check_validation_data(self, cfg: RunConfig) -> None:
        """Refuse (ValueError) a run whose sessions have no val windows, before any training."""
        from spikefm.data.windows import val_items

        val_items(self.windows(cfg.data))

    def validate(self, model: nn.Module, cfg: RunConfig, rank: int, world_size: int
                 ) -> dict[str, tuple[float, float]]:
        """Masked Poisson NLL sums on this rank's share of the ``val`` windows, per scheme.

        The windows go in batches of ``micro_batch_size(1)``, each with masks from a fixed seed of
        its own, so every evaluation of a run scores the same entries; with several ranks each
        takes whole batches in turn (rank r the batches r, r + world_size, ...) with the same
        seeds, so the scores do not depend on the number of ranks, and runs the model on slices
        of a rank's training micro-batch (no more memory than training). ``val_loss/<scheme>`` is the
        pooled NLL per scored entry of each scheme; ``val_loss`` (:meth:`combine_validation`)
        their unweighted mean, balanced across schemes like the training loss (a scheme that
        scores many entries, e.g. ``causal``, does not dominate it). Every rank runs the same
        number of forward passes (FSDP needs that).
        """
        from spikefm.data.windows import val_items

        windows = self.windows(cfg.data)
        items = val_items(windows)
        bs = cfg.train.micro_batch_size(1)
        num_batches = math.ceil(len(items) / bs)
        # no more rows per forward than a rank's training micro-batch (a batch is world_size of them)
        per_call = cfg.train.micro_batch_size(world_size)
        slices = (per_call, math.ceil(bs / per_call))
        device = next(model.parameters()).device
        sums = {name: [0.0, 0.0] for name in SCHEMES}
        for i in range(rank, rank + world_size * math.ceil(num_batches / world_size), world_size):
            chunk = items[i * bs:(i + 1) * bs]
            batch = move_batch(collate_windows(windows, chunk or items[:1]), device)
            gen = torch.Generator().manual_seed(mask_seed(cfg.train.seed, 0, 2**40 + i))
            mb, log_rates_BTN = self._masked_forward(model, batch, cfg.data, gen, slices)
            if not chunk:  # padding pass: every rank calls forward equally often
                continue
            _, stats = masked_poisson_loss(log_rates_BTN, mb.targets_BTN, mb.loss_mask_BTN, mb.scheme_B)
            for name in SCHEMES:
                if f"count/{name}" in stats:
                    sums[name][0] += stats[f"loss/{name}"] * stats[f"count/{name}"]
                    sums[name][1] += stats[f"count/{name}"]
        # every scheme on every rank (the loop adds them up by name; one nothing scored is left out)
        return {f"val_loss/{name}": (num, den) for name, (num, den) in sums.items()}

    @staticmethod
    def combine_validation(means: dict[str, float]) -> dict[str, float]:
        """``val_loss``: the unweighted mean of the per-scheme losses :meth:`validate` scored."""
        per_scheme = [means[f"val_loss/{name}"] for name in SCHEMES if f"val_loss/{name}" in means]
        return {"val_loss": sum(per_scheme) / len(per_scheme)} if per_scheme else {}

    def describe(self, cfg: RunConfig) -> dict[str, Any]:
        corpus = _corpus(cfg.data)
        windows = self.windows(cfg.data)
        opts = window_options(cfg.data)
        info = {
            "corpus": str(corpus.path.resolve()),
            "corpus_manifest_sha256": corpus.manifest_hash,
            "sessions": self.sessions(cfg.data),
            "window_options": {**opts, "split_fractions": list(opts["split_fractions"])},
            "num_windows": {sid: {s: int(w.indices(s).size) for s in ("train", "val", "test")}
                            for sid, w in windows.items()},
            # Same layout as spikefm.data.windows.save_splits's "sessions" (apply_splits reads it).
            "window_splits": {sid: {"bin_ms": int(w.bin_ms), "window_bins": w.num_bins, "align": w.align,
                                    "t_start_ms": [int(x) for x in w.t_start_ms],
                                    "split": [str(x) for x in w.split]}
                              for sid, w in windows.items()},
            # distinct regions per session: with fewer than 2 the region schemes fall back to
            # neuron masks, so their prompts stay untrained (evaluate.trained_schemes reads this)
            "session_regions": {sid: int(np.unique(w.region_ids[w.region_ids >= 0]).size)
                                for sid, w in windows.items()},
        }
        if cfg.data.init_from:
            info["init_from"] = str(Path(cfg.data.init_from).resolve())
        return info

    # -- outside the loop --------------------------------------------------------------------------

    def finetune_config(self, run_dir: str, corpus: str, session_id: str, *, freeze_core: bool = False,
                        from_scratch: bool = False, steps: int = 500) -> RunConfig:
        """The run that adapts the finished NDT run ``run_dir`` to ``session_id`` of ``corpus``.

        Keeps the run's model config, window/masking options, optimizer and batch settings, trains
        only on ``session_id`` (fresh session parameters) and starts from the pretrained core
        (``data.init_from``; frozen with ``freeze_core``). With ``from_scratch`` nothing is loaded:
        the single-session baseline with exactly the same settings. Warm-up is capped at a tenth
        of ``steps``.
        """
        from spikefm.train.runinfo import load_run_config

        pre = load_run_config(run_dir, model_cls=NDTConfig, data_cls=NDTDataConfig)
        if pre.family != self.name:
            raise ValueError(f"{run_dir} is a {pre.family!r} run; fine-tuning here needs an NDT run")
        if not from_scratch and not (Path(run_dir) / "model.safetensors").is_file():
            raise ValueError(f"{run_dir}/model.safetensors not found; the pretraining run has not finished "
                             "(resume it with spikefm train ... --resume)")
        if from_scratch:
            # a new run: only the label class lists of labels the session holds (a new run refuses
            # the others, which a fine-tuning, keeping the pretrained run's, is only warned about)
            label_classes = pre.data.label_classes
            if label_classes and pre.data.align:
                from spikefm.data.windows import session_label_names

                held = set(session_label_names(corpus, session_id, pre.data.trial_table))
                label_classes = ";".join(part for part in label_classes.split(";")
                                         if part.strip() and part.partition("=")[0].strip() in held)
            data = dataclasses.replace(pre.data, corpus=str(corpus), sessions=session_id, init_from="",
                                       freeze_core=False, label_classes=label_classes)
        else:
            data = dataclasses.replace(pre.data, corpus=str(corpus), sessions=session_id,
                                       init_from=str(Path(run_dir).resolve()), freeze_core=bool(freeze_core))
        warmup = pre.optim.warmup_steps
        optim = dataclasses.replace(pre.optim, warmup_steps=None if warmup is None else min(warmup, steps // 10))
        return RunConfig(family=self.name, model=pre.model, data=data, optim=optim,
                         train=dataclasses.replace(pre.train, steps=steps))

    def evaluate(self, run_dir: str, corpus: str, *, tasks: Sequence[str] | str | None = None,
                 session: str | None = None, save_predictions: str | None = None,
                 baselines: bool = True, split: str = "test", decode_layer: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
        """The neural-prediction benchmark of a finished run on one session's test windows
        (:func:`spikefm.families.ndt.evaluate.evaluate_run`); ``decode_layer`` (1-based block,
        0 = last) defaults to the run's ``data.decode_layer``, label classes to its
        ``data.label_classes``; ``progress``: a display of the tasks as they run."""
        from spikefm.corpus.reader import Corpus
        from spikefm.families.ndt.evaluate import evaluate_run
        from spikefm.train.checkpoint import load_exported_model
        from spikefm.train.runinfo import load_run_config

        cfg = load_run_config(run_dir, model_cls=NDTConfig, data_cls=NDTDataConfig)
        model = load_exported_model(run_dir, self, cfg)
        layer = cfg.data.decode_layer if decode_layer is None else decode_layer
        return evaluate_run(model, run_dir, Corpus(corpus), tasks=tasks, session=session,
                            save_predictions=save_predictions, baselines=baselines, split=split,
                            decode_layer=layer, label_classes=parse_label_classes(cfg.data.label_classes),
                            progress=progress)

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """One-line ValueError for a name that is no NDT task (before anything is trained)."""
        from spikefm.families.ndt.tasks import check_task_names

        check_task_names(tasks)

    @staticmethod
    def task_scores(results: dict, who: str = "model") -> dict[str, float]:
        """One number per task of a benchmark (:func:`spikefm.families.ndt.evaluate.task_scores`)."""
        from spikefm.families.ndt.evaluate import task_scores

        return task_scores(results, who)

    @staticmethod
    def task_score_unit(task: str) -> str:
        """What :meth:`task_scores`' number of ``task`` is: bits per spike of a prediction task,
        accuracy of label decoding, mean single-trial R² of behaviour decoding."""
        from spikefm.families.ndt.tasks import BEHAVIOR_TASK, PREDICTION_TASKS

        if task in PREDICTION_TASKS:
            return "bps_pooled, bits per spike"
        if task == BEHAVIOR_TASK:
            return "mean single-trial R²"
        return "accuracy" if task.endswith("-decoding") else ""

    @staticmethod
    def transfer_headline(benchmarks: dict[str, dict]) -> dict[str, dict[str, Any]]:
        """A transfer study's numbers of one seed (:func:`spikefm.families.ndt.evaluate.transfer_headline`)."""
        from spikefm.families.ndt.evaluate import transfer_headline

        return transfer_headline(benchmarks)

    def format_results(self, results_by_run: dict[str, dict[str, Any]]) -> str:
        """One table of several runs' :meth:`evaluate` results (baselines from the first)."""
        from spikefm.families.ndt.tasks import format_benchmark_table

        # the split each was scored on (eval --split val: validation windows), for the table's words
        return format_benchmark_table({name: {**r.get("results", r), **({"scored_split": r["split"]} if "split" in r else {})}
                                       for name, r in results_by_run.items()})


def init_session_rates(model: NDT, windows_by_session: dict, *, loaded: Sequence[str] = ()) -> list[str]:
    """Set each session's read-out bias to log(mean count per bin) of its units on its train windows
    (:meth:`~spikefm.data.windows.SessionWindows.train_log_rates`).

    Args:
        model: an NDT whose sessions include those of ``windows_by_session``.
        windows_by_session: session id -> :class:`~spikefm.data.windows.SessionWindows`.
        loaded: names of tensors loaded from a checkpoint (:func:`load_pretrained_core`); sessions
            whose read-out bias is among them keep it.

    Returns:
        The session ids that were set.
    """
    from spikefm.families.ndt.model import session_key

    done = []
    units = model.session_units
    loaded = set(loaded)
    for sid, w in windows_by_session.items():
        if sid not in units:
            continue
        key = session_key(sid)
        if f"sessions.{key}.read_out.bias" in loaded:
            continue
        log_rate_N = w.train_log_rates()
        if log_rate_N is None:
            continue
        n = log_rate_N.shape[0]
        if n > units[sid]:  # fewer is fine: a firing-rate filter keeps the first n columns in use
            raise ValueError(f"session {sid!r}: the model has {units[sid]} units, its windows {n}; "
                             "build the model from the same corpus and data config")
        bias = model.sessions[key].read_out.bias
        with torch.no_grad():
            bias[:n] = torch.as_tensor(log_rate_N, dtype=bias.dtype)
        done.append(sid)
    return done


def load_pretrained_core(model: NDT, run_dir: str | Path) -> list[str]:
    """Copy the shared core of RUN_DIR/model.safetensors into ``model``, and the parameters of any
    session both hold with the same shapes (a second fine-tuning stage continues the first's
    session parameters; a new session keeps its fresh initialisation).

    Returns:
        The names of the loaded tensors.

    Raises:
        ValueError: no exported model there, or its core does not fit ``model`` (other config).
    """
    from safetensors.torch import load_file

    from spikefm.train.checkpoint import read_safetensors_header

    path = Path(run_dir) / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"data.init_from: {path} not found; expected a finished NDT run directory")
    read_safetensors_header(path)  # a damaged file: one line naming it (load_file's error is not)
    state = load_file(str(path))
    saved = {k: v for k, v in state.items() if not k.startswith("sessions.")}
    everything = dict(list(model.named_parameters()) + list(model.named_buffers()))
    own = {k: t for k, t in everything.items() if not k.startswith("sessions.")}
    same_session = {k: v for k, v in state.items() if k.startswith("sessions.") and k in everything
                    and tuple(v.shape) == tuple(everything[k].shape)}
    missing = sorted(set(own) - set(saved) - {"rope_cos", "rope_sin"})
    extra = sorted(set(saved) - set(own))
    bad = [k for k in saved if k in own and tuple(saved[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        raise ValueError(f"data.init_from: {path} holds a model of other settings than this run's (its core "
                         f"differs: missing {missing[:5]}, unexpected {extra[:5]}, other shapes {bad[:5]}); give "
                         "this run the model settings of that one (its config.json: the same --preset, no --set "
                         "model.*), or another data.init_from")
    with torch.no_grad():
        for k, t in saved.items():
            own[k].copy_(t.to(own[k].device, own[k].dtype))
        for k, t in same_session.items():
            everything[k].copy_(t.to(everything[k].device, everything[k].dtype))
    return sorted(saved) + sorted(same_session)


def _corpus(data: NDTDataConfig):
    from spikefm.corpus.reader import Corpus

    if not data.corpus:
        raise ValueError("data.corpus is empty; pass --data CORPUS_DIR")
    return Corpus(data.corpus)

