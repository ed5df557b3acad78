"""GPT-1 task fine-tuning: a pretrained trunk plus one linear layer W_y read at the extract token
(Radford et al. 2018, sec. 3.2):

    P(y | x) = softmax(h_extract W_y)          L2 = -sum log P(y | x)
    L3 = L2 + lambda * L1                      L1 = the language-model loss on the same inputs (aux)

Inputs are laid out by text/formats.py (<|start|> ... <|delim|> ... <|extract|>). Similarity feeds
both orders and adds the two extract states before W_y; multiple choice scores every answer's
sequence with a 1-output W_y and softmaxes across the answers. JSONL in, accuracy and a confusion
matrix out. Knows nothing of the CLI (commands/finetune.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.errors import ConfigMismatch, DataError
from pocketgpt.model.heads import ClassificationHead, extract_positions, gather_positions
from pocketgpt.train.loop import Stage
from pocketgpt.train.rows import RowBatches

HEAD_WEIGHTS, TASK_CONFIG = "task_head.safetensors", "task.json"


class TaskModel(nn.Module):
    """A GPT trunk and GPT-1's W_y. forward(x (B, S, T)) -> logits (B, n_classes), or (B, S) answer
    scores for multiple choice; S is 1, 2 (similarity: both orders) or the number of answers."""

    def __init__(self, gpt: nn.Module, kind: str, n_classes: int, extract_id: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.gpt, self.kind, self.extract_id = gpt, kind, extract_id
        self.config = gpt.config  # the loop records the trunk's config
        self.head = ClassificationHead(gpt.config.d_model, 1 if kind == "multiple-choice" else n_classes, dropout)

    def forward(self, x: torch.Tensor, *, lm_pad_id: int | None = None):
        """x (B, S, T) -> logits; with `lm_pad_id`, (logits, the auxiliary next-token loss on x with
        that pad id ignored) -- one forward, so DDP sees every parameter it trains."""
        from pocketgpt.model.prompt_tuning import with_soft_prompt

        B, S, T = x.shape
        flat = with_soft_prompt(self.gpt, x.reshape(B * S, T))  # (B*S, T'), T' = T (+ P soft tokens)
        h = self.gpt.hidden(flat)  # (B*S, T', C)
        feats = gather_positions(h, extract_positions(flat, self.extract_id))  # (B*S, C): h at <|extract|>
        if self.kind == "similarity":  # no natural order: add both orders' representations
            feats = feats.view(B, S, -1).sum(dim=1)  # (B, C)
        logits = self.head.proj(self.head.dropout(feats))  # (B, n) or (B*S, 1)
        if self.kind == "multiple-choice":
            logits = logits.view(B, S)  # one score per answer, softmaxed across answers by the loss
        if lm_pad_id is None:
            return logits
        return logits, self._lm_loss(h, flat, lm_pad_id)

    def _lm_loss(self, h: torch.Tensor, flat: torch.Tensor, pad_id: int) -> torch.Tensor:
        V = self.gpt.config.vocab_size
        lm_logits = self.gpt.lm_head(h[:, :-1]).float()  # (B*S, T'-1, V)
        targets = flat[:, 1:]
        targets = targets.masked_fill((targets == pad_id) | (targets >= V), -1)  # pads and soft ids: no target
        return F.cross_entropy(lm_logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)


def task_loss(model: nn.Module, batch, *, aux_weight: float = 0.5, pad_id: int = 0):
    """L3 = cross-entropy of the label + aux_weight * next-token loss on the inputs (pads ignored)."""
    x, y = batch
    if aux_weight > 0:
        logits, lm = model(x, lm_pad_id=pad_id)
    else:
        logits, lm = model(x), None
    loss = F.cross_entropy(logits.float(), y)
    extra = {"acc": (logits.argmax(-1) == y).float().mean().item()}
    if lm is not None:
        extra["lm_loss"] = lm.item()
        loss = loss + aux_weight * lm
    return loss, extra


def collate_tasks(examples: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TaskIds -> x (B, S, T) right-padded with pad_id, y (B,). A causal model never lets a pad
    after <|extract|> change the extract state, so no attention mask is needed."""
    S = len(examples[0].sequences)
    if any(len(e.sequences) != S for e in examples):
        raise DataError("every multiple-choice example must have the same number of choices")
    T = max(len(s) for e in examples for s in e.sequences)
    x = torch.full((len(examples), S, T), pad_id, dtype=torch.long)
    for b, e in enumerate(examples):
        for s, seq in enumerate(e.sequences):
            x[b, s, : len(seq)] = torch.tensor(seq)
    return x, torch.tensor([e.label for e in examples], dtype=torch.long)


# -- data -----------------------------------------------------------------------------------------
@dataclass
class TaskData:
    examples: list = field(default_factory=list)  # TaskIds
    problems: list[str] = field(default_factory=list)  # "file:line: reason" of skipped lines


