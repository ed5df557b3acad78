"""`pocketgpt doctor`: check the store's invariants and, asked to, restore them.

    every manifest parses and names only blobs that exist and verify   else: broken (quarantined)
    every blob's bytes hash to its name                                else: corrupt (quarantined)
    every blob is used by some manifest                                else: orphaned (deleted)
    no temporary file outlives the write that made it                  else: stale (deleted)
    every cache directory belongs to a manifest                        else: stale cache (deleted)

Runs under the store's writer lock, so a model being created is never mistaken for garbage.
Partial downloads (blobs/partial/) are kept for resume unless they are older than a day.
Knows the store's layout; does not change how models are written (serve/store.py).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketgpt.atomic import sha256_file

if TYPE_CHECKING:
    from pocketgpt.serve.store import Store

STALE_TMP_S = 3600.0  # a temporary file this old belongs to a write that died
STALE_PARTIAL_S = 86400.0  # a download nobody resumed for a day


def diagnose(store: Store, repair: bool = False) -> dict[str, Any]:
    """The doctor's report (see module doc); with `repair`, also the fixes, listed under `repaired`."""
    with store._lock():
        blobs = _blob_files(store)
        corrupt = sorted(d for d, path in blobs.items() if "sha256:" + sha256_file(path) != d)
        manifests, broken = _check_manifests(store, set(blobs), set(corrupt))
        used = {d for layers in manifests.values() for d in layers}
        orphaned = sorted(d for d in blobs if d not in used and d not in corrupt)
        stale = _stale_files(store)
        live = {_manifest_hex(store, name) for name in manifests if name not in broken}
        stale_cache = sorted(p.name for p in store.cache.iterdir() if p.name not in live) if store.cache.is_dir() else []
        report: dict[str, Any] = {
            "root": str(store.root), "models": len(manifests), "blobs": len(blobs),
            "orphaned": orphaned, "corrupt": corrupt,
            "broken": [{"name": n, "problem": p} for n, p in sorted(broken.items())],
            "stale_files": [str(p.relative_to(store.root)) for p in stale], "stale_cache": stale_cache,
            "orphaned_bytes": sum(blobs[d].stat().st_size for d in orphaned),
        }
        report["ok"] = not (orphaned or corrupt or broken or stale or stale_cache)
        if repair:
            report["repaired"] = _repair(store, blobs, report, stale)
        return report


def _blob_files(store: Store) -> dict[str, Path]:
    if not store.blobs.is_dir():
        return {}
    return {"sha256:" + p.name.removeprefix("sha256-"): p for p in store.blobs.iterdir()
            if p.is_file() and p.name.startswith("sha256-") and len(p.name) == 71}


def _check_manifests(store: Store, present: set[str], corrupt: set[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(name -> blob digests, name -> problem) for every manifest file."""
    layers: dict[str, list[str]] = {}
    broken: dict[str, str] = {}
    for name in store.names():
        try:
            doc = json.loads(store.manifest_path(name).read_bytes())
            digests = [layer["digest"] for layer in doc["layers"]]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            layers[name], broken[name] = [], f"unreadable manifest ({e})"
            continue
        layers[name] = digests
        missing = [d for d in digests if d not in present]
        bad = [d for d in digests if d in corrupt]
        if missing or bad:
            broken[name] = "; ".join([f"missing blob {d}" for d in missing] + [f"corrupt blob {d}" for d in bad])
    return layers, broken


def _stale_files(store: Store) -> list[Path]:
    now = time.time()
    out = []
    if store.blobs.is_dir():
        out += [p for p in store.blobs.iterdir() if p.name.startswith(".") and now - p.stat().st_mtime > STALE_TMP_S]
    partial = store.blobs / "partial"
    if partial.is_dir():
        out += [p for p in partial.iterdir() if now - p.stat().st_mtime > STALE_PARTIAL_S]
    if store.cache.is_dir():
        out += [p for p in store.cache.iterdir() if p.name.startswith(".") and now - p.stat().st_mtime > STALE_TMP_S]
    tmp = store.root / "tmp"
    if tmp.is_dir():
        out += [p for p in tmp.iterdir() if now - p.stat().st_mtime > STALE_TMP_S]
    if store.manifests.is_dir():
        out += [p for p in store.manifests.rglob(".*") if p.is_file() and now - p.stat().st_mtime > STALE_TMP_S]
    return sorted(out)


def _manifest_hex(store: Store, name: str) -> str:
    import hashlib

    return hashlib.sha256(store.manifest_path(name).read_bytes()).hexdigest()


def _repair(store: Store, blobs: dict[str, Path], report: dict[str, Any], stale: list[Path]) -> dict[str, Any]:
    """Quarantine corrupt blobs and broken manifests; delete orphans, stale files and caches."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    q = store.quarantine / stamp
    for d in report["corrupt"]:
        (q / "blobs").mkdir(parents=True, exist_ok=True)
        shutil.move(str(blobs[d]), q / "blobs" / blobs[d].name)
    for item in report["broken"]:
        dest = q / "manifests" / item["name"].replace("/", "__").replace(":", "@")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(store.manifest_path(item["name"])), dest)
    freed = 0
    for d in report["orphaned"]:
        freed += blobs[d].stat().st_size
        blobs[d].unlink(missing_ok=True)
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for name in report["stale_cache"]:
        shutil.rmtree(store.cache / name, ignore_errors=True)
    if report["broken"] or report["corrupt"]:  # a cache may hold links to a corrupt blob: rebuild them all
        shutil.rmtree(store.cache, ignore_errors=True)
    return {"quarantined_blobs": len(report["corrupt"]), "quarantined_manifests": len(report["broken"]),
            "deleted_orphans": len(report["orphaned"]), "freed_bytes": freed,
            "deleted_stale": len(stale) + len(report["stale_cache"]),
            "quarantine": str(q) if report["corrupt"] or report["broken"] else None}
