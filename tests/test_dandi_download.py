"""Resumable DANDI downloads with progress, offline: a stand-in asset streams a local byte string
the way dandi-cli's ``get_download_file_iter`` does (``downloader(start_at)`` sends an HTTP Range
request when ``start_at > 0``), with knobs for failing part-way, ignoring the Range request and
sending other bytes."""
from __future__ import annotations

import fnmatch
import hashlib
import random
import sys
import threading
import time
from pathlib import Path

import pytest

from spikefm.corpus import dandi as dandi_mod
from spikefm.progress import progress_bar

SPEC = "dandi:000207@0.220216.0"
ASSET_PATH = "sub-2/sub-2_ses-1.nwb"
DATA = random.Random(0).randbytes(5000)


class _StreamAsset:
    """A blob asset of the dandi client (>= 0.60) over ``data``.

    Knobs: ``fail_after`` (bytes sent in one request before ``fail_with`` is raised),
    ``ignore_range`` (a server that answers a Range request with the whole file),
    ``served`` (the bytes sent: other than ``data`` for a damaged transfer); ``starts`` records the
    ``start_at`` of every request and ``pause`` (an Event) holds a request after its first chunk.
    """

    def __init__(self, data: bytes = DATA, path: str = ASSET_PATH, *, chunk_bytes: int = 512):
        self.path, self.data, self.size = path, data, len(data)
        self.served, self.chunk_bytes = data, chunk_bytes
        self.fail_after: int | None = None
        self.fail_with: BaseException = ConnectionError("connection reset by peer")
        self.ignore_range = False
        self.starts: list[int] = []
        self.pause: threading.Event | None = None
        self.paused = threading.Event()

    def get_raw_metadata(self):
        return {"digest": {"dandi:sha2-256": hashlib.sha256(self.data).hexdigest()}}

    def get_download_file_iter(self, chunk_size=1 << 20):
        step = min(chunk_size, self.chunk_bytes)

        def downloader(start_at: int = 0):
            self.starts.append(start_at)
            body = self.served if self.ignore_range else self.served[start_at:]
            sent = 0
            for i in range(0, len(body), step):
                chunk = body[i:i + step]
                if self.fail_after is not None and sent + len(chunk) > self.fail_after:
                    if self.fail_after > sent:
                        yield chunk[:self.fail_after - sent]
                    raise self.fail_with
                yield chunk
                sent += len(chunk)
                if self.pause is not None and i == 0:
                    self.paused.set()
                    assert self.pause.wait(30)

        return downloader


class _WholeAsset:
    """An asset of a client without ``get_download_file_iter``: whole-file ``download`` only."""

    def __init__(self, data: bytes = DATA, path: str = ASSET_PATH):
        self.path, self.data, self.size, self.downloads = path, data, len(data), 0

    def download(self, filepath):
        self.downloads += 1
        Path(filepath).write_bytes(self.data)

    def get_raw_metadata(self):
        return {"digest": {"dandi:sha2-256": hashlib.sha256(self.data).hexdigest()}}


class _Dandiset:
    def __init__(self, assets):
        self.version_id, self._assets = "0.220216.0", assets
        self.most_recent_published_version = None

    def get_assets_by_glob(self, pattern):
        return [a for a in self._assets if fnmatch.fnmatch(a.path, pattern)]

    def get_raw_metadata(self):
        return {"license": ["spdx:CC-BY-4.0"]}


class _Client:
    def __init__(self, *assets):
        self.assets = list(assets)

    def get_dandiset(self, dandiset_id, version_id=None):
        return _Dandiset(self.assets)


def _target(cache: Path) -> Path:
    return cache / "000207" / "0.220216.0" / ASSET_PATH


def _partials(cache: Path) -> list[Path]:
    target = _target(cache)
    return sorted(target.parent.glob(f".{target.name}.partial-*"))


def _resolve(cache: Path, asset, **kw):
    return dandi_mod.resolve_dandi(SPEC, cache_dir=cache, client=_Client(asset), progress=False,
                                   **kw)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fail_with", [ConnectionError("connection reset by peer"),
                                       OSError("Read timed out.")])
def test_a_failed_download_keeps_its_partial_and_the_next_build_resumes_it(tmp_path, fail_with):
    cache = tmp_path / "cache"
    asset = _StreamAsset()
    asset.fail_after, asset.fail_with = 1500, fail_with
    with pytest.raises(ValueError) as err:
        _resolve(cache, asset)
    msg = str(err.value)
    assert msg.startswith(f"{SPEC}: download from DANDI failed ({fail_with}) after 1,500 of 5,000 "
                          f"bytes of {ASSET_PATH}; check your network and the next build resumes it")
    assert "\n" not in msg
    (part,) = _partials(cache)
    assert part.read_bytes() == DATA[:1500] and not _target(cache).exists()

    asset.fail_after = None
    (item,) = _resolve(cache, asset)
    assert asset.starts == [0, 1500]
    assert item.path == _target(cache) and _sha(item.path.read_bytes()) == _sha(DATA)
    assert item.provenance["asset_sha256"] == _sha(DATA)
    assert _partials(cache) == []
    # the digest is remembered: the next use neither downloads nor hashes
    _resolve(cache, asset)
    assert asset.starts == [0, 1500]


