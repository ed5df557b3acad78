"""The model store: named models (manifests) over content-addressed blobs, like Ollama's.

    $POCKETGPT_HOME/models/
      blobs/sha256-<hex>                 every file, named by the sha256 of its bytes (shared, deduplicated)
      blobs/partial/sha256-<hex>.partial an interrupted download, resumed from its length (serve/transfer.py)
      manifests/<name>/<tag>             JSON: which blobs make the model (written last, atomically)
      cache/<manifest hex>/              a model directory for load_model, hard links to verified blobs
      quarantine/                        what `doctor --repair` took out of service (corrupt blobs, broken manifests)

A manifest lists layers {mediaType, digest, size} and, for the files of the model directory, the
file `name`. Sampling parameters, the system prompt, the template, messages and the license are
small JSON/text blobs too, so a model travels between stores as "one manifest + its blobs".
Crash safety follows from the order of writes: blobs are written to a temporary file, fsynced and
renamed into place; the manifest is renamed into place only after all its blobs are present, so a
crash leaves at most orphaned blobs (which `doctor` finds) and never a half model. Blobs are
verified (sha256) when they enter the store and when a model is materialized for loading.
Knows nothing of HTTP or generation: serve/transfer.py moves blobs, serve/runner.py runs models.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pocketgpt.atomic import atomic_write, sha256_file
from pocketgpt.errors import PocketError
from pocketgpt.serve.manifest import (  # noqa: F401  (re-exported: the store's public names)
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    KIND,
    MANIFEST_TYPE,
    MEDIA,
    MODEL_FILES,
    BlobError,
    Manifest,
    check_digest,
    full_name,
    parse_name,
)
from pocketgpt.serve.modelfile import Modelfile, ModelfileError, ModelNameError, check_parameters

VERIFIED = ".verified.json"  # in a cache directory: the blob stats at verification time
CHUNK = 1 << 20


class ModelNotFound(PocketError):
    """No model of that name in the store."""


# --- the store ----------------------------------------------------------------------------------------

class Store:
    """Manifests + blobs under one root directory (default `$POCKETGPT_HOME/models`)."""

    def __init__(self, root: str | os.PathLike | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        """`progress`, if given, hears each step of a create ("copying model.safetensors (543 MB)")."""
        self.progress = progress or (lambda step: None)
        if root is None:
            from pocketgpt.home import home_dir

            root = home_dir() / "models"
        self.root = Path(root).expanduser()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.cache = self.root / "cache"
        self.quarantine = self.root / "quarantine"

    # -- naming and reading ----------------------------------------------------------------------------
    def manifest_path(self, name: str) -> Path:
        base, tag = parse_name(name)
        return self.manifests.joinpath(*base.split("/"), tag)

    def names(self) -> list[str]:
        """Every model name in the store, sorted ("name:tag")."""
        if not self.manifests.is_dir():
            return []
        out = []
        for p in self.manifests.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                out.append(f"{p.parent.relative_to(self.manifests).as_posix()}:{p.name}")
        return sorted(out)

    def exists(self, name: str) -> bool:
        return self.manifest_path(name).is_file()

    def get(self, name: str) -> Manifest:
        """The manifest of `name`, or ModelNotFound listing the models there are."""
        path = self.manifest_path(name)
        if not path.is_file():
            known = self.names()
            hint = f"models here: {', '.join(known)}" if known else "the store is empty"
            raise ModelNotFound(f"model {full_name(name)!r} not found ({hint}); "
                                f"create it with `pocketgpt create {full_name(name)} --from DIR` or pull it")
        return self._read_manifest(full_name(name), path)

    def list(self) -> list[Manifest]:
        """All models, newest first; a broken manifest is skipped here (doctor reports it)."""
        out = []
        for name in self.names():
            try:
                out.append(self.get(name))
            except (BlobError, ModelNotFound, ValueError, KeyError, TypeError):
                continue
        return sorted(out, key=lambda m: m.modified_at, reverse=True)

    def _read_manifest(self, name: str, path: Path) -> Manifest:
        raw = path.read_bytes()
        try:
            doc = json.loads(raw)
            layers = list(doc["layers"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise BlobError(f"{path}: manifest of {name} is unreadable ({e}); run `pocketgpt doctor --repair`") from None
        m = Manifest(name=name, digest="sha256:" + hashlib.sha256(raw).hexdigest(),
                     size=sum(int(layer["size"]) for layer in layers),
                     modified_at=datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(),
                     layers=layers, document=doc)
        for layer in layers:
            kind = KIND.get(layer["mediaType"])
            if kind == "file" and layer.get("name") == "config.json":
                m.config = json.loads(self.read_blob(layer["digest"]))
            elif kind == "params":
                m.params = json.loads(self.read_blob(layer["digest"]))
            elif kind == "messages":
                m.messages = json.loads(self.read_blob(layer["digest"]))
            elif kind in ("system", "template"):
                setattr(m, kind, self.read_blob(layer["digest"]).decode("utf-8"))
            elif kind == "license":
                m.license.append(self.read_blob(layer["digest"]).decode("utf-8"))
            elif kind == "adapter":
                m.adapter = layer["digest"]
        return m

    # -- blobs -----------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest).replace(":", "-")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_blob(self, digest: str) -> Path:
        """Where an interrupted download of `digest` keeps its bytes; append to it to resume."""
        path = self.blobs / "partial" / (check_digest(digest).replace(":", "-") + ".partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add_blob(self, src: str | os.PathLike, digest: str | None = None) -> str:
        """Copy (or, for a file under blobs/partial, move) `src` into the store; returns its digest.
        With `digest`, the bytes must hash to it (BlobError otherwise, nothing added)."""
        src = Path(src)
        if digest is not None:
            check_digest(digest)
            if self.has_blob(digest):
                if src.parent == self.blobs / "partial":
                    src.unlink(missing_ok=True)
                return digest
        self.blobs.mkdir(parents=True, exist_ok=True)
        if src.parent == self.blobs / "partial":  # a finished download: verify then rename, no copy
            got = "sha256:" + sha256_file(src)
            if digest is not None and got != digest:
                src.unlink(missing_ok=True)
                raise BlobError(f"download of {digest} has sha256 {got}; the data was corrupted, pull again")
            os.replace(src, self.blob_path(got))
            return got
        return self._copy_in(src, digest)

    def add_bytes(self, data: bytes) -> str:
        """Store a small blob from memory; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            atomic_write(self.blob_path(digest), data)
        return digest

    def _copy_in(self, src: Path, want: str | None) -> str:
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(prefix=".blob.", suffix=".tmp", dir=self.blobs)
        try:
            with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
                while block := f.read(CHUNK):
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            got = "sha256:" + h.hexdigest()
            if want is not None and got != want:
                raise BlobError(f"{src}: sha256 is {got}, expected {want}; the file changed or is corrupt")
            if not self.has_blob(got):
                os.replace(tmp, self.blob_path(got))
            return got
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def read_blob(self, digest: str) -> bytes:
        """A small blob's bytes, verified."""
        path = self.blob_path(digest)
        if not path.is_file():
            raise BlobError(f"blob {digest} is missing; run `pocketgpt doctor --repair`, then pull or create the model again")
        data = path.read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise BlobError(f"blob {digest} is corrupt (its sha256 no longer matches); "
                            "run `pocketgpt doctor --repair`, then pull or create the model again")
        return data

    def verify_blob(self, digest: str) -> None:
        """BlobError unless the blob exists and its bytes hash to its name."""
        path = self.blob_path(digest)
        if not path.is_file():
            raise BlobError(f"blob {digest} is missing; run `pocketgpt doctor --repair`, then pull or create the model again")
        if "sha256:" + sha256_file(path) != digest:
            raise BlobError(f"blob {digest} ({path}) is corrupt: its sha256 no longer matches; "
                            "run `pocketgpt doctor --repair`, then pull or create the model again")

    # -- writing models --------------------------------------------------------------------------------
    def create_from_dir(self, name: str, model_dir: str | os.PathLike) -> Manifest:
        """Pack a model directory (config.json + model.safetensors + tokenizer files) as `name`."""
        return self.create(name, Modelfile(from_=str(Path(model_dir).resolve())))

    def create(self, name: str, modelfile: Modelfile) -> Manifest:
        """Build `name` from a Modelfile: FROM a directory, a .gguf file, or another store model;
        then ADAPTER, PARAMETER, SYSTEM, TEMPLATE, MESSAGE, LICENSE on top."""
        name = full_name(name)
        modelfile.check()
        if modelfile.template is not None:
            from pocketgpt.serve.template import check_template

            check_template(modelfile.template)  # a broken TEMPLATE fails here, not at the first chat
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            layers, inherited = self._base_layers(modelfile)
            if modelfile.adapter:  # replaces any adapter the base carries
                layers = [x for x in layers if KIND.get(x["mediaType"]) != "adapter" and x.get("name") != ADAPTER_CONFIG]
                layers += self._adapter_layers(modelfile.resolve(modelfile.adapter), layers)
            layers += self._meta_layers(modelfile, inherited)
            doc = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "layers": layers,
                   "annotations": {"parameter_count": _parameter_count(self, layers)}}
            return self._write_manifest(name, doc)

    def import_path(self, path: str | os.PathLike, name: str | None = None) -> Manifest:
        """`pocketgpt pull ./dir` or `pull FILE.gguf`: add a local model under `name` (default: the
        file or directory name, lowercased, e.g. smollm2-135m-instruct.q4_1:latest)."""
        p = Path(path).expanduser().absolute()
        if not p.exists():
            raise ModelfileError(f"{path}: no such model directory or GGUF file")
        if name is None:
            stem = p.stem if p.is_file() else p.name
            name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:80] or "model"
        return self.create(name, Modelfile(from_=str(p)))

    def put_manifest(self, name: str, manifest: dict[str, Any]) -> Manifest:
        """Install a manifest document (from pull) once every blob it names is in the store."""
        name = full_name(name)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            raise BlobError(f"manifest for {name} is not a JSON object with a 'layers' list")
        for layer in manifest["layers"]:
            if not isinstance(layer, dict) or layer.get("mediaType") not in KIND:
                raise BlobError(f"manifest for {name}: unknown layer {layer!r}")
            check_digest(layer.get("digest"))
            if KIND[layer["mediaType"]] == "file" and layer.get("name") not in MODEL_FILES:
                raise BlobError(f"manifest for {name}: file layer name {layer.get('name')!r} is not a model file")
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            return self._write_manifest(name, manifest)

    def _write_manifest(self, name: str, doc: dict[str, Any]) -> Manifest:
        for layer in doc["layers"]:  # under the lock: nothing can prune them before the manifest lands
            if not self.has_blob(layer["digest"]):
                raise BlobError(f"{name}: blob {layer['digest']} is not in the store; pull or create the model again")
            size = self.blob_path(layer["digest"]).stat().st_size
            if layer.get("size") != size:
                raise BlobError(f"{name}: layer {layer['digest']} says size {layer.get('size')!r}, the blob has {size} bytes")
        files = {x.get("name") for x in doc["layers"] if KIND[x["mediaType"]] == "file"}
        if not {"config.json", "model.safetensors"} <= files:
            raise BlobError(f"{name}: a model needs config.json and model.safetensors layers; got {sorted(files)}")
        path = self.manifest_path(name)
        clash = [p for p in [path, *path.parents] if p != self.manifests and self.manifests in p.parents
                 and (p.is_file() if p != path else p.is_dir())]
        if clash:
            raise ModelNameError(f"{name} clashes with {clash[0].relative_to(self.manifests).as_posix()} already in the "
                                 "store (a name cannot also be a namespace); choose another name")
        self.progress(f"writing manifest {name}")
        atomic_write(path, json.dumps(doc, indent=1, ensure_ascii=False))
        return self.get(name)

    def _base_layers(self, mf: Modelfile) -> tuple[list[dict[str, Any]], Manifest | None]:
        """The model files' layers for FROM, and the base manifest when FROM names a store model."""
        path = mf.resolve(mf.from_)
        if path.is_dir():
            return self._pack_dir(path), None
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelfileError(f"FROM {mf.from_}: a file must be a .gguf model; for a model directory "
                                     "give the directory (config.json + model.safetensors)")
            return self._pack_gguf(path), None
        try:
            base = self.get(mf.from_)
        except ModelNameError:
            raise ModelfileError(f"FROM {mf.from_}: no such directory, GGUF file or store model") from None
        except ModelNotFound:
            raise ModelfileError(f"FROM {mf.from_}: no such directory, GGUF file or store model "
                                 f"({', '.join(self.names()) or 'the store is empty'})") from None
        model_kinds = ("file", "adapter")
        return [dict(x) for x in base.layers if KIND.get(x["mediaType"]) in model_kinds], base

    def _pack_dir(self, d: Path) -> list[dict[str, Any]]:
        if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
            raise ModelfileError(f"{d}: not a model directory (needs config.json and model.safetensors); "
                                 "write one with `pocketgpt train ... --out DIR` or save_model()")
        from pocketgpt.model.checkpoint import load_config

        load_config(d)  # a readable config, or a clear ConfigMismatch now rather than at load time
        layers = []
        for fname in MODEL_FILES:
            if (d / fname).is_file():
                kind = "adapter" if fname == ADAPTER_FILE else "file"
                self.progress(f"copying {fname} ({_human_bytes((d / fname).stat().st_size)})")
                layers.append(self._layer(kind, self.add_blob(d / fname), name=fname))
        return layers

    def _pack_gguf(self, path: Path) -> list[dict[str, Any]]:
        from pocketgpt.model.gguf_import import import_gguf

        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
            self.progress(f"importing {path.name} (dequantising to fp32)")
            import_gguf(path, Path(tmp) / "model")
            return self._pack_dir(Path(tmp) / "model")

    def _adapter_layers(self, path: Path, base: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """ADAPTER: adapter.safetensors (an `adapter` layer) + adapter.json (a file layer: method, rank,
        targets and the hash of the base config it was trained on, model/peft.py), refused now when
        that base is not the FROM model."""
        from pocketgpt.config import ModelConfig
        from pocketgpt.model.peft import config_hash

        f = path / ADAPTER_FILE if path.is_dir() else path
        meta_file = f.with_name(ADAPTER_CONFIG)
        if not f.is_file() or f.suffix != ".safetensors":
            raise ModelfileError(f"ADAPTER {path}: expected {ADAPTER_FILE} or a directory holding it "
                                 "(save one with `pocketgpt sft --peft lora --out DIR`)")
        if not meta_file.is_file():
            raise ModelfileError(f"ADAPTER {path}: no {ADAPTER_CONFIG} next to {ADAPTER_FILE} (it says how to attach "
                                 "the adapter); give the directory `pocketgpt sft --peft lora --out DIR` wrote")
        try:
            want = json.loads(meta_file.read_text(encoding="utf-8"))["base_config_hash"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ModelfileError(f"ADAPTER {meta_file}: unreadable ({e!r}); save the adapter again") from None
        config = next(x for x in base if x.get("name") == "config.json")
        got = config_hash(ModelConfig.from_json(self.read_blob(config["digest"]).decode("utf-8")))
        if want != got:
            raise ModelfileError(f"ADAPTER {path}: trained on a base model with config hash {want}, but FROM is a "
                                 f"model with config hash {got} (another size or vocabulary); an adapter only works "
                                 "on the model it was trained on")
        return [self._layer("adapter", self.add_blob(f), name=ADAPTER_FILE),
                self._layer("file", self.add_blob(meta_file), name=ADAPTER_CONFIG)]

    def _meta_layers(self, mf: Modelfile, base: Manifest | None) -> list[dict[str, Any]]:
        """Small layers for params/system/template/messages/license; a base model's are inherited
        and the Modelfile's override them (parameters merge key by key)."""
        params = {**(base.params if base else {}), **check_parameters(mf.parameters, where="PARAMETER")}
        values = {
            "params": json.dumps(params, ensure_ascii=False).encode() if params else None,
            "system": _text(mf.system if mf.system is not None else base.system if base else None),
            "template": _text(mf.template if mf.template is not None else base.template if base else None),
            "messages": json.dumps(mf.messages or (base.messages if base else []), ensure_ascii=False).encode()
            if (mf.messages or (base and base.messages)) else None,
        }
        layers = [self._layer(kind, self.add_bytes(data)) for kind, data in values.items() if data is not None]
        for text in mf.license or (base.license if base else []):
            layers.append(self._layer("license", self.add_bytes(text.encode("utf-8"))))
        return layers

    def _layer(self, kind: str, digest: str, name: str | None = None) -> dict[str, Any]:
        layer = {"mediaType": MEDIA[kind], "digest": digest, "size": self.blob_path(digest).stat().st_size}
        if name:
            layer["name"] = name
        return layer

    # -- removing and copying --------------------------------------------------------------------------
    def remove(self, name: str) -> None:
        """Delete `name`; blobs no other model uses are deleted with it."""
        with self._lock():
            m = self.get(name)
            path = self.manifest_path(name)
            path.unlink(missing_ok=True)
            _prune_empty_dirs(path.parent, self.manifests)
            if not any(self._digest_of(other) == m.digest for other in self.names()):  # a cp shares the cache
                shutil.rmtree(self.cache / m.digest.removeprefix("sha256:"), ignore_errors=True)
            used = self._referenced()
            for layer in m.layers:
                if layer["digest"] not in used:
                    self.blob_path(layer["digest"]).unlink(missing_ok=True)

    def copy(self, src: str, dst: str) -> None:
        """Make `dst` another name for the same manifest (blobs are shared, nothing is copied)."""
        with self._lock():
            doc = self.get(src).to_json()
            self._write_manifest(full_name(dst), doc)

    def _digest_of(self, name: str) -> str:
        return "sha256:" + hashlib.sha256(self.manifest_path(name).read_bytes()).hexdigest()

    def _referenced(self) -> set[str]:
        used: set[str] = set()
        for name in self.names():
            try:
                used |= {layer["digest"] for layer in json.loads(self.manifest_path(name).read_bytes())["layers"]}
            except (json.JSONDecodeError, KeyError, TypeError, OSError):
                continue
        return used

    # -- using a model ---------------------------------------------------------------------------------
    def materialize(self, name: str) -> Path:
        """A model directory for `load_model(...)`: the model's files, hard-linked from verified blobs.
        Built once per manifest; a later call re-verifies any file whose size or mtime changed."""
        m = self.get(name)
        out = self.cache / m.digest.removeprefix("sha256:")
        files = self.file_layers_with_adapter(m)
        if out.is_dir() and self._cache_fresh(out, files):
            return out
        for layer in files.values():
            self.verify_blob(layer["digest"])
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build.", dir=self.cache))
        try:
            stamp = {}
            for fname, layer in files.items():
                _link_or_copy(self.blob_path(layer["digest"]), tmp / fname)
                stamp[fname] = _stat_sig(self.blob_path(layer["digest"]))
            (tmp / VERIFIED).write_text(json.dumps(stamp))
            if out.exists():  # stale: move it aside first, since a directory cannot replace a full one
                old = Path(tempfile.mkdtemp(prefix=".old.", dir=self.cache))
                with contextlib.suppress(OSError):
                    os.replace(out, old / "x")
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, out)
            except OSError:  # another process built it at the same moment: theirs is as good as ours
                if not self._cache_fresh(out, files):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def file_layers_with_adapter(self, m: Manifest) -> dict[str, dict[str, Any]]:
        files = m.file_layers()
        for layer in m.layers:
            if KIND.get(layer["mediaType"]) == "adapter":
                files[ADAPTER_FILE] = layer
        return files

    def _cache_fresh(self, out: Path, files: dict[str, dict[str, Any]]) -> bool:
        """True when every blob still has the size and mtime it had when it was verified (a write
        to a blob, or to its hard link in the cache, changes both) and the cache holds the file."""
        try:
            stamp = json.loads((out / VERIFIED).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        for fname, layer in files.items():
            blob = self.blob_path(layer["digest"])
            if not blob.is_file() or not (out / fname).is_file() or stamp.get(fname) != _stat_sig(blob):
                return False
            if (out / fname).stat().st_size != blob.stat().st_size:
                return False
        return True

    # -- health ----------------------------------------------------------------------------------------
    def doctor(self, repair: bool = False) -> dict[str, Any]:
        """Check every blob's sha256 and every manifest's blobs. Reports orphaned blobs (no manifest
        uses them), corrupt blobs, broken manifests (unreadable, or naming missing/corrupt blobs) and
        stale temporary files. With `repair`: corrupt blobs and broken manifests move to quarantine/,
        orphans, stale temporaries and stale caches are deleted."""
        from pocketgpt.serve.doctor import diagnose

        return diagnose(self, repair)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One writer at a time across processes (create/remove/put_manifest), so a removal never
        prunes a blob that a manifest being written is about to name."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


# --- small helpers --------------------------------------------------------------------------------------

def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")


def _stat_sig(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (no extra disk) where the filesystem allows it, else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _prune_empty_dirs(d: Path, stop: Path) -> None:
    while d != stop and d.is_dir() and not any(d.iterdir()):
        d.rmdir()
        d = d.parent


def _parameter_count(store: Store, layers: list[dict[str, Any]]) -> int:
    """Parameters in model.safetensors, from its JSON header alone (no tensors are read)."""
    layer = next((x for x in layers if x.get("name") == "model.safetensors"), None)
    if layer is None:
        return 0
    try:
        with open(store.blob_path(layer["digest"]), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < 100_000_000 else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return 0  # not a readable safetensors header; loading will say so with the details
    total = 0
    for key, t in header.items():
        if key != "__metadata__":
            count = 1
            for dim in t.get("shape", []) if isinstance(t, dict) else []:
                count *= dim
            total += count
    return total


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
