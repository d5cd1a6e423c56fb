"""The autoregressive spike language model as a training family (``spikefm train --model ar``).

Model config: :class:`spikefm.families.ar.model.LlamaConfig` (``--preset`` picks one of
``LLAMA_PRESETS``; ``--set model.n_layers=2`` overrides a field). Data config:
:class:`ARDataConfig`. Batches are (inputs, targets) token windows from
:class:`spikefm.families.ar.loader.ARTokenLoader` (plus each window's (num_units, phase) when the
model has ``unit_count_prefix``); the loss is the mean next-token cross-entropy in nats.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spikefm.argtypes import is_int
from spikefm.families.ar.model import LLAMA_PRESETS, Llama, LlamaConfig, flops_per_token, llama_preset
from spikefm.families.ar.tokens import VOCAB_SIZE
from spikefm.train.config import RunConfig

#: The preset of ``spikefm train --model ar`` without ``--preset`` (see ``ARFamily.default_preset``).
DEFAULT_PRESET = "tiny-bin-prefix"

#: Loop and optimizer defaults of the CPU-sized presets (``tiny``, ``tiny-bin``,
#: ``tiny-bin-prefix``): the recipe measured on held-out synthetic sessions in
#: ``benchmarks/bench_ar_transfer.py`` (README, "AR on held-out sessions"): 250 steps of 8
#: sequences (1M tokens at ``data.seq_len=512``), peak lr 3e-3, fp32 (torch's bf16 matmuls are slow
#: on CPUs without bf16 instructions). Warm-up is left at the loop's default, a tenth of the run
#: (25 steps here; the benchmark used 20), so that a shorter ``--steps`` stays valid. The other
#: presets keep the loop's defaults (lr 3e-4, 1,000 steps, bf16), sized for GPUs.
CPU_RUN_DEFAULTS = ["optim.lr=3e-3", "train.steps=250", "train.batch_size=8", "train.precision=fp32"]


@dataclass(frozen=True)
class ARDataConfig:
    """Where the tokens come from.

    Attributes:
        corpus: corpus directory (``spikefm corpus build`` output).
        seq_len: context length in tokens (each bin is num_units + 1 tokens).
        split: corpus split to train on.
        token_cache: read through the memory-mapped token cache in CORPUS_DIR/.cache (built on
            first use, one byte per token); false for read-only corpus folders.
        permute_units: augmentation: every row's units in a random order (one permutation per
            row and epoch, the same in all its bins).
    """

    corpus: str = ""
    seq_len: int = 512
    split: str = "train"
    token_cache: bool = True
    permute_units: bool = False

    def __post_init__(self):
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ValueError(f"data.seq_len must be an int >= 2, got {self.seq_len!r}")
        if self.split not in ("train", "test"):
            raise ValueError(f"data.split must be 'train' or 'test', got {self.split!r}")


class ARFamily:
    name = "ar"
    model_config_cls = LlamaConfig
    data_config_cls = ARDataConfig

    #: ``preset(name)`` -> LlamaConfig (ValueError listing the presets for an unknown name).
    preset = staticmethod(llama_preset)

    @staticmethod
    def presets() -> list[str]:
        return list(LLAMA_PRESETS)

    @staticmethod
    def default_preset() -> str:
        """``tiny-bin-prefix``: on held-out synthetic sessions it beats the plain ``tiny`` layout,
        the 1-gram and the 9-gram (README, AR section); ``--preset tiny`` is the plain,
        Hugging Face-exportable layout."""
        return DEFAULT_PRESET

    @staticmethod
    def run_defaults(preset: str = "") -> list[str]:
        """:data:`CPU_RUN_DEFAULTS` for the ``tiny*`` presets; none (the loop's) for the others."""
        return list(CPU_RUN_DEFAULTS) if preset.startswith("tiny") else []

    def build_model(self, cfg: RunConfig) -> nn.Module:
        return Llama(cfg.model)

    def init_weights(self, model: nn.Module) -> None:
        model.init_weights()

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.layers)

    def train_loader(self, cfg: RunConfig, rank: int, world_size: int):
        from spikefm.families.ar.loader import ARTokenLoader
        from spikefm.train.dist import broadcast_object, raise_rank_zero_error

        def make():
            return ARTokenLoader(_corpus(cfg), seq_len=cfg.data.seq_len,
                                 batch_size=cfg.train.micro_batch_size(world_size),
                                 seed=cfg.train.seed, rank=rank, world_size=world_size,
                                 split=cfg.data.split, token_cache=cfg.data.token_cache,
                                 permute_units=cfg.data.permute_units,
                                 unit_count_prefix=cfg.model.unit_count_prefix)

        # Rank 0 builds the token cache (if missing) while the others wait, so it is built once; a
        # refusal there (e.g. fewer row groups than ranks) reaches every rank as the same one-line
        # error instead of leaving the others waiting until the connection breaks.
        loader, error, failure = None, None, None
        if rank == 0:
            try:
                loader = make()
            except ValueError as exc:
                error = str(exc)
            except OSError as exc:  # the others must hear of it too, or they wait for the dead peer
                error, failure = str(exc), exc
        error = broadcast_object(error)
        if failure is not None:
            raise failure  # as it is (an operation that failed, not a refusal)
        raise_rank_zero_error(error)  # printed once, by rank 0
        return loader if loader is not None else make()

    def loss(self, model: nn.Module, batch: Any, cfg: RunConfig):
        x_BL, y_BL = batch[0].long(), batch[1].long()  # the loader sends uint8 tokens
        # (num_units, phase) of each window when the model has a unit-count prefix
        logits_BLV = model(x_BL, prefix_B2=batch[2]) if len(batch) > 2 else model(x_BL)
        loss = F.cross_entropy(logits_BLV.float().reshape(-1, logits_BLV.shape[-1]),
                               y_BL.reshape(-1))
        return loss, {"tokens": int(y_BL.numel())}

    def flops_per_batch(self, model: nn.Module, batch: Any, cfg: RunConfig) -> float:
        """Training FLOPs of the batch, attention counted causally (the keys each query sees),
        so ``mfu`` in metrics.jsonl is the honest figure; see :func:`flops_per_token`."""
        x_BL = batch[0]
        return flops_per_token(cfg.model, x_BL.shape[1], causal=True) * x_BL.numel()

    def describe(self, cfg: RunConfig) -> dict[str, Any]:
        if cfg.model.vocab_size < VOCAB_SIZE:  # before the run folder is made (it crashed in step 1)
            raise ValueError(f"model.vocab_size must be at least {VOCAB_SIZE} (spike tokens are counts "
                             f"0-254 and the bin separator 255), got {cfg.model.vocab_size}; drop the "
                             "--set or give 256")
        corpus = _corpus(cfg)
        return {"corpus": str(corpus.path.resolve()), "corpus_manifest_sha256": corpus.manifest_hash,
                "bin_ms": corpus.manifest.get("bin_ms"),  # what eval and generate check a corpus against
                "train_tokens": corpus.num_tokens(cfg.data.split),
                "num_sessions": len(corpus.session_ids(cfg.data.split))}


    # -- outside the loop --------------------------------------------------------------------------

    @staticmethod
    def claims_folder(config: dict[str, Any]) -> bool:
        """True for a Hugging Face Llama folder's config.json (e.g. the published Neural Pile models)."""
        return config.get("model_type") == "llama" or "LlamaForCausalLM" in config.get("architectures", [])

    @staticmethod
    def load_foreign(path: str, device: str = "cpu") -> nn.Module:
        from spikefm.families.ar.hf import load_hf

        return load_hf(path, device=device)

    def load(self, path: str, device: str = "cpu") -> tuple[nn.Module, RunConfig | None]:
        """(model in eval mode, RunConfig or None) from a run directory or a Hugging Face folder."""
        from spikefm.train.checkpoint import load_exported_model
        from spikefm.train.runinfo import load_run_config, read_run_info

        info = read_run_info(path)
        if "family" not in info and self.claims_folder(info):
            return self.load_foreign(path, device=device).eval(), None
        if "family" not in info:  # a model folder from elsewhere, not a Llama
            kind = info.get("model_type") or ", ".join(map(str, info.get("architectures") or [])) or "unknown"
            raise ValueError(f"{path} holds a model of type {kind!r}, not a spikefm run or a Hugging Face "
                             f"Llama folder (model_type 'llama'); generation and scoring need one of those")
        if info.get("family") != self.name:
            raise ValueError(f"{path} is a {info.get('family')!r} run; expected an autoregressive "
                             f"({self.name}) run or a Hugging Face Llama folder")
        cfg = load_run_config(path, model_cls=LlamaConfig, data_cls=ARDataConfig)
        model = load_exported_model(path, self, cfg, device=device)
        model.run_config = cfg
        model.run_dir = str(path)
        model.train_bin_ms = _recorded_bin_ms(path, None)  # as recorded (no corpus read); save_hf records it
        return model, cfg

    def evaluate_baselines(self, corpus: str, *, split: str = "test", ngram: Sequence[int] = (1, 9),
                           max_tokens: int | None = None, max_train_tokens: int | None = None
                           ) -> dict[str, Any]:
        """Cross-entropy of the n-gram baselines (fitted on the train split) and, on synthetic
        corpora, the oracle, on the tokens :meth:`evaluate` scores: ``{"<n>-gram": ..., "oracle": ...}``."""
        from spikefm.corpus.reader import Corpus
        from spikefm.families.ar.evaluate import evaluate_ngram, evaluate_oracle, fit_ngram, require_rows

        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if is_int(ngram):  # one order (ngram=2), as a list of one
            ngram = [ngram]
        if isinstance(ngram, str) or not all(is_int(o) for o in ngram):
            raise TypeError(f"ngram must be n-gram orders, e.g. [1, 9], got {ngram!r}")
        orders = [int(o) for o in ngram]
        if any(not 1 <= o <= 9 for o in orders):
            raise ValueError(f"n-gram orders must be in 1..9, got {list(ngram)!r}")
        data = Corpus(corpus)
        require_rows(data, split)
        results = {}
        for order in orders:
            ng = fit_ngram(data, order, max_train_tokens=max_train_tokens)
            results[f"{order}-gram"] = evaluate_ngram(ng, data, split=split, max_tokens=max_tokens)
        oracle = evaluate_oracle(data, split=split, max_tokens=max_tokens)
        if oracle is not None:
            results["oracle"] = oracle
        return results

    def evaluate(self, run_dir: str, corpus: str, *, split: str = "test", ngram: Sequence[int] = (),
                 max_tokens: int | None = None, max_train_tokens: int | None = None,
                 seq_len: int | None = None, baselines: dict[str, Any] | None = None,
                 permutations: int = 0, compare_run: str | None = None,
                 compare_data: str | None = None, progress: bool = False) -> dict[str, Any]:
        """Cross-entropy of the model, the n-gram baselines and (on synthetic corpora) the oracle,
        on exactly the same tokens (:mod:`spikefm.families.ar.evaluate`).

        Args:
            run_dir: an AR run directory or a Hugging Face Llama folder.
            corpus: corpus folder; split: its split to score.
            ngram: n-gram orders (1..9) to fit on the train split and score beside the model.
            max_tokens: score only the first rows up to this many tokens.
            max_train_tokens: n-gram training tokens cap.
            seq_len: context of a Hugging Face model (runs use their own; default 512).
            baselines: results of :meth:`evaluate_baselines` on the same split and tokens, to
                reuse instead of ``ngram`` (the oracle is then not recomputed either).
            permutations: also score the model on the same rows with their units in this many
                random orders (permutation k of row i drawn from (k, i)), pooled as
                ``"model-permuted"``: close to ``"model"`` when the model learned no unit order.
            compare_run: a second run, scored the same way on ``compare_data`` (default: the
                corpus it was trained on), reported under ``"compare"``: e.g. the same recipe
                trained on a corpus built with ``--split row`` from the same recordings, so that
                held-out-session and held-out-row scores sit side by side (each corpus's split
                kind is recorded as ``"held_out"``).
            compare_data: the corpus to score ``compare_run`` on.
            progress: progress bar.

        Returns:
            ``{"family": "ar", "run_dir", "corpus", "split", "held_out", "seq_len", "max_tokens",
            "max_train_tokens", "permutations", "results": {"model": ..., "<n>-gram": ...,
            "oracle": ...}}`` (``run_dir`` and ``corpus`` as absolute paths; each result a
            cross-entropy summary, bits and nats per token), plus ``"compare"`` (the same for
            ``compare_run``) when given.

        Raises:
            ValueError: a bad option or input, before anything is scored (one line).
        """
        from spikefm.corpus.reader import Corpus
        from spikefm.families.ar.evaluate import evaluate_model, require_rows

        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' (the corpus's splits; --split val is for the "
                             f"masked families, ndt and neds), got {split!r}")
        if compare_data is not None and compare_run is None:
            raise ValueError("compare_data (--compare-data) names the corpus of compare_run "
                             "(--compare-run); pass the run to compare too")
        if max_train_tokens is not None and not ngram and baselines is None:
            raise ValueError("max_train_tokens (--max-train-tokens) caps the n-gram baselines' training tokens, "
                             "and no n-gram is fitted; give the orders too (--ngram 1,9) or drop it")
        if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 0:
            raise ValueError(f"permutations must be an int >= 0, got {permutations!r}")
        # Every input is checked before anything is scored (a bad --data or a second run that cannot
        # be scored was found only after minutes of scoring): this corpus and run, then the compared
        # run and its corpus (its weights loaded here to be checked, then again to score in their turn).
        data = Corpus(corpus)
        require_rows(data, split)  # before the model and the baselines are loaded or fitted
        model, cfg = self.load(run_dir)
        _check_scorable(run_dir, model)
        _check_bin_width(run_dir, cfg.data.corpus if cfg is not None else None, data, model=model)
        _warn_if_rebuilt(run_dir, data)
        scored_len = _scoring_seq_len(run_dir, model, cfg, seq_len)
        if compare_run is not None:
            compare_cfg = _compare_run_config(compare_run, compare_data)
            named = "--compare-data" if compare_data else f"--compare-run {compare_run}'s corpus"
            compare_data = compare_data or compare_cfg.data.corpus
            try:
                other_data = Corpus(compare_data)
            except ValueError as exc:
                raise ValueError(f"{named} {exc}") from None
            require_rows(other_data, split)
            if compare_cfg is not None:
                _check_bin_width(compare_run, compare_cfg.data.corpus, other_data)
            other_model, _ = self.load(compare_run)  # scorable? (freed before anything is scored)
            _check_scorable(compare_run, other_model)
            del other_model
        if baselines is None:
            baselines = self.evaluate_baselines(corpus, split=split, ngram=ngram, max_tokens=max_tokens,
                                                max_train_tokens=max_train_tokens)
        results = {"model": evaluate_model(model, data, split=split, seq_len=scored_len, max_tokens=max_tokens,
                                           progress=progress)}
        if permutations:
            results["model-permuted"] = evaluate_model(
                model, data, split=split, seq_len=scored_len, max_tokens=max_tokens, progress=progress,
                unit_permutations=permutations)
        results.update(baselines)
        out = {"family": self.name, "run_dir": str(Path(run_dir).resolve()), "corpus": str(data.path.resolve()),
               "split": split, "held_out": _held_out(data, split), "seq_len": scored_len,
               "max_tokens": max_tokens, "max_train_tokens": max_train_tokens, "permutations": permutations,
               "results": results}
        if compare_run is not None:
            del model  # one model in memory at a time
            _check_comparable(data, other_data)
            out["compare"] = self.evaluate(compare_run, compare_data, split=split, ngram=ngram,
                                           max_tokens=max_tokens, max_train_tokens=max_train_tokens,
                                           seq_len=seq_len, permutations=permutations, progress=progress)
        return out

    def format_results(self, results_by_run: dict[str, dict[str, Any]]) -> str:
        """Bits per token of each run's model, then the baselines (n-grams, oracle) of the first;
        for a result with ``"compare"``, one table of both (one row per held-out kind and scorer)."""
        from spikefm.families.ar.xent import format_table

        first = next(iter(results_by_run.values()))
        if "compare" in first:
            return _format_comparison(first, first["compare"])
        columns: dict[str, dict] = {}
        for name, res in results_by_run.items():
            columns[name] = res["results"]["model"]
            if "model-permuted" in res["results"]:
                columns[f"{name} (units permuted)"] = res["results"]["model-permuted"]
        for name, r in first["results"].items():
            if name not in ("model", "model-permuted"):  # the model's columns are named after its run, above
                columns.setdefault(name, r)
        return format_table(columns, title=f"cross-entropy on the {first.get('split', 'test')} split (bits/token)")


