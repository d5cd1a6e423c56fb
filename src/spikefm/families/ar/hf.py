"""Hugging Face ``LlamaForCausalLM`` folders <-> :class:`spikefm.families.ar.model.Llama`.

A Hugging Face Llama folder holds ``config.json`` and either ``model.safetensors`` or shards listed
in ``model.safetensors.index.json`` (the layout of the published Neural Pile models). Weights map
one to one, without permutation, because :class:`~spikefm.families.ar.model.Llama` uses the same
rotate-half rotary convention:

===========================================  ===============================================
spikefm                                      Hugging Face
===========================================  ===============================================
tok_embeddings.weight                        model.embed_tokens.weight
layers.{i}.attention.w{q,k,v,o}.weight       model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
layers.{i}.feed_forward.w1.weight            model.layers.{i}.mlp.gate_proj.weight
layers.{i}.feed_forward.w3.weight            model.layers.{i}.mlp.up_proj.weight
layers.{i}.feed_forward.w2.weight            model.layers.{i}.mlp.down_proj.weight
layers.{i}.attention_norm.weight             model.layers.{i}.input_layernorm.weight
layers.{i}.ffn_norm.weight                   model.layers.{i}.post_attention_layernorm.weight
norm.weight                                  model.norm.weight
output.weight                                lm_head.weight
===========================================  ===============================================

Only ``safetensors`` is needed; ``transformers`` is never imported here.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch

from spikefm.fileio import write_atomic
from spikefm.families.ar.model import Llama, LlamaConfig
from spikefm.train.checkpoint import confined_file, read_json_file, read_safetensors_header, write_safetensors

__all__ = ["save_hf", "load_hf", "to_hf_config", "from_hf_config", "to_hf_key", "from_hf_key"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
#: Largest max_position_embeddings accepted (rotary tables are built for every position: 2**20
#: positions of 128-wide heads take 1 GiB).
MAX_POSITIONS = 1 << 20

_LAYER_SUFFIXES = {  # spikefm suffix -> HF suffix, within layers.{i}
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_LEVEL = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_HF_LAYER_SUFFIXES = {v: k for k, v in _LAYER_SUFFIXES.items()}
_HF_TOP_LEVEL = {v: k for k, v in _TOP_LEVEL.items()}
_OURS_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def to_hf_key(key: str) -> str:
    """spikefm state-dict key -> Hugging Face key (KeyError if it has no counterpart)."""
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    m = _OURS_LAYER.fullmatch(key)
    if m and m.group(2) in _LAYER_SUFFIXES:
        return f"model.layers.{m.group(1)}.{_LAYER_SUFFIXES[m.group(2)]}"
    raise KeyError(f"no Hugging Face Llama counterpart for parameter {key!r}")


def from_hf_key(key: str) -> str:
    """Hugging Face key -> spikefm state-dict key (KeyError if unknown)."""
    if key in _HF_TOP_LEVEL:
        return _HF_TOP_LEVEL[key]
    m = _HF_LAYER.fullmatch(key)
    if m and m.group(2) in _HF_LAYER_SUFFIXES:
        return f"layers.{m.group(1)}.{_HF_LAYER_SUFFIXES[m.group(2)]}"
    raise KeyError(f"unknown Hugging Face Llama weight {key!r}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_hf_config(cfg: LlamaConfig, dtype: torch.dtype = torch.float32) -> dict:
    """``config.json`` contents of a ``LlamaForCausalLM`` equivalent to ``cfg``.

    Writes the rotary base both the transformers 4.x way (``rope_theta``, ``rope_scaling``) and
    the 5.x way (``rope_parameters``) so that either version reads it.

    The config also says which spikefm input layout the weights expect (``spikefm_layout``:
    plain token positions, no unit-count prefix); :func:`from_hf_config` refuses a config whose
    ``spikefm_layout`` names anything else.

    Raises:
        ValueError: for a layout other than ``positions="plain"`` or a model with a unit-count
            prefix: ``LlamaForCausalLM`` has no unit/bin rotary axes, state embedding or prefix
            projection, so the export would silently compute something else.
    """
    if cfg.positions != "plain":
        raise ValueError(f"a model with positions={cfg.positions!r} has no Hugging Face "
                         "LlamaForCausalLM equivalent (its unit/bin positions and state embedding "
                         "would be dropped); keep its spikefm run folder (model.safetensors + "
                         "config.json), or train with positions='plain' to export")
    if cfg.unit_count_prefix:
        raise ValueError("a model with unit_count_prefix has no Hugging Face LlamaForCausalLM "
                         "equivalent (its unit-count prefix position would be dropped); keep its "
                         "spikefm run folder (model.safetensors + config.json), or train with "
                         "model.unit_count_prefix=false to export")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "num_hidden_layers": cfg.n_layers,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": _dtype_name(dtype),
        "dtype": _dtype_name(dtype),
        "spikefm_layout": dict(_PLAIN_LAYOUT),
    }


#: The only input layout a LlamaForCausalLM folder can hold (see to_hf_config).
_PLAIN_LAYOUT = {"positions": "plain", "unit_count_prefix": False}


def _unsupported(what: str, got, fix: str) -> ValueError:
    return ValueError(f"unsupported Hugging Face Llama config: {what}, got {got!r}; {fix}")


def _positive_int(config: dict, key: str, default: int | None = None) -> int:
    """config[key] as an int >= 1 (a JSON integer, not a string, float or bool)."""
    if key not in config or config[key] is None:
        if default is not None:
            return default
        raise ValueError(f"Hugging Face Llama config lacks required key {key!r}")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _unsupported(f"{key} must be a positive integer", value, "fix config.json")
    return value


def _positive_float(config: dict, key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise _unsupported(f"{key} must be a positive finite number", value, "fix config.json")
    return float(value)


def _check_rope(config: dict) -> float:
    """Rotary base from a 4.x (rope_theta/rope_scaling) or 5.x (rope_parameters) config."""
    theta = config.get("rope_theta")
    scaling = config.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise _unsupported("rope_scaling must be null or an object", scaling, "fix config.json")
    params = config.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise _unsupported("rope_parameters must be null or an object", params, "fix config.json")
    if scaling is not None:
        rope_type = scaling.get("rope_type", scaling.get("type"))
        if rope_type not in (None, "default"):
            raise _unsupported("rope_scaling must be null (plain RoPE)", scaling,
                               "spikefm's Llama implements only unscaled rotary embeddings")
    params = config.get("rope_parameters")
    if params is not None:
        if params.get("rope_type", "default") != "default":
            raise _unsupported("rope_parameters.rope_type must be 'default'", params,
                               "spikefm's Llama implements only unscaled rotary embeddings")
        if theta is not None and params.get("rope_theta", theta) != theta:
            raise _unsupported("rope_theta and rope_parameters.rope_theta disagree",
                               (theta, params.get("rope_theta")), "make them equal")
        theta = params.get("rope_theta", theta)
    if theta is None:
        return 10000.0  # transformers' default base
    return _positive_float({"rope_theta": theta}, "rope_theta")


def from_hf_config(config: dict) -> LlamaConfig:
    """:class:`LlamaConfig` from a parsed Hugging Face Llama ``config.json``.

    Raises:
        ValueError: for a non-Llama model or features spikefm's Llama lacks (scaled RoPE,
            biases, other activations, head_dim != hidden_size / num_attention_heads).
    """
    model_type = config.get("model_type")
    if model_type != "llama":
        raise _unsupported("model_type must be 'llama'", model_type,
                           "load_hf reads LlamaForCausalLM folders only")
    if config.get("hidden_act", "silu") != "silu":
        raise _unsupported("hidden_act must be 'silu'", config.get("hidden_act"),
                           "only SwiGLU MLPs are implemented")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag, False):
            raise _unsupported(f"{flag} must be false", config[flag],
                               "projections without bias only")
    layout = config.get("spikefm_layout")
    if layout is not None and layout != _PLAIN_LAYOUT:
        raise _unsupported(f"spikefm_layout must be {_PLAIN_LAYOUT} (or absent)", layout,
                           "this folder claims weights for another spikefm input layout, which "
                           "a LlamaForCausalLM cannot run; load the spikefm run folder instead")
    if config.get("pretraining_tp", 1) not in (1, None):
        raise _unsupported("pretraining_tp must be 1", config.get("pretraining_tp"),
                           "re-save the model with pretraining_tp=1")
    dim = _positive_int(config, "hidden_size")
    n_heads = _positive_int(config, "num_attention_heads")
    kwargs = dict(
        dim=dim,
        n_layers=_positive_int(config, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=_positive_int(config, "num_key_value_heads", default=n_heads),
        ffn_dim=_positive_int(config, "intermediate_size"),
        vocab_size=_positive_int(config, "vocab_size"),
    )
    head_dim = config.get("head_dim")
    if head_dim is not None and _positive_int(config, "head_dim") * n_heads != dim:
        raise _unsupported("head_dim must equal hidden_size / num_attention_heads", head_dim,
                           f"expected {dim // n_heads}")
    kwargs["rope_theta"] = _check_rope(config)
    for key, field in (("rms_norm_eps", "norm_eps"), ("initializer_range", "init_std")):
        if config.get(key) is not None:
            kwargs[field] = _positive_float(config, key)
    if config.get("max_position_embeddings") is not None:
        kwargs["max_seq_len"] = _positive_int(config, "max_position_embeddings")
        if kwargs["max_seq_len"] > MAX_POSITIONS:
            raise _unsupported(f"max_position_embeddings must be at most {MAX_POSITIONS:,} (the "
                               "rotary tables are built for every position)",
                               kwargs["max_seq_len"], "lower it in config.json")
    try:
        return LlamaConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(f"unsupported Hugging Face Llama config: {exc}") from None


#: config.json key (spikefm's own; transformers ignores it) holding the context length the model
#: was trained with, which ``spikefm eval`` uses for the folder as it does for the run.
TRAIN_SEQ_LEN_KEY = "spikefm_train_seq_len"
#: config.json key of the bin width (ms) the model was trained on (written by :func:`save_hf` when
#: known): ``spikefm eval`` and ``generate`` refuse a corpus of another width.
TRAIN_BIN_MS_KEY = "spikefm_train_bin_ms"


def _refuse_spikefm_folder(out: Path) -> None:
    """save_hf writes config.json and model.safetensors: refuse a spikefm run (its own would be
    replaced: the run could no longer be resumed or scored as a run) or corpus folder."""
    if (out / "manifest.json").is_file():
        raise ValueError(f"{out} is a spikefm corpus (manifest.json); save_hf writes a model folder: give a new "
                         f"folder, e.g. {out.name}_hf beside it")
    try:
        info = json.loads((out / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return
    if isinstance(info, dict) and "family" in info:
        raise ValueError(f"{out} is a spikefm run (its config.json describes the run), whose config.json and "
                         f"weights save_hf would replace; nothing was written: give a new folder, e.g. "
                         f"{out.parent / (out.name + '_hf')}")


def save_hf(model: Llama, out_dir: str | os.PathLike) -> Path:
    """Write ``model`` as a Hugging Face ``LlamaForCausalLM`` folder.

    A model loaded from a spikefm run (``spikefm.families.load_model(run)``) also records its training
    context (``data.seq_len``) under :data:`TRAIN_SEQ_LEN_KEY`, so ``spikefm eval`` scores the
    folder with the windows it scores the run with (same numbers), and its bin width under
    :data:`TRAIN_BIN_MS_KEY` (eval and generate then refuse a corpus of another width). A spikefm
    run or corpus folder is refused (its files would be replaced).

    Creates ``out_dir`` if needed and writes ``model.safetensors`` (HF key names, the model's
    parameter dtype) and then ``config.json``, each under a temporary name renamed into place,
    so a reader never sees a half-written file and ``config.json`` appears last.

    Returns:
        The output folder as a ``Path``.
    """
    if not isinstance(model, Llama):
        raise TypeError(f"save_hf expects a spikefm Llama, got {type(model).__name__}")
    to_hf_config(model.cfg)  # refuses layouts that LlamaForCausalLM cannot express
    out = Path(out_dir)
    _refuse_spikefm_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, tensor in model.state_dict().items():
        if tensor.device.type == "meta":
            raise ValueError(f"parameter {key!r} is on the meta device; materialize the model "
                             "(to_empty + init_weights, or load weights) before saving")
        tensors[to_hf_key(key)] = tensor.detach().to("cpu").contiguous()
    dtype = model.tok_embeddings.weight.dtype
    write_safetensors(out / WEIGHTS_NAME, tensors, {"format": "pt"})
    config = to_hf_config(model.cfg, dtype)
    run = getattr(model, "run_config", None)  # a model loaded from a spikefm run knows its context
    context = getattr(getattr(run, "data", None), "seq_len", None) or getattr(model, "train_seq_len", None)
    if isinstance(context, int) and 0 < context <= model.cfg.max_seq_len:
        config[TRAIN_SEQ_LEN_KEY] = context  # spikefm eval scores the folder with it
    bin_ms = getattr(model, "train_bin_ms", None)
    if bin_ms is None and run is not None and getattr(model, "run_dir", None):  # spikefm.families.load_model's
        from spikefm.families.ar.family import _recorded_bin_ms

        bin_ms = _recorded_bin_ms(model.run_dir, run.data.corpus)
    if isinstance(bin_ms, int) and not isinstance(bin_ms, bool) and bin_ms > 0:
        config[TRAIN_BIN_MS_KEY] = bin_ms
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"

    write_atomic(out / CONFIG_NAME, lambda tmp: tmp.write_text(text))
    return out


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder, each confined to it (no path, '..' or symlink of
    a shard index may lead outside)."""
    index = folder / INDEX_NAME
    single = folder / WEIGHTS_NAME
    if single.exists():
        return [confined_file(folder, WEIGHTS_NAME, what="weights file")]
    if index.exists():
        data = read_json_file(confined_file(folder, INDEX_NAME, what="shard index"),
                              what="shard index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map'; is it a safetensors index file?")
        names = sorted(set(weight_map.values()), key=str)
        bad = [n for n in names if not isinstance(n, str) or not n.endswith(".safetensors")]
        if bad:
            raise ValueError(f"{index} maps weights to {bad[0]!r}; expected names of .safetensors "
                             "files in the same folder")
        files = [confined_file(folder, name, what="shard") for name in names]
        missing = [n for n, p in zip(names, files) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards missing from {folder}: {missing}; "
                                    "download the complete model folder")
        return files
    present = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(
        f"no {WEIGHTS_NAME} or {INDEX_NAME} in {folder} (found {present}); spikefm reads "
        "safetensors only: re-save with save_pretrained(..., safe_serialization=True)")


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype or its name (e.g. 'bfloat16'), "
                         f"got {dtype!r}")
    return value


