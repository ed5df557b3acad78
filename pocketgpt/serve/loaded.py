"""A store model made ready to generate: weights + tokenizer + chat template + default options.

    load_store_model(store, "tiny")          -> LoadedModel (materialize, load_model, adapter, template)
    loaded.prompt_ids(messages)              -> token ids ending with the assistant header
    loaded.sampling(options)                 -> SamplingParams from Ollama option names

Ollama's option names map onto our SamplingParams (`infer/sampling.py`):

    temperature -> temperature        top_k -> top_k (0 = off)     top_p, min_p -> top_p, min_p
    num_predict -> max_tokens (-1 = until the context is full)     repeat_penalty -> repetition_penalty
    stop -> stop (added to the template's own stop)                seed, presence/frequency_penalty as is
    num_ctx -> the engine's context length (a load-time setting, not per request; default 2048 as
               in Ollama, so an 8192-position model does not reserve a KV cache it rarely uses)

Options a request gives override the model's PARAMETERs, which override Ollama's defaults.
Used by `pocketgpt run` (serve/chat_cli.py) and the server's runner; knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketgpt.errors import PocketError
from pocketgpt.serve.modelfile import check_parameters
from pocketgpt.serve.store import Manifest, Store

DEFAULT_CTX = 2048
DEFAULTS: dict[str, Any] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "repeat_penalty": 1.1, "num_predict": -1}


@dataclass
class LoadedModel:
    """Everything needed to chat with one store model."""

    manifest: Manifest
    model: Any  # torch.nn.Module in eval mode
    tokenizer: Any  # pocketgpt.text.bpe.Tokenizer
    template: Any  # ChatTemplate or GoTemplate (serve/template.py)
    options: dict[str, Any] = field(default_factory=dict)  # the model's PARAMETERs

    @property
    def context(self) -> int:
        """Positions a conversation may fill: num_ctx (default 2048), never past block_size."""
        return min(int(self.model.config.block_size), int(self.options.get("num_ctx", DEFAULT_CTX)))

    def messages(self, chat: Sequence[Mapping[str, str]], system: str | None = None) -> list[dict[str, str]]:
        """The conversation the model sees: SYSTEM (or `system`) first unless the chat has one,
        then the Modelfile's MESSAGEs, then `chat`."""
        system = self.manifest.system if system is None else system
        out: list[dict[str, str]] = []
        if system and not any(m.get("role") == "system" for m in chat):
            out.append({"role": "system", "content": system})
        return out + [dict(m) for m in self.manifest.messages] + [dict(m) for m in chat]

    def prompt_ids(self, chat: Sequence[Mapping[str, str]], system: str | None = None) -> list[int]:
        """Token ids for `chat` (with system prompt and example messages), ending with the assistant header."""
        return self.template.encode(self.tokenizer, self.messages(chat, system), add_generation_prompt=True)

    def sampling(self, options: Mapping[str, Any] | None = None, prompt_len: int = 0):
        """SamplingParams for a request: `options` over the model's PARAMETERs over Ollama's defaults."""
        from pocketgpt.infer.sampling import SamplingParams

        o = {**DEFAULTS, **self.options, **check_parameters(dict(options or {}), where="options")}
        room = max(self.context - prompt_len - 1, 0)
        n = int(o["num_predict"])
        stop = list(dict.fromkeys([*self.template.stop, *o.get("stop", [])]))
        special = self.tokenizer.special_tokens  # a stop string that is one special token stops by id
        stop_ids = list(dict.fromkeys([*self.template.stop_ids(self.tokenizer), *(special[s] for s in stop if s in special)]))
        return SamplingParams(
            max_tokens=room if n < 0 else min(n, room),
            temperature=float(o["temperature"]),
            top_k=int(o["top_k"]) or None,
            top_p=float(o["top_p"]) if float(o["top_p"]) < 1 else None,
            min_p=float(o["min_p"]) if o.get("min_p") else None,
            repetition_penalty=float(o["repeat_penalty"]),
            presence_penalty=float(o.get("presence_penalty", 0.0)),
            frequency_penalty=float(o.get("frequency_penalty", 0.0)),
            stop_ids=tuple(stop_ids),
            stop=tuple(s for s in stop if s not in special),
            seed=int(o["seed"]) if "seed" in o else None,
        )


def load_store_model(store: Store, name: str, *, device: str = "cpu", dtype: Any = None) -> LoadedModel:
    """Materialize `name` from the store (verifying its blobs), load it, apply its adapter, pick its template."""
    from pocketgpt.model.checkpoint import load_model
    from pocketgpt.serve.template import chat_template

    manifest = store.get(name)
    model_dir = store.materialize(name)
    if manifest.adapter is not None:
        model, tokenizer = _load_with_adapter(model_dir, manifest.name, device, dtype)
    else:
        model, tokenizer = load_model(model_dir, device=device, dtype=dtype)
    if tokenizer is None:
        raise PocketError(f"model {manifest.name} has no tokenizer files; recreate it from a directory "
                          "that has pocketgpt-tokenizer.json (Tokenizer.save) next to config.json")
    return LoadedModel(manifest, model, tokenizer, chat_template(manifest.template, tokenizer), dict(manifest.params))


def _load_with_adapter(model_dir: Path, name: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """The base weights with the ADAPTER attached by the fine-tuning room's loader (model/peft.py),
    in its inference form (a LoRA update merged into the weights, so the engine runs plain Linears).
    An adapter trained on another base is refused there: its config hash must match."""
    from pocketgpt.errors import ConfigMismatch
    from pocketgpt.model.peft import ADAPTER_CONFIG, load_model_with_adapter

    if not (model_dir / ADAPTER_CONFIG).is_file():
        raise PocketError(f"model {name} has an ADAPTER layer but no {ADAPTER_CONFIG} (how to attach it); "
                          "recreate it with ADAPTER pointing at the directory `pocketgpt sft --peft lora` wrote")
    try:
        return load_model_with_adapter(model_dir, device=device, dtype=dtype, merge=True)
    except ConfigMismatch as e:
        raise ConfigMismatch(f"model {name}: its ADAPTER does not fit its weights: {e}") from None
