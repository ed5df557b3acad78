"""Pretraining: the "next word" game on raw text, as a Stage of the one training loop.

    --data (raw text | a `pocketgpt clean` dir | token shards | nothing = the default corpus)
      -> clean (text/clean.py)  -> train a BPE tokenizer with the reserved specials (text/bpe.py)
      -> token shards (text/shards.py)  -> random block_size windows (text/batches.py)
      -> loss = model(x, y): mean cross-entropy of every next token (gpt.py)  -> train() (loop.py)

Prepared data is cached under `$POCKETGPT_HOME/prepared/<key>`, keyed by the input files' checksums,
the vocabulary size and the tokenizer, so the second run on the same corpus starts training at once.
Knows nothing of the CLI (commands/train.py parses the flags) or of fine-tuning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from pocketgpt.config import ModelConfig
from pocketgpt.errors import DataError
from pocketgpt.train.loop import Stage

VAL_FRACTION = 0.01  # of documents held out for validation
PREP_VERSION = 1  # bump when cleaning/tokenizer training/sharding change what they produce


@dataclass
class Prepared:
    shards: Path  # a shards directory (meta.json, *.bin, tokenizer files)
    tokenizer: object  # pocketgpt.text.bpe.Tokenizer
    notes: list[str]


def prepare_data(data: list[str] | None, *, vocab_size: int, tokenizer: str | None = None,
                 processes: int | None = None, progress: bool = True, cache: Path | None = None) -> Prepared:
    """Turn `--data` into token shards (cached), training a tokenizer unless one is given."""
    from pocketgpt.text import shards as sh

    specs = list(data or ["default"])
    if len(specs) == 1 and (Path(specs[0]) / "meta.json").is_file():  # already shards
        return Prepared(Path(specs[0]), sh.load_tokenizer_of(specs[0]), [f"using token shards {specs[0]}"])
    raw, cleaned = _classify(specs)
    key = _cache_key(raw + cleaned, vocab_size, tokenizer)
    root = (cache or _prepared_root()) / key
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):  # torchrun starts N processes at once: one prepares, the others reuse it
        return _prepare(root, raw, cleaned, vocab_size, tokenizer, processes, progress)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(root: Path, raw: list[Path], cleaned: list[Path], vocab_size: int, tokenizer: str | None,
             processes: int | None, progress: bool) -> Prepared:
    from pocketgpt.text import shards as sh

    notes = []
    if raw:
        clean_dir = root / "clean"
        if not (clean_dir / "report.json").is_file():
            from pocketgpt.text.clean import clean_corpus

            report = clean_corpus(raw, clean_dir, progress=progress)
            notes.append(f"cleaned {len(raw)} file(s): kept {report['docs_kept']} of {report['docs_in']} documents")
        cleaned.append(clean_dir / "cleaned.txt")
    tok_dir = root / "tokenizer"
    tok = _tokenizer(tokenizer, cleaned, vocab_size, tok_dir, notes, progress)
    shards_dir = root / "shards"
    if not (shards_dir / "meta.json").is_file():
        meta = sh.write_shards([str(p) for p in cleaned], tok, shards_dir, val_fraction=VAL_FRACTION,
                               processes=processes, progress=progress)
        notes.append(f"tokenized: {meta['splits']['train']['n_tokens']:,} train and "
                     f"{meta['splits']['val']['n_tokens']:,} val tokens")
    else:
        notes.append(f"using cached data {root}")
    return Prepared(shards_dir, tok, notes)


def _classify(specs: list[str]) -> tuple[list[Path], list[Path]]:
    """(raw text files to clean, already-cleaned files)."""
    from pocketgpt.text.corpora import ALIASES, CORPORA, corpus_paths

    raw, cleaned = [], []
    for spec in specs:
        path = Path(spec)
        if spec in CORPORA or spec in ALIASES:
            raw += corpus_paths(spec)
        elif (path / "cleaned.txt").is_file():
            cleaned.append(path / "cleaned.txt")
        elif (path / "meta.json").is_file():
            raise DataError(f"{spec}: token shards can only be used alone as --data (got {len(specs)} sources)")
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise DataError(f"{spec}: a directory without .txt files, cleaned.txt or shards meta.json")
            raw += files
        elif path.is_file():
            raw.append(path)
        else:
            raise DataError(f"--data {spec}: no such file, directory or corpus name (try `pocketgpt data list`)")
    return raw, cleaned


def _cache_key(paths: list[Path], vocab_size: int, tokenizer: str | None) -> str:
    from pocketgpt.atomic import sha256_file

    h = hashlib.sha256(json.dumps([PREP_VERSION, vocab_size, tokenizer]).encode())
    for p in paths:
        h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def _prepared_root() -> Path:
    from pocketgpt.home import home_dir

    return home_dir() / "prepared"


def _tokenizer(spec: str | None, texts: list[Path], vocab_size: int, out: Path, notes: list[str], progress: bool):
    from pocketgpt.text.bpe import Tokenizer, load_tokenizer
    from pocketgpt.text.specials import RESERVED

    if spec is not None:
        tok = load_tokenizer(spec)
        notes.append(f"tokenizer {spec}: {tok.vocab_size} tokens")
        return tok
    if (out / "pocketgpt-tokenizer.json").is_file():
        return Tokenizer.load(out)
    from pocketgpt.text.textfile import read_text

    text = "\n\n".join(read_text(p) for p in texts)
    if not text.strip():
        raise DataError("the corpus is empty after cleaning; give more text (see the cleaning report)")
    tok = Tokenizer.train(text, vocab_size, special_tokens=RESERVED, progress=progress)
    tok.save(out)
    notes.append(f"trained a {tok.vocab_size}-token BPE tokenizer on {len(text):,} characters")
    return tok


def pretrain_stage(model: torch.nn.Module, prepared: Prepared, *, batch_size: int, seed: int) -> Stage:
    """The next-token objective over `prepared` shards for `model` (a GPT)."""
    from pocketgpt.model.checkpoint import save_model
    from pocketgpt.model.info import flops_per_token, param_counts
    from pocketgpt.text.batches import SequentialBatches, TokenBatches
    from pocketgpt.text.shards import open_shards

    config: ModelConfig = model.config
    T = config.block_size
    train_stream, val_stream = open_shards(prepared.shards, "train"), open_shards(prepared.shards, "val")
    if train_stream.vocab_size > config.vocab_size:
        raise DataError(f"the shards use {train_stream.vocab_size} token ids but the model has vocab_size "
                        f"{config.vocab_size}; pass --vocab-size {train_stream.vocab_size}")

    def batches(split: str, rank: int, world: int):
        if split == "train":
            return TokenBatches(train_stream, batch_size, T, seed=seed, rank=rank, world=world)
        return SequentialBatches(val_stream, batch_size, T, seed=seed, rank=rank, world=world)

    def loss(model: torch.nn.Module, batch):
        x, y = batch  # (B, T) each: y is x shifted left by one token
        return model(x, y)

    def save(model: torch.nn.Module, out: Path) -> None:
        save_model(model, out, prepared.tokenizer)

    flops = flops_per_token(config, param_counts(config), T)["training"]
    return Stage("pretrain", model, batches, loss, save, tokens_per_row=T, flops_per_token=flops, cpu_bf16=True,
                 settings={"shards": str(prepared.shards), "block_size": T})


# training defaults per preset, tuned on 2 CPU cores (tiny, small) or one GPU (gpt2-124m);
# any of them can be overridden by its flag
TRAIN_PRESETS: dict[str, dict] = {
    # tiny: ~3 steps/s on 2 quiet cores, so 700 steps (the cosine decays to its end) take ~4 min;
    # max_minutes caps a slower or busy machine
    "tiny": dict(batch_size=16, lr=2e-3, warmup_steps=50, max_steps=700, max_minutes=4.5, eval_every=100,
                 ckpt_every=250, eval_batches=10, weight_decay=0.1),
    "tiny-llama": dict(batch_size=16, lr=2e-3, warmup_steps=50, max_steps=2000, max_minutes=4.0, eval_every=200,
                       ckpt_every=500, eval_batches=10),
    "tiny-moe": dict(batch_size=16, lr=2e-3, warmup_steps=50, max_steps=2000, max_minutes=4.0, eval_every=200,
                     ckpt_every=500, eval_batches=10),
    "small": dict(batch_size=16, lr=1e-3, warmup_steps=200, max_steps=5000, eval_every=250, ckpt_every=500),
    "gpt2-124m": dict(batch_size=16, grad_accum=4, lr=6e-4, warmup_steps=700, max_steps=20000, eval_every=500,
                      ckpt_every=1000),
}


def sample_prompts(tokenizer) -> list[str]:
    """Prompts to show what the model learned: English, and Chinese when the tokenizer knows CJK text."""
    prompts = ["It is a truth universally acknowledged", "Elizabeth"]
    if len(tokenizer.encode("人民日报")) <= 6:  # merged CJK tokens: the corpus had Chinese
        prompts += ["中国", "春风"]
    return prompts