def _warn_if_rebuilt(run_dir, data) -> None:
    """Warn when ``data`` is the corpus the run trained on, at the same place, but rebuilt since
    (its manifest hash differs): its held-out split may now hold rows the run trained on, and the
    score was given without a word."""
    from spikefm.train.runinfo import read_run_info

    try:
        fam = read_run_info(run_dir).get("family_info") or {}
    except (OSError, ValueError):
        return  # a Hugging Face folder: no record of its training corpus
    trained_on, recorded = fam.get("corpus"), fam.get("corpus_manifest_sha256")
    if not trained_on or not recorded or recorded == data.manifest_hash:
        return
    if Path(trained_on).resolve() == data.path.resolve():
        warnings.warn(f"{data.path} changed since the run trained on it (its manifest hash differs: rebuilt?), so its "
                      "held-out rows may include rows the run trained on; evaluate on the corpus the run read, or "
                      "train again on this one", RuntimeWarning, stacklevel=3)


def _check_scorable(run_dir, model) -> None:
    """One-line errors, before any baseline is fitted or token scored, for a model that cannot
    score spike tokens: a vocabulary without them all, or weights that are not finite."""
    import torch

    from spikefm.families.ar.tokens import VOCAB_SIZE

    vocab = model.cfg.vocab_size
    if vocab < VOCAB_SIZE:
        raise ValueError(f"{run_dir}: the model's vocabulary has {vocab} tokens; spike tokens need {VOCAB_SIZE} (counts "
                         "0-254 and the separator 255), so it cannot score them: evaluate a model trained on them")
    bad = next((name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise ValueError(f"{run_dir}: the model's weights hold NaN or infinite values (first in {bad}): they are "
                         "damaged or its training diverged; nothing was scored: evaluate an earlier run or retrain")


def _recorded_bin_ms(run_dir, trained_on: str | None) -> int | None:
    """The bin width a run was trained on: its family info's ``bin_ms`` (recorded at training
    time), else, for runs from before it was recorded, its training corpus's (``trained_on``; None:
    not looked at) when that is still readable and the same corpus (its manifest hash); None when
    unknown."""
    from spikefm.corpus.reader import Corpus
    from spikefm.train.runinfo import read_run_info

    try:
        info = read_run_info(run_dir).get("family_info") or {}
    except (ValueError, OSError):
        return None
    recorded = info.get("bin_ms") if isinstance(info, dict) else None
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
        return recorded
    if trained_on is None:
        return None
    try:
        train_corpus = Corpus(trained_on)
    except (ValueError, OSError):
        return None
    if info.get("corpus_manifest_sha256") is None or train_corpus.manifest_hash != info.get("corpus_manifest_sha256"):
        return None  # a relative path read from elsewhere, or a rebuilt corpus: not surely the training corpus
    return train_corpus.manifest.get("bin_ms")


def _check_bin_width(run_dir, trained_on: str | None, data, *, fix: str | None = None, model=None) -> None:
    """A token model reads one count per unit per bin: refuse a corpus binned at another width
    than the one it was trained on (:func:`_recorded_bin_ms` of a run; for a Hugging Face folder
    (``trained_on`` None) the ``train_bin_ms`` its config.json records, when ``save_hf`` wrote it).
    ``fix``: what to do instead, ``{bin_ms}`` standing for the training width (default: score a
    corpus of that width)."""
    if trained_on is not None:
        trained_bin, where = _recorded_bin_ms(run_dir, trained_on), trained_on
    else:
        trained_bin, where = getattr(model, "train_bin_ms", None), "as its config.json records"
    if trained_bin is not None and trained_bin != data.manifest.get("bin_ms"):
        raise ValueError(f"{run_dir} was trained on {trained_bin} ms bins ({where}), {data.path} is binned at "
                         f"{data.manifest.get('bin_ms')} ms: its counts per bin are not what the model read; "
                         + (fix or "score it on a corpus built with --bin-ms {bin_ms}").format(bin_ms=trained_bin))


def _scoring_seq_len(run_dir, model, cfg: RunConfig | None, seq_len: int | None) -> int:
    """The context windows are scored with: a run's own ``data.seq_len`` (a ``seq_len`` given for
    it is said to be ignored); for a Hugging Face folder ``seq_len``, else the context save_hf
    recorded, else 512 (within the model's limit)."""
    if cfg is not None:
        if seq_len is not None and seq_len != cfg.data.seq_len:
            warnings.warn(f"--seq-len {seq_len} applies to a Hugging Face folder; {run_dir} is scored with its own "
                          f"data.seq_len={cfg.data.seq_len}", RuntimeWarning, stacklevel=3)
        return cfg.data.seq_len
    if seq_len is None:
        return getattr(model, "train_seq_len", None) or min(512, model.cfg.max_seq_len)
    if seq_len > model.cfg.max_seq_len:
        raise ValueError(f"--seq-len {seq_len} exceeds {run_dir}'s max_position_embeddings "
                         f"({model.cfg.max_seq_len}); pass --seq-len {model.cfg.max_seq_len} or less")
    return seq_len


def _held_out(corpus, split: str) -> str:
    """What the scored rows are to a model trained on the corpus's train split."""
    if split == "train":
        return "training rows"
    kind = corpus.manifest.get("build", {}).get("split")
    return {"session": "held-out sessions", "row": "held-out rows"}.get(kind, "held-out (split "
                                                                        "kind not recorded)")


def _compare_run_config(compare_run: str, compare_data: str | None) -> RunConfig | None:
    """Check ``--compare-run`` before anything is scored: an AR run with its weights (then its
    RunConfig, read by :func:`spikefm.train.runinfo.load_run_config`: a corpus recorded relative
    to the folder training ran in is the absolute one of ``family_info.corpus``, so it is found
    from any working directory) or a Hugging Face Llama folder with ``--compare-data`` (then
    None). One-line ValueError otherwise."""
    from spikefm.train.checkpoint import EXPORT_NAME, confined_file, read_safetensors_header
    from spikefm.train.runinfo import load_run_config, read_run_info

    flag = f"--compare-run {compare_run}"
    if not (Path(compare_run) / "config.json").is_file():
        raise ValueError(f"{flag}: not a run folder (no config.json); give the folder of the "
                         "second run (spikefm train --out), e.g. one trained on a --split row corpus")
    info = read_run_info(compare_run)
    if "family" not in info and ARFamily.claims_folder(info):
        if compare_data is None:
            raise ValueError(f"{flag}: a Hugging Face Llama folder, which records no training corpus; pass "
                             "--compare-data CORPUS_DIR")
        return None
    if "family" not in info:
        kind = info.get("model_type") or "unknown"
        raise ValueError(f"{flag}: holds a model of type {kind!r}, neither a spikefm run nor a Hugging Face "
                         "Llama folder; give an autoregressive run folder (spikefm train --model ar --out)")
    family = info["family"]
    if family != ARFamily.name:
        article = "an" if str(family)[:1].lower() in "aeiou" or family == "ndt" else "a"
        raise ValueError(f"{flag} is {article} {family} run, not an autoregressive (ar) run; compare two ar "
                         "runs (spikefm train --model ar)")
    cfg = load_run_config(compare_run, model_cls=LlamaConfig, data_cls=ARDataConfig)
    corpus = cfg.data.corpus
    if compare_data is None and not corpus:
        raise ValueError(f"{flag} records no training corpus; pass --compare-data CORPUS_DIR")
    if compare_data is None and not Path(corpus).is_dir():
        recorded = (info.get("family_info") or {}).get("corpus") if isinstance(info.get("family_info"), dict) else None
        raise ValueError(f"{flag} was trained on {recorded or corpus}, which is not found from here; pass "
                         "--compare-data CORPUS_DIR (that corpus, moved, or another to score it on)")
    weights = confined_file(compare_run, EXPORT_NAME, what="weights file")
    if not weights.is_file():
        raise ValueError(f"{flag}: {weights.name} not found; the run has not finished (or was not exported): "
                         "resume it with spikefm train --resume")
    read_safetensors_header(weights)  # a damaged file is refused now, not after the first run is scored
    return cfg


def _check_comparable(a, b) -> None:
    """Warn when two corpora cannot show the session-vs-row gap of the same recordings."""
    import warnings

    kinds = [c.manifest.get("build", {}).get("split") for c in (a, b)]
    if kinds[0] == kinds[1]:
        warnings.warn(f"both corpora are split by {kinds[0]!r}; build one with --split session and "
                      "one with --split row from the same recordings to compare held-out sessions "
                      "with held-out rows", stacklevel=3)
    if set(a.session_ids()) != set(b.session_ids()):
        warnings.warn(f"the two corpora hold different sessions ({len(a.session_ids())} and "
                      f"{len(b.session_ids())}); the difference mixes the split with the data",
                      stacklevel=3)


def _format_comparison(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Rows (what was scored, whose run, scorer), columns all / counts / separators, bits per
    token. Each block names its run, so two blocks of the same kind (``--split train`` gives
    "training rows" twice; two corpora of one split kind) stay apart."""
    from spikefm.families.ar.xent import KINDS
    from spikefm.tables import render_table

    names = [Path(str(r["run_dir"])).name or str(r["run_dir"]) for r in (a, b)]
    if names[0] == names[1]:  # two runs of the same folder name: their paths tell them apart
        names = [str(r["run_dir"]) for r in (a, b)]
    rows = []
    for res, name in zip((a, b), names):
        for scorer, r in res["results"].items():
            rows.append([f"{res['held_out']} of {Path(str(res['corpus'])).name} ({name})", scorer,
                         *(r["overall"][k]["bits"] for k in KINDS)])
    return render_table(["scored on (run)", "", *KINDS], rows, align="<<>>>",
                        title=f"cross-entropy (bits/token): {a['run_dir']} on {a['corpus']} vs "
                              f"{b['run_dir']} on {b['corpus']}")


def _corpus(cfg: RunConfig):
    from spikefm.corpus.reader import Corpus

    if not cfg.data.corpus:
        raise ValueError("data.corpus is empty; pass --data CORPUS_DIR")
    return Corpus(cfg.data.corpus)


