"""What a corpus build or import may touch: output folders it refuses, inputs it never deletes,
corpora it replaces only with --overwrite, its lock, what it cleans, and downloads that stay in
their cache. Every refusal is one ``spikefm: error:`` line and leaves the folder as it was."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from spikefm import Corpus
from spikefm.cli import main as cli_main
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.fileio import LOCK_NAME
from spikefm.pools import start_worker

from conftest import random_units, write_nwb
from test_corpus_support import content, one_error_line, snapshot, write_sessions


@pytest.fixture
def inputs(tmp_path):
    write_sessions(tmp_path / "in", 4, seed=7)
    return tmp_path / "in"


# --- output folders ----------------------------------------------------------------------------

def test_project_folder_with_a_data_subfolder_is_refused_and_inputs_kept(inputs, tmp_path,
                                                                         capsys):
    """The issue's cases: a project folder with data/, and inputs that live under OUT/data/."""
    proj = tmp_path / "proj"
    shutil.copytree(inputs, proj / "data")
    (proj / "data" / "notes.txt").write_text("mine")
    before = snapshot(proj)
    line = one_error_line(capsys, ["corpus", "build", str(proj / "data"), "--out", str(proj),
                                   "--quiet"])
    assert "not a spikefm corpus" in line and "new or empty folder" in line
    assert snapshot(proj) == before  # no lock file, no staging, nothing deleted
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("x")
    one_error_line(capsys, ["corpus", "import", str(tmp_path / "other"), "--out", str(proj)])
    assert snapshot(proj) == before


def test_file_in_a_corpus_data_folder_or_staging_input_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "c"
    build_corpus([str(inputs)], out, BuildConfig(), progress=False)
    shutil.copy(inputs / "ses-0.nwb", out / "data" / "extra.nwb")  # lands in the version folder
    before = snapshot(out)
    line = one_error_line(capsys, ["corpus", "build", str(inputs), str(out / "data" / "extra.nwb"),
                                   "--out", str(out), "--quiet", "--overwrite"])
    assert "'data/extra.nwb' is not a shard of this corpus" in line and "move it out" in line
    assert snapshot(out) == before
    (out / "data" / "extra.nwb").unlink()
    shutil.copy(inputs / "ses-1.nwb", out / ".staging" / "mine.nwb")
    before = snapshot(out)
    line = one_error_line(capsys, ["corpus", "build", str(out / ".staging" / "mine.nwb"),
                                   "--out", str(out), "--quiet", "--overwrite"])
    assert "lies inside" in line and ".staging" in line and "move the input out" in line
    assert snapshot(out) == before


def test_an_out_inside_another_corpuss_own_folders_is_refused(inputs, tmp_path, capsys):
    """--out k1/.versions/mine was accepted, and k1's next build deleted it (it removes versions
    that are not current); --out k1/data/sub made every later build of k1 refuse its data/."""
    out = tmp_path / "k1"
    build_corpus([str(inputs)], out, BuildConfig(), progress=False)
    before = snapshot(out)
    version = next((out / ".versions").iterdir())  # a version holds a manifest of its own: k1 is still named
    for inside, entry in ((out / ".versions" / "mine", ".versions"), (out / "data" / "sub", "data"),
                          (out / ".staging" / "x", ".staging"), (version / "data" / "x", ".versions"),
                          (out / ".current" / "data" / "x", ".current")):
        for command in (["corpus", "build", str(inputs)], ["corpus", "import", str(out)]):
            line = one_error_line(capsys, [*command, "--out", str(inside), *(["--quiet"] if "build" in command else [])])
            assert line == (f"spikefm: error: {inside} is inside the corpus {out} ({entry}/, which its builds replace "
                            f"and which holds its own files only); give a folder of its own for this corpus, e.g. "
                            f"{tmp_path / 'k1_2'}"), line
    assert snapshot(out) == before


