"""A model's name and its manifest: which blobs make the model, and what they say.

    name      "namespace/name:tag", lowercase ASCII, tag defaults to "latest" (parse_name)
    manifest  {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "layers": [{mediaType, digest, size, name?}],
               "annotations": {"parameter_count": N}}
    layers    file (a model-directory file, with its `name`), adapter, params (JSON), system, template,
              messages (JSON), license: each a blob named by its sha256 digest

Knows nothing of where blobs live or how they are written: serve/store.py does that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pocketgpt.errors import PocketError
from pocketgpt.serve.modelfile import ModelNameError, parameter_lines, quote

MANIFEST_TYPE = "application/vnd.pocketgpt.manifest.v1+json"
MEDIA = {  # layer kind -> media type (the model directory's files are "file" layers with a name)
    "file": "application/vnd.pocketgpt.file",
    "adapter": "application/vnd.pocketgpt.adapter",
    "params": "application/vnd.pocketgpt.params",
    "system": "application/vnd.pocketgpt.system",
    "template": "application/vnd.pocketgpt.template",
    "messages": "application/vnd.pocketgpt.messages",
    "license": "application/vnd.pocketgpt.license",
}
KIND = {v: k for k, v in MEDIA.items()}
# the files of a model directory that belong in the store (not optimizer state, logs, samples)
MODEL_FILES = ("config.json", "model.safetensors", "pocketgpt-tokenizer.json", "vocab.json", "merges.txt",
               "tokenizer.tiktoken", "tokenizer.json", "chat_template.jinja", "quant.json",
               "adapter.safetensors", "adapter.json", "adapter_config.json")
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"  # how to attach it (model/peft.py); a file layer next to the adapter layer
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}(/[a-z0-9][a-z0-9._-]{0,79}){0,2}$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class BlobError(PocketError):
    """A blob is missing, or its bytes do not match its sha256 digest."""


# --- names --------------------------------------------------------------------------------------------

def parse_name(name: str) -> tuple[str, str]:
    """("name", "tag") from "name[:tag]" (tag defaults to "latest"); names are case-insensitive,
    lowercase ASCII letters, digits, '.', '_', '-', with up to two '/' namespaces."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNameError("a model name is empty; use e.g. `tiny` or `tiny:v1`")
    raw = name.strip()
    if "://" in raw:
        raise ModelNameError(f"{raw!r} is a URL, not a model name; `pocketgpt pull {raw}` fetches it into the store")
    base, sep, tag = raw.rpartition(":") if ":" in raw.rsplit("/", 1)[-1] else (raw, "", "latest")
    base = base.lower()
    if not sep:
        tag = "latest"
    if not NAME_RE.match(base) or ".." in base:
        raise ModelNameError(f"invalid model name {raw!r}: use lowercase letters, digits, '.', '_' and '-' "
                             "(starting with a letter or digit, at most 80 characters, optional namespace/), "
                             "e.g. `my-model:v1`")
    if not TAG_RE.match(tag):
        raise ModelNameError(f"invalid tag {tag!r} in {raw!r}: use letters, digits, '.', '_' and '-' "
                             "(at most 128), e.g. `:latest` or `:q8`")
    return base, tag


def full_name(name: str) -> str:
    """The canonical "name:tag" form of a model name."""
    base, tag = parse_name(name)
    return f"{base}:{tag}"


def check_digest(digest: str) -> str:
    """A digest must be "sha256:" + 64 lowercase hex digits (also keeps blob names path-safe)."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise BlobError(f"invalid digest {digest!r}; expected 'sha256:' followed by 64 hex digits")
    return digest


# --- the manifest -------------------------------------------------------------------------------------

@dataclass
class Manifest:
    """One named model: its manifest document plus the small blobs it points at, read eagerly."""

    name: str  # "name:tag"
    digest: str  # sha256 of the manifest document's bytes
    size: int  # bytes of all its blobs together
    modified_at: str  # ISO 8601, UTC
    layers: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)  # the ModelConfig as a dict (config.json)
    params: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    adapter: str | None = None  # digest of the adapter blob
    document: dict[str, Any] = field(default_factory=dict)  # the manifest exactly as stored

    def to_json(self) -> dict[str, Any]:
        """The manifest document as stored and as sent by push (`Store.put_manifest` accepts it)."""
        return self.document

    def summary(self) -> dict[str, Any]:
        """What `list` / `/api/tags` show for a model."""
        return {"name": self.name, "model": self.name, "digest": self.digest.removeprefix("sha256:"),
                "size": self.size, "modified_at": self.modified_at, "details": self.details()}

    def details(self) -> dict[str, Any]:
        """Ollama's `details` block: format, family, parameter size, quantization."""
        c = self.config
        n = self.document.get("annotations", {}).get("parameter_count")
        family = _family(c)
        return {"format": "safetensors", "family": family, "families": [family],
                "parameter_size": _human_count(n) if n else "", "quantization_level": _quant_level(c)}

    def file_layers(self) -> dict[str, dict[str, Any]]:
        """The model directory's files: file name -> layer."""
        return {layer["name"]: layer for layer in self.layers if KIND.get(layer["mediaType"]) == "file"}

    def modelfile(self) -> str:
        """A Modelfile that recreates this model from the store (for `show --modelfile`)."""
        lines = [f"# Modelfile generated by pocketgpt show --modelfile {self.name}", f"FROM {self.name}"]
        if self.template is not None:
            lines.append(f"TEMPLATE {quote(self.template)}")
        if self.system is not None:
            lines.append(f"SYSTEM {quote(self.system)}")
        lines += parameter_lines(self.params)
        lines += [f"MESSAGE {m['role']} {quote(m['content'])}" for m in self.messages]
        lines += [f"LICENSE {quote(text)}" for text in self.license]
        return "\n".join(lines) + "\n"


def _family(c: dict[str, Any]) -> str:
    """llama (RoPE + RMSNorm + SwiGLU), gpt2, seq2seq or bert, as ModelConfig.flavour names them."""
    if c.get("arch", "gpt") != "gpt":
        return str(c["arch"])
    return "llama" if (c.get("positions"), c.get("norm"), c.get("activation")) == ("rope", "rmsnorm", "swiglu") else "gpt2"


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0", "")
    return str(n)


def _quant_level(config: dict[str, Any]) -> str:
    q = config.get("extra", {}).get("quant") if isinstance(config.get("extra"), dict) else None
    return str(q).upper() if q else "F32"

