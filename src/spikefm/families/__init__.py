"""The registry of model families, and everything that reaches a family by name.

A model family (the autoregressive spike language model ``ar``, the masked neural data transformer
``ndt``, ...) lives in its own folder ``spikefm/families/<name>/`` and implements the protocol
:class:`spikefm.train.family.Family`. It is reached only through this module: the CLI, the
quickstart and the experiments never import a family's modules by name.

Adding a family = a new folder + one line in :data:`FAMILIES` (or, for a family defined outside
spikefm, one :func:`register` call or a ``spikefm.families`` entry point in its package metadata).

    from spikefm import families
    fam = families.get("ndt")
    cfg = families.run_config("ndt", preset="tiny", corpus="corpus")   # or build a RunConfig
    families.train(cfg, "runs/ndt")
    families.finetune("runs/ndt", "corpus", "sub-ibl02_ses-002", "runs/ft", freeze_core=True)
    results = families.evaluate("runs/ft", "corpus")
    print(families.format_results({"ft": results}))
"""
from __future__ import annotations

import dataclasses

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from spikefm.argtypes import is_int

__all__ = ["FAMILIES", "DEFAULT_FAMILY", "register", "get", "names", "family_of_run", "default_preset",
           "run_config", "run_config_from_dict", "load_run_config", "load_model", "train",
           "finetune", "require_finetuning", "evaluate", "checked_results", "check_evaluate_options", "check_tasks", "format_results", "transfer_headline", "task_scores", "task_score_unit", "stamp_family", "commands", "FamilyCommand"]

#: name -> "module:attribute" of the family class (instantiated with no arguments).
FAMILIES: dict[str, str] = {
    "ar": "spikefm.families.ar.family:ARFamily",
    "ndt": "spikefm.families.ndt.family:NDTFamily",
    "neds": "spikefm.families.neds.family:NEDSFamily",
}
#: The family of `spikefm train` without --model.
DEFAULT_FAMILY = "ar"



@dataclass(frozen=True)
class FamilyCommand:
    """An extra `spikefm` sub-command of a family (e.g. `spikefm generate`), listed in the
    ``COMMANDS`` of its torch-free module ``spikefm.families.<name>.commands``.

    Attributes:
        name: the sub-command.
        help: one line for `spikefm -h`.
        add_arguments: called with the sub-command's argparse parser.
        run: called with the parsed arguments; returns the exit status.
    """

    name: str
    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[[Any], int]


_EXTRA: dict[str, str | Callable[[], Any]] = {}
_INSTANCES: dict[str, Any] = {}


#: What the train loop and the commands call on every family (train/family.py documents each);
#: a family without one is refused by :func:`get` in one line naming them.
REQUIRED_MEMBERS = ("name", "model_config_cls", "data_config_cls", "preset", "presets", "build_model",
                    "init_weights", "blocks", "train_loader", "loss", "flops_per_batch", "describe",
                    "evaluate", "format_results")


def register(name: str, target: str | Callable[[], Any]) -> None:
    """Register a family defined outside this package, in this Python process (the ``spikefm``
    command finds a plugin through its ``spikefm.families`` entry point instead).

    Args:
        name: the name used by ``--model NAME`` and written into the run's config; not a built-in
            family's name (its runs would be read by another family).
        target: ``"module:attribute"`` of a zero-argument callable (usually the family class), or
            the callable itself. Re-registering a name of one's own replaces it.
    """
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"family name must be a non-empty word (letters, digits, - or _), got {name!r}")
    if name in FAMILIES:
        raise ValueError(f"{name!r} is a built-in family; register yours under another name")
    if not (callable(target) or (isinstance(target, str) and ":" in target)):
        raise TypeError(f"family {name!r}: target must be 'module:attribute' or a callable, got {target!r}")
    _EXTRA[name] = target
    _INSTANCES.pop(name, None)


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    try:
        eps = entry_points(group="spikefm.families")
    except TypeError:  # Python < 3.10 API
        eps = entry_points().get("spikefm.families", [])
    return {ep.name: ep.value for ep in eps}


