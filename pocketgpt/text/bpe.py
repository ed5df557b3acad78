"""Byte-level BPE tokenizer: text <-> token ids, special tokens, save/load.

Any UTF-8 text round-trips exactly because the alphabet is the 256 bytes (Radford et al. 2019,
sec. 2.2): no unknown tokens, a Chinese character is 3 bytes and so 1 to 3 tokens. Imported
vocabularies may lay ids out differently (SmolLM2: specials first, 21 bytes without a token); the
`Tokenizer` carries any layout whose merged-token ids rise in merge order.
Encoding runs in tiktoken's Rust core, built from our ranks; training is bpe_train.py, the
readable reference encoder is bpe_reference.py, file formats are bpe_files.py.
Knows nothing of models or datasets.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex
import tiktoken

from pocketgpt.errors import TokenizerError
from pocketgpt.text import bpe_files as files
from pocketgpt.text.bpe_pretokenize import PATTERNS, count_pretokens, pattern_str
from pocketgpt.text.bpe_reference import recover_merges
from pocketgpt.text.bpe_train import train_merges

EOT = "<|endoftext|>"
TOKENIZER_NAMES = ("gpt2",)


class Tokenizer:
    """A byte-level BPE vocabulary: `ranks` (token bytes -> id) plus special tokens (text -> id).

    Together they use the ids 0..N-1, each once, in any layout: our own tokenizers put the 256 bytes
    first, merged tokens after them and specials last; SmolLM2 puts its specials at 0..16. tiktoken
    merges by the id of the merged token, which equals merging by priority when merged-token ids
    rise in merge order, so that is checked whenever the merges are given (see `check_layout`).
    """

    def __init__(
        self,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        *,
        pattern: str = "gpt2",
        pat_str: str | None = None,
        merges: list[tuple[int, int]] | None = None,
        name: str = "pocketgpt",
    ):
        self.special_tokens = dict(special_tokens or {})
        check_layout(ranks, self.special_tokens, merges)
        self.ranks = ranks
        self.pattern = pattern
        self.pat_str = pat_str or pattern_str(pattern)
        self.name = name
        self._merges = merges
        # bytes with no token (SmolLM2 has 21, none of them common in text) take the slow encode path
        self._absent = bytes(b for b in range(256) if bytes([b]) not in ranks)
        self._present = bytes(b for b in range(256) if bytes([b]) in ranks)
        self._build()

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        *,
        pattern: str = "gpt2",
        special_tokens: Sequence[str] = (EOT,),
        progress: bool = True,
    ) -> Tokenizer:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`."""
        specials = list(dict.fromkeys(special_tokens))
        n_merges = check_vocab_size(vocab_size, len(specials))
        if not text.strip():
            raise TokenizerError("the training text is empty; give a corpus with some text in it")
        pat = pattern_str(pattern)
        text = _clean_surrogates(text)
        counts = count_pretokens(text, pat, tuple(specials))
        merges = train_merges(counts, n_merges, progress=progress)
        vocab = [bytes([b]) for b in range(256)]
        for a, b in merges:
            vocab.append(vocab[a] + vocab[b])
        ranks = {t: i for i, t in enumerate(vocab)}
        first = len(ranks)
        return cls(ranks, {s: first + k for k, s in enumerate(specials)}, pattern=pattern, merges=merges)

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's real 50,257-token vocabulary, offline (see bpe_files.gpt2_files)."""
        enc, bpe = files.gpt2_files()
        ranks, specials, merges = files.read_gpt2(enc, bpe)
        return cls(ranks, specials, pattern="gpt2", merges=merges, name="gpt2")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer directory: ours, else vocab.json + merges.txt, else tokenizer.tiktoken."""
        d = Path(directory)
        if (d / files.OURS).is_file():
            ranks, specials, merges, pattern, pat = files.read_ours(d / files.OURS)
            return cls(ranks, specials, pattern=pattern if pattern in PATTERNS else "custom", pat_str=pat, merges=merges)
        if (d / files.VOCAB).is_file() and (d / files.MERGES).is_file():
            ranks, specials, merges = files.read_gpt2(d / files.VOCAB, d / files.MERGES)
            return cls(ranks, specials, merges=merges)
        if (d / files.TIKTOKEN).is_file():
            ranks = files.read_tiktoken(d / files.TIKTOKEN)
            if sorted(ranks.values()) != list(range(len(ranks))):
                raise TokenizerError(f"{d / files.TIKTOKEN}: ranks are not 0..N-1, and a tiktoken file carries no "
                                     f"special tokens to fill the gaps; keep {files.OURS} next to it")
            return cls(ranks, {EOT: len(ranks)})
        raise TokenizerError(
            f"{d}: no tokenizer files here (expected {files.OURS}, or {files.VOCAB} + {files.MERGES}, "
            f"or {files.TIKTOKEN}); train one with `pocketgpt tokenizer train --out {d}`"
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write all three formats into `directory`, each file atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files.write_ours(d / files.OURS, self.ranks, self.special_tokens, self.merges, self.pattern, self.pat_str)
        files.write_gpt2(d, self.ranks, self.special_tokens, self.merges)
        files.write_tiktoken(d / files.TIKTOKEN, self.ranks)
        return d

    def add_special_tokens(self, tokens: Iterable[str]) -> list[int]:
        """Give each new special token the next free id (existing ones keep theirs); returns the
        ids. Later stages add their markers this way (chat roles, task delimiters)."""
        out = []
        for tok in tokens:
            if not tok:
                raise TokenizerError("a special token cannot be the empty string")
            if tok not in self.special_tokens:
                self.special_tokens[tok] = self.vocab_size
            out.append(self.special_tokens[tok])
        self._build()
        return out

    def _build(self) -> None:
        """(Re)build the tiktoken encoder from the ranks and the current special tokens."""
        self._enc = tiktoken.Encoding(
            self.name, pat_str=self.pat_str, mergeable_ranks=self.ranks, special_tokens=self.special_tokens
        )
        self._special_set = frozenset(self.special_tokens)
        self._core = getattr(self._enc, "_core_bpe", None)  # private in tiktoken; the public path is the fallback

    # --- properties ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.ranks) + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        if EOT not in self.special_tokens:
            raise TokenizerError(f"this tokenizer has no {EOT} token; add it with add_special_tokens([{EOT!r}])")
        return self.special_tokens[EOT]

    @property
    def merges(self) -> list[tuple[int, int]]:
        """Merges as pairs of ids in rank order (recovered from the ranks when not stored)."""
        if self._merges is None:
            self._merges = recover_merges(self.ranks)
        return self._merges

    # --- encode / decode -------------------------------------------------------------------------

    def encode(self, text: str, allowed_special: str | Iterable[str] = "all") -> list[int]:
        """Token ids of `text`. Special tokens in the text become their id when allowed
        ("all", "none", or a set of strings); otherwise they are encoded as plain text.
        Bytes the vocabulary has no token for are left out (see `_encode_without_absent`)."""
        if self._absent and self._has_absent(text):
            return self._encode_without_absent(text, self._allowed(allowed_special))
        if allowed_special == "all" and self._core is not None:
            try:  # straight into the Rust core: this call is made millions of times
                return self._core.encode(text, self._special_set)
            except UnicodeEncodeError:
                pass  # lone surrogates: tiktoken's public path replaces them with U+FFFD
        return self._enc.encode(text, allowed_special=self._allowed(allowed_special), disallowed_special=())

    def encode_batch(self, texts: list[str], allowed_special: str | Iterable[str] = "all") -> list[list[int]]:
        """`encode` over many texts, in parallel threads inside tiktoken."""
        if self._absent:
            return [self.encode(t, allowed_special) for t in texts]
        return self._enc.encode_batch(texts, allowed_special=self._allowed(allowed_special), disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; a cut through a UTF-8 character shows as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes of `ids` (a list, or a 1-D tensor / array of ints)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # the Rust core wants Python ints
        self._check_ids(ids)
        return self._enc.decode_bytes(ids)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a special token's UTF-8 text)."""
        self._check_ids([token_id])
        return self._enc.decode_single_token_bytes(token_id)

    def _has_absent(self, text: str) -> bool:
        """Whether `text` holds a byte with no token: delete every byte that has one, see what is left."""
        return bool(text.encode("utf-8", errors="surrogatepass").translate(None, self._present))

    def _encode_without_absent(self, text: str, allowed: frozenset[str]) -> list[int]:
        """Encode text holding bytes with no token the way transformers and llama.cpp do for SmolLM2:
        cut at specials, pre-tokenize, drop the absent bytes from each pre-token, then BPE the rest.
        Such bytes are rare (SmolLM2 lacks C0 controls like \\x04 and the UTF-8 lead bytes of planes
        4-16), so this path is plain Python; decode(encode(text)) then lacks those bytes."""
        text = _clean_surrogates(text)
        parts = [text]
        if allowed:  # a capturing split keeps the specials as the odd-numbered parts
            parts = regex.split("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")",
                                text)
        ids: list[int] = []
        for n, part in enumerate(parts):
            if n % 2:
                ids.append(self.special_tokens[part])
                continue
            for word in regex.findall(self.pat_str, part):
                kept = word.encode("utf-8").translate(None, self._absent)
                if kept:
                    ids.extend(self._enc._encode_single_piece(kept))  # BPE of one pre-token, no regex
        return ids

    def _allowed(self, allowed_special: str | Iterable[str]) -> frozenset[str] | str:
        if allowed_special == "all":
            return self._special_set
        if allowed_special == "none":
            return frozenset()
        return frozenset(allowed_special)

    def _check_ids(self, ids: Sequence[int]) -> None:
        if len(ids) and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise TokenizerError(f"token id {bad} is outside this vocabulary (0..{self.vocab_size - 1})")

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, pattern={self.pattern!r})"


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """A tokenizer by name ("gpt2") or from a directory holding tokenizer files (a tokenizer or
    model directory)."""
    if str(spec) in TOKENIZER_NAMES:
        return Tokenizer.gpt2()
    path = Path(spec)
    if path.is_dir():
        return Tokenizer.load(path)
    raise TokenizerError(
        f"unknown tokenizer {str(spec)!r}; use one of {', '.join(TOKENIZER_NAMES)} or a directory holding "
        f"{files.OURS}, {files.VOCAB} + {files.MERGES}, or {files.TIKTOKEN}"
    )


