"""The autoregressive spike language model as a training family (``spikefm train --model ar``).

Model config: :class:`spikefm.models.llama.LlamaConfig` (``--preset`` picks one of
``LLAMA_PRESETS``; ``--set model.n_layers=2`` overrides a field). Data config:
:class:`ARDataConfig`. Batches are (inputs, targets) token windows from
:class:`spikefm.data.ar.ARTokenLoader`; the loss is the mean next-token cross-entropy in nats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.llama import Llama, LlamaConfig, flops_per_token, llama_preset
from .config import RunConfig
from .family import register_family


@dataclass(frozen=True)
class ARDataConfig:
    """Where the tokens come from.

    Attributes:
        corpus: corpus directory (``spikefm corpus build`` output).
        seq_len: context length in tokens (each bin is num_units + 1 tokens).
        split: corpus split to train on.
        token_cache: read through the memory-mapped token cache in CORPUS_DIR/.cache (built on
            first use, one byte per token); false for read-only corpus folders.
    """

    corpus: str = ""
    seq_len: int = 512
    split: str = "train"
    token_cache: bool = True

    def __post_init__(self):
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ValueError(f"data.seq_len must be an int >= 2, got {self.seq_len!r}")
        if self.split not in ("train", "test"):
            raise ValueError(f"data.split must be 'train' or 'test', got {self.split!r}")


class ARFamily:
    name = "ar"
    model_config_cls = LlamaConfig
    data_config_cls = ARDataConfig

    @staticmethod
    def preset(name: str) -> LlamaConfig:
        return llama_preset(name)

    def build_model(self, cfg: RunConfig) -> nn.Module:
        return Llama(cfg.model)

    def init_weights(self, model: nn.Module) -> None:
        model.init_weights()

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.layers)

    def train_loader(self, cfg: RunConfig, rank: int, world_size: int):
        from ..data.ar import ARTokenLoader
        from .dist import barrier

        def make():
            return ARTokenLoader(_corpus(cfg), seq_len=cfg.data.seq_len,
                                 batch_size=cfg.train.micro_batch_size(world_size),
                                 seed=cfg.train.seed, rank=rank, world_size=world_size,
                                 split=cfg.data.split, token_cache=cfg.data.token_cache)

        # Rank 0 builds the token cache (if missing) while the others wait, so it is built once.
        loader = make() if rank == 0 else None
        barrier()
        return loader if loader is not None else make()

    def loss(self, model: nn.Module, batch: Any, cfg: RunConfig):
        x_BL, y_BL = batch[0].long(), batch[1].long()  # the loader sends uint8 tokens
        logits_BLV = model(x_BL)
        loss = F.cross_entropy(logits_BLV.float().reshape(-1, logits_BLV.shape[-1]),
                               y_BL.reshape(-1))
        return loss, {"tokens": int(y_BL.numel())}

    def flops_per_batch(self, model: nn.Module, batch: Any, cfg: RunConfig) -> float:
        x_BL, _ = batch
        return flops_per_token(cfg.model, x_BL.shape[1]) * x_BL.numel()

    def describe(self, cfg: RunConfig) -> dict[str, Any]:
        corpus = _corpus(cfg)
        return {"corpus": str(corpus.path.resolve()), "corpus_manifest_sha256": corpus.manifest_hash,
                "train_tokens": corpus.num_tokens(cfg.data.split),
                "num_sessions": len(corpus.session_ids(cfg.data.split))}


def _corpus(cfg: RunConfig):
    from ..corpus.reader import Corpus

    if not cfg.data.corpus:
        raise ValueError("data.corpus is empty; pass --data CORPUS_DIR")
    return Corpus(cfg.data.corpus)


register_family("ar", ARFamily)