def _targets() -> dict[str, str | Callable[[], Any]]:
    eps = _entry_points()
    for name in sorted(set(eps) & set(FAMILIES)):  # the built-in wins: say so, once per process
        if name not in _CLASHES_SAID:
            _CLASHES_SAID.add(name)
            warnings.warn(f"the spikefm.families entry point {name!r} = {eps[name]} is ignored: {name!r} is a "
                          "built-in family; give the plugin another name", RuntimeWarning, stacklevel=3)
    return {**eps, **FAMILIES, **_EXTRA}


_CLASHES_SAID: set[str] = set()


def names() -> list[str]:
    """Every family name that ``--model`` accepts, sorted."""
    return sorted(_targets())


def get(name: str):
    """The family registered as ``name`` (one instance per process).

    Raises:
        ValueError: no family of that name (the message lists the registered ones).
    """
    if name in _INSTANCES:
        return _INSTANCES[name]
    targets = _targets()
    if name not in targets:
        raise ValueError(f"unknown model family {name!r}; registered families: {', '.join(names())} "
                         "(a plugin reaches the spikefm command through a 'spikefm.families' entry point "
                         "of its installed package; spikefm.families.register adds one in a Python process)")
    target = targets[name]
    if name in FAMILIES:  # a built-in that fails to load is spikefm's own error
        module, _, attr = target.partition(":")
        family = getattr(importlib.import_module(module), attr)()
    else:
        family = _load_plugin(name, target)
    missing = [m for m in REQUIRED_MEMBERS if not hasattr(family, m)]
    if missing:
        raise ValueError(f"family {name!r} ({type(family).__module__}.{type(family).__name__}) lacks "
                         f"{', '.join(missing)}, which the train loop and the commands call; add them "
                         "(spikefm/train/family.py documents each)")
    if getattr(family, "name", name) != name:
        where = (f"the spikefm.families entry point {name!r} = {target}" if name not in FAMILIES and name not in _EXTRA
                 and isinstance(target, str) else f"the family registered as {name!r}")
        raise ValueError(f"{where} gives a family that calls itself {family.name!r}; use one name (the entry point's "
                         "or registration's name and the class's name attribute)")
    _INSTANCES[name] = family
    return family


def _load_plugin(name: str, target: str | Callable[[], Any]):
    """A plugin family's instance; a target that cannot be imported, found or called is a one-line
    ValueError naming the entry point (or registration) and its package, not an internal error."""
    where = (f"the spikefm.families entry point {name!r} = {target}" if isinstance(target, str)
             and name not in _EXTRA else f"the family registered as {name!r} ({target!r})")
    try:
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
        return target()
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code at import or construction
        from spikefm.fileio import first_line

        raise ValueError(f"{where} could not be loaded ({type(exc).__name__}: {first_line(exc)}); fix or reinstall the "
                         "package that provides it, or uninstall it") from exc


def _read_config(path: str | os.PathLike) -> dict[str, Any]:
    from spikefm.train.runinfo import read_run_info

    return read_run_info(path)


def family_of_run(run_dir: str | os.PathLike):
    """The family of a run directory (``config.json`` names it), or of a foreign model folder
    that a family claims (e.g. a Hugging Face Llama folder)."""
    info = _read_config(run_dir)
    if isinstance(info.get("family"), str):
        return get(info["family"])
    for name in names():
        try:
            fam = get(name)
        except ValueError:  # a broken plugin claims nothing (it says why when asked for by name)
            continue
        if getattr(fam, "claims_folder", None) and fam.claims_folder(info):
            return fam
    raise ValueError(f"{Path(run_dir) / 'config.json'} names no model family and no family can load "
                     f"it; expected a spikefm run directory (families: {', '.join(names())}) or a "
                     "Hugging Face Llama folder")


def run_config(family: str, *, preset: str | None = None, corpus: str = "",
               overrides: Sequence[str] = (), protocol: str | None = None):
    """A RunConfig of ``family``: its preset (default: the protocol's, else the family's
    ``default_preset()``, else its smallest), the family's run defaults for that preset
    (``run_defaults(preset)``, e.g. a learning rate and step count that work for it), the named
    ``protocol``'s settings, then ``section.key=value`` overrides, in that order."""
    from spikefm.train.config import RunConfig, apply_overrides, check_override_list

    fam = get(family)
    proto = _protocol(family, protocol)
    preset_name = preset or proto["preset"] or default_preset(family)
    model = fam.preset(preset_name)
    cfg = RunConfig(family=family, model=model, data=fam.data_config_cls(corpus=str(corpus)))
    defaults = list(fam.run_defaults(preset_name)) if hasattr(fam, "run_defaults") else []
    cfg = apply_overrides(cfg, [*defaults, *proto["overrides"], *check_override_list(overrides)])
    if hasattr(fam, "check_config"):  # settings of one section the other cannot serve
        fam.check_config(cfg)
    return cfg


