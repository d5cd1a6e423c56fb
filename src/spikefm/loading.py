"""``spikefm.load_model``: a trained run directory or a Hugging Face Llama folder -> nn.Module."""
from __future__ import annotations

import json
from pathlib import Path

FAMILY_MODULES = {"ar": "spikefm.train.ar_family", "ndt": "spikefm.train.ndt_family"}


def register_families() -> None:
    """Import the modules that register spikefm's model families with the training loop."""
    import importlib

    for module in FAMILY_MODULES.values():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def load_model(path: str | Path, device: str = "cpu"):
    """Load a model for evaluation or generation.

    Args:
        path: a spikefm run directory (``config.json`` with a ``family`` + ``model.safetensors``)
            or a Hugging Face Llama folder (``config.json`` with ``model_type: llama`` +
            ``model.safetensors``), such as the published Neural Pile models.

    Returns:
        The model in eval mode. For run directories ``model.run_config`` holds the RunConfig.
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{path}: no config.json; expected a spikefm run directory or a Hugging "
                         "Face Llama folder")
    config = json.loads(cfg_path.read_text())
    if config.get("model_type") == "llama" or "LlamaForCausalLM" in config.get("architectures", []):
        from .models.hf_llama import load_hf

        return load_hf(path, device=device).eval()
    register_families()
    from .train.checkpoint import load_exported_model

    model, run_cfg = load_exported_model(path, device=device)
    model.run_config = run_cfg
    return model
