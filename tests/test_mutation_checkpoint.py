"""spikefm.train.checkpoint function by function, without training (fast; written to kill the
mutants that benchmarks/mutation/run_mutation.py found surviving the training-level tests).

Every expectation is independent of the code under test: hashes from hashlib over the bytes on
disk, sizes from os.stat, headers written by hand, messages compared whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spikefm.train import checkpoint as ck
from spikefm.train.config import OptimConfig
from spikefm.train.optim import build_optimizer, build_scheduler


class Loader:
    def __init__(self) -> None:
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def parts(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, warmup_steps=1))
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1e-2, warmup_steps=1), 10)
    return model, optimizer, scheduler, Loader()


def one_step(model, optimizer, scheduler) -> None:
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def save(run: Path, step: int, keep: int = 5, seed: int = 0, tokens: int = 7) -> Path:
    model, optimizer, scheduler, loader = parts(seed)
    one_step(model, optimizer, scheduler)
    loader.position = step * 3
    return ck.save_checkpoint(run, step, model=model, optimizer=optimizer, scheduler=scheduler,
                              loader=loader, trainer_state={"tokens": tokens, "elapsed_s": 1.5},
                              info={"run": "test", "step": step}, keep=keep)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------- save and load


def test_saved_checkpoint_layout_manifest_and_contents(tmp_path):
    path = save(tmp_path, 3)
    assert path == tmp_path / "checkpoints" / "step_00000003"
    names = ["config.json", "manifest.json", "model.pt", "optim.pt", "rank_00000.pt", "trainer.pt"]
    assert sorted(p.name for p in path.iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000003"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest == {"format": 1, "step": 3, "world_size": 1, "files": {
        n: {"bytes": (path / n).stat().st_size, "sha256": sha(path / n)} for n in names if n != "manifest.json"}}
    assert json.loads((path / "config.json").read_text()) == {"run": "test", "step": 3}
    trainer = torch.load(path / "trainer.pt", weights_only=True)
    assert trainer["step"] == 3 and trainer["world_size"] == 1 and trainer["tokens"] == 7
    assert trainer["elapsed_s"] == 1.5 and trainer["scheduler"]["last_epoch"] == 1
    rank = torch.load(path / "rank_00000.pt", weights_only=True)
    assert rank["loader"] == {"position": 9} and set(rank["rng"]) >= {"python", "numpy", "torch"}
    model, *_ = parts(0)
    saved = torch.load(path / "model.pt", weights_only=True)
    assert saved.keys() == model.state_dict().keys()
    assert ck.checkpoint_problem(path) is None


def test_load_restores_every_part(tmp_path):
    path = save(tmp_path, 2)
    original, optimizer0, scheduler0, _ = parts(0)
    one_step(original, optimizer0, scheduler0)
    model, optimizer, scheduler, loader = parts(seed=99)  # different weights before loading
    random.seed(1)
    trainer = ck.load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader)
    assert trainer["step"] == 2 and trainer["tokens"] == 7
    assert loader.position == 6
    for a, b in zip(model.state_dict().values(), original.state_dict().values()):
        assert torch.equal(a, b)
    assert scheduler.state_dict()["last_epoch"] == scheduler0.state_dict()["last_epoch"] == 1
    assert optimizer.state_dict()["state"][0]["step"] == optimizer0.state_dict()["state"][0]["step"]
    for a, b in zip(optimizer.state_dict()["state"].values(), optimizer0.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert all(p.grad is None for p in model.parameters())
    model(torch.ones(1, 3)).sum().backward()  # gradients left over from before the load are dropped
    ck.load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError) as err:
        trainer_pt = torch.load(path / "trainer.pt", weights_only=True)
        torch.save({**trainer_pt, "world_size": 2}, path / "trainer.pt")
        ck.load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader)
    assert str(err.value) == ck.world_size_message(path, 2, 1)


def test_rng_state_round_trip_continues_every_stream():
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = ck.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ck.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn()) == expected
    kind, keys, pos, has_gauss, cached = state["numpy"]
    assert kind == "MT19937" and keys.dtype == torch.int64 and keys.numel() == 624
    np.random.seed(7)
    np.random.randn()  # leaves a cached gaussian
    state = ck.rng_state()
    assert state["numpy"][3] == 1
    after = np.random.randn()
    np.random.seed(0)
    ck.set_rng_state(state)
    assert np.random.randn() == after


def test_hashing_writer_counts_and_hashes_what_it_writes(tmp_path):
    path = tmp_path / "x.bin"
    with open(path, "wb") as f:
        writer = ck._HashingWriter(f)
        assert writer.write(b"abc") == 3
        writer.write(memoryview(np.arange(4, dtype=np.int32)))
        writer.flush()
    data = path.read_bytes()
    assert data == b"abc" + np.arange(4, dtype=np.int32).tobytes()
    assert writer.size == len(data) == 19 and writer.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    entry = ck._save({"a": torch.arange(5)}, tmp_path / "t.pt")
    assert entry == {"bytes": (tmp_path / "t.pt").stat().st_size, "sha256": sha(tmp_path / "t.pt")}
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["a"], torch.arange(5))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))  # more than one 1 MiB read
    assert ck._digest(big) == {"bytes": 3 << 20, "sha256": sha(big)}


# ------------------------------------------------------------------------------- verification


def test_checkpoint_problem_names_each_damage(tmp_path):
    path = save(tmp_path, 4)
    manifest = json.loads((path / "manifest.json").read_text())

    def with_manifest(**changes) -> str | None:
        (path / "manifest.json").write_text(json.dumps({**manifest, **changes}))
        return ck.checkpoint_problem(path)

    assert with_manifest() is None
    assert with_manifest(step=5) == "manifest.json is for step 5"
    assert with_manifest(format=2) == "manifest.json is not a format-1 checkpoint manifest"
    assert with_manifest(world_size=0) == "manifest.json is not a format-1 checkpoint manifest"
    assert with_manifest(world_size="1") == "manifest.json is not a format-1 checkpoint manifest"
    assert with_manifest(step="4") == "manifest.json is not a format-1 checkpoint manifest"
    assert with_manifest(files=[]) == "manifest.json is not a format-1 checkpoint manifest"
    files = dict(manifest["files"])
    del files["optim.pt"]
    assert with_manifest(files=files) == "manifest.json does not list optim.pt"
    assert with_manifest(world_size=3) == "manifest.json does not list rank_00001.pt, rank_00002.pt"
    for bad in ("../x", "", ".", "..", "a\\b"):
        assert with_manifest(files={**manifest["files"], bad: {}}) == f"manifest.json lists a bad file entry {bad!r}"
    assert with_manifest(files={**manifest["files"], "model.pt": "x"}) == "manifest.json lists a bad file entry 'model.pt'"
    (path / "manifest.json").write_text("[1,")
    assert ck.checkpoint_problem(path).startswith("manifest.json is not valid JSON (")
    (path / "manifest.json").write_bytes(b"\xff\xfe")
    assert ck.checkpoint_problem(path).startswith("manifest.json is not valid JSON (")
    (path / "manifest.json").write_text(json.dumps(manifest))

    size = (path / "model.pt").stat().st_size
    data = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(data + b"x")
    assert ck.checkpoint_problem(path) == f"model.pt has {size + 1} bytes, the manifest says {size}"
    (path / "model.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert ck.checkpoint_problem(path) == "model.pt does not match its sha256 in the manifest"
    (path / "model.pt").unlink()
    assert ck.checkpoint_problem(path) == "model.pt is missing"
    (path / "model.pt").mkdir()
    assert ck.checkpoint_problem(path) == "model.pt is missing"


def test_checkpoints_without_manifest(tmp_path):
    path = save(tmp_path, 1)
    (path / "manifest.json").unlink()
    assert ck.checkpoint_problem(path) is None
    for name in ("model.pt", "optim.pt", "trainer.pt", "rank_00000.pt"):
        moved = path / name
        moved.rename(path / "aside")
        assert ck.checkpoint_problem(path) == f"no manifest.json and {name} missing"
        (path / "aside").rename(moved)
    assert ck._checkpoint_world_size(path) == 1
    (tmp_path / "bare" / "step_00000001").mkdir(parents=True)
    assert ck.checkpoint_problem(tmp_path / "bare" / "step_00000001") == (
        "no manifest.json and model.pt, optim.pt, trainer.pt, rank_00000.pt missing")


def test_select_checkpoint_moves_damaged_ones_aside(tmp_path):
    for step in (2, 4, 6):
        save(tmp_path, step)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step_00000008").mkdir()
    (root / ".del-step_00000001").mkdir()
    (root / "keep-me").mkdir()
    assert ck.select_checkpoint(tmp_path) == (root / "step_00000006", 1, [])
    assert sorted(p.name for p in root.iterdir()) == ["keep-me", "step_00000002", "step_00000004", "step_00000006"]
    for step in (6, 4):
        (root / f"step_{step:08d}" / "trainer.pt").write_bytes(b"")
    path, world_size, notes = ck.select_checkpoint(tmp_path)
    assert (path, world_size) == (root / "step_00000002", 1)
    size = (root / "damaged-step_00000006" / "trainer.pt")
    assert size.stat().st_size == 0
    want = json.loads((root / "damaged-step_00000006" / "manifest.json").read_text())["files"]["trainer.pt"]["bytes"]
    assert notes == [
        f"checkpoint step_00000006 is damaged (trainer.pt has 0 bytes, the manifest says {want}); moved it to "
        "checkpoints/damaged-step_00000006",
        f"checkpoint step_00000004 is damaged (trainer.pt has 0 bytes, the manifest says {want}); moved it to "
        "checkpoints/damaged-step_00000004; resuming from step_00000002"]
    # three damaged in a row: the last note says where the run resumes
    for step in (10, 12, 14):
        save(tmp_path, step)
        (root / f"step_{step:08d}" / "optim.pt").write_bytes(b"x")
    save(tmp_path, 8)
    path, _, notes = ck.select_checkpoint(tmp_path)
    assert path == root / "step_00000008" and len(notes) == 3
    assert [n.endswith("; resuming from step_00000008") for n in notes] == [False, False, True]
    # the same step damaged again: a second aside name; nothing intact left
    import shutil

    shutil.rmtree(root / "step_00000008")
    save(tmp_path, 6)
    (root / "step_00000006" / "model.pt").unlink()
    (root / "step_00000002" / "model.pt").unlink()
    path, world_size, notes = ck.select_checkpoint(tmp_path)
    assert (path, world_size) == (None, None)
    assert notes[0].endswith("moved it to checkpoints/damaged-step_00000006.2")
    assert notes[-1].endswith("moved it to checkpoints/damaged-step_00000002; no intact checkpoint is left, "
                              "so the run starts from step 0")
    assert ck.select_checkpoint(tmp_path / "nothing") == (None, None, [])


def test_select_checkpoint_reads_legacy_world_size_and_treats_unreadable_as_damage(tmp_path):
    path = save(tmp_path, 3)
    (path / "manifest.json").unlink()
    trainer = torch.load(path / "trainer.pt", weights_only=True)
    torch.save({**trainer, "world_size": 4}, path / "trainer.pt")
    assert ck.select_checkpoint(tmp_path) == (path, 4, [])
    (path / "trainer.pt").write_bytes(b"not a torch file")
    got, world_size, notes = ck.select_checkpoint(tmp_path)
    assert got is None and world_size is None
    assert notes == ["checkpoint step_00000003 is damaged (trainer.pt cannot be read (UnpicklingError)); "
                     "moved it to checkpoints/damaged-step_00000003; no intact checkpoint is left, so the "
                     "run starts from step 0"]


def test_listing_retention_and_leftovers(tmp_path):
    assert ck.list_checkpoints(tmp_path) == [] and ck.latest_checkpoint(tmp_path) is None
    for step in (1, 10, 2):
        save(tmp_path, step, keep=10)
    root = tmp_path / "checkpoints"
    (root / "step_00000099").write_text("a file, not a checkpoint")
    (root / "step_x").mkdir()
    assert ck.list_checkpoints(tmp_path) == [(1, root / "step_00000001"), (2, root / "step_00000002"),
                                             (10, root / "step_00000010")]
    assert ck.latest_checkpoint(tmp_path) == root / "step_00000010"
    ck.prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2, 10]
    ck.prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2, 10]
    with pytest.raises(ValueError, match="keep must be a positive int, got 0"):
        ck.prune_checkpoints(tmp_path, 0)
    save(tmp_path, 11, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000011", "step_00000099", "step_x"]
    # the same step saved again replaces it (old content retired first)
    save(tmp_path, 11, keep=1, tokens=99)
    assert torch.load(root / "step_00000011" / "trainer.pt", weights_only=True)["tokens"] == 99
    assert ck.checkpoint_problem(root / "step_00000011") is None
    # leftovers: folders only, our prefixes only
    (root / ".tmp-a").mkdir()
    (root / ".del-b").mkdir()
    (root / ".del-file").write_text("x")
    (root / ".other").mkdir()
    ck._remove_leftovers(root)
    assert sorted(p.name for p in root.iterdir()) == [".del-file", ".other", "step_00000011", "step_00000099", "step_x"]
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("x")
    (root / ".tmp-link").symlink_to(target, target_is_directory=True)
    ck._remove_leftovers(root)
    assert (target / "precious").exists()


def test_retire_renames_before_deleting(tmp_path, monkeypatch):
    folder = tmp_path / "step_00000001"
    folder.mkdir()
    (folder / "f").write_text("x")
    (tmp_path / ".del-step_00000001").mkdir()  # an earlier interrupted deletion
    seen = []
    real_rmtree = ck.shutil.rmtree

    def rmtree(path, *args, **kwargs):
        seen.append((Path(path).name, folder.exists()))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ck.shutil, "rmtree", rmtree)
    ck._retire(folder)
    assert seen == [(".del-step_00000001", True), (".del-step_00000001", False)]
    assert list(tmp_path.iterdir()) == []


def test_world_size_message():
    assert ck.world_size_message("/r/checkpoints/step_00000004", 2, 1) == (
        "checkpoint step_00000004 was written by 2 process(es) and this run has 1: each rank's data "
        "position and random streams are saved per rank, so the run cannot continue exactly with "
        "another world size; resume with torchrun --nproc_per_node 2 -m spikefm.cli train ..., or "
        "start a new run folder (--out)")
    assert "resume with one process, without torchrun, or" in ck.world_size_message("s", 1, 4)


# ------------------------------------------------------------------------------- export, headers


def write_st(path: Path, header: dict, data: bytes = b"", length: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_export_and_header(tmp_path):
    model = nn.Linear(3, 2)
    model.register_buffer("counts", torch.arange(4, dtype=torch.int64))
    out = ck.export_model(tmp_path, model, step=12)
    assert out == tmp_path / "model.safetensors" and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    header, metadata = ck.read_safetensors_header(out)
    assert metadata == {"format": "pt", "spikefm_step": "12"}
    assert header["weight"]["shape"] == (2, 3) and header["weight"]["dtype"] == "F32"
    assert header["counts"] == {"dtype": "I64", "shape": (4,), "data_offsets": header["counts"]["data_offsets"]}
    spans = sorted(v["data_offsets"] for v in header.values())
    n = struct.unpack("<Q", out.read_bytes()[:8])[0]
    assert spans[0][0] == 0 and spans[-1][1] == out.stat().st_size - 8 - n
    assert ck.exported_step(tmp_path) == 12
    ck.export_model(tmp_path, model)
    assert ck.exported_step(tmp_path) is None
    assert ck.read_safetensors_header(out)[1] == {"format": "pt"}

    tied = nn.Module()
    tied.a = nn.Linear(2, 2, bias=False)
    tied.b = nn.Linear(2, 2, bias=False)
    tied.b.weight = tied.a.weight
    ck.export_model(tmp_path / "tied", tied, step=1)
    from safetensors.torch import load_file

    loaded = load_file(str(tmp_path / "tied" / "model.safetensors"))
    assert set(loaded) == {"a.weight", "b.weight"} and torch.equal(loaded["a.weight"], loaded["b.weight"])


def test_read_safetensors_header_messages(tmp_path):
    good = {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    p = tmp_path / "m.safetensors"
    prefix = f"{p} is not a valid safetensors file: "
    suffix = "; the file is damaged or of another format: copy or export it again"

    def message(header=None, data=b"\0" * 8, length=None, raw=None) -> str:
        if raw is not None:
            p.write_bytes(raw)
        else:
            write_st(p, header, data, length)
        with pytest.raises(ValueError) as err:
            ck.read_safetensors_header(p)
        text = str(err.value)
        assert text.startswith(prefix) and text.endswith(suffix)
        return text[len(prefix):-len(suffix)]

    write_st(p, {**good, "__metadata__": {"a": "b"}}, b"\0" * 8)
    assert ck.read_safetensors_header(p) == ({"t": {"dtype": "F32", "shape": (2,), "data_offsets": (0, 8)}}, {"a": "b"})
    write_st(p, {"e": {"dtype": "BOOL", "shape": [0], "data_offsets": [0, 0]}})
    assert ck.read_safetensors_header(p)[0]["e"]["shape"] == (0,)
    assert message(raw=b"1234567") == "7 bytes, shorter than the 8-byte header length"
    n = len(json.dumps(good).encode())
    assert message(good, b"", length=n + 9) == f"the header length {n + 9:,} exceeds the file ({8 + n:,} bytes) or 100,000,000 bytes"
    write_st(p, good, b"\0" * 8, length=n)  # exactly fits: fine
    assert ck.read_safetensors_header(p)[0]["t"]["shape"] == (2,)
    assert message(raw=struct.pack("<Q", 3) + b"[1]") == "the header is a JSON list, not an object"
    try:
        json.loads("{1:")
    except json.JSONDecodeError as exc:
        json_error = " ".join(str(exc).split())
    assert message(raw=struct.pack("<Q", 3) + b"{1:") == f"the header is not JSON ({json_error[:120]})"
    assert message({"t": [1]}) == "entry 't' is not an object"
    assert message({"t": {**good["t"], "dtype": "F31"}}) == "tensor 't' has unknown dtype 'F31'"
    for shape in ([2.0], [-1], "2", [True]):
        assert message({"t": {**good["t"], "shape": shape}}) == f"tensor 't' has shape {shape!r}, not a list of ints >= 0"
    for offsets in ([0, 9], [1, 0], [-1, 7], [0], [0, 8, 9], "08", [0.0, 8], [False, 8]):
        assert message({"t": {**good["t"], "data_offsets": offsets}}) == \
            f"tensor 't' has data offsets {offsets!r} outside the 8 data bytes"
    assert message({"t": {**good["t"], "shape": [3]}}) == "tensor 't' of shape (3,) F32 needs 12 bytes, its offsets span 8"
    assert message({"t": {**good["t"], "shape": [3], "data_offsets": [4, 12]}}, b"\0" * 12) == (
        "tensor 't' of shape (3,) F32 needs 12 bytes, its offsets span 8")
    two = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
           "b": {"dtype": "U8", "shape": [4], "data_offsets": [3, 7]}}
    assert message(two) == "tensors 'a' and 'b' overlap"
    two["b"]["data_offsets"] = [4, 8]
    write_st(p, two, b"\0" * 8)
    assert set(ck.read_safetensors_header(p)[0]) == {"a", "b"}
    assert message({**good, "__metadata__": {"a": 1}}) == "__metadata__ must map strings to strings"
    assert message({**good, "__metadata__": ["a"]}) == "__metadata__ must map strings to strings"
    assert ck._DTYPE_BYTES == {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def test_confined_file_and_json_files(tmp_path):
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "sub").mkdir()
    assert ck.confined_file(tmp_path / "inner", "sub/a.json") == (tmp_path / "inner" / "sub" / "a.json").resolve()
    (tmp_path / "inner" / "up").symlink_to(tmp_path)
    with pytest.raises(ValueError) as err:
        ck.confined_file(tmp_path / "inner", "up/x", what="shard")
    assert str(err.value) == (f"shard 'up/x' of {tmp_path / 'inner'} leads outside that folder (to "
                              f"{(tmp_path / 'x').resolve()}); a model folder must hold its own files: copy them into it")
    with pytest.raises(ValueError, match="shard name '../x' is not a plain relative path"):
        ck.confined_file(tmp_path / "inner", "../x", what="shard")
    (tmp_path / "inner" / "self").symlink_to(tmp_path / "inner")
    assert ck.confined_file(tmp_path / "inner", "self") == (tmp_path / "inner").resolve()

    with pytest.raises(ValueError, match="^file name '../x' is not a plain relative path"):
        ck.confined_file(tmp_path / "inner", "../x")
    with pytest.raises(ValueError, match="^file 'up/x' of .* leads outside that folder"):
        ck.confined_file(tmp_path / "inner", "up/x")

    p = tmp_path / "c.json"
    p.write_text('{"a": "\u00e9t\u00e9"}', encoding="utf-8")
    assert ck.read_json_file(p) == {"a": "\u00e9t\u00e9"}
    p.write_bytes('{"a": "été"}'.encode("utf-8"))
    assert ck.read_json_file(p) == {"a": "été"}  # UTF-8 whatever the locale
    with pytest.raises(FileNotFoundError) as err:
        ck.read_json_file(tmp_path / "none.json")
    assert str(err.value) == f"JSON file {tmp_path / 'none.json'} not found"
    p.write_text('{"a": 1}')
    assert ck.read_json_file(p) == {"a": 1}
    with pytest.raises(FileNotFoundError) as err:
        ck.read_json_file(tmp_path / "no.json", what="thing")
    assert str(err.value) == f"thing {tmp_path / 'no.json'} not found"
    p.write_bytes(b" " * ck.MAX_JSON_BYTES + b"1")
    with pytest.raises(ValueError) as err:
        ck.read_json_file(p, what="thing")
    assert str(err.value) == (f"thing {p} has {ck.MAX_JSON_BYTES + 1:,} bytes, more than the "
                              f"{ck.MAX_JSON_BYTES:,} a JSON description can need; it is not the file expected")
    p.write_bytes(b" " * (ck.MAX_JSON_BYTES - 1) + b"1")
    assert ck.read_json_file(p) == 1
    p.write_text('{"a":\n 1,,}')
    with pytest.raises(ValueError) as err:
        ck.read_json_file(p, what="thing")
    try:
        json.loads('{"a":\n 1,,}')
    except json.JSONDecodeError as exc:
        detail = " ".join(str(exc).split())
    assert str(err.value) == f"thing {p} is not valid JSON ({detail})" and "\n" not in str(err.value)
    assert ck.MAX_JSON_BYTES == 16 << 20 and ck.MAX_HEADER_BYTES == 100_000_000


def test_load_exported_model_limits(tmp_path):
    class Fam:
        def __init__(self, layers, extra_buffer=0):
            self.layers, self.extra_buffer = layers, extra_buffer

        def build_model(self, cfg):
            m = nn.Sequential(*[nn.Linear(4, 4) for _ in range(self.layers)])
            if self.extra_buffer:
                m.register_buffer("table", torch.empty(self.extra_buffer), persistent=False)
            return m

        def init_weights(self, model):
            for p in model.parameters():
                nn.init.zeros_(p)

    torch.manual_seed(0)
    ref = nn.Sequential(*[nn.Linear(4, 4) for _ in range(2)])
    ck.export_model(tmp_path, ref, step=1)
    model = ck.load_exported_model(tmp_path, Fam(2), None)
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    # 40 values in the file: the guard allows 2 * 40 + 2**20 values and 2 * 4 + 64 tensors
    with pytest.raises(ValueError, match=r"over 1,048,656 values or 72 tensors"):
        ck.load_exported_model(tmp_path, Fam(37), None)  # 74 tensors
    with pytest.raises(ValueError, match=r"missing \['2.bias', '2.weight'"):
        ck.load_exported_model(tmp_path, Fam(3), None)
    with pytest.raises(ValueError, match=r"describes buffers of over 268,435,456 values"):
        ck.load_exported_model(tmp_path, Fam(2, extra_buffer=(1 << 28) + 1), None)
    m = ck.load_exported_model(tmp_path, Fam(2, extra_buffer=1 << 20), None)  # 4 MiB: allowed
    assert m.table.numel() == 1 << 20
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError) as err:
        ck.load_exported_model(tmp_path, Fam(2), None)
    assert str(err.value) == (f"{tmp_path / 'model.safetensors'} not found; the run has not finished (or "
                              "was not exported): resume it with spikefm train --resume")


def test_unreadable_files_and_foreign_pickles(tmp_path, monkeypatch):
    path = save(tmp_path, 2)

    def unreadable(file):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(ck, "_digest", unreadable)
    assert ck.checkpoint_problem(path) == "rank_00000.pt cannot be read (Permission denied)"
    monkeypatch.undo()
    import argparse
    import pickle

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(argparse.Namespace(a=1), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        ck._load(tmp_path / "evil.pt")  # weights_only: no arbitrary objects from a checkpoint


class _Fam:
    """A family whose loading initialisation differs from its training one."""

    def __init__(self, layers=2, buffer=0, dtype=torch.float64):
        self.layers, self.buffer, self.dtype = layers, buffer, dtype

    def build_model(self, cfg):
        model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(self.layers)])
        if self.buffer:
            model.register_buffer("table", torch.empty(self.buffer, dtype=self.dtype), persistent=False)
        return model

    def init_weights(self, model):
        if self.buffer:
            model.table.fill_(1.0)

    def init_for_loading(self, model):
        if self.buffer:
            model.table.fill_(2.0)


def test_load_exported_model_messages_limits_and_initialisation(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ck.export_model(tmp_path, nn.Sequential(*[nn.Linear(4, 4) for _ in range(2)]), step=1)
    config = tmp_path / "config.json"
    loaded = ck.load_exported_model(tmp_path, _Fam(buffer=3), None)
    assert loaded.table.tolist() == [2.0, 2.0, 2.0]  # init_for_loading, not init_weights
    with pytest.raises(ValueError) as err:
        ck.load_exported_model(tmp_path, _Fam(layers=37), None)
    assert str(err.value) == (f"{config} describes a model with more parameters than its weights file holds "
                              "(over 1,048,656 values or 72 tensors); the config and the weights do not belong together")
    with pytest.raises(ValueError) as err:
        ck.load_exported_model(tmp_path, _Fam(layers=6), None)
    assert str(err.value) == (f"{tmp_path / 'model.safetensors'} does not fit the model {config} describes: "
                              "missing ['2.bias', '2.weight', '3.bias', '3.weight', '4.bias'], unexpected []; "
                              "the config and the weights do not belong together")
    with pytest.raises(ValueError) as err:
        ck.load_exported_model(tmp_path, _Fam(layers=1), None)
    assert "missing [], unexpected ['1.bias', '1.weight']" in str(err.value)
    ck.export_model(tmp_path / "four", nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)]))
    with pytest.raises(ValueError) as err:
        ck.load_exported_model(tmp_path / "four", _Fam(layers=1), None)
    assert "missing [], unexpected ['1.bias', '1.weight', '2.bias', '2.weight', '3.bias']; the config" in str(err.value)
    monkeypatch.setattr(ck, "MAX_DERIVED_BUFFER_BYTES", 1 << 20)
    ck.load_exported_model(tmp_path, _Fam(buffer=131072), None)  # exactly 1 MiB of float64: allowed
    with pytest.raises(ValueError) as err:
        ck.load_exported_model(tmp_path, _Fam(buffer=131073), None)
    assert str(err.value) == (f"{config} implies 1,048,584 bytes of derived buffers (e.g. rotary tables of a "
                              "huge max_seq_len), over the 1,048,576 allowed")


def test_tensors_the_header_admits_but_safetensors_cannot_read(tmp_path):
    from safetensors.torch import save_file

    save_file({"0.weight": torch.zeros(4, 4), "0.bias": torch.zeros(4)}, str(tmp_path / "model.safetensors"))
    header, _ = ck.read_safetensors_header(tmp_path / "model.safetensors")
    raw = (tmp_path / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    data = raw[8 + n:]
    gap = {"0.bias": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
           "0.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [24, 88]}}
    write_st(tmp_path / "model.safetensors", gap, data + b"\0" * 8)  # 8 unused bytes between
    assert set(ck.read_safetensors_header(tmp_path / "model.safetensors")[0]) == {"0.bias", "0.weight"}

    class One:
        def build_model(self, cfg):
            return nn.Sequential(nn.Linear(4, 4))

        def init_weights(self, model):
            pass

    with pytest.raises(ValueError) as err:
        ck.load_exported_model(tmp_path, One(), None)
    text = str(err.value)
    from safetensors.torch import load_file

    with pytest.raises(Exception) as raw_err:  # what safetensors itself says about the file
        load_file(str(tmp_path / "model.safetensors"))
    detail = " ".join(str(raw_err.value).split())
    assert text == (f"{tmp_path / 'model.safetensors'}: cannot read the tensors ({type(raw_err.value).__name__}: "
                    f"{detail[:200]}); the file is damaged: export or copy it again")
    assert type(raw_err.value).__name__ == "SafetensorError" and "\n" not in text


def test_an_interrupted_save_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """Ctrl-C inside a save left checkpoints/.tmp-step_* behind until the next save or resume,
    though the interrupted line says nothing was half-written; the earlier checkpoint stays."""
    save(tmp_path, 1)
    real = ck._save

    def interrupted(obj, path):
        if Path(path).name == "optim.pt":
            raise KeyboardInterrupt
        return real(obj, path)

    monkeypatch.setattr(ck, "_save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2)
    assert sorted(p.name for p in (tmp_path / ck.CHECKPOINT_DIR).iterdir()) == ["step_00000001"]
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [1]