def load_hf(path: str | os.PathLike, device: torch.device | str = "cpu",
            dtype: torch.dtype | str | None = None) -> Llama:
    """Read a Hugging Face Llama folder into a :class:`Llama`.

    Args:
        path: folder with ``config.json`` and ``model.safetensors`` or a sharded
            ``model.safetensors.index.json``.
        device: where to put the weights (read directly there, no CPU copy of the model).
        dtype: cast weights to this dtype; None keeps the stored dtype.

    Returns:
        The model, on ``device``, with its rotary tables built. With ``tie_word_embeddings``
        true and no ``lm_head.weight`` stored, the output projection is a copy of the embedding.

    The folder may come from anywhere: config.json and any shard index are size-limited JSON;
    every file they name must stay inside the folder (no '..', absolute path or symlink leading
    out); the safetensors headers are read and compared with the config (layer count, every
    name and shape) before any tensor is read or memory allocated, so absurd sizes or a malformed
    file give one ValueError.

    Raises:
        FileNotFoundError: missing folder, config or weights.
        ValueError: unsupported config, malformed files, paths leading outside the folder, or
            weights missing / unexpected / of the wrong shape.
    """
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the directory holding "
                                f"{CONFIG_NAME} and the safetensors weights")
    if not (folder / CONFIG_NAME).exists():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}")
    hf_config = read_json_file(confined_file(folder, CONFIG_NAME, what="config"),
                               what="Hugging Face config")
    if not isinstance(hf_config, dict):
        raise ValueError(f"{folder / CONFIG_NAME} is a JSON {type(hf_config).__name__}, not an "
                         "object; expected a Hugging Face Llama config")
    cfg = from_hf_config(hf_config)
    dtype = _as_dtype(dtype)
    device = torch.device(device)

    # Headers only (no tensor data): names, shapes and where each tensor lives.
    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    unexpected = []
    for file in _weight_files(folder):
        header, _ = read_safetensors_header(file)
        for hf_key, entry in header.items():
            if hf_key.endswith("rotary_emb.inv_freq"):
                continue  # derived buffer stored by old transformers versions
            try:
                key = from_hf_key(hf_key)
            except KeyError:
                unexpected.append(hf_key)
                continue
            if key in where:
                raise ValueError(f"{folder}: weight {hf_key} is stored twice ({where[key].name} and "
                                 f"{file.name}); download the model folder again")
            where[key], shapes[key] = file, entry["shape"]
    if unexpected:
        raise ValueError(f"{folder} holds weights spikefm's Llama does not have: "
                         f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    layers = {int(m.group(1)) for k in where if (m := _OURS_LAYER.fullmatch(k))}
    if len(layers) != cfg.n_layers or (layers and max(layers) != cfg.n_layers - 1):
        have = f"layers {min(layers)}..{max(layers)}" if layers else "no layers"
        raise ValueError(f"{folder} lacks weights for the {cfg.n_layers} layers config.json declares "
                         f"(num_hidden_layers) or holds others: the files have {have}; the config "
                         "and the weights do not belong together")
    tie = "output.weight" not in where and "tok_embeddings.weight" in where
    if tie and not hf_config.get("tie_word_embeddings", False):
        raise ValueError(f"{folder} has no lm_head.weight and tie_word_embeddings is false")

    with torch.device("meta"):  # safe now: the layer count matches the files
        model = Llama(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(where) - ({"output.weight"} if tie else set()))
    if missing:
        raise ValueError(f"{folder} lacks weights: {[to_hf_key(k) for k in missing][:8]}")
    for key in [k for k in expected if k in shapes]:  # in the model's order: embedding first
        if shapes[key] != tuple(expected[key].shape):
            raise ValueError(f"weight {to_hf_key(key)} has shape {shapes[key]}, the "
                             f"config implies {tuple(expected[key].shape)}")

    state = {}
    for file in sorted(set(where.values())):
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as f:
                for key in [k for k, v in where.items() if v == file]:
                    tensor = f.get_tensor(to_hf_key(key))
                    state[key] = tensor.to(dtype) if dtype is not None else tensor
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{file}: cannot read the tensors ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}); download the file again") from None
    if tie:
        state["output.weight"] = state["tok_embeddings.weight"].clone()
    model.load_state_dict(state, strict=True, assign=True)
    # The rotary tables are not stored; build them on the target device.
    model.rope_cos_PE = torch.empty(cfg.max_seq_len, cfg.head_dim, device=device)
    model.rope_sin_PE = torch.empty(cfg.max_seq_len, cfg.head_dim, device=device)
    model.init_rope()
    context = hf_config.get(TRAIN_SEQ_LEN_KEY)
    if isinstance(context, int) and not isinstance(context, bool) and 0 < context <= cfg.max_seq_len:
        model.train_seq_len = context  # written by save_hf: the context the model was trained with
    bin_ms = hf_config.get(TRAIN_BIN_MS_KEY)
    if isinstance(bin_ms, int) and not isinstance(bin_ms, bool) and bin_ms > 0:
        model.train_bin_ms = bin_ms
    return model