def check_layout(ranks: dict[bytes, int], specials: dict[str, int], merges: list[tuple[int, int]] | None) -> None:
    """Raise TokenizerError unless the mergeable and special tokens use ids 0..N-1 once each and, when
    `merges` is given, each merge makes a token of `ranks` with an id above the previous merge's and
    every multi-byte token is made by a merge. tiktoken merges the adjacent pair whose concatenation
    has the lowest id; with rising ids that is the earliest merge, as in GPT-2's merge-list BPE."""
    ids = sorted([*ranks.values(), *specials.values()])
    if ids != list(range(len(ids))):
        raise TokenizerError("token ids must be 0..N-1, each used once by a mergeable or a special token")
    if merges is None:
        return
    id_to_bytes = {i: t for t, i in ranks.items()}
    last = -1
    for k, (a, b) in enumerate(merges):
        new = ranks.get(id_to_bytes[a] + id_to_bytes[b]) if a in id_to_bytes and b in id_to_bytes else None
        if new is None:
            raise TokenizerError(f"merge {k} ({a}, {b}) does not make a mergeable token of this vocabulary")
        if new <= last:
            raise TokenizerError(f"merge {k} makes id {new}, not above the previous merge's {last}: tiktoken merges "
                                 "by id, so merged-token ids must rise in merge order")
        last = new
    n_multi = sum(1 for t in ranks if len(t) > 1)
    if n_multi != len(merges):
        raise TokenizerError(f"{n_multi} multi-byte tokens but {len(merges)} merges: each must come from one merge")


def check_vocab_size(vocab_size: int, n_specials: int) -> int:
    """The number of merges a vocabulary of this size leaves room for; raises if below zero."""
    if vocab_size < 256 + n_specials:
        raise TokenizerError(
            f"--vocab-size {vocab_size} is too small: 256 byte tokens + {n_specials} special tokens "
            f"need at least {256 + n_specials}"
        )
    return vocab_size - 256 - n_specials


def _clean_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8; replace them with U+FFFD, as tiktoken's encode does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
