"""DANDI inputs: ``dandi:DANDISET_ID[@VERSION][/GLOB]`` -> local NWB files with provenance.

Assets are downloaded with the official ``dandi`` client (``pip install 'spikefm[dandi]'``) into a
cache laid out as ``CACHE/<dandiset>/<version>/<asset path>``. Each download is checked against the
sha256 digest DANDI publishes for the asset (a mismatch is refused, nothing is kept). An asset
already in the cache with the right size and digest is not downloaded again (the digest of a
cached file is computed once and remembered in a hidden ``.NAME.sha256.json`` beside it while its
size and modification time stay the same); a cached copy whose digest differs is downloaded again,
with a warning. The version actually used (the most recent published one when none is given, else
the draft) and the asset's sha256 digest are recorded in the manifest. For a published version
the cache also keeps what the archive said of the assets a build used (:data:`LISTING`), so a
pinned version whose assets are all cached builds without the network.

Downloads resume and show progress: bytes stream into a hidden partial file beside the final one
(``.NAME.partial-<sha256 prefix>``, so a partial of another version of the asset is never
continued) under a byte progress bar. A download stopped by a network error, Ctrl-C or a kill
keeps its partial file, and the next build asks the server for the rest only (an HTTP Range
request); the whole file is still checked against DANDI's size and sha256 before it is renamed
into place. Two processes sharing the cache take turns per asset (a lock file ``.NAME.lock``): the
second waits, with one line saying so, then uses the first one's download. Assets of a client
without ``get_download_file_iter`` (dandi < 0.60) are downloaded whole, as before.

Errors of the DANDI client (an unknown dandiset or version, a network failure) become one-line
``ValueError``s naming the spec and the fix.

Examples: ``dandi:000207``, ``dandi:000207@0.220216.0``, ``dandi:000207/sub-4/*.nwb``.

Downloads stay inside the cache: a version that is not a plain name (``draft``, ``0.220216.0``)
and asset paths that are absolute or hold ``..`` are refused, for all assets of the spec, before
anything is downloaded.
"""
from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..fileio import (check_relative_path, first_line, fsync_dir, holding_lock, make_folder,
                      remove_stale_temporaries, write_atomic, write_json_atomic)
from ..progress import progress_bar
from .nwb import sha256_file

_SPEC = re.compile(r"^dandi:(?P<id>\d{6})(?:@(?P<version>[^/]+))?(?:/(?P<glob>.+))?$")
#: A version is one plain path component: "draft" or "0.220216.0".
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

DEFAULT_CACHE = "~/.cache/spikefm/dandi"


@dataclass(frozen=True)
class DandiSpec:
    dandiset_id: str
    version: str | None
    glob: str | None


def parse_dandi_spec(spec: str) -> DandiSpec:
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(
            f"{spec!r} is not a DANDI input; expected dandi:DANDISET_ID[@VERSION][/GLOB], "
            "e.g. dandi:000207@0.220216.0/sub-4/*.nwb"
        )
    if m["version"] is not None:
        _check_version(m["version"], spec)
    return DandiSpec(m["id"], m["version"], m["glob"])


def _check_version(version: str, where: str) -> None:
    if not _VERSION.match(version) or ".." in version:
        raise ValueError(f"{where}: DANDI version {version!r} is not a plain name like draft or "
                         "0.220216.0; refused before anything was downloaded")


def _cache_path(cache: Path, dandiset_id: str, version: str, asset_path: str, spec: str) -> Path:
    """Where an asset goes in the cache; refuses names that would leave it."""
    _check_version(version, spec)
    rel = check_relative_path(asset_path, what=f"{spec}: DANDI asset path")
    base = cache / dandiset_id / version
    local = base.joinpath(*rel.parts)
    if not local.resolve().is_relative_to(base.resolve()):  # e.g. a link inside the cache
        raise ValueError(f"{spec}: DANDI asset {asset_path!r} would be written outside the cache "
                         f"folder {base}; refused")
    return local