def _protocol(family: str, protocol: str | None) -> dict:
    """The named ``protocol``'s settings (``{"preset", "overrides"}``; none for None)."""
    if not protocol:
        return {"preset": None, "overrides": []}
    fam = get(family)
    if not hasattr(fam, "protocol"):
        raise ValueError(f"the {family!r} family has no named protocols; drop --protocol")
    return fam.protocol(protocol)


def resolved_preset(family: str, preset: str | None = None, protocol: str | None = None) -> str:
    """The preset :func:`run_config` uses: ``preset``, else the protocol's, else the family's default."""
    return preset or _protocol(family, protocol)["preset"] or default_preset(family)


def default_preset(family: str) -> str:
    """The preset ``spikefm train --model FAMILY`` uses without ``--preset``."""
    fam = get(family)
    if hasattr(fam, "default_preset"):
        return fam.default_preset()
    names = list(fam.presets())
    if not names:
        raise ValueError(f"family {family!r}: presets() lists no preset; list at least one name preset() accepts")
    return names[0]


def run_config_from_dict(data: dict[str, Any]):
    """:func:`spikefm.train.config.config_from_dict` with the family's classes from the registry."""
    from spikefm.train.config import config_from_dict

    if not isinstance(data, dict) or not isinstance(data.get("family"), str):
        raise ValueError("config dict must be a JSON object with a 'family' name")
    fam = get(data["family"])
    return config_from_dict(data, model_cls=fam.model_config_cls, data_cls=fam.data_config_cls)


def load_run_config(run_dir: str | os.PathLike):
    """The RunConfig recorded in RUN_DIR/config.json."""
    info = _read_config(run_dir)
    if not isinstance(info.get("config"), dict):
        raise ValueError(f"{Path(run_dir) / 'config.json'} has no 'config' object; expected a run "
                         "directory written by spikefm train")
    return run_config_from_dict(info["config"])


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Load a model for evaluation or generation.

    Args:
        path: a spikefm run directory (``config.json`` naming its family + ``model.safetensors``)
            or a foreign folder a family claims, such as a Hugging Face Llama folder
            (``config.json`` with ``model_type: llama`` + ``model.safetensors``), e.g. the
            published Neural Pile models.
        device: the torch device the returned model lives on: ``"cpu"`` (default), ``"cuda"``,
            ``"cuda:1"``, ``"mps"``, ... (any ``torch.device`` or its name), or ``"auto"``
            (``"cuda"`` when available, else ``"cpu"``).

    Returns:
        The model in eval mode. For run directories ``model.run_config`` holds the RunConfig and
        ``model.run_dir`` the folder.
    """
    from spikefm.train.checkpoint import load_exported_model
    from spikefm.train.dist import resolve_device_type

    if device == "auto":  # the one rule of every device option (other names, "cuda:1" say, pass as given)
        device = resolve_device_type(device)
    _check_load_device(device)
    fam = family_of_run(path)
    info = _read_config(path)
    if not isinstance(info.get("family"), str):
        return fam.load_foreign(path, device=device).eval()
    cfg = load_run_config(path)
    model = load_exported_model(path, fam, cfg, device=device)
    model.run_config = cfg
    model.run_dir = str(path)  # where its run description is (an export reads what it records)
    return model


def _check_load_device(device) -> None:
    """One-line ValueError for a device load_model cannot put a model on (torch failed after the
    model was built: 'gpu', or 'cuda' on a machine without CUDA)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None and dev.index >= count or not count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s); use 'cpu' or 'auto'")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def train(cfg, out_dir: str | os.PathLike, **kwargs) -> dict[str, Any]:
    """:func:`spikefm.train.loop.train` with ``cfg.family`` looked up in the registry.

    ``cfg``: a :class:`~spikefm.train.config.RunConfig` (from :func:`run_config`, or a run's
    :func:`load_run_config`). Keyword arguments go to the loop: ``resume``, ``progress`` (a
    progress display, default True; a string labels it), ``stop_after`` (steps)."""
    from spikefm.train.config import RunConfig
    from spikefm.train.loop import train as train_loop

    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}; make one with "
                        "spikefm.families.run_config(FAMILY, preset=..., corpus=..., overrides=[...]), or "
                        "read a run's with spikefm.families.load_run_config(RUN_DIR)")
    return train_loop(cfg, out_dir, get(cfg.family), **kwargs)


