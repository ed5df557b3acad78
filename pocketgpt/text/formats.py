"""Fine-tuning inputs as token ids: GPT-1's task formats, and SFT rows with assistant-only targets.

GPT-1 (Radford et al. 2018, sec. 3.3 and fig. 1) turns every task into token sequences that a
pretrained model can read, with three special markers (text/specials.py):

    classification   <|start|> text <|extract|>
    entailment       <|start|> premise <|delim|> hypothesis <|extract|>
    similarity       <|start|> a <|delim|> b <|extract|>   and   <|start|> b <|delim|> a <|extract|>
                     (no natural order: both are encoded and their extract states are added)
    multiple-choice  <|start|> context <|delim|> answer_k <|extract|>   one sequence per answer;
                     one score each, softmaxed across the answers

A linear head reads the hidden state at <|extract|> (model/heads.py). Instruction SFT instead
trains the language model itself: a conversation is encoded with the chat template's
`encode_with_mask` and the next-token targets are kept only where the *target* token is an
assistant token (its content and the turn end); everything else is -1, which the loss ignores.
Several conversations are packed into one row of block_size tokens (`pack`).
Knows nothing of models or training: ids in, ids out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pocketgpt.errors import DataError
from pocketgpt.text import specials

TASK_KINDS = ("classification", "entailment", "similarity", "multiple-choice")
FIELDS = {  # the JSONL keys each task kind reads (besides "label")
    "classification": ("text",),
    "entailment": ("premise", "hypothesis"),
    "similarity": ("text_a", "text_b"),
    "multiple-choice": ("context", "choices"),
}


# == GPT-1 task formats ==============================================================================
@dataclass(frozen=True)
class TaskIds:
    """One example as token ids: the sequences the model reads (1 for classification/entailment,
    2 for similarity, one per answer for multiple choice) and the gold label (a class index, or
    the index of the right answer; -1 when unknown)."""

    sequences: list[list[int]]
    label: int = -1


@dataclass(frozen=True)
class Markers:
    start: int
    delim: int
    extract: int

    @classmethod
    def of(cls, tokenizer) -> Markers:
        have = tokenizer.special_tokens
        missing = [s for s in (specials.START, specials.DELIM, specials.EXTRACT) if s not in have]
        if missing:
            raise DataError(f"the tokenizer has no {', '.join(missing)} token; GPT-1 task formats need them. "
                            "Use a tokenizer trained by pocketgpt (it reserves them) or add them with "
                            "Tokenizer.add_special_tokens and resize the model")
        return cls(have[specials.START], have[specials.DELIM], have[specials.EXTRACT])


def encode_task(kind: str, record: Mapping, tokenizer, *, labels: Sequence[str] | None = None,
                max_len: int = 256) -> TaskIds:
    """One JSONL record of task `kind` -> TaskIds. `labels` maps a string label to its index
    (classification / entailment / similarity); multiple choice's label is the answer's index."""
    if kind not in TASK_KINDS:
        raise DataError(f"unknown task {kind!r}; use one of {', '.join(TASK_KINDS)}")
    for key in FIELDS[kind]:
        if key not in record:
            raise DataError(f"a {kind} record needs {' and '.join(map(repr, FIELDS[kind]))} (and 'label'); "
                            f"{key!r} is missing")
    m = Markers.of(tokenizer)

    def enc(key_or_text: str) -> list[int]:
        value = record.get(key_or_text, key_or_text) if key_or_text in FIELDS[kind] else key_or_text
        if not isinstance(value, str):
            raise DataError(f"{key_or_text!r} must be a string, got {type(value).__name__}")
        return tokenizer.encode(value, allowed_special="none")  # text never becomes a marker

    if kind == "classification":
        seqs = [sequence(m, [enc("text")], max_len)]
    elif kind == "entailment":
        seqs = [sequence(m, [enc("premise"), enc("hypothesis")], max_len)]
    elif kind == "similarity":
        a, b = enc("text_a"), enc("text_b")
        seqs = [sequence(m, [a, b], max_len), sequence(m, [b, a], max_len)]
    else:
        choices = record["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError("a multiple-choice record needs 'choices': a list of at least 2 answers")
        context = enc("context")
        seqs = [sequence(m, [context, enc(str(c))], max_len) for c in choices]
    return TaskIds(seqs, _label(kind, record, labels, len(seqs)))


def sequence(m: Markers, parts: list[list[int]], max_len: int) -> list[int]:
    """<|start|> part0 [<|delim|> part1] <|extract|>, trimming the longest part from its *front*
    (the end of a text sits next to the extract token and matters most) until it fits."""
    budget = max_len - 1 - len(parts)  # start + one delim between parts + extract
    parts = [list(p) for p in parts]
    while sum(map(len, parts)) > budget:
        longest = max(range(len(parts)), key=lambda i: len(parts[i]))
        if not parts[longest]:
            raise DataError(f"max_len {max_len} leaves no room for the task markers")
        parts[longest] = parts[longest][1:]
    out = [m.start] + parts[0]
    for p in parts[1:]:
        out += [m.delim] + p
    return out + [m.extract]


def _label(kind: str, record: Mapping, labels: Sequence[str] | None, n_seqs: int) -> int:
    if "label" not in record or record["label"] is None:
        return -1
    y = record["label"]
    if kind == "multiple-choice":
        if not isinstance(y, int) or not 0 <= y < n_seqs:
            raise DataError(f"multiple-choice 'label' must be the index of the right answer (0..{n_seqs - 1}), got {y!r}")
        return y
    if labels is None:
        raise DataError("labels unknown: pass the label set (read_task_data builds it from the training file)")
    key = str(y)
    if key not in labels:
        raise DataError(f"label {y!r} is not one of the training labels {list(labels)}")
    return list(labels).index(key)


def label_set(kind: str, records: Sequence[Mapping]) -> list[str]:
    """The sorted distinct labels of a training set (empty for multiple choice)."""
    if kind == "multiple-choice":
        return []
    found = sorted({str(r["label"]) for r in records if r.get("label") is not None})
    if len(found) < 2:
        raise DataError(f"a {kind} training set needs at least 2 distinct labels, found {found}")
    return found


# == SFT: assistant-only targets, packed rows ========================================================
def sft_example(template, tokenizer, messages: Sequence[Mapping]) -> tuple[list[int], list[int]]:
    """(ids, targets) of one conversation: targets[t] = ids[t + 1] where that token is trained
    (assistant content and its turn end), else -1. len(targets) == len(ids); the last is -1."""
    ids, mask = template.encode_with_mask(tokenizer, messages)
    if not any(mask):
        raise DataError("the conversation has no assistant turn to learn from; add one (or drop the record)")
    targets = [ids[t + 1] if mask[t + 1] else -1 for t in range(len(ids) - 1)] + [-1]
    return ids, targets


def pack(examples: Sequence[tuple[list[int], list[int]]], block_size: int, pad_id: int) -> list[tuple[list[int], list[int]]]:
    """Greedy first-fit packing of whole conversations into rows of exactly `block_size` tokens
    (pad_id / -1 fill the rest). A conversation longer than a row is cut to its first block_size
    tokens (the cut loses the tail's targets, never shifts them). Conversations in one row can see
    each other through attention, as in most SFT packers; their targets never cross."""
    rows: list[tuple[list[int], list[int]]] = []
    space: list[int] = []
    for ids, targets in examples:
        ids, targets = ids[:block_size], targets[:block_size]
        i = next((k for k, free in enumerate(space) if free >= len(ids)), None)
        if i is None:
            rows.append(([], []))
            space.append(block_size)
            i = len(rows) - 1
        rows[i][0].extend(ids)
        rows[i][1].extend(targets)
        space[i] -= len(ids)
    return [(x + [pad_id] * (block_size - len(x)), y + [-1] * (block_size - len(y))) for x, y in rows]


def pad_id_of(tokenizer) -> int:
    """<|pad|> when the tokenizer has it, else <|endoftext|>, else 0 (padding is never a target)."""
    have = tokenizer.special_tokens
    return have.get(specials.PAD, have.get(specials.EOT, 0))