#: A whole-file download's temporary (``.NAME.tmp-PID``: the fallback for clients without
#: ``get_download_file_iter``, and spikefm before resumable downloads) unchanged this long (seconds)
#: is a killed one's, also in a shared cache; it is removed. Resumable partials are never removed
#: for their age: the next build continues them.
STALE_DOWNLOAD_S = 600.0

#: Bytes per chunk asked of the dandi client: fine enough for a smooth progress bar and little
#: lost work, large enough that the per-chunk Python work is nothing next to the transfer.
DOWNLOAD_CHUNK_BYTES = 1 << 20


def _client():
    import logging

    try:
        from dandi.dandiapi import DandiAPIClient
    except ImportError:
        raise ValueError("DANDI inputs need the dandi client, which is not installed; "
                         "pip install 'spikefm[dandi]'") from None
    # Without a handler of its own, the client's records (e.g. a connection traceback before each
    # retry) reach Python's last-resort handler and print dozens of lines before spikefm's one
    # line; a program that configures logging still receives them through the root logger.
    lgr = logging.getLogger("dandi")
    if not lgr.handlers:
        lgr.addHandler(logging.NullHandler())
    return DandiAPIClient()


def _sidecar(local: Path) -> Path:
    return local.with_name(f".{local.name}.sha256.json")


def _remember_digest(local: Path, digest: str) -> None:
    st = local.stat()
    write_json_atomic(_sidecar(local), {"sha256": digest, "size": st.st_size,
                                        "mtime_ns": st.st_mtime_ns})