def test_a_file_or_unreadable_manifest_as_out_is_refused(inputs, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert "is not a folder" in one_error_line(
        capsys, ["corpus", "build", str(inputs), "--out", str(tmp_path / "f"), "--quiet"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{broken")
    before = snapshot(bad)
    line = one_error_line(capsys, ["corpus", "build", str(inputs), "--out", str(bad), "--quiet"])
    assert "not valid JSON" in line and "left as it is" in line
    assert snapshot(bad) == before


# --- replacing a corpus ------------------------------------------------------------------------

def test_same_command_refreshes_other_settings_or_inputs_need_overwrite(inputs, tmp_path,
                                                                        capsys):
    out = tmp_path / "c"
    cmd = ["corpus", "build", str(inputs), "--out", str(out), "--quiet", "--test-fraction", "0.3"]
    assert cli_main(cmd) == 0
    capsys.readouterr()
    first = content(out)
    # the same command again (also with the inputs written another way): refresh, all reused
    report = build_corpus([str(inputs / ".." / "in"), str(inputs)], out,
                          BuildConfig(test_fraction=0.3), progress=False)
    assert report.num_reused == 4 and report.num_staged_now == 0 and content(out) == first
    before = snapshot(out)
    line = one_error_line(capsys, cmd + ["--seed", "5"])
    assert "built from other inputs or settings (seed 0 -> 5)" in line and "--overwrite" in line
    line = one_error_line(capsys, ["corpus", "build", str(inputs / "ses-0.nwb"), "--out",
                                   str(out), "--quiet", "--test-fraction", "0.3"])
    assert f"inputs ({inputs} no longer given)" in line
    extra = tmp_path / "extra.nwb"
    extra.write_bytes(b"not yet looked at")
    line = one_error_line(capsys, cmd[:3] + [str(extra)] + cmd[3:])  # an input added: named (it said "new ones")
    assert f"inputs (1 new, e.g. {extra}; the corpus records the INPUTs it was built from)" in line
    assert snapshot(out) == before
    # --overwrite replaces it; staged sessions are still reused (same files, same binning)
    assert cli_main(cmd + ["--seed", "5", "--overwrite"]) == 0
    m = Corpus(out).manifest
    assert m["build"]["seed"] == 5 and m["num_sessions"] == 4
    fresh = tmp_path / "fresh"
    build_corpus([str(inputs)], fresh, BuildConfig(test_fraction=0.3, seed=5), progress=False)
    assert content(out) == content(fresh)
    # a new file in the same input folder: the same command refreshes the corpus
    write_nwb(inputs / "ses-9.nwb", random_units(np.random.default_rng(1), 2, 6.0), ["A", "A"])
    report = build_corpus([str(inputs)], out, BuildConfig(test_fraction=0.3, seed=5),
                          progress=False)
    assert report.num_reused == 4 and report.num_staged_now == 1
    assert Corpus(out).manifest["num_sessions"] == 5


def test_a_rebuild_whose_input_went_bad_leaves_the_corpus_as_it_was(inputs, tmp_path, capsys):
    """The same command after one input file was damaged wrote a new version without its session:
    the corpus shrank, its earlier version went and its split moved a train session to test, with
    a warning only. Refused now, nothing changed; --overwrite builds without it."""
    out = tmp_path / "c"
    cmd = ["corpus", "build", str(inputs), "--out", str(out), "--quiet", "--test-fraction", "0.3"]
    assert cli_main(cmd) == 0
    capsys.readouterr()
    sessions = {s["session_id"]: s["split"] for s in Corpus(out).sessions}
    test_sid = next(s for s, split in sessions.items() if split == "test")
    bad = inputs / f"{test_sid}.nwb"
    assert bad.is_file()
    bad.write_bytes(bad.read_bytes()[:2000])  # truncated
    before = snapshot(out)
    line = one_error_line(capsys, cmd)
    assert f"that input holds session {test_sid!r} of the corpus at {out}" in line
    assert "the corpus is left as it was (4 sessions, its splits unchanged)" in line and "--overwrite" in line
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".staging")} == \
        {k: v for k, v in before.items() if not k.startswith(".staging")}
    assert {s["session_id"]: s["split"] for s in Corpus(out).sessions} == sessions
    # --overwrite: built without it, the bad input listed as skipped
    assert cli_main(cmd + ["--overwrite"]) == 1  # a skipped input: exit 1, the others built
    m = Corpus(out).manifest
    assert m["num_sessions"] == 3 and test_sid not in {s["session_id"] for s in m["sessions"]}
    assert [s["input"] for s in m["skipped"]] == [str(bad)]
    # the same command again: the session it lacks was already left out, so nothing is refused
    capsys.readouterr()
    assert cli_main(cmd) == 1 and "left as it was" not in capsys.readouterr().err


def test_older_manifests_are_refreshed_only_when_every_session_is_still_given(inputs, tmp_path,
                                                                              capsys):
    out = tmp_path / "c"
    build_corpus([str(inputs)], out, BuildConfig(), progress=False)
    # as written by an earlier spikefm: real data/ and manifest.json, no recorded inputs
    version = (out / ".current").resolve()
    for name in ("data", "manifest.json", ".current"):
        (out / name).unlink()
    shutil.copytree(version / "data", out / "data")
    m = json.loads((version / "manifest.json").read_text())
    for key in ("inputs", "shard_max_tokens", "spikes_past_end"):
        m["build"].pop(key)
    (out / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    shutil.rmtree(out / ".versions")
    legacy = content(out)
    before = snapshot(out)
    line = one_error_line(capsys, ["corpus", "build", str(inputs / "ses-1.nwb"), "--out",
                                   str(out), "--quiet"])
    assert "ses-0.nwb no longer given" in line
    assert snapshot(out) == before
    report = build_corpus([str(p) for p in sorted(inputs.glob("*.nwb"))], out, BuildConfig(),
                          progress=False)
    assert report.num_reused == 4 and content(out) == legacy
    assert os.readlink(out / "data") == ".current/data"  # moved to the new layout


def make_pile(folder: Path) -> Path:
    """A one-row folder in the published Neural Pile layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"spike_counts": pa.array([[[1, 2]]], pa.list_(pa.list_(pa.uint8()))),
                             "subject_id": ["a"], "session_id": ["s"], "segment_id": ["segment_0"],
                             "source_dataset": ["xiao"]}),
                   folder / "data" / "train-00000-of-00001.parquet")
    return folder


def test_a_build_does_not_replace_an_imported_corpus_without_overwrite(inputs, tmp_path,
                                                                       capsys):
    from spikefm.corpus.importer import import_neural_pile

    out = tmp_path / "c"
    import_neural_pile(str(make_pile(tmp_path / "pile")), out, progress=False)
    capsys.readouterr()
    before = snapshot(out)
    line = one_error_line(capsys, ["corpus", "build", str(inputs), "--out", str(out), "--quiet"])
    assert "imported from" in line and "--overwrite" in line
    assert snapshot(out) == before
    assert cli_main(["corpus", "build", str(inputs), "--out", str(out), "--quiet",
                     "--overwrite"]) == 0
    assert Corpus(out).manifest["num_sessions"] == 4


# --- the lock ----------------------------------------------------------------------------------

def test_a_second_build_into_a_locked_corpus_fails_at_once(inputs, tmp_path, capsys):
    out = tmp_path / "c"
    build_corpus([str(inputs)], out, BuildConfig(), progress=False)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom spikefm.fileio import folder_lock\n"
        "with folder_lock(sys.argv[1], 'corpus'):\n    print('locked', flush=True)\n"
        "    time.sleep(60)\n"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        t0 = time.monotonic()
        line = one_error_line(capsys, ["corpus", "build", str(inputs), "--out", str(out),
                                       "--quiet"])
        assert time.monotonic() - t0 < 5
        assert f"the corpus is in use by another process (PID {holder.pid}" in line
        assert snapshot(out) == before
        line = one_error_line(capsys, ["corpus", "import", str(make_pile(tmp_path / "pile")),
                                       "--out", str(out), "--quiet", "--overwrite"])
        assert f"the corpus is in use by another process (PID {holder.pid}" in line
        assert snapshot(out) == before
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert build_corpus([str(inputs)], out, BuildConfig(), progress=False).num_reused == 4


def lock_holder(folder: Path) -> int | None:
    try:
        return json.loads((folder / LOCK_NAME).read_text())["pid"]
    except (FileNotFoundError, ValueError):
        return None


def test_two_real_builds_one_fails_at_once_and_the_other_completes(tmp_path, capsys):
    folder = tmp_path / "in"
    write_sessions(folder, 8, seed=11, first_units=20, duration_s=60.0, rate_hz=20)
    out = tmp_path / "c"
    args = ["corpus", "build", str(folder), "--out", str(out), "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "spikefm.cli", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while lock_holder(out) != first.pid:
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.01)
    t0 = time.monotonic()
    line = one_error_line(capsys, args)  # a second build while the first runs
    assert time.monotonic() - t0 < 2  # it does not wait for the first
    assert f"the corpus is in use by another process (PID {first.pid}" in line
    assert first.poll() is None, "the first build should still be running"
    assert first.wait(timeout=120) == 0, first.communicate()
    # the finished corpus is what one uninterrupted build gives
    build_corpus([str(folder)], tmp_path / "ref", BuildConfig(), progress=False)
    assert content(out) == content(tmp_path / "ref")


# --- leftovers ---------------------------------------------------------------------------------

def test_stale_temporaries_of_killed_writers_are_cleaned(inputs, tmp_path):
    out = tmp_path / "c"
    build_corpus([str(inputs)], out, BuildConfig(), progress=False)
    want = content(out)
    current = (out / ".current").resolve().name
    leftovers = [out / ".data-tmp-abc12", out / ".data-old-77", out / ".tmp-strict-xyz",
                 out / ".versions" / ".tmp-20250101T000000-aaaa", out / ".versions" / "orphan"]
    for d in leftovers:
        d.mkdir()
        (d / "x.parquet").write_bytes(b"half")
    (out / ".manifest.json.tmp-123").write_text("{")
    os.symlink(".versions/orphan", out / ".tmp-link-9-current")
    (out / ".staging" / ".abc.json.tmp-55").write_text("{")
    build_corpus([str(inputs)], out, BuildConfig(), progress=False)
    assert content(out) == want
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == [".current", LOCK_NAME, ".staging", ".versions"]
    # only the current version is left, and it is the first build's (the same corpus is not rewritten)
    assert [p.name for p in (out / ".versions").iterdir()] == [(out / ".current").resolve().name] == [current]
    assert not [p for p in (out / ".staging").iterdir() if ".tmp-" in p.name]


# --- sessions without spikes -------------------------------------------------------------------

def test_session_whose_units_have_no_spikes_is_skipped_with_one_line(inputs, tmp_path, capsys):
    empty = write_nwb(tmp_path / "more" / "silent.nwb", [np.zeros(0)] * 3, ["A"] * 3)
    out = tmp_path / "c"
    rc = cli_main(["corpus", "build", str(inputs), str(empty), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    skipped = [line for line in err if "silent.nwb" in line]
    assert skipped == [f"spikefm: warning: skipped {empty}: its 3 units have no spikes at all; a session needs "
                       "at least one spike to be binned (skipped)"]
    m = Corpus(out).manifest
    assert "silent" not in {s["session_id"] for s in m["sessions"]}
    assert [Path(s["input"]).name for s in m["skipped"]] == ["silent.nwb"]
    line = one_error_line(capsys, ["corpus", "build", str(empty), "--out", str(tmp_path / "e"),
                                   "--quiet"])
    assert "no input could be built" in line and "no spikes at all" in line
    assert not (tmp_path / "e").exists()  # nothing half-written


# --- downloads stay in their cache -------------------------------------------------------------

class _Asset:
    def __init__(self, path, local):
        self.path, self._local, self.downloads = path, Path(local), 0
        self.size = self._local.stat().st_size

    def download(self, filepath):
        self.downloads += 1
        Path(filepath).write_bytes(self._local.read_bytes())

    def get_raw_metadata(self):
        return {}


class _Client:
    def __init__(self, assets, version="0.230101.0"):
        self.assets, self.version = assets, version

    def get_dandiset(self, dandiset_id, version_id=None):
        assets, version = self.assets, self.version

        class Dandiset:
            version_id = version
            most_recent_published_version = None

            def get_assets_by_glob(self, pattern):
                return list(assets)

            def get_raw_metadata(self):
                return {}

        return Dandiset()


@pytest.mark.parametrize("bad_path", ["../../outside.nwb", "/tmp/abs.nwb", "sub/../../x.nwb"])
def test_dandi_asset_paths_that_leave_the_cache_are_refused_before_any_download(
        inputs, tmp_path, bad_path):
    from spikefm.corpus.dandi import resolve_dandi

    good = _Asset("sub-1/ses-1.nwb", inputs / "ses-0.nwb")
    bad = _Asset(bad_path, inputs / "ses-1.nwb")
    cache = tmp_path / "cache" / "dandi"
    with pytest.raises(ValueError, match="not a plain relative path") as exc:
        resolve_dandi("dandi:000123", cache_dir=cache, client=_Client([good, bad]))
    assert "\n" not in str(exc.value) and repr(bad_path) in str(exc.value)
    assert good.downloads == bad.downloads == 0 and not (tmp_path / "cache").exists()
    assert not Path("/tmp/abs.nwb").exists()


def test_dandi_versions_that_leave_the_cache_are_refused(inputs, tmp_path, capsys):
    from spikefm.corpus import dandi as dandi_mod

    good = _Asset("sub-1/ses-1.nwb", inputs / "ses-0.nwb")
    with pytest.raises(ValueError, match="is not a plain name"):
        dandi_mod.parse_dandi_spec("dandi:000123@..")
    with pytest.raises(ValueError, match="is not a plain name"):
        dandi_mod.resolve_dandi("dandi:000123", cache_dir=tmp_path / "cache",
                                client=_Client([good], version="../../x"))
    assert good.downloads == 0 and not (tmp_path / "cache").exists()
    line = one_error_line(capsys, ["corpus", "build", "dandi:000123@..", "--out",
                                   str(tmp_path / "c"), "--quiet"])
    assert "is not a plain name" in line and not (tmp_path / "c").exists()


def test_hub_file_names_that_leave_the_folder_are_refused_before_download(tmp_path, monkeypatch):
    import huggingface_hub

    from spikefm.corpus.importer import import_neural_pile

    calls = []

    def fake(repo_id, **kw):
        calls.append(kw)
        return [SimpleNamespace(filename="data/train-00000-of-00001.parquet", commit_hash="a" * 40),
                SimpleNamespace(filename="../../../evil.parquet", commit_hash="a" * 40)]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(ValueError, match="repo file name '../../../evil.parquet' is not a plain") \
            as exc:
        import_neural_pile("someone/pile", tmp_path / "c", progress=False)
    assert "\n" not in str(exc.value)
    assert [kw.get("dry_run") for kw in calls] == [True]  # nothing was downloaded
    assert not (tmp_path / "c").exists()


def test_older_hubs_without_dry_run_are_listed_with_the_api(tmp_path, monkeypatch):
    import huggingface_hub

    from spikefm.corpus.importer import import_neural_pile

    downloads = []

    def no_dry_run(repo_id, **kw):
        if "dry_run" in kw:
            raise TypeError("snapshot_download() got an unexpected keyword argument 'dry_run'")
        downloads.append(kw)

    class Api:
        def dataset_info(self, repo_id, revision=None):
            return SimpleNamespace(sha="b" * 40, siblings=[
                SimpleNamespace(rfilename="README.md"),
                SimpleNamespace(rfilename="data/../../x/train-00000-of-00001.parquet")])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_dry_run)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    with pytest.raises(ValueError, match=r"repo file name 'data/\.\./\.\./x/train"):
        import_neural_pile("someone/pile", tmp_path / "c", progress=False)
    assert not downloads and not (tmp_path / "c").exists()


def test_rebuilding_the_same_corpus_keeps_its_version_and_hash(inputs, tmp_path):
    """A second identical build wrote a new version whose manifest differed only in created_utc:
    the corpus's hash changed and runs trained on it warned that it was another corpus."""
    from spikefm.corpus.reader import manifest_sha256

    out = tmp_path / "c"
    build_corpus([str(inputs)], out, BuildConfig(test_fraction=0.3), progress=False)
    manifest, versions = (out / "manifest.json").read_bytes(), sorted((out / ".versions").iterdir())
    time.sleep(1.1)  # created_utc has one-second resolution: a rewrite would show
    report = build_corpus([str(inputs)], out, BuildConfig(test_fraction=0.3), progress=False)
    assert (out / "manifest.json").read_bytes() == manifest and sorted((out / ".versions").iterdir()) == versions
    assert report.manifest == json.loads(manifest)  # what the build reports is what the folder holds
    # another setting is another corpus: a new version, a new hash
    before = manifest_sha256(out)
    build_corpus([str(inputs)], out, BuildConfig(test_fraction=0.3, seed=4, overwrite=True), progress=False)
    assert manifest_sha256(out) != before and sorted((out / ".versions").iterdir()) != versions


@pytest.mark.parametrize("field, value, said", [
    ("bin_ms", 0, "has bin_ms 0; expected a positive whole number of milliseconds"),
    ("bin_ms", 5, "has bin_ms 5 where manifest.json gives the corpus 20 ms bins"),
    ("trials_json", "{not json", "has trials_json that is not JSON"),
    ("trials_json", "[1, 2]", "has trials_json holding a list"),
    ("unit_ids", "short", "unit_ids for"),
    ("spike_counts", [], "has spike counts of shape (0, 0); expected (units >= 1, bins)"),
])
def test_a_row_edited_by_another_tool_is_named_with_its_shard(inputs, tmp_path, field, value, said):
    """A shard rewritten with bin_ms 0, unparseable trials, fewer unit ids than units or a row of no
    units failed far from the data ('integer modulo by zero', a broadcast of shapes, a JSON
    parser's position): the row, its shard and the fix are named as the corpus is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "c"
    build_corpus([str(inputs)], out, BuildConfig(test_fraction=0.0), progress=False)
    (shard,) = Corpus(out).shards("train")
    table = pq.read_table(shard)
    col = table.column(field).to_pylist()
    if value == "short":
        value = col[0][:-1]
    col[0] = value
    table = table.set_column(table.schema.get_field_index(field), field,
                             pa.array(col, type=table.schema.field(field).type))
    pq.write_table(table, shard)
    sid = table.column("session_id")[0].as_py()
    with pytest.raises(ValueError) as err:
        list(Corpus(out).iter_rows("train"))
    text = str(err.value)
    assert text.startswith(f"{out}/data/{shard.name}: the row of session {sid!r}") and said in text
    assert text.endswith("the corpus is damaged: rebuild it (spikefm corpus build INPUTS --out DIR --overwrite, "
                         "or spikefm corpus import)")


def test_a_rebuild_whose_folder_lost_a_file_or_went_missing_leaves_the_corpus_as_it_was(inputs, tmp_path, capsys):
    """A file deleted from an input folder, or the folder unmounted (missing, or empty), shrank the
    corpus with one 'skipped' warning or none; refused now, as a damaged file is."""
    out = tmp_path / "c"
    cmd = ["corpus", "build", str(inputs), "--out", str(out), "--quiet", "--test-fraction", "0.3"]
    assert cli_main(cmd) == 0
    capsys.readouterr()
    before = {k: v for k, v in snapshot(out).items() if not k.startswith(".staging")}
    gone = inputs / "ses-1.nwb"
    kept = tmp_path / "ses-1.nwb"
    os.replace(gone, kept)
    line = one_error_line(capsys, cmd)
    assert f"{gone.resolve()}: not among this build's inputs any more (deleted or moved from its folder): that " \
           "input holds session 'ses-1'" in line and "--overwrite" in line
    os.replace(kept, gone)
    away = tmp_path / "away"
    os.replace(inputs, away)  # the share unmounted
    line = one_error_line(capsys, cmd)
    assert "no input could be built" in line or "that input holds session" in line
    inputs.mkdir()  # the mount point is there, empty
    line = one_error_line(capsys, cmd)
    assert "no input could be built" in line or "that input holds session" in line
    inputs.rmdir()
    os.replace(away, inputs)
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".staging")} == before
    assert cli_main(cmd) == 0  # restored: the same corpus
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".staging")} == before



def _pool_job(item, key, staging, cfg):
    """A stand-in for build._stage_one in a pool worker: 'fast' returns at once with what the
    worker does with Ctrl-C; 'slow' marks its start, sleeps, and marks its end."""
    here = Path(staging)
    if item == "fast":
        return {"sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN}
    (here / f"started-{os.getpid()}").write_text("")
    time.sleep(20)
    (here / "finished").write_text("")
    return {}


def test_ctrl_c_during_a_pooled_build_ends_its_workers_at_once(tmp_path, monkeypatch):
    """Ctrl-C at a terminal reaches every process of the group: a worker interrupted inside the
    pool's queues left `corpus build --workers 2` hanging at exit (3 of 40 tries) after its one
    line. Workers now ignore SIGINT and the build ends them itself, without waiting for the
    file being staged."""
    from spikefm.corpus import build

    monkeypatch.setattr(build, "_stage_one", _pool_job)  # the forked workers see it
    seen = []

    class Bar:  # the parent's Ctrl-C, once the slow job is under way in the other worker
        def advance(self, n):
            seen.append(n)
            while not list(tmp_path.glob("started-*")):
                time.sleep(0.05)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build._run_pool([("fast", "k0"), ("slow", "k1")], tmp_path, BuildConfig(), 2, Bar())
    assert seen == [1] and not (tmp_path / "finished").exists()  # ended, not waited for
    (marker,) = tmp_path.glob("started-*")
    with pytest.raises(ProcessLookupError):  # its worker is gone
        os.kill(int(marker.name.split("-")[1]), 0)
    with build.ProcessPoolExecutor(1, initializer=start_worker, initargs=(os.getpid(),)) as pool:
        assert pool.submit(_pool_job, "fast", "k", str(tmp_path), None).result() == {"sigint_ignored": True}