def test_ctrl_c_keeps_the_partial(tmp_path):
    cache = tmp_path / "cache"
    asset = _StreamAsset()
    asset.fail_after, asset.fail_with = 2048, KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        _resolve(cache, asset)
    (part,) = _partials(cache)
    assert part.read_bytes() == DATA[:2048] and not _target(cache).exists()
    asset.fail_after = None
    (item,) = _resolve(cache, asset)
    assert asset.starts == [0, 2048] and item.path.read_bytes() == DATA


def test_a_server_that_ignores_range_requests_still_gives_the_exact_file(tmp_path):
    cache = tmp_path / "cache"
    asset = _StreamAsset()
    asset.fail_after = 1500
    with pytest.raises(ValueError, match="the next build resumes it"):
        _resolve(cache, asset)
    asset.fail_after, asset.ignore_range = None, True
    (item,) = _resolve(cache, asset)
    # the resumed request brought the whole file again (too many bytes): started over from 0
    assert asset.starts == [0, 1500, 0]
    assert _sha(item.path.read_bytes()) == _sha(DATA) and _partials(cache) == []


def test_a_damaged_transfer_is_refused_and_nothing_is_kept(tmp_path):
    cache = tmp_path / "cache"
    asset = _StreamAsset()
    asset.served = DATA[:100] + bytes([DATA[100] ^ 1]) + DATA[101:]
    with pytest.raises(ValueError, match=rf"^{SPEC}: the download of {ASSET_PATH} does not match "
                                         r"the sha256 DANDI publishes for it \(") as err:
        _resolve(cache, asset)
    assert "\n" not in str(err.value) and "nothing was kept" in str(err.value)
    assert asset.starts == [0]
    assert not _target(cache).exists() and _partials(cache) == []
    # a server sending more bytes than DANDI's size, from byte 0: refused as well
    asset.served = DATA + b"more"
    with pytest.raises(ValueError, match=r"is longer than the 5,000 bytes DANDI publishes"):
        _resolve(cache, asset)
    assert not _target(cache).exists() and _partials(cache) == []


def test_a_damaged_partial_is_downloaded_again_from_the_start(tmp_path):
    """Resumed bytes that do not give DANDI's sha256 (the partial's own bytes were wrong) are not
    an error the user has to clear: the asset is downloaded once more from byte 0."""
    cache = tmp_path / "cache"
    target = _target(cache)
    target.parent.mkdir(parents=True)
    part = dandi_mod._partial_path(target, _sha(DATA))
    part.write_bytes(b"\0" * 1000)
    asset = _StreamAsset()
    (item,) = _resolve(cache, asset)
    assert asset.starts == [1000, 0] and item.path.read_bytes() == DATA
    assert _partials(cache) == []
    # a complete partial (killed between the last byte and the rename) needs no request at all
    item.path.unlink()
    part.write_bytes(DATA)
    asset.starts.clear()
    (item,) = _resolve(cache, asset)
    assert asset.starts == [] and item.path.read_bytes() == DATA and _partials(cache) == []


def test_a_partial_of_another_digest_is_removed_not_resumed(tmp_path):
    cache = tmp_path / "cache"
    target = _target(cache)
    target.parent.mkdir(parents=True)
    other = dandi_mod._partial_path(target, "f" * 64)
    other.write_bytes(DATA[:1200])  # a prefix, yet of another version of the asset
    asset = _StreamAsset()
    (item,) = _resolve(cache, asset)
    assert asset.starts == [0] and not other.exists()
    assert _sha(item.path.read_bytes()) == _sha(DATA) and _partials(cache) == []


def test_the_whole_file_fallback_still_works(tmp_path):
    cache = tmp_path / "cache"
    asset = _WholeAsset()
    (item,) = _resolve(cache, asset)
    assert asset.downloads == 1 and item.path.read_bytes() == DATA
    hidden = sorted(p.name for p in item.path.parent.iterdir() if p.name.startswith("."))
    assert hidden == [f".{item.path.name}.sha256.json"]
    _resolve(cache, asset)
    assert asset.downloads == 1


@pytest.mark.parametrize("progress", [False, True])
def test_downloads_print_nothing_without_a_terminal(tmp_path, capsys, progress):
    assert not sys.stderr.isatty()
    asset = _StreamAsset()
    (item,) = dandi_mod.resolve_dandi(SPEC, cache_dir=tmp_path / "cache", client=_Client(asset),
                                      progress=progress)
    assert item.path.read_bytes() == DATA
    assert capsys.readouterr() == ("", "")