def finetune(run_dir: str | os.PathLike, corpus: str | os.PathLike, session_id: str,
             out_dir: str | os.PathLike, *, strategy: str | None = None, freeze_core: bool = False,
             from_scratch: bool = False, steps: int = 500, overrides: Sequence[str] = (),
             eval_every: int = 50, patience: int = 3, progress: bool = False,
             select: str | None = None, soup: bool | None = None) -> dict[str, Any]:
    """Adapt the finished run ``run_dir`` to ``session_id`` (early stopping on validation data).

    The family prepares each run (:meth:`Family.finetune_config`: new session parameters on the
    pretrained core, or the same model from scratch); the shared
    :func:`spikefm.train.finetune.finetune_strategies` trains it with ``strategy`` (``auto``, the
    default: frozen core, full fine-tuning at a lower learning rate and an unfreezing schedule,
    the best on validation kept, the single-session model beside them). ``freeze_core`` and
    ``from_scratch`` are the ``frozen`` and ``scratch`` strategies. ``select`` is how ``auto``
    picks (:data:`spikefm.train.finetune.SELECT_RULES`; default the family's); ``soup`` whether
    ``auto`` also ranks the greedy weight average of its pretrained candidates (default the
    family's ``finetune_soup``).

    The budget defaults here (``steps=500``, ``eval_every=50``, ``patience=3``) are this
    function's, which the studies call with their own values; ``spikefm finetune`` passes 1,500 /
    250 / 3, the budget its README tables measure: pass those for the same result as the command.

    Returns:
        The chosen run's early-stopping summary (best step, best validation loss, history, ...).
    """
    from spikefm.train.finetune import check_finetune_overrides, finetune_strategies

    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    steps = int(steps)
    from spikefm.train.config import check_override_list

    overrides = check_override_list(overrides)
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be one session id (a str), got {type(session_id).__name__} "
                        f"{session_id!r}; fine-tune one session per call")
    if freeze_core and from_scratch:
        raise ValueError("freeze_core and from_scratch exclude each other: a from-scratch core is "
                         "random, freezing it would train the session parameters on noise")
    implied = "frozen" if freeze_core else "scratch" if from_scratch else None
    if strategy is not None and implied is not None and strategy != implied:
        raise ValueError(f"strategy {strategy!r} contradicts {'freeze_core' if freeze_core else 'from_scratch'}")
    fam = family_of_run(run_dir)
    if not hasattr(fam, "finetune_config"):
        able = [n for n in _families_with("finetune_config") if n != fam.name]
        raise ValueError(f"the {fam.name!r} family does not support fine-tuning to a new session (it has no "
                         f"per-session parameters); fine-tune a run of a family that does: "
                         f"{', '.join(able) or 'none is registered'}")
    # a from-scratch run (the single-session model) starts from nothing of the pretrained run's
    fixed = () if (strategy or implied) == "scratch" else tuple(getattr(fam, "finetune_fixed_data", ()))
    check_finetune_overrides(overrides, run_dir, fixed_data=fixed,  # before the warnings about the session
                             pretrained=load_run_config(run_dir) if fixed else None)
    _warn_if_pretrained_on(run_dir, session_id, corpus)
    return finetune_strategies(fam, run_dir, corpus, session_id, out_dir,
                               strategy=strategy or implied or "auto", steps=steps, overrides=overrides,
                               eval_every=eval_every, patience=patience, progress=progress, select=select,
                               soup=soup)


