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
import os
import re
from pathlib import Path

import torch

from spikefm.fileio import write_atomic
from spikefm.families.ar.model import Llama, LlamaConfig

__all__ = ["save_hf", "load_hf", "to_hf_config", "from_hf_config", "to_hf_key", "from_hf_key"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

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
    """
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
    }


def _unsupported(what: str, got, fix: str) -> ValueError:
    return ValueError(f"unsupported Hugging Face Llama config: {what}, got {got!r}; {fix}")


def _check_rope(config: dict) -> float:
    """Rotary base from a 4.x (rope_theta/rope_scaling) or 5.x (rope_parameters) config."""
    theta = config.get("rope_theta")
    scaling = config.get("rope_scaling")
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
    return 10000.0 if theta is None else float(theta)  # transformers' default base


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
    if config.get("pretraining_tp", 1) not in (1, None):
        raise _unsupported("pretraining_tp must be 1", config.get("pretraining_tp"),
                           "re-save the model with pretraining_tp=1")
    try:
        dim = int(config["hidden_size"])
        n_heads = int(config["num_attention_heads"])
        kwargs = dict(
            dim=dim,
            n_layers=int(config["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            ffn_dim=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
        )
    except KeyError as err:
        raise ValueError(f"Hugging Face Llama config lacks required key {err.args[0]!r}") from None
    head_dim = config.get("head_dim")
    if head_dim is not None and int(head_dim) * n_heads != dim:
        raise _unsupported("head_dim must equal hidden_size / num_attention_heads", head_dim,
                           f"expected {dim // n_heads}")
    kwargs["rope_theta"] = _check_rope(config)
    if config.get("rms_norm_eps") is not None:
        kwargs["norm_eps"] = float(config["rms_norm_eps"])
    if config.get("max_position_embeddings") is not None:
        kwargs["max_seq_len"] = int(config["max_position_embeddings"])
    if config.get("initializer_range") is not None:
        kwargs["init_std"] = float(config["initializer_range"])
    return LlamaConfig(**kwargs)


def save_hf(model: Llama, out_dir: str | os.PathLike) -> Path:
    """Write ``model`` as a Hugging Face ``LlamaForCausalLM`` folder.

    Creates ``out_dir`` if needed and writes ``model.safetensors`` (HF key names, the model's
    parameter dtype) and then ``config.json``, each under a temporary name renamed into place,
    so a reader never sees a half-written file and ``config.json`` appears last.

    Returns:
        The output folder as a ``Path``.
    """
    from safetensors.torch import save_file

    if not isinstance(model, Llama):
        raise TypeError(f"save_hf expects a spikefm Llama, got {type(model).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, tensor in model.state_dict().items():
        if tensor.device.type == "meta":
            raise ValueError(f"parameter {key!r} is on the meta device; materialize the model "
                             "(to_empty + init_weights, or load weights) before saving")
        tensors[to_hf_key(key)] = tensor.detach().to("cpu").contiguous()
    dtype = model.tok_embeddings.weight.dtype
    write_atomic(out / WEIGHTS_NAME,
                 lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    text = json.dumps(to_hf_config(model.cfg, dtype), indent=2, sort_keys=True) + "\n"

    write_atomic(out / CONFIG_NAME, lambda tmp: tmp.write_text(text))
    return out


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    single = folder / WEIGHTS_NAME
    if single.exists():
        return [single]
    if index.exists():
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map'; is it a safetensors index file?")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in files if not p.exists()]
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

    Raises:
        FileNotFoundError: missing folder, config or weights.
        ValueError: unsupported config, or weights missing / unexpected / of the wrong shape.
    """
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the directory holding "
                                f"{CONFIG_NAME} and the safetensors weights")
    config_path = folder / CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}")
    with open(config_path) as f:
        hf_config = json.load(f)
    cfg = from_hf_config(hf_config)
    dtype = _as_dtype(dtype)
    device = torch.device(device)

    state = {}
    unexpected = []
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for hf_key in f.keys():
                if hf_key.endswith("rotary_emb.inv_freq"):
                    continue  # derived buffer stored by old transformers versions
                try:
                    key = from_hf_key(hf_key)
                except KeyError:
                    unexpected.append(hf_key)
                    continue
                tensor = f.get_tensor(hf_key)
                state[key] = tensor.to(dtype) if dtype is not None else tensor
    if unexpected:
        raise ValueError(f"{folder} holds weights spikefm's Llama does not have: "
                         f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if "output.weight" not in state and "tok_embeddings.weight" in state:
        if hf_config.get("tie_word_embeddings", False):
            state["output.weight"] = state["tok_embeddings.weight"].clone()
        else:
            raise ValueError(f"{folder} has no lm_head.weight and tie_word_embeddings is false")

    with torch.device("meta"):
        model = Llama(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{folder} lacks weights: {[to_hf_key(k) for k in missing][:8]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"weight {to_hf_key(key)} has shape {tuple(tensor.shape)}, the "
                             f"config implies {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=True, assign=True)
    # The rotary tables are not stored; build them on the target device.
    model.rope_cos_PE = torch.empty(cfg.max_seq_len, cfg.head_dim, device=device)
    model.rope_sin_PE = torch.empty(cfg.max_seq_len, cfg.head_dim, device=device)
    model.init_rope()
    return model
