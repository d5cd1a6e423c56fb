"""A tiny model family for testing the shared training loop (registered as "toy").

Data: deterministic integer sequences over a vocabulary of `vocab_size` tokens following
x[t+1] = (3 * x[t] + 1) mod vocab_size, with each token replaced by a uniform random one with
probability `noise`; so next-token loss falls from log(vocab_size) towards the noise entropy.
Model: token embedding -> `num_layers` pre-norm residual MLP blocks (with dropout) -> norm -> head.

Shapes: B batch, T sequence length, D model width, V vocabulary size.

Also a command-line entry point used by the subprocess tests (SIGKILL, torchrun):

    python tests/_toy_family.py RUN_DIR [--resume] [--stop-after K] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from spikefm.train.config import OptimConfig, RunConfig, TrainConfig  # noqa: E402
from spikefm.families import register  # noqa: E402


@dataclass(frozen=True)
class ToyModelConfig:
    vocab_size: int = 16
    dim: int = 32
    num_layers: int = 2
    hidden_dim: int | None = None  # None: 4 * dim
    dropout: float = 0.0
    # > 0: a parameter ``late`` that the loss reaches only from this optimizer step on (a stand-in
    # for a session's stitcher or a label head no batch has reached yet: no optimizer state before)
    late_from_step: int = 0
    # > 0: rank 1's loss value is NaN at this optimizer step, its gradients finite (one bad batch
    # on one rank: only that rank sees it)
    nan_on_rank1_at_step: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.num_layers < 1 or self.vocab_size < 2:
            raise ValueError(f"bad toy model config {self}")


@dataclass(frozen=True)
class ToyDataConfig:
    seq_len: int = 16
    num_sequences: int = 1024
    noise: float = 0.1
    seed: int = 0
    sleep_s: float = 0.0  # per micro-batch, to slow a subprocess down for the SIGKILL test
    corpus: str = ""  # the toy data is generated; the path is only recorded (spikefm train --data)
    init_from: str = ""  # fine-tuning: a finished toy run whose weights initialise this one
    freeze_core: bool = False  # fine-tuning: train the head only


class Block(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden_dim)
        self.down = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, h_BTD: torch.Tensor) -> torch.Tensor:
        return h_BTD + self.drop(self.down(F.gelu(self.up(self.norm(h_BTD)))))


class ToyModel(nn.Module):
    def __init__(self, cfg: ToyModelConfig) -> None:
        super().__init__()
        hidden = cfg.hidden_dim or 4 * cfg.dim
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, hidden, cfg.dropout) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)
        if cfg.late_from_step > 0:
            self.late = nn.Parameter(torch.ones(3))

    def forward(self, x_BT: torch.Tensor) -> torch.Tensor:
        h_BTD = self.embed(x_BT)
        for block in self.blocks:
            h_BTD = block(h_BTD)
        return self.head(self.norm(h_BTD))  # logits_BTV


def make_sequences(cfg: ToyDataConfig, vocab_size: int, offset: int = 0) -> np.ndarray:
    """int64 [num_sequences, seq_len + 1]; `offset` selects an independent (held-out) set."""
    rng = np.random.default_rng(cfg.seed + 7919 * offset)
    n, t = cfg.num_sequences, cfg.seq_len + 1
    x = np.empty((n, t), dtype=np.int64)
    x[:, 0] = rng.integers(0, vocab_size, n)
    for i in range(1, t):
        x[:, i] = (3 * x[:, i - 1] + 1) % vocab_size
        flip = rng.random(n) < cfg.noise
        x[flip, i] = rng.integers(0, vocab_size, int(flip.sum()))
    return x


class ToyLoader:
    """Micro-batch k on rank r holds global samples [(k*W + r)*m, (k*W + r + 1)*m), m = micro
    batch size, W = world size; so each optimizer step covers the same global batch for any
    grad_accum and world size."""

    def __init__(self, data: np.ndarray, micro_batch: int, rank: int, world_size: int, sleep_s: float) -> None:
        self.data, self.micro_batch, self.rank, self.world_size = data, micro_batch, rank, world_size
        self.sleep_s = sleep_s
        self.micro_index = 0

    def __iter__(self) -> "ToyLoader":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        start = (self.micro_index * self.world_size + self.rank) * self.micro_batch
        rows = np.arange(start, start + self.micro_batch) % len(self.data)
        self.micro_index += 1
        x = torch.from_numpy(self.data[rows])
        return {"input": x[:, :-1], "target": x[:, 1:], "first_sample": int(start)}

    def state_dict(self) -> dict:
        return {"micro_index": self.micro_index}

    def load_state_dict(self, state: dict) -> None:
        self.micro_index = int(state["micro_index"])


class ToyFamily:
    """The whole Family protocol, so that a test can drive it through the registry and the CLI:
    a "session" of the toy family is a dataset drawn with its own seed."""

    name = "toy"
    model_config_cls = ToyModelConfig
    data_config_cls = ToyDataConfig

    def __init__(self) -> None:
        self._data: ToyDataConfig | None = None

    @staticmethod
    def preset(name: str) -> ToyModelConfig:
        sizes = {"tiny": ToyModelConfig(), "small": ToyModelConfig(dim=64)}
        if name not in sizes:
            raise ValueError(f"unknown toy preset {name!r}; presets: {', '.join(sizes)}")
        return sizes[name]

    @staticmethod
    def presets() -> list[str]:
        return ["tiny", "small"]

    def build_model(self, cfg: RunConfig) -> nn.Module:
        self._data = cfg.data
        return ToyModel(cfg.model)

    def init_for_loading(self, model: nn.Module) -> None:
        self._init(model)

    def init_weights(self, model: nn.Module) -> None:
        self._init(model)
        data = self._data
        if data is not None and data.init_from:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(Path(data.init_from) / "model.safetensors")))
            if data.freeze_core:
                for name, p in model.named_parameters():
                    p.requires_grad_(name.startswith("head."))

    def _init(self, model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.1)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if hasattr(model, "late"):
            with torch.no_grad():
                model.late.fill_(1.0)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def train_loader(self, cfg: RunConfig, rank: int, world_size: int) -> ToyLoader:
        data = make_sequences(cfg.data, cfg.model.vocab_size)
        return ToyLoader(data, cfg.train.micro_batch_size(world_size), rank, world_size, cfg.data.sleep_s)

    def loss(self, model: nn.Module, batch: dict, cfg: RunConfig) -> tuple[torch.Tensor, dict[str, float]]:
        logits_BTV = model(batch["input"])
        target_BT = batch["target"]
        loss = F.cross_entropy(logits_BTV.float().flatten(0, 1), target_BT.flatten())
        late = cfg.model.late_from_step
        if late > 0 and batch.get("first_sample", 0) >= (late - 1) * cfg.train.batch_size:
            loss = loss + 0.1 * (model.late - 0.5).square().sum()
        bad = cfg.model.nan_on_rank1_at_step
        if bad > 0 and rank_of_process() == 1 and batch.get("first_sample", 0) // cfg.train.batch_size + 1 == bad:
            loss = loss + loss.detach() * float("nan")
        return loss, {"tokens": target_BT.numel()}

    def flops_per_batch(self, model: nn.Module, batch: dict, cfg: RunConfig) -> float:
        return 6.0 * sum(p.numel() for p in model.parameters()) * batch["target"].numel()

    def describe(self, cfg: RunConfig) -> dict:
        data = make_sequences(cfg.data, cfg.model.vocab_size)
        return {"dataset": "toy", "num_sequences": int(len(data)),
                "data_sha256": hashlib.sha256(data.tobytes()).hexdigest()}

    def validate(self, model: nn.Module, cfg: RunConfig, rank: int, world_size: int) -> dict:
        held_out = make_sequences(cfg.data, cfg.model.vocab_size, offset=1)[rank::world_size][:64]
        x = torch.from_numpy(held_out).to(next(model.parameters()).device)
        logits = model(x[:, :-1]).float()
        total = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
        return {"loss": (float(total), float(x[:, 1:].numel())), "val_loss": (float(total), float(x[:, 1:].numel()))}

    # -- outside the loop

    def finetune_config(self, run_dir: str, corpus: str, session_id: str, *, freeze_core: bool = False,
                        from_scratch: bool = False, steps: int = 100) -> RunConfig:
        import dataclasses
        import zlib

        from spikefm.train.runinfo import load_run_config

        pre = load_run_config(run_dir, model_cls=ToyModelConfig, data_cls=ToyDataConfig)
        data = dataclasses.replace(pre.data, corpus=corpus, seed=zlib.crc32(session_id.encode()) % 10_000,
                                   init_from="" if from_scratch else str(Path(run_dir).resolve()),
                                   freeze_core=freeze_core)
        optim = dataclasses.replace(pre.optim, warmup_steps=None)
        return dataclasses.replace(pre, data=data, optim=optim,
                                   train=dataclasses.replace(pre.train, steps=steps, eval_every=0))

    def evaluate(self, run_dir: str, corpus: str, *, split: str = "test") -> dict:
        """Held-out next-token cross-entropy (bits/token) of the run beside the uniform guess."""
        from spikefm.train.checkpoint import load_exported_model
        from spikefm.train.runinfo import load_run_config

        if split != "test":
            raise ValueError(f"toy runs are scored on held-out sequences; got split {split!r}")
        cfg = load_run_config(run_dir, model_cls=ToyModelConfig, data_cls=ToyDataConfig)
        model = load_exported_model(run_dir, self, cfg)
        with torch.no_grad():
            num, den = self.validate(model, cfg, 0, 1)["loss"]
        return {"family": self.name, "run_dir": run_dir, "results": {
            "model": {"bits": num / den / math.log(2)}, "uniform": {"bits": math.log2(cfg.model.vocab_size)}}}

    def format_results(self, results_by_run: dict) -> str:
        from spikefm.tables import render_table

        first = next(iter(results_by_run.values()))["results"]
        header = ["", *results_by_run, "uniform"]
        row = ["bits/token", *(r["results"]["model"]["bits"] for r in results_by_run.values()),
               first["uniform"]["bits"]]
        return render_table(header, [row], title="toy held-out cross-entropy")


register("toy", ToyFamily)


def rank_of_process() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def toy_config(**train: object) -> RunConfig:
    """A fast CPU config: fp32, 30 steps, logs every step, no periodic checkpoints."""
    base = dict(steps=30, batch_size=8, log_every=1, ckpt_every=0, precision="fp32", device="cpu")
    base.update(train)
    return RunConfig(
        family="toy",
        model=ToyModelConfig(),
        data=ToyDataConfig(),
        optim=OptimConfig(lr=3e-3, warmup_steps=3, weight_decay=0.01),
        train=TrainConfig(**base),
    )


def main(argv: list[str] | None = None) -> None:
    from spikefm.train import dist
    from spikefm.train.config import apply_overrides
    from spikefm.families import train

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    cfg = apply_overrides(toy_config(), args.overrides)
    summary = train(cfg, args.run_dir, resume=args.resume, progress=False, stop_after=args.stop_after)
    if dist.is_main():
        print("SUMMARY " + json.dumps(summary), flush=True)
    dist.exit_worker(0)


if __name__ == "__main__":
    main()