def require_finetuning(family: str, needed_for: str, *, also: Sequence[str] = ()) -> None:
    """A one-line ValueError, naming the families that can, when ``family`` cannot fine-tune a run
    to a new session (it has no ``finetune_config``: no per-session parameters); ``needed_for``
    completes "which ..." (e.g. "a session ranking needs"); ``also``: other members the caller
    needs (``task_scores`` for scaling), so that only families having them are suggested."""
    if hasattr(get(family), "finetune_config"):
        return
    able = _families_with("finetune_config", *also)
    raise ValueError(f"the {family!r} family does not support fine-tuning to a new session (it has no per-session "
                     f"parameters), which {needed_for}; run it with a family that does "
                     f"({', '.join(able) or 'none is registered'}; --model)")


def picks_sessions(family: str) -> bool:
    """Whether ``family``'s runs can be trained on chosen sessions (its data config has a
    ``sessions`` field, what ``spikefm train --sessions`` and the studies set)."""
    return "sessions" in {f.name for f in dataclasses.fields(get(family).data_config_cls)}


def require_session_choice(family: str, needed_for: str) -> None:
    """A one-line ValueError when ``family`` cannot be trained on chosen sessions
    (:func:`picks_sessions`), which ``needed_for`` (e.g. "a session ranking needs")."""
    if picks_sessions(family):
        return
    able = [n for n in _families_with("finetune_config") if picks_sessions(n)]
    raise ValueError(f"the {family!r} family cannot pretrain on chosen sessions (its data config has no 'sessions' "
                     f"field), which {needed_for}; run it with a family that can "
                     f"({', '.join(able) or 'none is registered'}; --model), or give the family a data.sessions setting")


def _families_with(*members: str) -> list[str]:
    """Names of the families that have every one of ``members`` (a broken plugin, which cannot
    be loaded, is no suggestion)."""
    def has(name: str) -> bool:
        try:
            fam = get(name)
        except Exception:  # noqa: BLE001
            return False
        return all(callable(getattr(fam, m, None)) for m in members)

    return [n for n in names() if has(n)]


def _warn_if_pretrained_on(run_dir: str | os.PathLike, session_id: str, corpus: str | os.PathLike | None = None) -> None:
    """RuntimeWarnings before fine-tuning: ``corpus`` is not the one the run was trained on (its
    manifest hash differs), and ``session_id`` is one of the run's own (pretraining) sessions, so
    the fine-tuned model measures no transfer to a new session (only claimed as the same recording
    when the corpus is the same)."""
    import warnings

    from spikefm.train.runinfo import read_family_info

    try:
        info = read_family_info(run_dir, what="a")
    except (ValueError, OSError):
        return  # the family's own checks report an unreadable run
    trained_hash, same_corpus = info.get("corpus_manifest_sha256"), True
    if corpus is not None and isinstance(trained_hash, str):
        from spikefm.corpus.reader import manifest_sha256

        try:  # what training records (spikefm.corpus.reader.Corpus.manifest_hash)
            now_hash = manifest_sha256(corpus)
        except OSError:
            now_hash = None  # the fine-tuning's own checks report an unreadable corpus
        if now_hash is not None and now_hash != trained_hash:
            same_corpus = False
            warnings.warn(f"{corpus} is not the corpus {run_dir} was trained on (manifest sha256 "
                          f"{trained_hash[:12]}... there, {now_hash[:12]}... here): fine-tuning goes on with "
                          "this corpus's session", RuntimeWarning, stacklevel=3)
    # a fine-tuned run's core learnt the sessions of the run it started from too
    own = (set(info.get("sessions") or ()) | set(info.get("window_splits") or {})
           | set(info.get("inherited_window_splits") or {}))
    if session_id in own and same_corpus:
        warnings.warn(f"session {session_id!r} is one of the sessions {run_dir} was trained on: the fine-tuned "
                      "model has seen its recordings, so its scores measure no transfer to a new session "
                      "(fine-tune to a held-out one, e.g. of the corpus's test split)", RuntimeWarning, stacklevel=3)
    elif session_id in own:
        warnings.warn(f"{run_dir} was trained on a session also named {session_id!r} (in its own corpus): if it "
                      "is the same recording, the fine-tuned model's scores measure no transfer to a new "
                      "session", RuntimeWarning, stacklevel=3)


