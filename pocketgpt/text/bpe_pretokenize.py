"""Pre-tokenization: the regex that cuts text into "words" before BPE sees it, and the splitting
around special tokens.

BPE never merges across a pre-token boundary, so " the" and "the." can share the token " the"
but no token ever spans a word and its punctuation (Radford et al. 2019, GPT-2 paper, sec. 2.2).
Knows nothing of merges, ranks or files.
"""

from __future__ import annotations

from collections import Counter

import regex

from pocketgpt.errors import TokenizerError

# GPT-2's pattern (openai/gpt-2 encoder.py), written with possessive quantifiers as tiktoken does:
# the same matches, without the backtracking. Contractions, letters (with one leading space),
# numbers, other symbols, then whitespace (trailing runs keep their last space for the next word).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# GPT-4's cl100k_base pattern: case-insensitive contractions, numbers in groups of at most three
# digits, and a letter run may take one leading non-letter (so "(the" keeps "(" with the word).
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

# SmolLM2's pattern (llama.cpp `tokenizer.ggml.pre` = "smollm"): llama.cpp first isolates every digit
# (\p{N}) and then applies GPT-2's rules, which is GPT-2's pattern with each digit taken alone.
SMOLLM_PATTERN = GPT2_PATTERN.replace(r" ?\p{N}++", r"\p{N}")

PATTERNS = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN, "smollm": SMOLLM_PATTERN}


def pattern_str(name: str) -> str:
    """The regex for a pattern name (`gpt2`, `cl100k`); raises TokenizerError for other names."""
    try:
        return PATTERNS[name]
    except KeyError:
        raise TokenizerError(f"unknown pattern {name!r}; use one of {', '.join(PATTERNS)}") from None


def split_specials(text: str, specials: list[str] | tuple[str, ...]) -> list[str]:
    """Cut `text` at every special token and drop them, so training never learns their pieces."""
    if not specials:
        return [text]
    # longest first, so "<|im_start|>" wins over any special that is its prefix
    alternation = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    return [part for part in regex.split(alternation, text) if part]


def count_pretokens(text: str, pat: str, specials: tuple[str, ...] = ()) -> Counter[bytes]:
    """How often each distinct pre-token occurs, as UTF-8 bytes.

    Counting once and training on the distinct words is what makes BPE training fast: a 5 MB
    corpus has millions of pre-tokens but only ~10^5 distinct ones.
    """
    compiled = regex.compile(pat)
    counts: Counter[str] = Counter()
    for part in split_specials(text, specials):
        counts.update(compiled.findall(part))
    return Counter({word.encode("utf-8", errors="surrogatepass"): n for word, n in counts.items()})
