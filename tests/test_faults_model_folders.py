"""Model folders from elsewhere (``load_model`` / ``spikefm eval`` on a run folder or a Hugging
Face Llama folder): absurd sizes, malformed safetensors, paths leading outside the folder.

Each must end in one ValueError line before any large allocation: the sizes used here would
allocate gigabytes (or build millions of modules) if the file were not checked first, so the tests
also bound the process's peak memory growth and the time taken.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy_family import toy_config  # noqa: E402

from spikefm.families import load_model, train  # noqa: E402
from spikefm.families.ar.hf import load_hf, save_hf  # noqa: E402
from spikefm.families.ar.model import Llama, LlamaConfig  # noqa: E402
from spikefm.train.checkpoint import read_safetensors_header  # noqa: E402

SMALL = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=128)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


@contextlib.contextmanager
def address_space_limit(extra_bytes: int):
    """Cap this process's address space at its current size + extra_bytes (soft limit, restored
    after), so that a regression allocating gigabytes fails with an error instead of driving a
    shared machine out of memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except OSError:  # not Linux: no cap
        yield
        return
    cap = pages * os.sysconf("SC_PAGE_SIZE") + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refused(call, match: str, *, max_growth_mb: float = 300, max_s: float = 20) -> str:
    """Run `call`; it must raise a one-line ValueError matching `match`, quickly and without a
    large allocation. Returns the message."""
    rss, t0 = peak_rss_mb(), time.monotonic()
    with address_space_limit(2 << 30), pytest.raises(ValueError, match=match) as err:
        call()
    assert time.monotonic() - t0 < max_s
    assert peak_rss_mb() - rss < max_growth_mb
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("toy") / "run"
        train(toy_config(steps=4), run, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run


def copy_run(src: Path, dst: Path, **model_changes) -> Path:
    dst.mkdir(parents=True)
    info = json.loads((src / "config.json").read_text())
    info["config"]["model"].update(model_changes)
    (dst / "config.json").write_text(json.dumps(info))
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    return dst


def write_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# ------------------------------------------------------------------------ spikefm run folders


def test_a_run_folder_loads_and_its_header_matches(toy_run):
    model = load_model(toy_run)
    header, metadata = read_safetensors_header(toy_run / "model.safetensors")
    assert metadata == {"format": "pt", "spikefm_step": "4"}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: v["shape"] for k, v in header.items()}
    assert all(v["dtype"] == "F32" for v in header.values())


@pytest.mark.parametrize("changes, match", [
    # 16384-wide: 4 GB of weights if allocated; the file holds ~40k values
    ({"dim": 16384}, "more parameters than its weights file holds"),
    ({"num_layers": 10**8}, "more parameters than its weights file holds"),  # 10^8 modules
    ({"dim": 10**12}, "more parameters than its weights file holds"),
    ({"num_layers": 3}, r"does not fit the model .* missing \['blocks.2"),
    ({"hidden_dim": 64}, r"tensor 'blocks.0.up.weight' has shape \(128, 32\), the config implies \(64, 32\)"),
])
def test_config_that_does_not_fit_the_weights_is_refused_before_allocating(toy_run, tmp_path, changes, match):
    run = copy_run(toy_run, tmp_path / "run", **changes)
    refused(lambda: load_model(run), match)


def test_malformed_safetensors_are_one_line_errors(toy_run, tmp_path):
    good = (toy_run / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8:8 + n])
    cases = {
        "truncated": (good[: len(good) - 100], r"data offsets \[\d+, \d+\] outside the"),
        "empty": (b"", "0 bytes, shorter than the 8-byte header length"),
        "huge header length": (struct.pack("<Q", 2**60) + good[8:], "header length 1,152,921"),
        "not json": (struct.pack("<Q", 4) + b"\xff\xfe{[" + good[12:], "the header is not JSON"),
        "random bytes": (os.urandom(5000), "not a valid safetensors file"),
    }
    for name, (data, match) in cases.items():
        run = copy_run(toy_run, tmp_path / name.replace(" ", "_"))
        (run / "model.safetensors").write_bytes(data)
        message = refused(lambda: load_model(run), match)
        assert str(run / "model.safetensors") in message, name

    key = next(iter(k for k in header if k != "__metadata__"))
    bad_headers = {
        "dtype": (dict(header, **{key: dict(header[key], dtype="F128")}), "unknown dtype 'F128'"),
        "shape": (dict(header, **{key: dict(header[key], shape=[-1, 4])}), "not a list of ints >= 0"),
        "size": (dict(header, **{key: dict(header[key], shape=[10**6, 10**6])}), "needs 4,000,000,000,000 bytes"),
        "metadata": (dict(header, __metadata__={"step": 4}), "__metadata__ must map strings to strings"),
    }
    for name, (h, match) in bad_headers.items():
        run = copy_run(toy_run, tmp_path / f"h_{name}")
        write_safetensors(run / "model.safetensors", h, good[8 + n:])
        refused(lambda: load_model(run), match)

    # two tensors sharing bytes
    a, b = [k for k in header if k != "__metadata__"][:2]
    size_a = header[a]["data_offsets"][1] - header[a]["data_offsets"][0]
    h = dict(header, **{b: dict(header[b], data_offsets=[0, header[b]["data_offsets"][1] - header[b]["data_offsets"][0]])})
    assert size_a and h[b]["data_offsets"][1] and header[b]["data_offsets"][0] > 0
    run = copy_run(toy_run, tmp_path / "overlap")
    write_safetensors(run / "model.safetensors", h, good[8 + n:])
    refused(lambda: load_model(run), "overlap")