def evaluate(run_dir: str | os.PathLike, corpus: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """The family's benchmark of a finished run (or claimed foreign folder) on ``corpus``.

    ``options`` go to the family's ``evaluate``; one it does not take is refused before any work
    (:func:`check_evaluate_options`: a one-line ValueError naming the options it takes).
    """
    fam = family_of_run(run_dir)
    check_evaluate_options(fam, options)
    return stamp_family(fam, checked_results(fam, fam.evaluate(str(run_dir), str(corpus), **options)))


def checked_results(fam: Any, results: Any) -> dict[str, Any]:
    """``results``, the return value of ``fam.evaluate``, as every caller needs it: a dict that
    JSON can write. Numpy scalars and 0-d arrays become the Python numbers they hold and tuples
    lists; anything else that is not str, int, float, bool, None, a list or a dict with str keys
    is refused in one ValueError line naming the family and the first offending entry, before
    anything is printed or written."""
    import numpy as np

    who = f"the {getattr(fam, 'name', '?')!r} family's evaluate()"
    if not isinstance(results, dict):
        raise ValueError(f"{who} returned a {type(results).__name__}; it must return a dict of JSON data "
                         "(spikefm.train.family documents it)")

    def plain(obj: Any, path: str) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if not isinstance(k, str):
                    raise ValueError(f"{who} returned data JSON cannot write: {path} has the key {k!r} "
                                     f"({type(k).__name__}, not str); use str keys")
                out[k] = plain(v, f"{path}[{k!r}]")
            return out
        if isinstance(obj, (list, tuple)):
            return [plain(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, (str, bool, int, float)):
            return obj
        if isinstance(obj, np.generic) or (isinstance(obj, np.ndarray) and obj.ndim == 0):
            value = obj.item()
            if value is None or isinstance(value, (str, bool, int, float)):
                return value
        raise ValueError(f"{who} returned data JSON cannot write: {path} is a {type(obj).__module__}."
                         f"{type(obj).__name__} ({obj!r:.40}); convert it to a plain Python value "
                         "(x.tolist(), str(x))")

    return plain(results, "results")


def check_evaluate_options(fam: Any, options: Any, *, flags: Sequence[str] | None = None) -> None:
    """Refuse the options ``fam.evaluate`` does not take, in one line naming those it does (the
    keyword parameters after ``run_dir`` and ``corpus``); a family whose ``evaluate`` takes
    ``**options`` accepts any.

    Args:
        fam: a family (:func:`get`, :func:`family_of_run`).
        options: the names of the options to be passed (a dict's keys count).
        flags: the option names a command offers (``spikefm eval``): the message then spells them
            ``--flag`` and lists only those of them the family takes.

    Raises:
        ValueError: e.g. ``option 'tasks' does not apply to a 'ar' run; its options: split, ngram, ...``.
    """
    import inspect

    params = list(inspect.signature(fam.evaluate).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes = [p.name for p in params[2:] if p.kind in keyword]  # after run_dir and corpus
    unknown = [k for k in options if k not in takes]
    if not unknown:
        return
    if flags is None:
        what = ", ".join(map(repr, unknown))
        what = f"option {what} does" if len(unknown) == 1 else f"options {what} do"
        valid = takes
    else:
        what = ", ".join(f"--{k.replace('_', '-')}" for k in unknown) + (" does" if len(unknown) == 1 else " do")
        valid = [f"--{k.replace('_', '-')}" for k in flags if k in takes]
    raise ValueError(f"{what} not apply to a {fam.name!r} run; its options: {', '.join(valid) or '(none)'}")


def stamp_family(fam: Any, results: Any) -> Any:
    """``results`` naming the family that computed them (``fam.name``): a family built on another
    one's evaluation (a plugin subclassing the NDT) writes its own name, not the built-in's, so
    :func:`format_results` and the run's records agree."""
    if isinstance(results, dict) and isinstance(results.get("family"), str):
        results["family"] = fam.name
    return results


def check_tasks(family: str, tasks: Sequence[str] | str | None) -> list[str] | None:
    """Refuse unknown evaluation task names of ``family`` before any work (one-line ValueError);
    families without the optional ``check_tasks`` method accept any names here. Returns the
    names as a list (a string is split on commas: ``"co-smoothing,forward-prediction"``), or
    None for None (the family's default tasks)."""
    if tasks is None:
        return None
    names_ = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    fam = get(family)
    if hasattr(fam, "check_tasks"):
        fam.check_tasks(names_)
    return names_


def format_results(results_by_run: dict[str, dict[str, Any]], family: str | None = None) -> str:
    """Text table of :func:`evaluate` results (all of one family, named in each result)."""
    if not results_by_run:
        raise ValueError("results_by_run is empty; give {run name: evaluate(...) result}")
    name = family or next(iter(results_by_run.values())).get("family")
    if not isinstance(name, str):
        raise ValueError("results carry no 'family' name; pass family=NAME")
    text = get(name).format_results(results_by_run)
    if not isinstance(text, str):
        raise ValueError(f"the {name!r} family's format_results() returned a {type(text).__name__}; it must "
                         "return the table as a str (spikefm.train.family documents it)")
    return text


def _study_member(family: str, member: str, needed_for: str) -> Callable:
    """The family's optional ``member`` that a study calls, or a one-line ValueError naming the
    families that have it."""
    fn = getattr(get(family), member, None)
    if not callable(fn):
        able = _families_with(member, "finetune_config")  # every study fine-tunes
        raise ValueError(f"the {family!r} family has no {member}(), which {needed_for}; run the study with a "
                         f"family that has one ({', '.join(able) or 'none is registered'}; --model), or add it "
                         "(spikefm.train.family documents it)")
    return fn


def transfer_headline(family: str, benchmarks: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The headline numbers of one seed of ``spikefm experiment transfer``: ``benchmarks`` is
    ``{"fine-tuned": results, "single-session": results, "finetune": summary}`` (the ``results``
    of the family's :func:`evaluate`, and :func:`finetune`'s strategy summary); returns
    ``{metric: {model or reference: value or None}}``, checked.

    Raises:
        ValueError: the family has no ``transfer_headline`` (a transfer study cannot summarise it),
            or it returned another shape.
    """
    import numbers

    rows = _study_member(family, "transfer_headline", "a transfer study needs to summarise its benchmark")(benchmarks)
    for metric, cols in rows.items() if isinstance(rows, dict) else [(None, None)]:
        ok = isinstance(metric, str) and isinstance(cols, dict) and all(
            isinstance(c, str) and (v is None or isinstance(v, numbers.Real) and not isinstance(v, bool))
            for c, v in cols.items())
        if not ok:
            found = type(rows).__name__ if metric is None else f"{metric!r}: {cols!r:.80}"
            raise ValueError(f"family {family!r}: transfer_headline() must return {{metric: {{model or reference: "
                             f"number or None}}}}, got {found}; nothing of this seed was recorded")
    return rows


def task_scores(family: str, results: dict, who: str = "model") -> dict[str, float]:
    """One number per task of ``family``'s benchmark ``results`` (the ``results`` of
    :func:`evaluate`), for ``who`` (``model`` or a reference such as ``oracle``): what the scaling
    study compares across pretraining sets.

    Raises:
        ValueError: the family has no ``task_scores`` (the study cannot read its benchmark).
    """
    return _study_member(family, "task_scores", "the scaling study needs to compare its fine-tuned runs by one "
                                                "number per task")(results, who)


def task_score_unit(family: str, task: str) -> str:
    """What ``family``'s :func:`task_scores` number of ``task`` is (its unit, e.g. ``bps_pooled,
    bits per spike``), for axis labels; empty when the family does not say (it is optional)."""
    fn = getattr(get(family), "task_score_unit", None)
    return str(fn(task)) if callable(fn) else ""


def commands() -> list:
    """Extra sub-commands contributed by the families (``spikefm generate``, ``spikefm ngram``)."""
    out = []
    for name in names():
        module = FAMILIES.get(name, "").partition(":")[0]
        if not module:
            continue
        try:  # a light module, so that building the parser does not import torch
            mod = importlib.import_module(module.rsplit(".", 1)[0] + ".commands")
        except ModuleNotFoundError as exc:
            if not exc.name or not exc.name.endswith(".commands"):
                raise
            continue
        out.extend(mod.COMMANDS)
    return out