def _cached_copy_ok(local: Path, size, digest: str, spec: str, asset_path: str,
                    then: str = "downloading it again") -> bool:
    """Whether the cached file can be used: right size and, when DANDI publishes one, right
    sha256 (hashed once, then remembered while the file's size and mtime stay the same); a
    mismatch is warned about, saying what happens ``then``."""
    if not local.is_file():
        return False
    st = local.stat()
    if size is not None and st.st_size != size:
        return False
    if not digest:
        return True
    try:
        seen = json.loads(_sidecar(local).read_text())
        if seen == {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(local) == digest:
        _remember_digest(local, digest)
        return True
    print(f"spikefm: warning: {spec}: the cached copy of {asset_path} ({local}) does not match the "
          f"sha256 DANDI publishes for it; {then}", file=sys.stderr)
    return False


def _download(asset, local: Path, digest: str, spec: str, *, progress: bool = True) -> None:
    """Download ``asset`` to ``local``, refusing a file whose size or sha256 is not DANDI's.

    With the client's streaming API (``asset.get_download_file_iter``, dandi >= 0.60) the bytes go
    into a hidden partial file beside ``local`` (:func:`_partial_path`, named after the published
    digest) under a byte progress bar (``progress``; plain lines when stderr is not a terminal). A partial
    left by an interrupted earlier download is resumed from its size (an HTTP Range request);
    partials of the same asset name with another digest are removed. A network error or Ctrl-C
    keeps the partial, for the next build to resume. Finished, the file is checked (size, then
    sha256) and renamed into place atomically; a resumed file that does not add up (a server that
    ignored the Range request and sent the whole file again, a damaged partial) is downloaded once
    more from byte 0, and a fresh download that does not match is deleted and refused. The
    download holds a per-asset lock: another process downloading the same asset into the same
    cache is waited for (one line on stderr says so), then its finished copy is used.

    Without the streaming API, ``asset.download`` writes a temporary that is renamed into place
    (:func:`~spikefm.fileio.write_atomic`; an interrupted download starts again from byte 0).

    Either way, a whole-file temporary of a killed earlier download beside ``local`` is removed
    first (one unchanged for ``STALE_DOWNLOAD_S``: the cache may be shared by machines whose
    process ids say nothing).

    Raises:
        ValueError: one line naming ``spec`` and the asset: a mismatch (nothing is kept), or a
            transfer that failed part-way (its partial is kept and the next build resumes it).
        OSError: writing into the cache failed (``filename`` names the file).
    """
    remove_stale_temporaries(local, min_age_s=STALE_DOWNLOAD_S)
    if hasattr(asset, "get_download_file_iter"):
        make_folder(local.parent, action=f"write {local}")
        with _asset_lock(local, spec, asset.path) as waited:
            if waited is not None:
                if waited and _cached_copy_ok(local, getattr(asset, "size", None), digest, spec,
                                              asset.path):
                    return  # the process we waited for downloaded it
                _stream(asset, local, digest, spec, progress)
                return
    _download_whole(asset, local, digest, spec)


def _download_whole(asset, local: Path, digest: str, spec: str) -> None:
    def write(tmp: Path) -> None:
        asset.download(tmp)
        if digest:
            got = sha256_file(tmp)
            if got != digest:
                raise _mismatch(spec, asset.path, got, digest)

    write_atomic(local, write)
    if digest:
        _remember_digest(local, digest)


def _mismatch(spec: str, asset_path: str, got: str, digest: str) -> ValueError:
    return ValueError(f"{spec}: the download of {asset_path} does not match the sha256 DANDI "
                      f"publishes for it ({got[:12]}... vs {digest[:12]}...); nothing was kept: run "
                      "the build again (a transfer error)")


def _partial_path(local: Path, digest: str) -> Path:
    """The resumable partial download of ``local``; the digest prefix ties it to one version of
    the asset's bytes ("unverified" where DANDI publishes no digest: such a partial is never
    resumed)."""
    return local.with_name(f".{local.name}.partial-{digest[:16] if digest else 'unverified'}")


def _lock_path(local: Path) -> Path:
    return local.with_name(f".{local.name}.lock")


@contextlib.contextmanager
def _asset_lock(local: Path, spec: str, asset_path: str) -> Iterator[bool | None]:
    """Hold the download lock of one cached asset; yields whether another process had to be
    waited for, or None where the OS or file system has no file locks (then nothing is held: the
    caller downloads whole, to a temporary of its own, as before resumable downloads).

    Why not :func:`~spikefm.fileio.folder_lock`: it locks a whole folder and fails at once, so two
    builds sharing a cache would refuse each other even for different assets of one folder, and
    the refused build would skip the whole dandiset. A lock per asset lets them work side by side,
    and for the same asset the second one waits: what a user wants, since it then reuses the first
    one's download instead of failing or fetching it twice. An OS lock (``fcntl.flock``) is
    released when its holder exits however it exits, so it is never stale; its file is never
    deleted (a process still holding the old file open could lock it while a third locks a new
    one) and holds the holder's process id and host while locked, for the waiting line.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield None
        return
    lock = _lock_path(local)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "its id unknown"
            print(f"spikefm: {spec}: waiting for another process ({holder}) that is downloading "
                  f"{asset_path} into {local.parent}; its download is then used", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = True
        except OSError:  # a file system without locks (some network mounts)
            yield None
            return
        with holding_lock(fd, f"PID {os.getpid()} on {socket.gethostname()}"):
            yield waited
    finally:
        os.close(fd)


def _stream(asset, local: Path, digest: str, spec: str, progress: bool) -> None:
    """The streaming half of :func:`_download` (the caller holds the asset's lock)."""
    size = getattr(asset, "size", None)
    size = size if isinstance(size, int) and size >= 0 else None
    part = _partial_path(local, digest)
    for other in local.parent.glob(f".{glob.escape(local.name)}.partial-*"):
        if other != part and other.is_file() and not other.is_symlink():
            other.unlink(missing_ok=True)  # another version's bytes: never to be continued
    # Without a digest and a size nothing could tell that a partial's bytes are this asset's.
    resumable = bool(digest) and size is not None
    start = part.stat().st_size if resumable and part.is_file() else 0
    if size is not None and start > size:
        start = 0  # longer than the asset: not a prefix of it
    try:
        downloader = asset.get_download_file_iter(DOWNLOAD_CHUNK_BYTES)
    except ValueError as exc:  # e.g. a Zarr asset, which is not one file
        raise ValueError(f"{spec}: cannot download {asset.path} ({first_line(exc)})") from None
    try:
        with open(part, "r+b" if start else "wb") as f, \
                progress_bar(size, f"downloading {asset.path}", enabled=progress, unit="bytes",
                             completed=start) as bar:
            got = _fetch(downloader, f, start, size, bar, spec, asset.path, resumable)
            if start and (got is None or (digest and got != digest)):
                # A resumed download that does not add up: a server that ignored the Range request
                # and sent the whole file again after the partial's bytes, or a damaged partial.
                bar.update(completed=0)
                got = _fetch(downloader, f, 0, size, bar, spec, asset.path, resumable)
            ok = got is not None and (not digest or got == digest)
            if ok:
                f.flush()
                os.fsync(f.fileno())
    except ValueError:
        if not resumable:  # nothing could continue it
            part.unlink(missing_ok=True)
        raise
    if not ok:
        part.unlink(missing_ok=True)
        if got is None:
            raise ValueError(f"{spec}: the download of {asset.path} is longer than the {size:,} "
                             "bytes DANDI publishes for it; nothing was kept: run the build again "
                             "(a transfer error)")
        raise _mismatch(spec, asset.path, got, digest)
    os.replace(part, local)
    fsync_dir(local.parent)
    if digest:
        _remember_digest(local, digest)


def _fetch(downloader, f, start: int, size: int | None, bar, spec: str, asset_path: str,
           resumable: bool) -> str | None:
    """Write the asset's bytes from ``start`` on into ``f``, which holds bytes ``[0, start)``.

    Returns:
        The sha256 of the whole file, or None where the bytes do not add up: more than ``size``
        (a server that ignored the Range request), or a partial shorter than ``start``.

    Raises:
        ValueError: the transfer failed or ended before ``size`` bytes; the partial file is kept.
        OSError: writing ``f`` failed (its ``filename`` is set).
    """
    sha = hashlib.sha256()
    f.seek(0)
    left = start
    while left:
        block = f.read(min(left, DOWNLOAD_CHUNK_BYTES))
        if not block:
            return None
        sha.update(block)
        left -= len(block)
    f.seek(start)
    f.truncate()
    have = start
    chunks = downloader(start) if have != size else iter(())
    try:
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except OSError as exc:  # requests' errors are OSErrors too
                raise ValueError(_failed(spec, asset_path, exc, have, size, resumable)) from exc
            if size is not None and have + len(chunk) > size:
                return None
            try:
                f.write(chunk)
            except OSError as exc:
                exc.filename = exc.filename or f.name  # for resolve_dandi's "writing the cache" line
                raise
            sha.update(chunk)
            have += len(chunk)
            bar.advance(len(chunk))
    finally:
        if hasattr(chunks, "close"):
            chunks.close()  # an abandoned response releases its connection now, not at collection
    if size is not None and have < size:
        raise ValueError(_failed(spec, asset_path, "the transfer ended early", have, size,
                                 resumable))
    return sha.hexdigest()


def _failed(spec: str, asset_path: str, why: BaseException | str, have: int, size: int | None,
            resumable: bool) -> str:
    why = why if isinstance(why, str) else first_line(why)
    of = f" of {size:,}" if size is not None else ""
    then = ("the next build resumes it (the partial file is kept in the cache)"
            if resumable and have else "run the build again")
    return (f"{spec}: download from DANDI failed ({why}) after {have:,}{of} bytes of {asset_path}; "
            f"check your network and {then}")


def _license(dandiset) -> str:
    try:
        meta = dandiset.get_raw_metadata()
    except Exception:  # metadata is best-effort provenance
        return ""
    lic = meta.get("license") or []
    return ", ".join(str(x) for x in lic) if isinstance(lic, list) else str(lic)


def _sha256(asset) -> str:
    try:
        digests = asset.get_raw_metadata().get("digest", {})
    except Exception:
        return ""
    return digests.get("dandi:sha2-256", "")


#: Per published version in the cache: what the archive said of the assets a build used (path,
#: size, sha256) and the dandiset's licence, so that a build of a pinned version whose assets
#: are all cached runs without the network.
LISTING = ".spikefm-assets.json"


def _input_file(dandiset_id: str, version: str, asset_path: str, digest: str, local: Path, license: str):
    from .build import InputFile

    return InputFile(
        path=local,
        source_dataset=f"dandi-{dandiset_id}",
        provenance={"dandiset_id": dandiset_id, "dandiset_version": version,
                    "asset_path": asset_path, "asset_sha256": digest,
                    "url": f"https://dandiarchive.org/dandiset/{dandiset_id}/{version}"},
        license=license,
    )


def _remember_listing(folder: Path, license: str, assets: list[dict]) -> None:
    """Add ``assets`` to the version's :data:`LISTING` (one entry per path; best effort: a cache
    that cannot be written only costs the offline build)."""
    path = folder / LISTING
    try:
        known = {a["path"]: a for a in json.loads(path.read_text()).get("assets", [])}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        known = {}
    known.update({a["path"]: a for a in assets})
    try:
        write_json_atomic(path, {"license": license, "assets": [known[k] for k in sorted(known)]})
    except OSError:
        pass


def _resolve_from_listing(spec: str, parsed: DandiSpec, cache: Path, exc: OSError) -> list:
    """The spec's inputs from the cache alone (the archive unreachable): a pinned published
    version whose :data:`LISTING` names assets matching the glob, every one cached with DANDI's
    size and sha256. Else one line saying what the offline build lacks."""
    unreachable = f"{spec}: the DANDI archive cannot be reached ({first_line(exc)})"
    if parsed.version in (None, "draft"):
        raise ValueError(f"{unreachable}; only the archive says which version is "
                         f"{'the newest' if parsed.version is None else 'the draft now'}: check your network, "
                         f"or pin a published version whose files a build downloaded before "
                         f"(dandi:{parsed.dandiset_id}@VERSION)") from exc
    _check_version(parsed.version, spec)
    folder = cache / parsed.dandiset_id / parsed.version
    try:
        listing = json.loads((folder / LISTING).read_text())
        assets = [a for a in listing["assets"] if fnmatch.fnmatchcase(a["path"], parsed.glob or "*.nwb")]
        license = str(listing.get("license") or "")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{unreachable}, and the cache {folder} holds no list of its assets that a build "
                         f"wrote ({type(err).__name__}); check your network and run the build again") from exc
    if not assets:
        raise ValueError(f"{unreachable}, and no asset the cache lists for version {parsed.version} matches "
                         f"{parsed.glob or '*.nwb'!r}; check your network and run the build again") from exc
    items = []
    for a in assets:
        local = _cache_path(cache, parsed.dandiset_id, parsed.version, a["path"], spec)
        if not _cached_copy_ok(local, a.get("size"), a.get("sha256") or "", spec, a["path"],
                               then="it cannot be downloaded again now"):
            raise ValueError(f"{unreachable}, and its asset {a['path']} is not in the cache ({local}) with "
                             "DANDI's size and sha256; check your network and run the build again") from exc
        items.append(_input_file(parsed.dandiset_id, parsed.version, a["path"], a.get("sha256") or "", local,
                                 license))
    print(f"spikefm: warning: {unreachable}; {len(items)} asset(s) of version {parsed.version} come from "
          f"the cache ({folder}), as a build that reached the archive listed them", file=sys.stderr)
    return items


def resolve_dandi(spec: str, *, cache_dir: str | Path | None = None, client=None,
                  progress: bool = True) -> list:
    """Resolve a DANDI spec to :class:`~spikefm.corpus.build.InputFile` items, downloading NWB
    assets into the cache (resumably, see :func:`_download`).

    Args:
        spec: ``dandi:ID[@VERSION][/GLOB]``.
        cache_dir: download cache (default ``$SPIKEFM_DANDI_CACHE`` or ``~/.cache/spikefm/dandi``).
        client: a ``dandi.dandiapi.DandiAPIClient``-like object (tests pass an offline stand-in).
        progress: a byte progress bar per download on stderr's terminal (plain progress lines in
            a log or pipe, once a download has run 5 s); False: none.

    Raises:
        ValueError: one line naming ``spec``: an unknown dandiset or version, a refused asset
            name, a download that failed (a partial one is resumed by the next call) or does not
            match DANDI's sha256.
    """

    parsed = parse_dandi_spec(spec)
    cache = Path(os.path.expanduser(str(cache_dir or os.environ.get("SPIKEFM_DANDI_CACHE")
                                        or DEFAULT_CACHE)))
    own_client = client is None
    try:
        client = client or _client()
    except ValueError as exc:
        raise ValueError(f"{spec}: {exc}") from None
    try:
        try:
            dandiset = client.get_dandiset(parsed.dandiset_id, parsed.version)
        except OSError as exc:  # the archive cannot be reached: a pinned version may be in the cache
            if exc.filename:
                raise
            return _resolve_from_listing(spec, parsed, cache, exc)
        if parsed.version is None:
            # Prefer the most recent published version; fall back to the draft.
            published = getattr(dandiset, "most_recent_published_version", None)
            if published is not None:
                dandiset = client.get_dandiset(parsed.dandiset_id, published.identifier)
        version = dandiset.version_id
        pattern = parsed.glob or "*.nwb"
        assets = [a for a in dandiset.get_assets_by_glob(pattern) if a.path.endswith(".nwb")]
        if not assets:
            raise ValueError(f"{spec}: no .nwb asset matches {pattern!r} in dandiset "
                             f"{parsed.dandiset_id} version {version}")
        license = _license(dandiset)
        assets = sorted(assets, key=lambda a: a.path)
        # Every name is checked before the first download.
        locals_ = [_cache_path(cache, parsed.dandiset_id, version, a.path, spec) for a in assets]
        items, listed = [], []
        for asset, local in zip(assets, locals_):
            size = getattr(asset, "size", None)
            digest = _sha256(asset)
            if not _cached_copy_ok(local, size, digest, spec, asset.path):
                _download(asset, local, digest, spec, progress=progress)
            items.append(_input_file(parsed.dandiset_id, version, asset.path, digest, local, license))
            listed.append({"path": asset.path, "size": size, "sha256": digest})
        if version != "draft":  # a published version never changes: what an offline build may use
            _remember_listing(cache / parsed.dandiset_id / version, license, listed)
        return items
    except ValueError:
        raise
    except OSError as exc:
        if exc.filename:  # writing into the cache: space, permissions
            raise ValueError(f"{spec}: {exc.filename}: {exc.strerror or first_line(exc)} while "
                             "writing the DANDI cache; fix the cause or choose another cache "
                             "folder (SPIKEFM_DANDI_CACHE)") from exc
        raise ValueError(f"{spec}: download from DANDI failed ({first_line(exc)}); check your "
                         "network and run the build again (finished downloads are kept in the "
                         "cache)") from exc
    except Exception as exc:  # the client's own errors, e.g. dandi.exceptions.NotFoundError
        where = parsed.dandiset_id + (f" version {parsed.version}" if parsed.version else "")
        raise ValueError(f"{spec}: the DANDI archive did not give dandiset {where} "
                         f"({type(exc).__name__}: {first_line(exc)}); check the id and version "
                         f"at https://dandiarchive.org/dandiset/{parsed.dandiset_id}") from exc
    finally:
        if own_client and hasattr(client, "__exit__"):
            client.__exit__(None, None, None)