def test_paths_leading_outside_a_run_folder_are_refused(toy_run, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes((toy_run / "model.safetensors").read_bytes())
    run = copy_run(toy_run, tmp_path / "run")
    (run / "model.safetensors").unlink()
    (run / "model.safetensors").symlink_to(outside / "model.safetensors")
    refused(lambda: load_model(run), "weights file 'model.safetensors' of .* leads outside that folder")
    (outside / "config.json").write_text((run / "config.json").read_text())
    (run / "config.json").unlink()
    (run / "config.json").symlink_to(outside / "config.json")
    refused(lambda: load_model(run), "run description 'config.json' of .* leads outside that folder")


def test_oversized_or_broken_config_json_is_refused(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    with open(run / "config.json", "ab") as f:
        f.truncate(17 << 20)  # sparse: 17 MiB of NUL bytes after the JSON
    refused(lambda: load_model(run), "has 17,825,792 bytes, more than the")
    (run / "config.json").write_bytes(b"\xff\xfe not json")
    refused(lambda: load_model(run), "is not valid JSON")
    refused(lambda: load_model(tmp_path / "missing"), "does not exist")


# ------------------------------------------------------------------------ Hugging Face folders


@pytest.fixture
def hf_folder(tmp_path):
    torch.manual_seed(0)
    return save_hf(Llama(SMALL), tmp_path / "hf")


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, match", [
    ({"num_hidden_layers": 10**9}, r"lacks weights for the 1000000000 layers .* the files have layers 0..1"),
    ({"num_hidden_layers": 1}, "the files have layers 0..1"),
    ({"hidden_size": 2**20, "head_dim": None}, r"model.embed_tokens.weight has shape \(256, 32\), the config implies \(256, 1048576\)"),
    ({"intermediate_size": 10**9}, r"gate_proj.weight has shape \(64, 32\), the config implies \(1000000000, 32\)"),
    ({"vocab_size": 10**10}, r"embed_tokens.weight has shape \(256, 32\), the config implies \(10000000000, 32\)"),
    ({"max_position_embeddings": 10**12}, "max_position_embeddings must be at most 1,048,576"),
    ({"hidden_size": "32"}, "hidden_size must be a positive integer, got '32'"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    ({"num_key_value_heads": True}, "num_key_value_heads must be a positive integer, got True"),
    ({"rms_norm_eps": -1.0}, "rms_norm_eps must be a positive finite number"),
    ({"rope_theta": "big", "rope_parameters": None}, "rope_theta must be a positive finite number"),
    ({"rope_scaling": "yes"}, "rope_scaling must be null or an object"),
    ({"num_attention_heads": 3, "head_dim": None}, "must be divisible by n_heads"),
])
def test_hf_config_that_does_not_fit_is_refused_before_allocating(hf_folder, changes, match):
    edit_config(hf_folder, **changes)
    refused(lambda: load_hf(hf_folder), match)
    refused(lambda: load_model(hf_folder), match)  # the registry path (spikefm eval) too


def test_hf_config_with_nan_is_refused(hf_folder):
    text = (hf_folder / "config.json").read_text().replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": NaN')
    (hf_folder / "config.json").write_text(text)
    refused(lambda: load_hf(hf_folder), "rms_norm_eps must be a positive finite number, got nan")


def _shard(folder: Path, names: list[str]) -> dict[str, str]:
    """Split model.safetensors into two shards + an index naming them as given."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    half = len(keys) // 2
    weight_map = {}
    for name, part in zip(names, (keys[:half], keys[half:])):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: tensors[k] for k in part}, str(target))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return weight_map


def test_sharded_hf_folder_loads_and_shards_cannot_leave_it(hf_folder, tmp_path):
    reference = load_hf(hf_folder).state_dict()
    weight_map = _shard(hf_folder, ["model-00001-of-00002.safetensors", "sub/model-00002-of-00002.safetensors"])
    loaded = load_hf(hf_folder).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.items())

    index = hf_folder / "model.safetensors.index.json"
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes((hf_folder / "model-00001-of-00002.safetensors").read_bytes())
    for target, match in [("../secret.safetensors", r"is not a plain relative path"),
                          (str(secret), "is not a plain relative path"),
                          ("sub/../../secret.safetensors", "is not a plain relative path"),
                          ("link.safetensors", "shard 'link.safetensors' of .* leads outside that folder"),
                          ("notes.txt", "expected names of .safetensors files")]:
        (hf_folder / "link.safetensors").unlink(missing_ok=True)
        (hf_folder / "link.safetensors").symlink_to(secret)
        first = next(iter(weight_map))
        index.write_text(json.dumps({"weight_map": dict(weight_map, **{first: target})}))
        refused(lambda: load_hf(hf_folder), match)

    index.write_text(json.dumps({"weight_map": {k: "model-00001-of-00002.safetensors" for k in weight_map}}))
    refused(lambda: load_hf(hf_folder), "lacks weights")  # the map is checked against the files
    index.write_text("[1, 2")
    refused(lambda: load_hf(hf_folder), "shard index .* is not valid JSON")


def test_hf_weights_stored_twice_or_malformed(hf_folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(hf_folder / "model.safetensors"))
    save_file(tensors, str(hf_folder / "a.safetensors"))
    save_file(tensors, str(hf_folder / "b.safetensors"))
    (hf_folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: ("a.safetensors" if i % 2 else "b.safetensors") for i, k in enumerate(keys)}}))
    refused(lambda: load_hf(hf_folder), "is stored twice")
    (hf_folder / "model.safetensors.index.json").unlink()
    (hf_folder / "a.safetensors").unlink()
    (hf_folder / "b.safetensors").rename(hf_folder / "model.safetensors")
    data = (hf_folder / "model.safetensors").read_bytes()
    (hf_folder / "model.safetensors").write_bytes(data[:-10])
    refused(lambda: load_hf(hf_folder), "is not a valid safetensors file")


def test_family_info_reader_says_which_run_was_expected(tmp_path):
    """Both families' evaluators read RUN_DIR/config.json's family_info through one reader."""
    from spikefm.families.ndt.evaluate import _family_info
    from spikefm.families.neds.family import _run_info

    with pytest.raises(ValueError, match="config.json not found; expected a spikefm run directory"):
        _family_info(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="no 'family_info' object; expected an NDT run directory"):
        _family_info(tmp_path)
    with pytest.raises(ValueError, match="no 'family_info' object; expected a NEDS run directory"):
        _run_info(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="expected the config.json that spikefm train writes"):
        _run_info(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"family_info": {"sessions": ["a"]}}))
    assert _family_info(tmp_path) == _run_info(tmp_path) == {"sessions": ["a"]}


def test_an_interrupted_auto_finetuning_folder_says_how_to_go_on(tmp_path, capsys):
    """After Ctrl-C in `finetune --strategy auto`, eval said 'config.json not found; expected a
    spikefm run directory (spikefm train --out)' and report listed the folder's entries: neither
    said it was a fine-tuning to continue."""
    from spikefm.cli import main

    ft = tmp_path / "ft"
    (ft / "candidates" / "frozen").mkdir(parents=True)
    (ft / ".spikefm.lock").touch()
    for argv in (["eval", str(ft), "--data", str(tmp_path), "--quiet"], ["report", str(ft), "--out", str(tmp_path / "r.html")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"spikefm: error: {ft} is an unfinished spikefm finetune (strategy auto: candidates/ holds the "
                       "candidates trained so far, and none was chosen yet); run the same finetune command again to "
                       "continue it")
    (ft / "finetune.json").write_text("{}")  # the chosen run's files are copied in as auto ends: not unfinished
    (ft / "config.json").write_text("{}")
    from spikefm.train.runinfo import unfinished_finetune

    assert unfinished_finetune(ft) is None
