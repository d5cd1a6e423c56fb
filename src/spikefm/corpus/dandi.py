"""DANDI inputs: ``dandi:DANDISET_ID[@VERSION][/GLOB]`` -> local NWB files with provenance.

Assets are downloaded with the official ``dandi`` client (``pip install 'spikefm[dandi]'``) into a
cache laid out as ``CACHE/<dandiset>/<version>/<asset path>``. Each download is checked against the
sha256 digest DANDI publishes for the asset (a mismatch is refused, nothing is kept). An asset
already in the cache with the right size and digest is not downloaded again (the digest of a
cached file is computed once and remembered in a hidden ``.NAME.sha256.json`` beside it while its
size and modification time stay the same); a cached copy whose digest differs is downloaded again,
with a warning. The version actually used (the most recent published one when none is given, else
the draft) and the asset's sha256 digest are recorded in the manifest.

Errors of the DANDI client (an unknown dandiset or version, a network failure) become one-line
``ValueError``s naming the spec and the fix.

Examples: ``dandi:000207``, ``dandi:000207@0.220216.0``, ``dandi:000207/sub-4/*.nwb``.

Downloads stay inside the cache: a version that is not a plain name (``draft``, ``0.220216.0``)
and asset paths that are absolute or hold ``..`` are refused, for all assets of the spec, before
anything is downloaded.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..fileio import check_relative_path, remove_stale_temporaries, write_atomic, write_json_atomic
from .build import _first_line
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


#: A partial download unchanged this long (seconds) is a killed one's, also in a shared cache.
STALE_DOWNLOAD_S = 600.0


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


def _cached_copy_ok(local: Path, size, digest: str, spec: str, asset_path: str) -> bool:
    """Whether the cached file can be used: right size and, when DANDI publishes one, right
    sha256 (hashed once, then remembered while the file's size and mtime stay the same)."""
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
          "sha256 DANDI publishes for it; downloading it again", file=sys.stderr)
    return False


def _download(asset, local: Path, digest: str, spec: str) -> None:
    """Download ``asset`` to ``local`` atomically, refusing a file whose sha256 is not DANDI's.
    A killed earlier download's partial temporary beside ``local`` is removed first (one unchanged
    for ``STALE_DOWNLOAD_S``: the cache may be shared by machines whose process ids say nothing)."""
    remove_stale_temporaries(local, min_age_s=STALE_DOWNLOAD_S)

    def write(tmp: Path) -> None:
        asset.download(tmp)
        if digest:
            got = sha256_file(tmp)
            if got != digest:
                raise ValueError(f"{spec}: the download of {asset.path} does not match the sha256 "
                                 f"DANDI publishes for it ({got[:12]}... vs {digest[:12]}...); "
                                 "nothing was kept: run the build again (a transfer error)")

    write_atomic(local, write)
    if digest:
        _remember_digest(local, digest)


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


def resolve_dandi(spec: str, *, cache_dir: str | Path | None = None, client=None) -> list:
    """Resolve a DANDI spec to :class:`~spikefm.corpus.build.InputFile` items, downloading NWB
    assets into the cache.

    Args:
        spec: ``dandi:ID[@VERSION][/GLOB]``.
        cache_dir: download cache (default ``$SPIKEFM_DANDI_CACHE`` or ``~/.cache/spikefm/dandi``).
        client: a ``dandi.dandiapi.DandiAPIClient``-like object (tests pass an offline stand-in).
    """
    from .build import InputFile

    parsed = parse_dandi_spec(spec)
    cache = Path(os.path.expanduser(str(cache_dir or os.environ.get("SPIKEFM_DANDI_CACHE")
                                        or DEFAULT_CACHE)))
    own_client = client is None
    try:
        client = client or _client()
    except ValueError as exc:
        raise ValueError(f"{spec}: {exc}") from None
    try:
        dandiset = client.get_dandiset(parsed.dandiset_id, parsed.version)
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
        items = []
        for asset, local in zip(assets, locals_):
            size = getattr(asset, "size", None)
            digest = _sha256(asset)
            if not _cached_copy_ok(local, size, digest, spec, asset.path):
                _download(asset, local, digest, spec)
            items.append(InputFile(
                path=local,
                source_dataset=f"dandi-{parsed.dandiset_id}",
                provenance={"dandiset_id": parsed.dandiset_id, "dandiset_version": version,
                            "asset_path": asset.path, "asset_sha256": digest,
                            "url": f"https://dandiarchive.org/dandiset/{parsed.dandiset_id}/"
                                   f"{version}"},
                license=license,
            ))
        return items
    except ValueError:
        raise
    except OSError as exc:
        if exc.filename:  # writing into the cache: space, permissions
            raise ValueError(f"{spec}: {exc.filename}: {exc.strerror or _first_line(exc)} while "
                             "writing the DANDI cache; fix the cause or choose another cache "
                             "folder (SPIKEFM_DANDI_CACHE)") from exc
        raise ValueError(f"{spec}: download from DANDI failed ({_first_line(exc)}); check your "
                         "network and run the build again (finished downloads are kept in the "
                         "cache)") from exc
    except Exception as exc:  # the client's own errors, e.g. dandi.exceptions.NotFoundError
        where = parsed.dandiset_id + (f" version {parsed.version}" if parsed.version else "")
        raise ValueError(f"{spec}: the DANDI archive did not give dandiset {where} "
                         f"({type(exc).__name__}: {_first_line(exc)}); check the id and version "
                         f"at https://dandiarchive.org/dandiset/{parsed.dandiset_id}") from exc
    finally:
        if own_client and hasattr(client, "__exit__"):
            client.__exit__(None, None, None)
