"""Instruction tuning (SFT): the same next-token loss as pretraining, on conversations, counted
only on the assistant's tokens (InstructGPT's supervised step, Ouyang et al. 2022, sec. 3.4).

    conversations (text/instructions.py: Alpaca or messages JSONL; tasks/: the built-in tasks)
      -> ids + assistant-only targets (text/formats.sft_example, via the chat template)
      -> rows of block_size tokens, several conversations per row (text/formats.pack)
      -> loss = model(x, y): cross-entropy where y != -1 (gpt.py)  -> train() (loop.py)

With an adapter attached (model/peft.py) only the adapter's parameters have requires_grad and the
loop trains just those; the saved directory holds the base weights plus the adapter.
Knows nothing of the CLI (commands/finetune.py) or of how the data was read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from pocketgpt.errors import DataError
from pocketgpt.train.loop import Stage
from pocketgpt.train.rows import RowBatches

Conversation = Sequence[Mapping[str, str]]


def sft_rows(conversations: Sequence[Conversation], tokenizer, block_size: int, *, template=None,
             pack: bool = True) -> list[tuple[list[int], list[int]]]:
    """Conversations -> (ids, targets) rows of exactly block_size tokens; packed unless pack=False
    (then one conversation per row, padded)."""
    from pocketgpt.text import formats
    from pocketgpt.text.chat import template_for

    template = template or template_for(tokenizer)
    examples = [formats.sft_example(template, tokenizer, c) for c in conversations]
    pad = formats.pad_id_of(tokenizer)
    if pack:
        return formats.pack(examples, block_size, pad)
    return [row for ex in examples for row in formats.pack([ex], block_size, pad)]


def collate_rows(rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([r[0] for r in rows], dtype=torch.long)  # (B, T)
    y = torch.tensor([r[1] for r in rows], dtype=torch.long)  # (B, T), -1 = not trained
    return x, y


def sft_loss(model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
    x, y = batch
    trained = (y >= 0).float().mean().item()
    return model(x, y), {"trained_frac": trained}


def sft_stage(model: torch.nn.Module, tokenizer, train_convs: Sequence[Conversation],
              val_convs: Sequence[Conversation], *, batch_size: int, seed: int = 0, template=None,
              pack: bool = True, merge: bool = False, evaluate=None, block_size: int | None = None) -> Stage:
    """The SFT objective for `model` (a GPT, optionally with an adapter attached).

    Rows are `block_size` tokens (default: the model's context, at most DEFAULT_ROW): an imported
    model with an 8,192-token context would otherwise pack 8,192-token rows of short conversations."""
    from pocketgpt.model import peft
    from pocketgpt.model.info import flops_per_token, param_counts

    T = row_length(model, block_size)
    train_rows = sft_rows(train_convs, tokenizer, T, template=template, pack=pack)
    val_rows = sft_rows(val_convs, tokenizer, T, template=template, pack=pack) if val_convs else train_rows[:8]
    if not train_rows:
        raise DataError("no training rows: the data has no conversations with an assistant turn")

    def batches(split: str, rank: int, world: int) -> RowBatches:
        rows = train_rows if split == "train" else val_rows
        return RowBatches(rows, batch_size, collate_rows, shuffle=split == "train", seed=seed, rank=rank, world=world)

    def save(model: torch.nn.Module, out: Path) -> None:
        peft.save_tuned(model, out, tokenizer, merge=merge)

    cfg = peft.peft_config(model)
    flops = flops_per_token(model.config, param_counts(model.config), T)["training"]
    settings = {"rows": len(train_rows), "val_rows": len(val_rows), "conversations": len(train_convs),
                "pack": pack, "block_size": T, "peft": None if cfg is None else vars(cfg),
                "params": peft.describe(model)}
    return Stage("sft", model, batches, sft_loss, save, tokens_per_row=T, flops_per_token=flops,
                 evaluate=evaluate, settings=settings)


DEFAULT_ROW = 1024


def row_length(model: torch.nn.Module, block_size: int | None = None) -> int:
    """Tokens per SFT row: `block_size` (or the model's context capped at DEFAULT_ROW), less the
    positions a soft prompt takes; a row longer than the model's context is refused."""
    context = model.config.block_size
    if block_size is None:
        block_size = min(context, DEFAULT_ROW)
    if not 8 <= block_size <= context:
        raise DataError(f"--block-size {block_size}: rows must be 8..{context} tokens (the model's context)")
    T = block_size - _virtual(model)
    if T < 8:
        raise DataError(f"--block-size {block_size}: leaves {T} tokens after the {_virtual(model)} virtual ones")
    return T


def _virtual(model: torch.nn.Module) -> int:
    """Positions a soft prompt takes from the context (0 without prompt tuning)."""
    from pocketgpt.model import peft

    cfg = peft.peft_config(model)
    return cfg.n_virtual if cfg is not None and cfg.method == "prompt" else 0


def task_accuracy(tokenizer, *, tasks: str | None = None, n: int = 20, seed: int = 0):
    """An `evaluate` callback: mean built-in task accuracy (eval/tasks.py) on held-out examples."""
    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        from pocketgpt.eval.tasks import evaluate_tasks
        from pocketgpt.train.loop import unwrap

        m = unwrap(model)
        was_training = m.training
        m.eval()
        try:
            result = evaluate_tasks(m, tokenizer, task_names=tasks, n=n, seed=seed, max_tokens=32)
        finally:
            m.train(was_training)
        return {"task_acc": result["overall"]}
    return evaluate