def read_task_file(path: str | os.PathLike, kind: str, tokenizer, *, labels: list[str] | None, max_len: int,
                   on_error: str = "fail") -> tuple[TaskData, list[str]]:
    """Read a JSONL file of task records; returns the data and the label set (built from this file
    when `labels` is None). Bad lines name file:line; on_error="skip" keeps going and lists them."""
    from pocketgpt.text import formats
    from pocketgpt.text.instructions import _parse_line

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give a JSONL file of {kind} records")
    out, records = TaskData(), []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                record = _parse_line(raw)
            except DataError as e:
                _problem(out, f"{path}:{number}: {e}", on_error)
                continue
            if record is not None:
                records.append((number, record))
    if labels is None:
        labels = formats.label_set(kind, [r for _, r in records])
    for number, record in records:
        try:
            ex = formats.encode_task(kind, record, tokenizer, labels=labels, max_len=max_len)
            if ex.label < 0:
                raise DataError("'label' is missing")
            out.examples.append(ex)
        except DataError as e:
            _problem(out, f"{path}:{number}: {e}", on_error)
    if not out.examples:
        raise DataError(f"{path}: no usable {kind} records ({len(out.problems)} bad lines)")
    return out, labels


def _problem(out: TaskData, problem: str, on_error: str) -> None:
    if on_error == "fail":
        raise DataError(f"{problem} (pass --on-error skip to skip bad lines)")
    out.problems.append(problem)


# -- the stage, evaluation, files -------------------------------------------------------------------
def finetune_stage(model: TaskModel, tokenizer, train: TaskData, val: TaskData, *, batch_size: int, seed: int = 0,
                   aux_weight: float = 0.5, labels: list[str], merge: bool = False) -> Stage:
    from pocketgpt.text.formats import pad_id_of

    pad = pad_id_of(tokenizer)

    def batches(split: str, rank: int, world: int) -> RowBatches:
        data = train if split == "train" else val
        return RowBatches(data.examples, batch_size, lambda ex: collate_tasks(ex, pad), shuffle=split == "train",
                          seed=seed, rank=rank, world=world)

    def loss(m: nn.Module, batch):
        return task_loss(m, batch, aux_weight=aux_weight, pad_id=pad)

    def save(m: nn.Module, out: Path) -> None:
        save_task_model(m, out, tokenizer, labels=labels, aux_weight=aux_weight, merge=merge)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"val_acc": evaluate_task_model(m, val, pad, batch_size=batch_size)["accuracy"]}

    from pocketgpt.model.peft import describe

    return Stage(f"finetune-{model.kind}", model, batches, loss, save, evaluate=evaluate, lm_loss=False,
                 settings={"task": model.kind, "labels": labels, "aux_weight": aux_weight,
                           "train_examples": len(train.examples), "val_examples": len(val.examples),
                           "params": describe(model)})


@torch.no_grad()
def evaluate_task_model(model: nn.Module, data: TaskData, pad_id: int, *, batch_size: int = 32) -> dict[str, Any]:
    """Accuracy and the confusion matrix (rows: gold label, columns: prediction) over `data`."""
    from pocketgpt.train.loop import unwrap

    m = unwrap(model)
    was_training = m.training
    m.eval()
    device = next(m.parameters()).device
    golds, preds = [], []
    try:
        for i in range(0, len(data.examples), batch_size):
            x, y = collate_tasks(data.examples[i:i + batch_size], pad_id)
            preds += m(x.to(device)).argmax(-1).tolist()
            golds += y.tolist()
    finally:
        m.train(was_training)
    n = max(golds + preds) + 1
    confusion = [[0] * n for _ in range(n)]
    for g, p in zip(golds, preds, strict=True):
        confusion[g][p] += 1
    return {"accuracy": sum(g == p for g, p in zip(golds, preds, strict=True)) / len(golds),
            "n": len(golds), "confusion": confusion}


def save_task_model(model: nn.Module, out: str | os.PathLike, tokenizer, *, labels: list[str], aux_weight: float,
                    merge: bool = False) -> Path:
    """The trunk as a model directory (with its adapter, if any) + task_head.safetensors + task.json."""
    from safetensors.torch import save_file

    from pocketgpt.atomic import atomic_path, atomic_write
    from pocketgpt.model.peft import save_tuned
    from pocketgpt.train.loop import unwrap

    m = unwrap(model)
    out = save_tuned(m.gpt, out, tokenizer, merge=merge)
    head = {k: v.detach().contiguous().cpu() for k, v in m.head.state_dict().items()}
    with atomic_path(out / HEAD_WEIGHTS) as tmp:
        save_file(head, str(tmp))
    meta = {"task": m.kind, "labels": labels, "n_outputs": m.head.proj.out_features, "aux_weight": aux_weight,
            "extract_id": m.extract_id}
    atomic_write(out / TASK_CONFIG, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return out


def load_task_model(model_dir: str | os.PathLike) -> tuple[TaskModel, Any, dict]:
    """(TaskModel in eval mode, tokenizer, task.json) from a directory written by save_task_model."""
    from safetensors.torch import load_file

    from pocketgpt.model.peft import load_model_with_adapter

    d = Path(model_dir)
    if not (d / TASK_CONFIG).is_file():
        raise ConfigMismatch(f"{d}: no {TASK_CONFIG}; this is not a `pocketgpt finetune` output")
    meta = json.loads((d / TASK_CONFIG).read_text(encoding="utf-8"))
    gpt, tok = load_model_with_adapter(d)
    n = meta["n_outputs"]
    model = TaskModel(gpt, meta["task"], n, meta["extract_id"])
    model.head.load_state_dict(load_file(str(d / HEAD_WEIGHTS)))
    return model.eval(), tok, meta
