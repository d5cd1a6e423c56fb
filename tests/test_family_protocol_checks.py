"""A third-party family that gets a member of the Family protocol wrong is told so in one line
naming the member and what was expected, before training where it can be (these failed inside
backward, the logging or the first checkpoint as "internal error ... report it", or not at all)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _toy_family import ToyFamily, ToyLoader, toy_config  # noqa: E402

from spikefm.families import register  # noqa: E402
from spikefm.train.loop import train  # noqa: E402


def _variant(name: str, **members) -> str:
    register(name, type(f"Toy_{name}", (ToyFamily,), {"name": name, **members}))
    return name


def _fails(name: str, tmp_path, match: str, **train_kw) -> str:
    cfg = dataclasses.replace(toy_config(steps=4, **train_kw), family=name)
    from spikefm.families import get

    with pytest.raises(ValueError, match=match) as exc:
        train(cfg, tmp_path / name, get(name), progress=False)
    assert "\n" not in str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize("member,value,match", [
    ("loss", lambda self, m, b, c: (ToyFamily.loss(self, m, b, c)[0].expand(3), {"tokens": 1}),
     r"^family '\w+': loss\(\) must return \(a 0-d floating tensor, .*its loss is a tensor of shape \(3,\)"),
    ("loss", lambda self, m, b, c: ToyFamily.loss(self, m, b, c)[0],
     r"^family '\w+': loss\(\) must return .*, got Tensor$"),
    ("loss", lambda self, m, b, c: (ToyFamily.loss(self, m, b, c)[0], {"n": 3}),
     r"its stats are a dict without 'tokens' \(keys: n\)$"),
    ("loss", lambda self, m, b, c: (ToyFamily.loss(self, m, b, c)[0], {"tokens": 3, "session": "s1"}),
     r"loss\(\) stats must be numbers .*; 'session' is str 's1'"),
    ("flops_per_batch", lambda self, m, b, c: None,
     r"^family '\w+': flops_per_batch\(\) must return a number .*got NoneType$"),
    ("describe", lambda self, c: {"data": Path("x")},
     r"^family '\w+': describe\(\) must return a dict that JSON can write .*PosixPath"),
])
def test_wrong_members_are_named_in_one_line(member, value, match, tmp_path):
    name = _variant(f"toy_bad_{member}_{abs(hash(match)) % 10_000}", **{member: value})
    _fails(name, tmp_path, match)


def test_a_loader_that_cannot_be_checkpointed_is_refused_before_training(tmp_path):
    """Without state_dict the run failed at its first checkpoint (200 steps in); a state of numpy
    numbers saved, and then no resume could read it back."""
    class Plain:
        def __init__(self, inner):
            self.inner = inner

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.inner)

    class NumpyState(ToyLoader):
        def state_dict(self):
            return {**super().state_dict(), "cursor": np.int64(3)}

    plain = _variant("toy_plain_loader", train_loader=lambda self, c, r, w: Plain(ToyFamily.train_loader(self, c, r, w)))
    msg = _fails(plain, tmp_path, r"^family 'toy_plain_loader': train_loader\(\) must return an iterator with "
                                  r"state_dict\(\) and load_state_dict\(\) .*; Plain lacks state_dict, load_state_dict$")
    assert not (tmp_path / plain).exists(), msg

    def numpy_loader(self, cfg, rank, world):
        inner = ToyFamily.train_loader(self, cfg, rank, world)
        inner.__class__ = NumpyState
        return inner

    name = _variant("toy_numpy_state", train_loader=numpy_loader)
    msg = _fails(name, tmp_path, r"train_loader\(\)\.state_dict\(\) must hold only what torch\.load\("
                                 r"weights_only=True\) reads back .*or no run of it can resume \(Unsupported global: "
                                 r"GLOBAL numpy\.\S+ was not an allowed global by default\)$")
    assert not (tmp_path / name).exists()
    assert "\x1b" not in msg and "two options" not in msg  # torch's bold codes and its cut-off advice


def test_validate_of_another_shape_is_named(tmp_path):
    name = _variant("toy_float_validate", validate=lambda self, m, c, r, w: {"val_loss": 0.5})
    _fails(name, tmp_path, r"^family 'toy_float_validate': validate\(\) must return \{name: \(numerator, "
                           r"denominator\)\} sums .*got 'val_loss': 0\.5$", eval_every=2)


def test_stats_a_micro_step_leaves_out_are_averaged_over_those_that_report_them(tmp_path):
    """A stat reported by one micro-step of two was logged at half its value (divided by grad_accum)."""
    def loss(self, model, batch, cfg):
        out, stats = ToyFamily.loss(self, model, batch, cfg)
        first = batch.get("first_sample", 0) % cfg.train.batch_size == 0  # the step's first micro-batch
        return out, {**stats, **({"only_first": 1.0} if first else {}), "always": 2.0}

    import json

    name = _variant("toy_sparse_stats", loss=loss)
    from spikefm.families import get

    cfg = dataclasses.replace(toy_config(steps=4, grad_accum=2), family=name)
    train(cfg, tmp_path / "run", get(name), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert [r["always"] for r in rows] == [2.0] * 4
    assert [r.get("only_first") for r in rows] == [1.0] * 4


def test_transfer_headline_of_another_shape_is_refused_before_it_is_recorded(monkeypatch):
    """A headline of {metric: number} was written into the study's progress record, and every
    rerun then reused it and failed in aggregate_seeds ('float' object is not iterable)."""
    from spikefm import families

    fam = families.get("ndt")
    monkeypatch.setattr(type(fam), "transfer_headline", staticmethod(lambda benchmarks: {"val_poisson_nll": 0.89}),
                        raising=False)
    with pytest.raises(ValueError, match=r"^family 'ndt': transfer_headline\(\) must return \{metric: \{model or "
                                         r"reference: number or None\}\}, got 'val_poisson_nll': 0\.89; nothing of "
                                         r"this seed was recorded$"):
        families.transfer_headline("ndt", {"fine-tuned": {}, "single-session": {}, "finetune": {}})


def test_a_family_listing_no_preset_is_named(monkeypatch):
    from spikefm import families

    name = _variant("toy_no_presets", presets=staticmethod(lambda: []))
    with pytest.raises(ValueError, match=r"^family 'toy_no_presets': presets\(\) lists no preset"):
        families.default_preset(name)


def test_finetune_names_a_finetune_config_or_validate_of_another_kind(tmp_path, monkeypatch):
    """finetune_config returning a dict was "internal error (AttributeError: 'dict' object has no
    attribute 'train') ... report it"; a validate without 'val_loss' said "the validation data
    scored nothing"."""
    from spikefm import families

    run = tmp_path / "run"
    train(toy_config(steps=4), run, families.get("toy"), progress=False)
    fam = families.get("toy")
    real = type(fam).finetune_config
    monkeypatch.setattr(type(fam), "finetune_config", lambda self, *a, **k: {"train": {}})
    with pytest.raises(ValueError, match=r"^family 'toy': finetune_config\(\) must return a RunConfig "
                                         r"\(spikefm.train.config\), got dict$"):
        families.finetune(run, str(tmp_path), "s1", tmp_path / "ft", strategy="frozen", steps=4, eval_every=2)
    monkeypatch.setattr(type(fam), "finetune_config", real)
    monkeypatch.setattr(type(fam), "validate", lambda self, m, c, r, w: {"nll": (1.0, 2.0)})
    with pytest.raises(ValueError, match=r"^family 'toy': validate\(\) returned no 'val_loss' entry \(it returned "
                                         r"nll\); early stopping minimises 'val_loss'$"):
        families.finetune(run, str(tmp_path), "s1", tmp_path / "ft2", strategy="frozen", steps=4, eval_every=2)