def test_byte_progress_bar_shows_sizes_and_starts_at_the_resumed_bytes(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress_bar(4_000_000, "downloading sub-[1]/a.nwb", unit="bytes",
                      completed=1_000_000) as bar:
        bar.advance(3_000_000)
    shown = capsys.readouterr().err  # on stderr, the terminal that was checked (stdout may be a pipe)
    assert "downloading sub-[1]/a.nwb" in shown and "4.0/4.0 MB" in shown
    with progress_bar(4_000_000, "downloading", unit="bytes", completed=1_000_000):
        pass
    assert "1.0/4.0 MB" in capsys.readouterr().err
    with progress_bar(7, "counting") as bar:  # the default display is unchanged: M/N
        bar.advance(7)
    assert "7/7" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unit must be one of count, bytes, got 'kB'"):
        with progress_bar(1, "x", unit="kB"):
            pass


def test_a_second_process_waits_for_the_first_and_uses_its_download(tmp_path, capsys):
    """Two builds sharing a cache take turns on one asset (flock locks are per open file, so two
    threads stand in for two processes): the second waits, says so, then uses the first one's
    finished file without a request of its own."""
    cache = tmp_path / "cache"
    first, second = _StreamAsset(), _StreamAsset()
    first.pause = threading.Event()
    results: dict[str, object] = {}

    def run(name, asset):
        try:
            results[name] = _resolve(cache, asset)
        except BaseException as exc:  # reported by the assertions below
            results[name] = exc

    t1 = threading.Thread(target=run, args=("first", first))
    t1.start()
    assert first.paused.wait(30)  # the first holds the lock, mid-download
    t2 = threading.Thread(target=run, args=("second", second))
    t2.start()
    err = ""
    deadline = time.time() + 30
    while "waiting for another process" not in err and time.time() < deadline:
        time.sleep(0.02)
        err += capsys.readouterr().err
    first.pause.set()
    t1.join(30)
    t2.join(30)
    assert f"spikefm: {SPEC}: waiting for another process (PID " in err
    assert f"that is downloading {ASSET_PATH} into" in err
    (a,), (b,) = results["first"], results["second"]
    assert a.path == b.path and b.path.read_bytes() == DATA
    assert first.starts == [0] and second.starts == []


def test_corpus_build_passes_its_progress_setting_to_the_downloads(tmp_path, monkeypatch):
    """``spikefm corpus build --quiet`` (progress=False) must not draw download bars."""
    from spikefm.corpus.build import BuildConfig, resolve_inputs

    seen = []

    def fake(spec, *, cache_dir=None, client=None, progress=True):
        seen.append(progress)
        return []

    monkeypatch.setattr(dandi_mod, "resolve_dandi", fake)
    for progress in (False, True):
        assert resolve_inputs([SPEC], BuildConfig(), progress=progress) == ([], [])
    assert seen == [False, True]


def test_off_a_terminal_progress_is_a_plain_line_per_tenth_after_a_few_seconds(monkeypatch, capsys):
    """In a log file or pipe the build, the import, AR eval and downloads said nothing for minutes
    (the bar is drawn on terminals only); train already wrote a line per tenth."""
    import spikefm.progress as pr

    clock = [100.0]
    monkeypatch.setattr(pr.time, "monotonic", lambda: clock[0])
    assert not sys.stderr.isatty()
    with progress_bar(40, "building sessions") as bar:
        for _ in range(40):
            clock[0] += 1.0  # one second per item
            bar.advance(1)
    lines = capsys.readouterr().err.strip().splitlines()
    # nothing in the first 5 s (the tenth passed at item 4 is said at item 5), then one line per
    # tenth: at 8, 12, ..., 40 items
    assert lines[0] == "spikefm: building sessions: 5/40 (12%), 5s elapsed, about 35s left", lines
    assert lines[1] == "spikefm: building sessions: 8/40 (20%), 8s elapsed, about 32s left", lines
    assert len(lines) == 10 and lines[-1] == "spikefm: building sessions: 40/40 (100%), 40s elapsed, about 0s left"
    with progress_bar(4_000_000_000, "downloading a.nwb", unit="bytes", completed=1_000_000_000) as bar:
        clock[0] += 61.0
        bar.advance(1_000_000_000)
    assert capsys.readouterr().err.strip() == ("spikefm: downloading a.nwb: 2.0 GB/4.0 GB (50%), 1m01s elapsed, "
                                               "about 2m02s left")
    with progress_bar(10, "jobs", plain=False) as bar, progress_bar(10, "quiet", enabled=False) as quiet:
        clock[0] += 100.0
        bar.advance(10)
        quiet.advance(10)
    assert capsys.readouterr().err == ""
